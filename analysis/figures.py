"""The report's figures. Each is built in two steps: a ``*_data`` function gathers what the
figure shows (a NamedTuple, or None when the studies hold nothing to show, in which case the
figure is skipped), and a ``draw_*`` function draws it with seaborn/matplotlib.

Figures are drawn on ``matplotlib.figure.Figure`` objects, never through pyplot, so no GUI
backend is touched and nothing leaks between figures.

The figures live in underscore modules, by what they show: ``_format`` (units, axis
formatters, style, palette, PNG output), ``_study_figures`` (fronts, hypervolume,
parameters, channels), ``_latency_figure`` (MACs against measured latency) and
``_method_figures`` (one method's own record). This module
re-exports their public names and lists the figures the report draws.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import pandas as pd
from matplotlib.figure import Figure

from analysis._format import (
    DASHES,
    MARKERS,
    MAX_CURVES,
    Percent,
    finished_trials,
    human_bytes,
    human_count,
    label,
    palette,
    style,
    to_png,
)
from analysis._latency_figure import LatencyData, draw_latency, latency_columns, latency_data
from analysis._method_figures import (
    AlphaCurves,
    GammaData,
    ReprData,
    SparsityCurves,
    alpha_data,
    draw_alpha,
    draw_gammas,
    draw_repr,
    draw_sparsity,
    gamma_data,
    repr_data,
    sparsity_data,
)
from analysis._sensitivity_figure import sensitivity_docs, sensitivity_figure
from analysis._study_figures import (
    ChannelData,
    HypervolumeData,
    ParamData,
    ParetoData,
    channel_data,
    draw_channels,
    draw_hypervolume,
    draw_params,
    draw_pareto,
    front_panels,
    hypervolume_data,
    param_data,
    pareto_data,
)
from analysis.results import Study

__all__ = [
    "DASHES", "MARKERS", "MAX_CURVES",
    "AlphaCurves", "ChannelData", "Drawn", "FigureJob", "GammaData", "HypervolumeData",
    "LatencyData", "ParamData", "ParetoData", "Percent", "ReprData", "SparsityCurves",
    "alpha_data", "channel_data", "draw_alpha", "draw_channels", "draw_gammas",
    "draw_hypervolume", "draw_latency", "draw_params", "draw_pareto", "draw_repr",
    "draw_sparsity", "figure_jobs", "figures", "front_panels", "gamma_data", "human_bytes",
    "human_count", "hypervolume_data", "label", "latency_columns", "latency_data", "palette",
    "param_data", "pareto_data", "png_of", "repr_data", "sparsity_data", "style", "to_png",
]


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
    colours = palette(finished_trials(studies).get("method", pd.Series(dtype=object)))
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
        ("latency", "MACs against measured latency",
         "Median CPU latency of each finished trial against its MACs per sample, on log-log "
         "axes, one panel per batch size timed; each bar is as long as the interquartile "
         "range of the timed runs, and ringed points are on the study's front. The dashed "
         "line through the base model (star) is time proportional to MACs: a trial above it "
         "kept more of the base's time than of its MACs, and points that stay level as MACs "
         "fall are operations removed that the hardware does not save.",
         latency_data(studies), partial(draw_latency, colours=colours)),
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
        *[(f"sensitivity-{doc['method']}" + (f"-{i}" if len(studies) > 1 else ""),
           f"Sensitivity of {doc['model']} to {doc['method']}"
           + (f" ({s.label})" if len(studies) > 1 else ""),
           "Validation accuracy lost (points) when a share of one channel group's channels "
           "is removed from the base model, ranked as the method ranks them, with no "
           "fine-tuning; groups down, shares across. A row that darkens early is a group to "
           "prune least (prune-study sensitivity, or warm_start: sensitivity).",
           doc, sensitivity_figure)
          for i, s in enumerate(studies) for doc in sensitivity_docs(s.info.path)],
        ("repr", "RePr against plain training",
         "Left: test accuracy of RePr against plain training of the same epoch budget, one "
         "point per trial. Right: validation accuracy per epoch of the best RePr trial and "
         "its plain control; grey bands are S2 epochs.", repr_data(studies), draw_repr),
    ]


@dataclass(frozen=True)
class FigureJob:
    """One figure to draw: file stem, title, caption, its data and the function that draws
    it. Every field pickles, so another process can draw it (see :func:`png_of`)."""

    key: str
    title: str
    caption: str
    data: object
    draw: Callable


def figure_jobs(studies: list[Study]) -> list[FigureJob]:
    """The figures the studies have data for, not drawn yet; figures without data are
    skipped."""
    return [FigureJob(key, title, caption, data, draw)
            for key, title, caption, data, draw in _entries(studies) if data is not None]


def png_of(job: FigureJob) -> bytes:
    """The job's figure drawn and encoded as PNG (:func:`to_png`): the same bytes in any
    process that has matplotlib's default settings."""
    return to_png(job.draw(job.data))


def figures(studies: list[Study]) -> list[Drawn]:
    """Every figure the studies have data for, drawn; figures without data are skipped."""
    return [Drawn(j.key, j.title, j.caption, j.draw(j.data)) for j in figure_jobs(studies)]
