"""What every figure shares: units and axis labels, log and percent axis formatters, the
plot style and method palette, PNG output, and the selection helpers of the data functions.
"""

from __future__ import annotations

import io
import math
from contextlib import contextmanager

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import ticker
from matplotlib.figure import Figure

from analysis.results import Study
from prune_core import columns

__all__ = ["DASHES", "MARKERS", "MAX_CURVES", "LogTicks", "Percent", "finished_trials",
           "format_axis", "human_bytes", "human_count", "label", "legend_below", "palette",
           "spread", "style", "to_png"]


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
    """Axis label of a column (``prune_core.columns``), with its unit."""
    col = columns.column(column)
    text = col.label if col else column
    return f"{text} (%)" if _percent(column) else text


def _percent(column: str) -> bool:
    """Shares, and differences of shares, are drawn in percent."""
    return columns.unit(column) in ("share", "drop")


class Percent(ticker.Formatter):
    """Shares as percent with as many decimals as the tick spacing needs (97.5%, not 97.500%)."""

    def __call__(self, x, pos=None):
        locs = np.sort(np.asarray(self.locs, dtype=float))
        step = np.diff(locs).min() if len(locs) > 1 else 1.0
        decimals = max(0, math.ceil(-math.log10(step * 100) - 1e-9)) if step > 0 else 0
        return f"{100 * x:.{decimals}f}%"


class LogTicks(ticker.LogLocator):
    """Log ticks that stay readable: 1-2-5 per decade over up to three decades, decades
    only beyond that; bytes at powers of 4 (1 KiB, 4 KiB, 16 KiB ...), which print
    round in binary units."""

    def __init__(self, binary: bool = False):
        super().__init__(base=4 if binary else 10, numticks=9)
        self.binary = binary

    def tick_values(self, vmin, vmax):
        """The ticks between ``vmin`` and ``vmax``, 1-2-5 or decades as the span needs."""
        if not self.binary and vmin > 0 and vmax > 0:
            wide = abs(math.log10(vmax / vmin)) > 3
            self.set_params(subs=(1.0,) if wide else (1.0, 2.0, 5.0))
        return super().tick_values(vmin, vmax)


def format_axis(ax, which: str, column: str, log: bool = True) -> None:
    """Log scale with readable ticks for counts and bytes; percent for shares."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    kind = columns.unit(column)
    if kind in ("count", "bytes"):
        fmt = human_bytes if kind == "bytes" else (lambda v: human_count(v, 2))
        if log:
            (ax.set_xscale if which == "x" else ax.set_yscale)("log")
            axis.set_major_locator(LogTicks(binary=kind == "bytes"))
            axis.set_minor_locator(ticker.NullLocator())  # the majors suffice; faster
        axis.set_major_formatter(ticker.FuncFormatter(lambda v, _p: fmt(v)))
    elif _percent(column):
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
    """The figure as PNG bytes at 150 dpi on white."""
    buf = io.BytesIO()
    # Constrained layout already fits every label; a tight bounding box would render twice.
    fig.savefig(buf, format="png", dpi=150, facecolor="white")
    return buf.getvalue()


def finished_trials(studies: list[Study]) -> pd.DataFrame:
    """The finished (status ok) trials of every study, in one frame."""
    frames = [s.trials[s.trials["status"] == "ok"] for s in studies]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def spread(values: pd.Series, k: int) -> list:
    """Index labels of at most ``k`` rows spread evenly over the sorted values."""
    order = values.sort_values(kind="stable").index.tolist()
    if len(order) <= k:
        return order
    return [order[i] for i in sorted({int(round(x)) for x in np.linspace(0, len(order) - 1, k)})]


def legend_below(fig: Figure, handles: list, ncol: int | None = None) -> None:
    """One legend for the whole figure, centred below its panels."""
    ncol = ncol or min(len(handles), 5)
    fig.legend(handles=handles, loc="outside lower center", ncol=ncol, frameon=False,
               handletextpad=0.4, columnspacing=1.2)
