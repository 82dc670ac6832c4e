"""Non-dominated sets, hypervolume and the knee point of a study's trials.

Conventions, used everywhere in ``analysis``:

- Dominance is Pareto dominance: a point dominates another when it is at least as good in
  every objective and strictly better in one. A point is on the front when nothing
  dominates it. Exact duplicates do not dominate each other, so every copy of a
  non-dominated point is on the front (two trials with the same result are equally good).
  A point with a missing or non-finite objective value is never on the front.
- Hypervolume is measured in *goodness* coordinates relative to a reference point:
  ``(value - worst) / scale`` for objectives to maximise and ``(worst - value) / scale``
  for objectives to minimise. With the default reference (:func:`reference`) the scale
  is the base model's own value, so studies of models of any size compare: in a study
  of ``accuracy: max, macs: min`` the base model alone scores 1.0 x 0.1 = 0.1, and a
  model with the base's accuracy at a tenth of its MACs scores 1.0 x 1.0 = 1.0.
- The knee is the front point nearest (Euclidean) to the ideal point after scaling each
  objective to [0, 1] over the front itself; ties go to the earliest point.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import moocore
import numpy as np
from numpy.typing import ArrayLike

from prune_core import columns
from prune_core.errors import InputError

__all__ = ["hypervolume", "hypervolume_by_trial", "knee", "maximise_flags", "nondominated",
           "ObjectiveError", "Reference", "reference"]

DIRECTIONS = ("max", "min")
# The reference point's distance beyond the base model for objectives to minimise: a model
# 10 % costlier than the base still counts, anything costlier does not.
MARGIN = 0.1


class ObjectiveError(InputError):
    """An objective direction or reference point that cannot be used."""


def maximise_flags(objectives: Mapping[str, str]) -> tuple[bool, ...]:
    """``{"accuracy": "max", "macs": "min"}`` -> ``(True, False)``; rejects other words."""
    flags = []
    for name, direction in objectives.items():
        if direction not in DIRECTIONS:
            raise ObjectiveError(f"objective {name!r} has direction {direction!r}; "
                                 f"allowed: {', '.join(DIRECTIONS)}")
        flags.append(direction == "max")
    if not flags:
        raise ObjectiveError("no objectives: give at least one, e.g. {'accuracy': 'max'}")
    return tuple(flags)


def _as_matrix(values: ArrayLike, maximise: Sequence[bool] | bool) -> tuple[np.ndarray, np.ndarray]:
    pts = np.asarray(values, dtype=float)
    if pts.ndim == 1:
        pts = pts.reshape(-1, 1)
    if pts.ndim != 2:
        raise ObjectiveError(f"values must be a 2-D array (points x objectives), got shape "
                             f"{pts.shape}")
    flags = np.broadcast_to(np.asarray(maximise, dtype=bool), (pts.shape[1],))
    return pts, flags


def nondominated(values: ArrayLike, maximise: Sequence[bool] | bool = False) -> np.ndarray:
    """Boolean mask of the rows of ``values`` on the Pareto front.

    ``maximise`` is one flag per column (or one for all). Rows with a NaN or infinite
    value are never on the front; duplicates of a front point all are.
    """
    pts, flags = _as_matrix(values, maximise)
    mask = np.zeros(len(pts), dtype=bool)
    finite = np.isfinite(pts).all(axis=1)
    if finite.any():
        # moocore minimises: negate the columns to maximise.
        signed = np.where(flags, -pts[finite], pts[finite])
        mask[finite] = moocore.is_nondominated(signed, keep_weakly=True)
    return mask


@dataclass(frozen=True)
class Reference:
    """A reference point (``worst``, in objective units) and per-objective ``scale``."""

    objectives: tuple[str, ...]
    maximise: tuple[bool, ...]
    worst: tuple[float, ...]
    scale: tuple[float, ...]

    def goodness(self, values: ArrayLike) -> np.ndarray:
        """How far each point is better than the reference, per objective, in scale units."""
        pts, _ = _as_matrix(values, self.maximise)
        worst, scale = np.asarray(self.worst), np.asarray(self.scale)
        return np.where(self.maximise, pts - worst, worst - pts) / scale

    def to_dict(self) -> dict:
        return {name: {"direction": "max" if mx else "min", "worst": w, "scale": s}
                for name, mx, w, s in zip(self.objectives, self.maximise, self.worst,
                                          self.scale, strict=True)}


def reference(
    objectives: Mapping[str, str],
    base: Mapping | None = None,
    values: ArrayLike | None = None,
    *,
    worst: Mapping[str, float] | None = None,
) -> Reference:
    """The reference point and scales for a study's hypervolume.

    Per objective, in this order of preference:

    - ``worst[name]`` if given (objective units); the scale is then the base value if
      positive, else the distance from the reference to the best observed value;
    - the base model's value ``b > 0``: maximise -> worst 0, scale ``b`` (accuracy
      becomes a fraction of the base's); minimise -> worst ``1.1 b``, scale ``b`` (cost
      becomes the share of the base's cost saved, plus the 10 % margin);
    - otherwise the observed range ``[lo, hi]`` of ``values`` (column per objective):
      worst 10 % of the range beyond the worst observed value, scale the range.
    """
    flags = maximise_flags(objectives)
    names = tuple(objectives)
    # Ratios to the base model (compression, speedup) are 1.0 for it where base.json lacks them.
    base = {**columns.implied_base(), **(base or {})}
    worst = dict(worst or {})
    unknown = sorted(set(worst) - set(names))
    if unknown:
        raise ObjectiveError(f"reference point names {', '.join(unknown)}, which are not "
                             f"objectives; objectives: {', '.join(names)}")
    observed = None if values is None else _as_matrix(values, flags)[0]
    ws, ss = [], []
    for j, (name, mx) in enumerate(zip(names, flags, strict=True)):
        b = _positive(base.get(name))
        col = None
        if observed is not None and len(observed):
            col = observed[:, j][np.isfinite(observed[:, j])]
        if name in worst:
            w = float(worst[name])
            if not math.isfinite(w):
                raise ObjectiveError(f"reference point for {name!r} is {w}; give a finite value")
            if b is not None:
                s = b
            elif col is not None and len(col):
                s = abs((col.max() - w) if mx else (w - col.min())) or 1.0
            else:
                s = 1.0
        elif b is not None:
            w, s = (0.0, b) if mx else (b + MARGIN * b, b)
        elif col is not None and len(col):
            lo, hi = float(col.min()), float(col.max())
            s = (hi - lo) or max(abs(hi), 1.0)
            w = lo - MARGIN * s if mx else hi + MARGIN * s
        else:
            w, s = 0.0, 1.0
        ws.append(float(w))
        ss.append(float(s))
    return Reference(names, flags, tuple(ws), tuple(ss))


def _positive(v) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def hypervolume(values: ArrayLike, ref: Reference) -> float:
    """Hypervolume of the points in goodness space (see the module docstring).

    Points no better than the reference in some objective add nothing; rows with a
    non-finite value are ignored.
    """
    g = ref.goodness(values)
    g = g[np.isfinite(g).all(axis=1) & (g > 0).all(axis=1)]
    if not len(g):
        return 0.0
    # moocore minimises with the reference at the origin of the negated goodness.
    return float(moocore.hypervolume(-g, ref=np.zeros(g.shape[1])))


def hypervolume_by_trial(values: ArrayLike, ref: Reference) -> np.ndarray:
    """Hypervolume of the first ``i + 1`` rows, for every ``i`` (rows in trial order).

    A row with a non-finite value (a failed or running trial) repeats the previous value.
    """
    g = ref.goodness(values)
    out = np.zeros(len(g))
    front = np.zeros((0, g.shape[1]))
    hv = 0.0
    useful = np.isfinite(g).all(axis=1) & (g > 0).all(axis=1)
    for i, row in enumerate(g):
        # A row strictly dominated by the front leaves the front, and so the hypervolume,
        # exactly as they were: only the others are added and measured.
        if useful[i] and not (len(front) and ((front >= row).all(axis=1)
                                              & (front > row).any(axis=1)).any()):
            # Only the current front matters for the union of boxes.
            front = np.vstack([front, row])
            front = front[nondominated(front, True)]
            hv = float(moocore.hypervolume(-front, ref=np.zeros(g.shape[1])))
        out[i] = hv
    return out


def knee(values: ArrayLike, maximise: Sequence[bool] | bool) -> int | None:
    """Index of the knee point among the non-dominated rows, or None if there are none.

    Each objective is scaled to [0, 1] between the front's worst and best values; the
    knee is the front point nearest to the ideal point (best in every objective). An
    objective on which the whole front agrees is ignored. Ties go to the lowest index.
    """
    pts, flags = _as_matrix(values, maximise)
    on = np.flatnonzero(nondominated(pts, flags))
    if not len(on):
        return None
    signed = np.where(flags, -pts[on], pts[on])  # lower is better
    lo, hi = signed.min(axis=0), signed.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    dist = np.sqrt((((signed - lo) / span) ** 2).sum(axis=1))
    return int(on[np.argmin(dist)])
