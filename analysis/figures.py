"""The report's figures. Each is built in two steps: a ``*_data`` function gathers what the
figure shows (a NamedTuple, or None when the studies hold nothing to show, in which case the
figure is skipped), and a ``draw_*`` function draws it with seaborn/matplotlib.

Figures are drawn on ``matplotlib.figure.Figure`` objects, never through pyplot, so no GUI
backend is touched and nothing leaks between figures.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import colors as mcolors
from matplotlib import ticker
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis import pareto
from analysis.results import Study, objective_values, study_reference

# Columns counted in operations or elements: log axes, "M"/"k" ticks.
COUNT_COLUMNS = ("macs", "nonzero_macs", "ops", "params", "nonzero_params")
BYTE_COLUMNS = ("size_bytes",)
SHARE_COLUMNS = ("accuracy", "balanced_accuracy", "val_accuracy", "train_accuracy",
                 "accuracy_drop", "sparsity")
LABELS = {
    "accuracy": "test accuracy", "balanced_accuracy": "balanced test accuracy",
    "val_accuracy": "validation accuracy", "accuracy_drop": "accuracy drop vs. base",
    "macs": "MACs per sample", "nonzero_macs": "non-zero MACs per sample",
    "ops": "operations per sample", "params": "parameters", "nonzero_params":
    "non-zero parameters", "size_bytes": "model size", "latency_ms": "latency (ms, batch 1)",
    "compression": "compression (x)", "speedup": "MAC reduction (x)",
}
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
DASHES = ("-", "--", ":", "-.")
MAX_CURVES = 8  # training-curve figures show at most this many trials


# --------------------------------------------------------------------------- units


def _sig(x: float, digits: int) -> str:
    """``digits`` significant digits, never in exponent notation (100, not 1e+02)."""
    whole = len(str(int(abs(round(x)))))
    return f"{x:.{max(digits, whole)}g}"


def human_count(n: float, digits: int = 3) -> str:
    """1234567 -> '1.23 M'; counts of parameters and operations."""
    if n is None or not math.isfinite(n):
        return "–"
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{_sig(n / div, digits)} {unit}"
    return _sig(n, digits)


def human_bytes(n: float) -> str:
    """2321960 -> '2.21 MiB'."""
    if n is None or not math.isfinite(n):
        return "–"
    for div, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(n) >= div:
            return f"{_sig(n / div, 3)} {unit}"
    return f"{n:.0f} B"


def label(column: str) -> str:
    """Axis label of a column, with its unit."""
    if column in SHARE_COLUMNS:
        return f"{LABELS.get(column, column)} (%)"
    return LABELS.get(column, column)


class Percent(ticker.Formatter):
    """Shares as percent with as many decimals as the tick spacing needs (97.5%, not 97.500%)."""

    def __call__(self, x, pos=None):
        locs = np.sort(np.asarray(self.locs, dtype=float))
        step = np.diff(locs).min() if len(locs) > 1 else 1.0
        decimals = max(0, math.ceil(-math.log10(step * 100) - 1e-9)) if step > 0 else 0
        return f"{100 * x:.{decimals}f}%"


class _LogTicks(ticker.LogLocator):
    """Log ticks that stay readable: 1-2-5 per decade over up to three decades, decades
    only beyond that; bytes at powers of 4 (1 KiB, 4 KiB, 16 KiB ...), which print
    round in binary units."""

    def __init__(self, binary: bool = False):
        super().__init__(base=4 if binary else 10, numticks=9)
        self.binary = binary

    def tick_values(self, vmin, vmax):
        if not self.binary and vmin > 0 and vmax > 0:
            wide = abs(math.log10(vmax / vmin)) > 3
            self.set_params(subs=(1.0,) if wide else (1.0, 2.0, 5.0))
        return super().tick_values(vmin, vmax)


def _format_axis(ax, which: str, column: str, log: bool = True) -> None:
    """Log scale with readable ticks for counts and bytes; percent for shares."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    if column in COUNT_COLUMNS or column in BYTE_COLUMNS:
        fmt = human_bytes if column in BYTE_COLUMNS else (lambda v: human_count(v, 2))
        if log:
            (ax.set_xscale if which == "x" else ax.set_yscale)("log")
            axis.set_major_locator(_LogTicks(binary=column in BYTE_COLUMNS))
            axis.set_minor_locator(ticker.NullLocator())  # the majors suffice; faster
        axis.set_major_formatter(ticker.FuncFormatter(lambda v, _p: fmt(v)))
    elif column in SHARE_COLUMNS:
        axis.set_major_formatter(Percent())


# --------------------------------------------------------------------------- style


@contextmanager
def style():
    """A clean paper-like style: white background, ticks, light grid, readable sizes."""
    rc = {"axes.grid": True, "grid.color": "#e6e6e6", "grid.linewidth": 0.6,
          "axes.spines.top": False, "axes.spines.right": False, "axes.titlesize": 11,
          "legend.framealpha": 0.9, "legend.edgecolor": "#dddddd"}
    with sns.axes_style("ticks"), sns.plotting_context("paper", font_scale=1.25), \
            matplotlib.rc_context(rc):
        yield


