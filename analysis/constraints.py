"""A study's ``constraints``, bounds on result columns, judged by one rule everywhere.

The sampler is told each bound's violation (``Bounds.violations``, Optuna's convention:
feasible where <= 0); the study directory drops the model of a trial that breaks a bound
(``Bounds.broken``); the results, the front, the report, ``status`` and ``export`` count a
finished trial as feasible by the same rule over a whole table (``Bounds.judge``). A
value that is missing or not finite breaks its column's bounds (violation 1.0, named
``<column> missing``). numpy only, no pandas: the driver's recorder uses it per trial.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["MISSING", "SIDES", "Bounds"]

# The violation told for a bound whose column a trial lacks (or holds NaN or inf).
MISSING = 1.0
SIDES = ("min", "max")


def _number(value: object) -> float:
    """A row's value as a float; NaN where it is not a finite number."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return math.nan


class Bounds:
    """The spec's ``constraints`` (``{column: {"min": x, "max": y}}``), in their order."""

    def __init__(self, bounds: dict[str, dict[str, float]] | None):
        self.bounds = {col: {s: float(b[s]) for s in SIDES if s in b}
                       for col, b in (bounds or {}).items()}
        # One entry per bound: (column, side, limit).
        self.items = [(col, s, b[s]) for col, b in self.bounds.items() for s in SIDES if s in b]

    def __bool__(self) -> bool:
        return bool(self.items)

    def names(self) -> list[str]:
        """One name per bound, ``column.min`` or ``column.max``, as Optuna stores them."""
        return [f"{col}.{side}" for col, side, _ in self.items]

    def texts(self) -> list[str]:
        """One text per bound: ``column <= max`` or ``column >= min``."""
        return [f"{col} {'<=' if side == 'max' else '>='} {limit:g}"
                for col, side, limit in self.items]

    def judge(self, columns: dict[str, np.ndarray], n: int
              ) -> tuple[np.ndarray, list[list[str]]]:
        """For ``n`` rows given column by column (missing columns: every row missing), each
        bound's violation, shape (n, bounds), and per row the texts of what it breaks:
        ``column missing`` once for a missing value, else ``column <= max`` or
        ``column >= min`` for each bound it is past."""
        out = np.empty((n, len(self.items)))
        broken: list[list[str]] = [[] for _ in range(n)]
        texts = iter(self.texts())
        j = 0
        for col, bound in self.bounds.items():
            v = np.asarray(columns.get(col, np.full(n, np.nan)), dtype=float)
            missing = ~np.isfinite(v)
            for i in np.flatnonzero(missing):
                broken[i].append(f"{col} missing")
            for side in SIDES:
                if side not in bound:
                    continue
                limit = bound[side]
                past = v - limit if side == "max" else limit - v
                out[:, j] = np.where(missing, MISSING, past)
                text = next(texts)
                for i in np.flatnonzero(~missing & (past > 0)):
                    broken[i].append(text)
                j += 1
        return out, broken

    def _one(self, row: dict | None) -> tuple[np.ndarray, list[str]]:
        values = {col: np.array([_number((row or {}).get(col))]) for col in self.bounds}
        violations, broken = self.judge(values, 1)
        return violations[0], broken[0]

    def violations(self, row: dict | None) -> list[float]:
        """One violation per bound for a result row (``None``: a trial stopped before its
        row, which breaks every bound)."""
        return [float(v) for v in self._one(row)[0]]

    def broken(self, row: dict | None) -> list[str]:
        """What a result row breaks, as texts; empty where it is feasible."""
        return self._one(row)[1]

    def tell(self, trial, row: dict | None) -> None:
        """Set a row's violations on an Optuna trial that is still running
        (``trial.set_constraint``), where TPE, NSGA-II and GP read them."""
        for name, value in zip(self.names(), self.violations(row), strict=True):
            trial.set_constraint(name, value)
