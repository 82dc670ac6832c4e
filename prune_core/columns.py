"""The result row's columns: one table of what each means and how it is read and shown.

Each :class:`Column` holds a column's label and short header, its unit, which way is
better, the range a stored value must lie in, its per-epoch stand-in for early stopping
and the value the base model implies. The spec check (which objectives and constraints
exist, which ASHA and mo_asha can judge), the early-stopping schedulers, the checks of a
study directory on read, the front's reference point, the report's cells and the
figures' axes all read it. Standard library only, like ``errors.py``: every package may
import it.

A new objective is one :func:`register_column` call, and the code that puts its value in
the result row (``prune_core/measure.py``, ``prune_core/trial.py`` or a method's
``ctx.result``); see docs/architecture.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["UNITS", "Column", "asha_objectives", "column", "implied_base", "objectives",
           "register_column", "stand_ins", "unit"]

# share: a fraction in [0, 1], shown in percent; drop: a difference of two shares
# (percentage points); count: operations or elements (log axes, "1.2 M"); bytes; ms and
# s: times; x: a ratio to the base model.
UNITS = ("share", "drop", "count", "bytes", "ms", "s", "x")
_RANGES = {"share": (0.0, 1.0), "drop": (-1.0, 1.0)}  # the others: non-negative


@dataclass(frozen=True)
class Column:
    """One result column. ``stand_in``: the column of the per-epoch rows that early
    stopping judges a trial by before its final row (``None``: it cannot judge this one);
    ``base``: the base model's value where its row does not hold one (a ratio to itself);
    ``objective``: whether a spec may optimise or constrain it."""

    name: str
    label: str
    unit: str
    better: str  # "max" or "min"
    header: str = ""
    stand_in: str | None = None
    base: float | None = None
    objective: bool = True

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(f"column {self.name!r}: unit {self.unit!r}; one of {UNITS}")
        if self.better not in ("max", "min"):
            raise ValueError(f"column {self.name!r}: better {self.better!r}; max or min")

    @property
    def low(self) -> float:
        return _RANGES.get(self.unit, (0.0, math.inf))[0]

    @property
    def high(self) -> float:
        return _RANGES.get(self.unit, (0.0, math.inf))[1]

    def text(self) -> str:
        """The short header of a table cell (the name where none is given)."""
        return self.header or self.name


COLUMNS: dict[str, Column] = {}


def register_column(col: Column) -> Column:
    """Add a column (or replace one of the same name)."""
    COLUMNS[col.name] = col
    return col


for _c in (
    Column("accuracy", "test accuracy", "share", "max", "accuracy", stand_in="val_accuracy"),
    Column("balanced_accuracy", "balanced test accuracy", "share", "max",
           stand_in="val_balanced_accuracy"),
    Column("val_accuracy", "validation accuracy", "share", "max", stand_in="val_accuracy"),
    Column("accuracy_drop", "accuracy drop vs. base", "drop", "min", "vs. base",
           stand_in="val_accuracy"),
    Column("params", "parameters", "count", "min", "params", stand_in="params"),
    Column("nonzero_params", "non-zero parameters", "count", "min",
           stand_in="nonzero_params"),
    Column("macs", "MACs per sample", "count", "min", "MACs", stand_in="macs"),
    Column("nonzero_macs", "non-zero MACs per sample", "count", "min",
           stand_in="nonzero_macs"),
    Column("ops", "operations per sample", "count", "min", "ops", stand_in="macs"),
    Column("size_bytes", "model size", "bytes", "min", "size", stand_in="params"),
    # Measured on the final model only: its epochs are judged by MACs.
    Column("latency_ms", "latency (ms, first batch size)", "ms", "min", stand_in="macs"),
    Column("compression", "compression (x)", "x", "max", "compression", stand_in="params",
           base=1.0),
    Column("speedup", "MAC reduction (x)", "x", "max", "MAC reduction", stand_in="macs",
           base=1.0),
    Column("train_seconds", "training time (s)", "s", "min"),
    # Read and shown, not optimised.
    Column("val_balanced_accuracy", "balanced validation accuracy", "share", "max",
           objective=False),
    Column("train_accuracy", "training accuracy", "share", "max", objective=False),
    Column("base_accuracy", "base model's test accuracy", "share", "max", objective=False),
    Column("sparsity", "sparsity", "share", "max", objective=False),
):
    register_column(_c)


def column(name: str) -> Column | None:
    return COLUMNS.get(name)


def unit(name: str) -> str | None:
    """The unit of a column; ``None`` for a column the table does not hold."""
    c = COLUMNS.get(name)
    return c.unit if c else None


def objectives() -> tuple[str, ...]:
    """The columns a spec may name as objectives or constraints."""
    return tuple(n for n, c in COLUMNS.items() if c.objective)


def stand_ins() -> dict[str, tuple[str, int]]:
    """Objective -> (its stand-in column in the epoch rows, +1 where larger is better in
    both or smaller in both, -1 where they run opposite ways)."""
    out = {}
    for n, c in COLUMNS.items():
        if c.objective and c.stand_in:
            other = COLUMNS.get(c.stand_in)
            same = other is None or other.better == c.better
            out[n] = (c.stand_in, 1 if same else -1)
    return out


def asha_objectives() -> tuple[str, ...]:
    """Objectives ASHA can stop on: those judged per epoch by an accuracy (a share)."""
    return tuple(n for n, (s, _) in stand_ins().items() if unit(s) == "share")


def implied_base() -> dict[str, float]:
    """The base model's value of each column that is a ratio to it."""
    return {n: c.base for n, c in COLUMNS.items() if c.base is not None}