def palette(names) -> dict:
    """Stable colours: the same method has the same colour in every figure of a report."""
    names = sorted({str(n) for n in names if n is not None and n == n})
    colours = sns.color_palette("colorblind", max(len(names), 1))
    if len(names) > len(colours):  # pragma: no cover - more than 10 methods
        colours = sns.color_palette("husl", len(names))
    return dict(zip(names, colours, strict=False))


def to_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    # Constrained layout already fits every label; a tight bounding box would render twice.
    fig.savefig(buf, format="png", dpi=150, facecolor="white")
    return buf.getvalue()


def _finished(studies: list[Study]) -> pd.DataFrame:
    frames = [s.trials[s.trials["status"] == "ok"] for s in studies]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _spread(values: pd.Series, k: int) -> list:
    """Index labels of at most ``k`` rows spread evenly over the sorted values."""
    order = values.sort_values(kind="stable").index.tolist()
    if len(order) <= k:
        return order
    return [order[i] for i in sorted({int(round(x)) for x in np.linspace(0, len(order) - 1, k)})]


def _legend_below(fig: Figure, handles: list, ncol: int | None = None) -> None:
    ncol = ncol or min(len(handles), 5)
    fig.legend(handles=handles, loc="outside lower center", ncol=ncol, frameon=False,
               handletextpad=0.4, columnspacing=1.2)


# --------------------------------------------------------------------------- 1. fronts


class ParetoData(NamedTuple):
    """Finished trials in the (x, y) plane with each study's 2-D front and base model."""

    x: str
    y: str
    points: pd.DataFrame  # study, method, trial_id, number, x, y, on_front, feasible, violated
    fronts: pd.DataFrame  # study, x, y: non-dominated in (x min, y max), sorted by x
    base: pd.DataFrame  # study, x, y


def pareto_data(studies: list[Study], x: str = "macs", y: str = "accuracy") -> ParetoData | None:
    """Accuracy against a cost. ``on_front`` is the study's front over all its objectives;
    ``fronts`` is the 2-D front of this projection, drawn as the step line."""
    pts, fronts, bases = [], [], []
    for s in studies:
        ok = s.trials[s.trials["status"] == "ok"]
        if x not in ok or y not in ok:
            continue
        d = pd.DataFrame({"study": s.label, "method": ok["method"], "trial_id": ok["trial_id"],
                          "number": ok["number"], "x": pd.to_numeric(ok[x], errors="coerce"),
                          "y": pd.to_numeric(ok[y], errors="coerce"), "on_front": ok["on_front"],
                          "feasible": ok["feasible"].astype(bool) if "feasible" in ok else True,
                          "violated": ok["violated"] if "violated" in ok else None})
        d = d[np.isfinite(d["x"]) & np.isfinite(d["y"]) & (d["x"] > 0)]
        if not len(d):
            continue
        pts.append(d)
        feasible = d[d["feasible"]]
        mask = pareto.nondominated(feasible[["x", "y"]].to_numpy(), [False, True])
        fronts.append(feasible.loc[mask, ["study", "x", "y"]].sort_values(["x", "y"]))
        b = s.info.base
        if isinstance(b.get(x), int | float) and isinstance(b.get(y), int | float):
            bases.append(pd.DataFrame({"study": [s.label], "x": [b[x]], "y": [b[y]]}))
    if not pts:
        return None
    base = pd.concat(bases, ignore_index=True) if bases else pd.DataFrame(
        columns=["study", "x", "y"])
    return ParetoData(x, y, pd.concat(pts, ignore_index=True),
                      pd.concat(fronts, ignore_index=True), base)


def front_panels(studies: list[Study]) -> list[ParetoData]:
    """One panel per cost: MACs, params, then every other objective to minimise."""
    # The y axis is accuracy unless a study maximises another accuracy instead.
    maxed = [n for s in studies for n, d in s.info.objectives.items()
             if d == "max" and n in SHARE_COLUMNS]
    y = "accuracy" if "accuracy" in maxed or not maxed else maxed[0]
    costs = ["macs", "params"]
    costs += list(dict.fromkeys(n for s in studies for n, d in s.info.objectives.items()
                                if d == "min" and n not in costs and n != "accuracy_drop"))
    panels = [pareto_data(studies, x, y) for x in costs]
    return [p for p in panels if p is not None]


