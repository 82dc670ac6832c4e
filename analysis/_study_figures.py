"""Figures every study has: Pareto fronts, hypervolume against trials, searched parameters
against objectives, and the channels kept per layer on the front."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import colors as mcolors
from matplotlib import ticker
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis import pareto
from analysis._format import (
    DASHES,
    MARKERS,
    Percent,
    finished_trials,
    format_axis,
    human_count,
    label,
    legend_below,
    palette,
    style,
)
from analysis.results import Study, objective_values, study_reference
from prune_core import columns

__all__ = ["ChannelData", "HypervolumeData", "ParamData", "ParetoData", "channel_data",
           "draw_channels", "draw_hypervolume", "draw_params", "draw_pareto", "front_panels",
           "hypervolume_data", "param_data", "pareto_data"]


# --------------------------------------------------------------------------- fronts


class ParetoData(NamedTuple):
    """Finished trials in the (x, y) plane with each study's 2-D front and base model."""

    x: str
    y: str
    # study, method, trial_id, number, x, y, on_front, feasible, violated, and y_sd: the
    # spread of y over a configuration's repeats (NaN without repeats)
    points: pd.DataFrame
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
                          "violated": ok["violated"] if "violated" in ok else None,
                          "y_sd": pd.to_numeric(ok[f"{y}_sd"], errors="coerce")
                          if f"{y}_sd" in ok else np.nan})
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
             if d == "max" and columns.unit(n) == "share"]
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
                sd = d[np.isfinite(d["y_sd"])]
                if len(sd):  # repeats: one standard deviation of y over the seeds
                    ax.errorbar(sd["x"], sd["y"], yerr=sd["y_sd"], fmt="none",
                                ecolor=methods[method], elinewidth=0.9, capsize=2.5,
                                alpha=0.8, zorder=2)
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
            format_axis(ax, "x", p.x)
            format_axis(ax, "y", p.y)
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
        if any(np.isfinite(p.points["y_sd"]).any() for p in panels):
            handles.append(Line2D([], [], marker="|", ls="", color="#333333", markersize=10,
                                  label="± 1 sd over the repeats (points: means)"))
        if any((~p.points["feasible"].astype(bool)).any() for p in panels):
            handles.append(Line2D([], [], marker="x", ls="", color="#9a9a9a",
                                  label="breaks a constraint", markersize=7))
        # As many legend columns as the figure is wide for: 2, 3, then 4 from three panels.
        legend_below(fig, handles, ncol=min(len(handles), ncols + 1, 4))
    return fig


# --------------------------------------------------------------------------- hypervolume


class HypervolumeData(NamedTuple):
    """Hypervolume after each trial (trial order), per study."""

    curves: pd.DataFrame  # study, sampler, trial (1-based count), hypervolume


def hypervolume_data(studies: list[Study]) -> HypervolumeData | None:
    """Each study's hypervolume after every trial; None when no trial has finished."""
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
    """Hypervolume against trials run, one step line per study and sampler."""
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


# --------------------------------------------------------------------------- parameters


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
    ok = finished_trials(studies)
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
                format_axis(ax, "y", obj)
                ax.set_ylabel(label(obj))
        handles = [Line2D([], [], marker="o", ls="", color=c, label=s) for s, c in hue.items()]
        handles.append(Line2D([], [], marker="o", ls="", color="white",
                              markeredgecolor="black", label="on the study's front"))
        legend_below(fig, handles)
        fig.suptitle(f"{data.method}: searched parameters against objectives", fontsize=12,
                     fontweight="bold")
    return fig


# --------------------------------------------------------------------------- channels


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
    """Share of channels kept per conv layer, one line per front trial coloured by MACs;
    one panel per study."""
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
            legend_below(fig, [Line2D([], [], marker=marker[m], color="#555555", label=m)
                                for m in methods])
    return fig
