"""Tune schedulers that stop weak trials early: ``asha`` on one objective, ``mo_asha`` on
a front.

``mo_asha`` is asynchronous successive halving on non-dominated rank, after
Schmucker et al., "Multi-objective Asynchronous Successive Halving" (2021). Rungs
sit at ``grace_period * reduction_factor**k`` epochs of the trial (its ``step``).
When a trial first reaches a rung, its point there (validation accuracy and the
cost of the model being trained, one stand-in per objective, see ``prune_core.columns.stand_ins``)
joins the points of every trial that reached that rung before it, running or
finished. The trial stops when it is dominated by at least ``min_dominators`` of
them and is not among the best ``1 / reduction_factor`` of the rung by
non-dominated level (ties with the fewest dominators first). A trial on the rung's
front is never stopped.

Tune keeps no scheduler state across a restore, so a resumed study reads the rungs
back from the trials' epoch rows in ``history.jsonl``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from prune_core import columns

__all__ = ["MOASHA", "keeps", "make_scheduler", "nondominated_levels",
           "stand_ins"]

TIME_ATTR = "step"  # epochs reported by the trial's methods, counted over its stages


def stand_ins(objectives: dict[str, str]) -> dict[str, str]:
    """Epoch-row columns and their modes standing in for ``objectives`` at the rungs."""
    out: dict[str, str] = {}
    for col, mode in objectives.items():
        column, sign = columns.stand_ins()[col]
        out[column] = mode if sign > 0 else ("min" if mode == "max" else "max")
    return out


def _dominates(a: tuple, b: tuple) -> bool:
    """``a`` dominates ``b``, both minimised."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and a != b


def nondominated_levels(points: dict[str, tuple]) -> dict[str, int]:
    """Level of each point in non-dominated sorting (0: the front), minimising."""
    levels: dict[str, int] = {}
    left = dict(points)
    level = 0
    while left:
        front = [k for k, p in left.items()
                 if not any(_dominates(q, p) for j, q in left.items() if j != k)]
        for k in front:
            levels[k] = level
            del left[k]
        level += 1
    return levels


def keeps(points: dict[str, tuple], trial_id: str, reduction_factor: float,
          min_dominators: int = 1) -> bool:
    """Whether ``trial_id`` continues past a rung holding ``points`` (its own included)."""
    dominators = {k: sum(_dominates(q, p) for j, q in points.items() if j != k)
                  for k, p in points.items()}
    if dominators[trial_id] < min_dominators:
        return True
    levels = nondominated_levels(points)
    rank = (levels[trial_id], dominators[trial_id])
    ahead = sum((levels[k], dominators[k]) < rank for k in points if k != trial_id)
    return ahead < math.ceil(len(points) / reduction_factor)


class MOASHA(FIFOScheduler):
    """Asynchronous successive halving on non-dominated rank (see the module's text).

    ``columns`` maps epoch-row columns to ``max``/``min``; ``history`` is the study's
    ``history.jsonl``, read once to rebuild the rungs of a restored study.
    """

    def __init__(self, *, columns: dict[str, str], grace_period: int = 1,
                 reduction_factor: float = 3, max_t: int = 1000, min_dominators: int = 1,
                 history: str | Path | None = None):
        super().__init__()
        if grace_period < 1 or reduction_factor <= 1 or min_dominators < 1:
            raise ValueError(f"mo_asha needs grace_period >= 1 (got {grace_period}), "
                             f"reduction_factor > 1 (got {reduction_factor}) and "
                             f"min_dominators >= 1 (got {min_dominators})")
        self.columns = dict(columns)
        self.reduction_factor = reduction_factor
        self.min_dominators = min_dominators
        self.rungs: list[int] = []
        t = grace_period
        while t <= max_t:
            self.rungs.append(int(t))
            t *= reduction_factor
        self.recorded: dict[int, dict[str, tuple]] = {r: {} for r in self.rungs}
        self.history = str(history) if history is not None else None
        self.read_history = False
        self.stopped = 0

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True  # judged on its own columns, not the searcher's metric

    def point(self, result: dict) -> tuple | None:
        """The result's point, minimised, or None when a column is missing or not finite."""
        out = []
        for column, mode in self.columns.items():
            v = result.get(column)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                return None
            out.append(-float(v) if mode == "max" else float(v))
        return tuple(out)

    def judge(self, trial_id: str, step, result: dict) -> str:
        """Record ``result`` at the highest rung ``step`` has newly reached; STOP or CONTINUE."""
        if not isinstance(step, int | float) or result.get("final"):
            return TrialScheduler.CONTINUE
        point = self.point(result)
        if point is None:
            return TrialScheduler.CONTINUE
        for rung in reversed(self.rungs):
            if step >= rung and trial_id not in self.recorded[rung]:
                self.recorded[rung][trial_id] = point
                if not keeps(self.recorded[rung], trial_id, self.reduction_factor,
                             self.min_dominators):
                    return TrialScheduler.STOP
                break
            if step >= rung:
                break  # judged at this rung already
        return TrialScheduler.CONTINUE

    def _read_history(self) -> None:
        self.read_history = True
        if not self.history or not Path(self.history).is_file():
            return
        with open(self.history) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # a line cut by a killed driver
                if isinstance(row, dict) and isinstance(row.get("trial_id"), str):
                    self.judge(row["trial_id"], row.get(TIME_ATTR), row)

    def on_trial_add(self, tune_controller, trial) -> None:
        # Before the first result of a new or restored run: the rungs of earlier epochs.
        if not self.read_history:
            self._read_history()

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        action = self.judge(trial.trial_id, result.get(TIME_ATTR), result)
        if action == TrialScheduler.STOP:
            self.stopped += 1
        return action

    def debug_string(self) -> str:
        sizes = ", ".join(f"{r}: {len(self.recorded[r])}" for r in self.rungs
                          if self.recorded[r])
        return f"mo_asha: {self.stopped} stopped; trials per rung {{{sizes}}}"


def make_scheduler(scheduler: dict | None, objectives: dict[str, str],
                   history: str | Path | None = None) -> TrialScheduler | None:
    """The Tune scheduler of a checked spec's ``scheduler`` section, or None."""
    if not scheduler:
        return None
    kw = {k: v for k, v in scheduler.items() if k != "name"}
    if scheduler["name"] == "mo_asha":
        return MOASHA(columns=stand_ins(objectives), history=history, **kw)
    # The per-epoch validation accuracy stands in for the final objective (spec checks it).
    return ASHAScheduler(time_attr="training_iteration", metric="val_accuracy", mode="max",
                         **kw)