def draw_pareto(panels: list[ParetoData], colours: dict | None = None) -> Figure:
    """Accuracy against each cost (log x), one colour per method, fronts as step lines."""
    # At most three panels a row, and four as two by two, so a page can hold the figure.
    ncols = 2 if len(panels) == 4 else min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    with style():
        fig = Figure(figsize=(5.0 * ncols, 4.0 * nrows + 0.4), layout="constrained")
        grid = fig.subplots(nrows, ncols, sharey=True, squeeze=False).ravel()
        axes = grid[: len(panels)]
        for ax in grid[len(panels):]:
            ax.remove()
        shown = set(pd.concat([p.points["method"] for p in panels]))
        colours = colours or palette(shown)
        methods = {m: c for m, c in colours.items() if m in shown}
        study_names = list(dict.fromkeys(panels[0].points["study"]))
        markers = {s: MARKERS[i % len(MARKERS)] for i, s in enumerate(study_names)}
        dashes = {s: DASHES[i % len(DASHES)] for i, s in enumerate(study_names)}
        for ax, p in zip(axes, panels, strict=True):
            bad = p.points[~p.points["feasible"].astype(bool)]
            # Trials that break a constraint: grey crosses, never on a front.
            ax.scatter(bad["x"], bad["y"], s=26, color="#9a9a9a", marker="x", linewidths=1.0,
                       zorder=2)
            for (study, method), d in p.points[p.points["feasible"].astype(bool)].groupby(
                    ["study", "method"], sort=False):
                off = d[~d["on_front"]]
                on = d[d["on_front"]]
                ax.scatter(off["x"], off["y"], s=22, color=methods[method], alpha=0.45,
                           marker=markers[study], linewidths=0, zorder=2)
                ax.scatter(on["x"], on["y"], s=42, color=methods[method], marker=markers[study],
                           edgecolors="black", linewidths=0.8, zorder=3)
            for study, f in p.fronts.groupby("study", sort=False):
                ax.step(f["x"], f["y"], where="post", color="#333333", lw=1.2,
                        ls=dashes.get(study, "-"), zorder=1)
            for _, b in p.base.iterrows():
                # Under the trials: a trial at the base's cost stays visible on the star.
                ax.scatter([b["x"]], [b["y"]], marker="*", s=300, color="#f2c200",
                           edgecolors="black", linewidths=0.9, zorder=1.5)
                ax.annotate(f"base\n{b['y']:.1%}", (b["x"], b["y"]), xytext=(0, -12),
                            textcoords="offset points", ha="center", va="top", fontsize=9,
                            zorder=5)
            _format_axis(ax, "x", p.x)
            _format_axis(ax, "y", p.y)
            ax.set_xlabel(label(p.x) + " (log scale)")
            ax.set_ylabel(label(p.y))
            ys = pd.concat([p.points["y"], p.base["y"]])
            lo, hi = ys.min(), min(1.0, ys.max())
            # Room above the best point for the base star, which is drawn 300 pt^2 large.
            ax.set_ylim(max(0.0, lo - 0.04), hi + max(0.02, 0.05 * (hi - lo)))
        handles = [Line2D([], [], marker="o", ls="", color=c, label=m, markersize=7)
                   for m, c in methods.items()]
        if len(study_names) > 1:
            handles += [Line2D([], [], marker=markers[s], ls=dashes[s], color="#333333",
                               label=f"{s} (front)", markersize=7) for s in study_names]
        else:
            handles.append(Line2D([], [], color="#333333", lw=1.2, label="Pareto front"))
        handles += [Line2D([], [], marker="o", ls="", color="white", markeredgecolor="black",
                           label="on the study's front", markersize=7),
                    Line2D([], [], marker="*", ls="", color="#f2c200", markeredgecolor="black",
                           label="base model", markersize=13)]
        if any((~p.points["feasible"].astype(bool)).any() for p in panels):
            handles.append(Line2D([], [], marker="x", ls="", color="#9a9a9a",
                                  label="breaks a constraint", markersize=7))
        # As many legend columns as the figure is wide for: 2, 3, then 4 from three panels.
        _legend_below(fig, handles, ncol=min(len(handles), ncols + 1, 4))
    return fig


# --------------------------------------------------------------------------- 2. hypervolume


class HypervolumeData(NamedTuple):
    """Hypervolume after each trial (trial order), per study."""

    curves: pd.DataFrame  # study, sampler, trial (1-based count), hypervolume


def hypervolume_data(studies: list[Study]) -> HypervolumeData | None:
    frames = []
    for s in studies:
        df = s.trials
        if not (df["status"] == "ok").any():
            continue
        values = objective_values(df, s.info.objectives)
        hv = pareto.hypervolume_by_trial(values, study_reference(s.info, df))
        sampler = f"{s.info.sampler or '?'} (seed {s.info.sampler_seed})"
        frames.append(pd.DataFrame({"study": s.label, "sampler": sampler,
                                    "trial": np.arange(1, len(df) + 1), "hypervolume": hv}))
    return HypervolumeData(pd.concat(frames, ignore_index=True)) if frames else None


def draw_hypervolume(data: HypervolumeData) -> Figure:
    with style():
        fig = Figure(figsize=(6.4, 4.0), layout="constrained")
        ax = fig.subplots()
        groups = list(data.curves.groupby(["study", "sampler"], sort=False))
        colours = sns.color_palette("colorblind", len(groups))
        for ((study, sampler), d), c in zip(groups, colours, strict=True):
            ax.step(d["trial"], d["hypervolume"], where="post", color=c, lw=1.8,
                    label=f"{study}: {sampler}, final {d['hypervolume'].iloc[-1]:.3f}")
        ax.set_xlabel("trials run")
        ax.set_ylabel("hypervolume (normalised)")
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        ax.set_ylim(bottom=0)
        ax.legend(loc="lower right")
    return fig


