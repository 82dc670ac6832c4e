"""MACs against measured latency: whether the operations a compression removes are time
saved. Pruning that cuts MACs but not time (unstructured zeros, layers the hardware runs
no faster when thinner) shows as points that stay level while MACs fall."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import pandas as pd
from matplotlib import ticker
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis._format import MARKERS, LogTicks, format_axis, label, legend_below, palette, style
from analysis.results import Study

__all__ = ["LatencyData", "draw_latency", "latency_columns", "latency_data"]

_PER_BATCH = re.compile(r"latency_ms_b(\d+)")


def latency_columns(columns: Iterable) -> dict[int, tuple[str, str]]:
    """Batch size -> (median, interquartile range) latency columns among ``columns``.

    ``prune_core.measure.measure_latency`` writes ``latency_ms_b<N>`` and
    ``latency_iqr_ms_b<N>`` per batch size; a row with ``latency_ms`` alone was timed at
    batch 1.
    """
    columns = [str(c) for c in columns]
    out = {int(m.group(1)): (c, f"latency_iqr_ms_b{m.group(1)}")
           for c in columns if (m := _PER_BATCH.fullmatch(c))}
    if not out and "latency_ms" in columns:
        out[1] = ("latency_ms", "latency_iqr_ms")
    return dict(sorted(out.items()))


class LatencyData(NamedTuple):
    """Median latency against MACs of every timed finished trial, per batch size."""

    # study, method, trial_id, number, batch, macs, latency_ms (median), iqr_ms, on_front
    points: pd.DataFrame
    base: pd.DataFrame  # study, batch, macs, latency_ms: the base model, where it was timed


def _positive(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v) and v > 0


def latency_data(studies: list[Study]) -> LatencyData | None:
    """Each finished trial's MACs and median latency (with its IQR) per batch size timed;
    None when no finished trial has a latency."""
    pts, bases = [], []
    for s in studies:
        ok = s.trials[s.trials["status"] == "ok"]
        if "macs" not in ok:
            continue
        for batch, (median, iqr) in latency_columns(ok.columns).items():
            d = pd.DataFrame({
                "study": s.label, "method": ok["method"], "trial_id": ok["trial_id"],
                "number": ok["number"], "batch": batch,
                "macs": pd.to_numeric(ok["macs"], errors="coerce"),
                "latency_ms": pd.to_numeric(ok[median], errors="coerce"),
                "iqr_ms": pd.to_numeric(ok[iqr], errors="coerce") if iqr in ok else np.nan,
                "on_front": ok["on_front"].astype(bool)})
            # Log axes: only positive, finite values can be drawn.
            keep = np.isfinite(d["macs"]) & np.isfinite(d["latency_ms"]) & (d["macs"] > 0) & \
                (d["latency_ms"] > 0)
            if keep.any():
                pts.append(d[keep])
        b = s.info.base
        for batch, (median, _iqr) in latency_columns(b).items():
            if _positive(b.get("macs")) and _positive(b.get(median)):
                bases.append({"study": s.label, "batch": batch, "macs": float(b["macs"]),
                              "latency_ms": float(b[median])})
    if not pts:
        return None
    points = pd.concat(pts, ignore_index=True)
    base = pd.DataFrame(bases, columns=["study", "batch", "macs", "latency_ms"])
    base = base[base["batch"].isin(set(points["batch"]))].reset_index(drop=True)
    return LatencyData(points, base)


def draw_latency(data: LatencyData, colours: dict | None = None) -> Figure:
    """Median latency against MACs on log-log axes, one panel per batch size: IQR as error
    bars, front trials ringed, and time proportional to MACs through the base model."""
    batches = sorted(set(data.points["batch"]))
    with style():
        fig = Figure(figsize=(5.0 * len(batches), 4.6), layout="constrained")
        axes = fig.subplots(1, len(batches), sharex=True, squeeze=False)[0]
        shown = set(data.points["method"])
        methods = {m: c for m, c in (colours or palette(shown)).items() if m in shown}
        study_names = list(dict.fromkeys(data.points["study"]))
        markers = {s: MARKERS[i % len(MARKERS)] for i, s in enumerate(study_names)}
        for ax, batch in zip(axes, batches, strict=True):
            p = data.points[data.points["batch"] == batch]
            for (study, method), d in p.groupby(["study", "method"], sort=False):
                # The bar is as long as the IQR, centred on the median; kept above zero.
                half = d["iqr_ms"].fillna(0.0) / 2
                ax.errorbar(d["macs"], d["latency_ms"],
                            yerr=[np.minimum(half, 0.9 * d["latency_ms"]), half], fmt="none",
                            ecolor=methods[method], alpha=0.5, lw=0.9, zorder=2)
                off, on = d[~d["on_front"]], d[d["on_front"]]
                ax.scatter(off["macs"], off["latency_ms"], s=22, color=methods[method],
                           alpha=0.6, marker=markers[study], linewidths=0, zorder=3)
                ax.scatter(on["macs"], on["latency_ms"], s=42, color=methods[method],
                           marker=markers[study], edgecolors="black", linewidths=0.8, zorder=4)
            for _, b in data.base[data.base["batch"] == batch].iterrows():
                xs = np.geomspace(min(p["macs"].min(), b["macs"]),
                                  max(p["macs"].max(), b["macs"]), 2)
                ax.plot(xs, b["latency_ms"] * xs / b["macs"], color="#777777", ls="--", lw=1.0,
                        zorder=1)
                ax.scatter([b["macs"]], [b["latency_ms"]], marker="*", s=300, color="#f2c200",
                           edgecolors="black", linewidths=0.9, zorder=1.5)
            format_axis(ax, "x", "macs")
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogTicks())
            ax.yaxis.set_minor_locator(ticker.NullLocator())
            ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _p: f"{v:g}"))
            ax.set_xlabel(label("macs") + " (log scale)")
            ax.set_ylabel("median latency (ms, log scale)")
            ax.set_title(f"batch {batch}")
        handles = [Line2D([], [], marker="o", ls="", color=c, label=m, markersize=7)
                   for m, c in methods.items()]
        if len(study_names) > 1:
            handles += [Line2D([], [], marker=markers[s], ls="", color="#333333", label=s,
                               markersize=7) for s in study_names]
        handles.append(Line2D([], [], marker="o", ls="", color="white", markeredgecolor="black",
                              label="on the study's front", markersize=7))
        if len(data.base):
            handles += [Line2D([], [], marker="*", ls="", color="#f2c200",
                               markeredgecolor="black", label="base model", markersize=13),
                        Line2D([], [], color="#777777", ls="--", lw=1.0,
                               label="time ∝ MACs, through the base")]
        legend_below(fig, handles, ncol=min(len(handles), 4))
    return fig