# --------------------------------------------------------------------------- 3. parameters


class ParamData(NamedTuple):
    """Finished trials of one method: each searched parameter against each objective."""

    method: str
    params: list[str]
    objectives: list[str]
    kinds: dict[str, str]  # param -> "log", "linear" or "categorical"
    categories: dict[str, list[str]]  # categorical param -> its values in axis order
    points: pd.DataFrame  # study, trial_id, on_front, params..., objectives...


def _kind(values: pd.Series, spec) -> str:
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return "categorical"
    if isinstance(spec, dict) and ("choices" in spec or spec.get("type") == "categorical"):
        return "categorical"
    if isinstance(spec, dict) and "log" in spec:
        return "log" if spec["log"] else "linear"
    v = values.dropna()
    return "log" if len(v) and v.min() > 0 and v.max() / v.min() >= 50 else "linear"


def _categories(values: pd.Series, spec) -> list[str]:
    """The spec's order of choices when it has one, else sorted; as strings."""
    seen = {str(v) for v in values.dropna()}
    order = [str(c) for c in spec["choices"]] if isinstance(spec, dict) and \
        isinstance(spec.get("choices"), list) else []
    return [c for c in order if c in seen] + sorted(seen - set(order))


def param_data(studies: list[Study]) -> list[ParamData]:
    """One ParamData per method that has a parameter taking more than one value."""
    ok = _finished(studies)
    if not len(ok):
        return []
    params = list(dict.fromkeys(p for s in studies for p in s.trials.attrs.get("params", [])))
    objectives = list(dict.fromkeys(o for s in studies for o in s.info.objectives if o in ok))
    space = {k: v for s in studies for k, v in s.info.space.items()}
    out = []
    for method, d in ok.groupby("method", sort=True):
        used = [p for p in params if p in d and d[p].notna().any() and d[p].nunique() > 1]
        # An objective the method never changes (MACs under unstructured pruning) is a flat
        # row of points: left out.
        varied = [o for o in objectives if d[o].nunique() > 1]
        if not used or not varied:
            continue
        pts = d[["study", "trial_id", "on_front", *used, *varied]].reset_index(drop=True)
        kinds = {p: _kind(pts[p], space.get(p)) for p in used}
        cats = {p: _categories(pts[p], space.get(p)) for p in used if kinds[p] == "categorical"}
        out.append(ParamData(str(method), used, varied, kinds, cats, pts))
    return out


def draw_params(data: ParamData, colour=None) -> Figure:
    """Grid: one row per parameter, one column per objective; front trials ringed."""
    nr, nc = len(data.params), len(data.objectives)
    with style():
        fig = Figure(figsize=(max(3.4 * nc, 6.0), 2.5 * nr + 0.4), layout="constrained")
        axes = fig.subplots(nr, nc, squeeze=False)
        studies = list(dict.fromkeys(data.points["study"]))
        hue = dict(zip(studies, sns.color_palette("colorblind", len(studies)), strict=True))
        if len(studies) == 1 and colour is not None:
            hue = {studies[0]: colour}
        for i, param in enumerate(data.params):
            for j, obj in enumerate(data.objectives):
                ax = axes[i, j]
                d = data.points[[param, obj, "study", "on_front"]].dropna(subset=[param, obj])
                x = d[param]
                if data.kinds[param] == "categorical":
                    cats = data.categories[param]
                    # Fixed jitter: the same trial sits at the same place in every column.
                    jitter = np.random.default_rng(i).uniform(-0.18, 0.18, len(data.points))
                    x = x.astype(str).map({c: k for k, c in enumerate(cats)}) + \
                        jitter[d.index.to_numpy()]
                    long = sum(len(c) for c in cats) > 24
                    ax.set_xticks(range(len(cats)), cats, rotation=25 if long else 0,
                                  ha="right" if long else "center")
                    ax.set_xlim(-0.5, len(cats) - 0.5)
                    ax.grid(False, axis="x")
                for study in hue:
                    g = d["study"] == study
                    ax.scatter(x[g], d.loc[g, obj], s=20, color=hue[study], alpha=0.75,
                               linewidths=0)
                on = d["on_front"].astype(bool)
                ax.scatter(x[on], d.loc[on, obj], s=34, facecolors="none", edgecolors="black",
                           linewidths=0.8)
                if data.kinds[param] == "log":
                    ax.set_xscale("log")
                elif data.kinds[param] == "linear" and (d[param] % 1 == 0).all():
                    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
                ax.set_xlabel(param + (" (log)" if data.kinds[param] == "log" else ""))
                _format_axis(ax, "y", obj)
                ax.set_ylabel(label(obj))
        handles = [Line2D([], [], marker="o", ls="", color=c, label=s) for s, c in hue.items()]
        handles.append(Line2D([], [], marker="o", ls="", color="white",
                              markeredgecolor="black", label="on the study's front"))
        _legend_below(fig, handles)
        fig.suptitle(f"{data.method}: searched parameters against objectives", fontsize=12,
                     fontweight="bold")
    return fig


# --------------------------------------------------------------------------- 4. channels


class ChannelData(NamedTuple):
    """Share of each conv layer's channels kept, for the trials on each study's front."""

    layers: list[str]  # network order
    base_channels: dict[str, int]
    kept: pd.DataFrame  # study, trial_id, number, method, accuracy, macs, layer, share


def channel_data(studies: list[Study]) -> ChannelData | None:
    """None when no front trial removed a channel (nothing to see)."""
    rows, layers, base_channels = [], [], {}
    for s in studies:
        base_channels.update(s.info.base.get("channels") or {})
        layers += [ly for ly in (s.info.base.get("channels") or {}) if ly not in layers]
        front = s.trials[s.trials["on_front"] & s.trials.get("channels", pd.Series(
            index=s.trials.index, dtype=object)).apply(lambda c: isinstance(c, dict))]
        for _, t in front.iterrows():
            for layer, share in t["channels"].items():
                if layer not in layers:
                    layers.append(layer)
                rows.append({"study": s.label, "trial_id": t["trial_id"], "number": t["number"],
                             "method": t["method"], "accuracy": t.get("accuracy"),
                             "macs": t.get("macs"), "layer": layer, "share": float(share)})
    kept = pd.DataFrame(rows)
    if not len(kept) or (kept["share"] >= 1.0).all():
        return None
    return ChannelData(layers, base_channels, kept)


def _short_names(layers: list[str]) -> list[str]:
    """Layer names without the dotted prefix they all share ('features.conv0' -> 'conv0')."""
    parts = [ly.split(".") for ly in layers]
    common = 0
    while all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
        common += 1
    return [".".join(p[common:]) for p in parts]


def draw_channels(data: ChannelData) -> Figure:
    studies = list(dict.fromkeys(data.kept["study"]))
    many = len(data.layers) > 12
    with style():
        fig = Figure(figsize=(min(16.0, max(6.4, 0.75 * len(data.layers) + 2.5)),
                              3.9 * len(studies) + 0.6), layout="constrained")
        axes = fig.subplots(len(studies), 1, squeeze=False, sharex=True)[:, 0]
        macs = pd.to_numeric(data.kept["macs"], errors="coerce")
        norm = mcolors.LogNorm(macs.min(), macs.max()) if 0 < macs.min() < macs.max() else \
            mcolors.Normalize(macs.min() * 0.9, macs.max() * 1.1)
        cmap = sns.color_palette("viridis", as_cmap=True)
        pos = {ly: i for i, ly in enumerate(data.layers)}
        methods = list(dict.fromkeys(sorted(data.kept["method"].astype(str))))
        marker = {m: MARKERS[k % len(MARKERS)] for k, m in enumerate(methods)}
        for ax, study in zip(axes, studies, strict=True):
            d = data.kept[data.kept["study"] == study]
            for _, t in d.groupby("trial_id", sort=False):
                t = t.assign(x=t["layer"].map(pos)).sort_values("x")
                ax.plot(t["x"], t["share"], marker=marker[str(t["method"].iloc[0])], ms=4,
                        lw=1.2, alpha=0.85, color=cmap(norm(float(t["macs"].iloc[0]))))
            ax.set_ylim(0, 1.05)
            ax.yaxis.set_major_formatter(Percent())
            ax.set_ylabel("channels kept (%)")
            if len(studies) > 1:
                ax.set_title(study)
        sep = " " if many else "\n"
        ticks = [f"{short}{sep}({data.base_channels[ly]})" if ly in data.base_channels else short
                 for ly, short in zip(data.layers, _short_names(data.layers), strict=True)]
        axes[-1].set_xticks(range(len(data.layers)), ticks, rotation=90 if many else 0)
        axes[-1].set_xlabel("conv layer (base model's channels), input to output")
        bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=list(axes),
                           label="MACs of the pruned model")
        bar.ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _p: human_count(v, 2)))
        bar.ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        if isinstance(norm, mcolors.LogNorm):
            bar.ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        if len(methods) > 1:
            _legend_below(fig, [Line2D([], [], marker=marker[m], color="#555555", label=m)
                                for m in methods])
    return fig


# --------------------------------------------------------------------------- 5. training


class SparsityCurves(NamedTuple):
    """Network slimming's sparsity phase: sparsity and accuracy per epoch, per lambda."""

    curves: pd.DataFrame  # study, trial_id, lambda, epoch, sparsity, val_accuracy, train_accuracy


def _with_params(s: Study, cols: list[str]) -> pd.DataFrame:
    have = [c for c in cols if c in s.trials]
    return s.history.merge(s.trials[["trial_id", "status", *have]], on="trial_id", how="inner")


def sparsity_data(studies: list[Study], param: str = "slimming.lambda") -> SparsityCurves | None:
    frames = []
    for s in studies:
        if "sparsity" not in s.history or param not in s.trials:
            continue
        h = _with_params(s, [param])
        h = h[(h["phase"] == "sparsity") & h["sparsity"].notna() & h[param].notna()]
        if len(h):
            frames.append(h.assign(study=s.label))
    if not frames:
        return None
    h = pd.concat(frames, ignore_index=True)
    per_trial = h.groupby(["study", "trial_id"], sort=False)[param].first()
    keep = set(_spread(per_trial.reset_index(drop=True), MAX_CURVES))
    chosen = per_trial.reset_index().loc[sorted(keep), ["study", "trial_id"]]
    h = h.merge(chosen, on=["study", "trial_id"])
    cols = ["study", "trial_id", param, "epoch", "sparsity", "val_accuracy", "train_accuracy"]
    h = h.reindex(columns=cols).rename(columns={param: "lambda"})
    return SparsityCurves(h.sort_values(["lambda", "trial_id", "epoch"]).reset_index(drop=True))


def draw_sparsity(data: SparsityCurves) -> Figure:
    with style():
        fig = Figure(figsize=(10.0, 3.9), layout="constrained")
        ax_s, ax_a = fig.subplots(1, 2, sharex=True)
        lam = data.curves["lambda"]
        norm = mcolors.LogNorm(lam.min(), lam.max()) if 0 < lam.min() < lam.max() else \
            mcolors.Normalize(lam.min() - 1e-12, lam.max() + 1e-12)
        cmap = sns.color_palette("flare", as_cmap=True)
        for (_, _t), d in data.curves.groupby(["study", "trial_id"], sort=False):
            c = cmap(norm(d["lambda"].iloc[0]))
            ax_s.plot(d["epoch"], d["sparsity"], color=c, lw=1.6, marker="o", ms=3)
            ax_a.plot(d["epoch"], d["val_accuracy"], color=c, lw=1.6, marker="o", ms=3)
            if d["train_accuracy"].notna().any():
                ax_a.plot(d["epoch"], d["train_accuracy"], color=c, lw=1.0, ls=":")
        ax_s.set_ylabel("sparsity (%)")
        ax_s.yaxis.set_major_formatter(Percent())
        ax_a.set_ylabel("accuracy (%)")
        ax_a.yaxis.set_major_formatter(Percent())
        for ax in (ax_s, ax_a):
            ax.set_xlabel("sparsity-training epoch")
            ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        ax_a.legend(handles=[Line2D([], [], color="#555555", lw=1.6, label="validation"),
                             Line2D([], [], color="#555555", lw=1.0, ls=":", label="training")],
                    loc="lower left")
        fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=[ax_s, ax_a],
                     label="λ (L1 on BN scale factors)")
    return fig


class AlphaCurves(NamedTuple):
    """Parallel-branch pruning: the alpha schedule and the accuracy it leads to."""

    hue: str | None  # the schedule parameter, e.g. branch.alpha_schedule
    curves: pd.DataFrame  # study, trial_id, schedule, epoch, alpha, val_accuracy


def alpha_data(studies: list[Study]) -> AlphaCurves | None:
    frames, hue = [], None
    for s in studies:
        if "alpha" not in s.history:
            continue
        sched = [p for p in s.trials.attrs.get("params", []) if "schedule" in p]
        hue = hue or (sched[0] if sched else None)
        h = _with_params(s, sched[:1])
        h = h[h["alpha"].notna()].copy()
        if not len(h):
            continue
        h["schedule"] = h[sched[0]].astype(str) if sched else "trial " + h["trial_id"]
        h["epoch"] = h.groupby("trial_id").cumcount() + 1
        frames.append(h.assign(study=s.label))
    if not frames:
        return None
    h = pd.concat(frames, ignore_index=True)
    trials = h.groupby(["study", "trial_id"], sort=False)["schedule"].first().reset_index()
    per_group = max(1, MAX_CURVES // max(1, trials["schedule"].nunique()))
    chosen = pd.concat([g.iloc[_pick(len(g), per_group)] for _, g in trials.groupby("schedule")])
    h = h.merge(chosen[["study", "trial_id"]], on=["study", "trial_id"])
    cols = ["study", "trial_id", "schedule", "epoch", "alpha", "val_accuracy"]
    return AlphaCurves(hue, h[cols].reset_index(drop=True))


def _pick(n: int, k: int) -> list[int]:
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, min(n, k))}) if n else []


def draw_alpha(data: AlphaCurves) -> Figure:
    with style():
        fig = Figure(figsize=(10.0, 3.9), layout="constrained")
        ax_s, ax_a = fig.subplots(1, 2)
        groups = list(dict.fromkeys(sorted(data.curves["schedule"])))
        colours = dict(zip(groups, sns.color_palette("colorblind", len(groups)), strict=True))
        for (_, _t, sched), d in data.curves.groupby(["study", "trial_id", "schedule"],
                                                      sort=False):
            ax_s.plot(d["epoch"], d["alpha"], color=colours[sched], lw=1.5, marker="o", ms=3,
                      alpha=0.85)
            ax_a.plot(d["alpha"], d["val_accuracy"], color=colours[sched], lw=1.5, marker="o",
                      ms=3, alpha=0.85)
        ax_s.set_xlabel("epoch of the alpha schedule")
        ax_s.set_ylabel("α (weight of the original path)")
        ax_s.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        ax_a.set_xlim(1.02, -0.02)  # alpha falls from 1 to 0 as training goes on
        ax_a.set_xlabel("α (falling →)")
        ax_a.set_ylabel("validation accuracy (%)")
        ax_a.yaxis.set_major_formatter(Percent())
        ax_a.legend(handles=[Line2D([], [], color=c, lw=1.5, label=g)
                             for g, c in colours.items()], title=data.hue, loc="best")
    return fig


class ReprData(NamedTuple):
    """RePr against plain training of the same epoch budget."""

    pairs: pd.DataFrame  # study, trial_id, number, accuracy, plain_accuracy
    trial: str | None  # the trial whose curves are shown (best RePr accuracy)
    curves: pd.DataFrame  # run ("RePr" or "plain"), phase, epoch, val_accuracy


def repr_data(studies: list[Study], column: str = "repr.plain_accuracy") -> ReprData | None:
    ok = _finished(studies)
    if column not in ok:
        return None
    pairs = ok.loc[ok[column].notna(), ["study", "trial_id", "number", "accuracy", column]]
    pairs = pairs.rename(columns={column: "plain_accuracy"}).reset_index(drop=True)
    if not len(pairs):
        return None
    hist = pd.concat([s.history.assign(study=s.label) for s in studies], ignore_index=True)
    trial, curves = None, pd.DataFrame(columns=["run", "phase", "epoch", "val_accuracy"])
    stage = column.split(".", 1)[0]
    with_hist = pairs[pairs["trial_id"].isin(hist.get("trial_id", []))]
    if len(with_hist):
        best = with_hist.loc[with_hist["accuracy"].idxmax()]
        trial = best["trial_id"]
        h = hist[(hist["trial_id"] == trial) & (hist["study"] == best["study"])]
        h = h[h["stage"] == stage] if "stage" in h and (h["stage"] == stage).any() else h
        h = h.assign(run=np.where(h["phase"] == "plain", "plain", "RePr"))
        h["epoch"] = h.groupby("run").cumcount() + 1
        curves = h[["run", "phase", "epoch", "val_accuracy"]].reset_index(drop=True)
    return ReprData(pairs, trial, curves)


def draw_repr(data: ReprData) -> Figure:
    with style():
        panels = 2 if len(data.curves) else 1
        fig = Figure(figsize=(4.6 * panels + 0.8, 4.2), layout="constrained")
        axes = fig.subplots(1, panels, squeeze=False)[0]
        ax = axes[0]
        p = data.pairs
        ax.scatter(p["plain_accuracy"], p["accuracy"], s=30, color="#0173b2", alpha=0.8,
                   linewidths=0)
        lo = float(min(p["plain_accuracy"].min(), p["accuracy"].min()))
        hi = float(max(p["plain_accuracy"].max(), p["accuracy"].max()))
        pad = max(0.005, 0.08 * (hi - lo))
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="#888888", lw=1, ls="--")
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_aspect("equal")
        above = int((p["accuracy"] > p["plain_accuracy"]).sum())
        ax.text(0.03, 0.97, f"RePr better in {above} of {len(p)} trials\n(points above the "
                "diagonal)", transform=ax.transAxes, va="top", fontsize=9)
        ax.set_xlabel("plain training, test accuracy (%)")
        ax.set_ylabel("RePr, test accuracy (%)")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(Percent())
        if panels == 2:
            ax = axes[1]
            c = data.curves
            r = c[c["run"] == "RePr"]
            # Shade the S2 epochs, where the dropped filters are frozen at zero.
            for e in r.loc[r["phase"] == "s2", "epoch"]:
                ax.axvspan(e - 0.5, e + 0.5, color="#dddddd", lw=0, zorder=0)
            for run, colour in (("plain", "#555555"), ("RePr", "#0173b2")):
                d = c[c["run"] == run]
                ax.plot(d["epoch"], d["val_accuracy"], color=colour, lw=1.6, label=run)
            ax.set_xlabel("epoch")
            ax.set_ylabel("validation accuracy (%)")
            ax.yaxis.set_major_formatter(Percent())
            ax.set_title(f"best RePr trial ({data.trial})", fontsize=10, fontweight="normal")
            ax.legend(handles=[*ax.get_legend_handles_labels()[0],
                               Line2D([], [], color="#dddddd", lw=6, label="S2 (filters dropped)")],
                      loc="lower right")
    return fig


# --------------------------------------------------------------------------- 6. BN scales


class GammaData(NamedTuple):
    """|gamma| of every BN channel after sparsity training, for a few lambdas."""

    trials: pd.DataFrame  # study, trial_id, number, lambda
    gammas: pd.DataFrame  # study, trial_id, gamma


def gamma_data(studies: list[Study], column: str = "slimming.gammas",
               param: str = "slimming.lambda", k: int = 4) -> GammaData | None:
    ok = _finished(studies)
    if column not in ok:
        return None
    have = ok[ok[column].apply(lambda g: isinstance(g, list) and len(g) > 0)]
    if not len(have):
        return None
    lam = have[param] if param in have else have["number"].astype(float)
    chosen = have.loc[_spread(lam, k)]
    trials = pd.DataFrame({"study": chosen["study"], "trial_id": chosen["trial_id"],
                           "number": chosen["number"],
                           "lambda": chosen[param] if param in chosen else np.nan})
    trials = trials.sort_values("lambda", kind="stable").reset_index(drop=True)
    gammas = chosen[["study", "trial_id", column]].explode(column).rename(
        columns={column: "gamma"})
    gammas["gamma"] = pd.to_numeric(gammas["gamma"], errors="coerce").abs()
    gammas = gammas[np.isfinite(gammas["gamma"])]
    if not len(gammas):
        return None
    return GammaData(trials, gammas.reset_index(drop=True))


def draw_gammas(data: GammaData) -> Figure:
    n = len(data.trials)
    with style():
        fig = Figure(figsize=(3.1 * n + 0.6, 3.4), layout="constrained")
        # Same x and y on every panel: each holds every BN channel of the model once.
        axes = fig.subplots(1, n, sharex=True, sharey=True, squeeze=False)[0]
        g = data.gammas["gamma"]
        floor = max(float(g[g > 0].min()) if (g > 0).any() else 1e-6, 1e-8)
        bins = np.geomspace(floor, max(float(g.max()), floor * 10), 40)
        for ax, (_, t) in zip(axes, data.trials.iterrows(), strict=True):
            v = data.gammas.loc[(data.gammas["trial_id"] == t["trial_id"]) &
                                (data.gammas["study"] == t["study"]), "gamma"].clip(lower=floor)
            ax.hist(v, bins=bins, color="#de8f05", edgecolor="white", linewidth=0.4)
            ax.set_xscale("log")
            lam = f"λ = {t['lambda']:.1e}" if pd.notna(t["lambda"]) else f"trial {t['number']}"
            ax.set_title(lam, fontsize=10)
            ax.set_xlabel("|γ| (log scale)")
        axes[0].set_ylabel("BN channels")
    return fig


# --------------------------------------------------------------------------- all figures


@dataclass(frozen=True)
class Drawn:
    """One figure of the report: file stem, title, caption and the drawn figure."""

    key: str
    title: str
    caption: str
    figure: Figure


def _entries(studies: list[Study]) -> list[tuple[str, str, str, object, Callable]]:
    params = param_data(studies)
    colours = palette(_finished(studies).get("method", pd.Series(dtype=object)))
    panels = front_panels(studies)
    return [
        ("pareto-front", "Pareto fronts: accuracy against cost",
         "Each point is a finished trial, coloured by method; ringed points are on the "
         "study's Pareto front over all its objectives. The step line is the front of this "
         "projection: the best accuracy reached at or below each cost. The star is the base "
         "model.", panels or None, partial(draw_pareto, colours=colours)),
        ("hypervolume", "Hypervolume against trials",
         "Hypervolume of the front after each trial, normalised by the base model: accuracy "
         "as a share of the base's, each cost as the share of the base's cost saved plus "
         "0.1. The base model alone scores 0.1 per cost objective (0.01 with two); a model "
         "as accurate as the base at a tenth of its cost scores 1. A flat stretch means no "
         "trial improved the front.",
         hypervolume_data(studies), draw_hypervolume),
        *[(f"params-{p.method.replace('+', '-')}", f"Parameters of {p.method}",
           "Each searched parameter against each objective for the finished trials of "
           f"{p.method}; ringed points are on the front.", p,
           partial(draw_params, colour=colours.get(p.method))) for p in params],
        ("channels", "Channels kept per layer on the front",
         "Share of each conv layer's output channels kept by every trial on the front, "
         "coloured by the pruned model's MACs.", channel_data(studies), draw_channels),
        ("slimming-sparsity", "Network slimming: sparsity training per λ",
         "Share of BN scale factors near zero (left) and accuracy (right) during sparsity "
         f"training, for up to {MAX_CURVES} trials spread over λ.", sparsity_data(studies),
         draw_sparsity),
        ("slimming-gammas", "Network slimming: BN scale factors per λ",
         "Histogram of |γ| over all BN channels after sparsity training, for trials spread "
         "over λ (log x axis; zeros drawn at the smallest non-zero value).",
         gamma_data(studies), draw_gammas),
        ("branch-alpha", "Parallel-branch pruning: α schedule and accuracy",
         "Left: α, the weight of the original path, per epoch of the schedule. Right: "
         "validation accuracy against α as it falls to 0.", alpha_data(studies), draw_alpha),
        ("repr", "RePr against plain training",
         "Left: test accuracy of RePr against plain training of the same epoch budget, one "
         "point per trial. Right: validation accuracy per epoch of the best RePr trial and "
         "its plain control; grey bands are S2 epochs.", repr_data(studies), draw_repr),
    ]


def figures(studies: list[Study]) -> list[Drawn]:
    """Every figure the studies have data for, drawn; figures without data are skipped."""
    out = []
    for key, title, caption, data, draw in _entries(studies):
        if data is None:
            continue
        out.append(Drawn(key, title, caption, draw(data)))
    return out
