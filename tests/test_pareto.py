"""Non-dominated sets, hypervolume and knee point against brute-force references."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis import pareto


def brute_front(pts: np.ndarray, maximise: list[bool]) -> np.ndarray:
    """On the front: finite, and no finite point at least as good everywhere, better somewhere."""
    signed = np.where(maximise, -pts, pts)
    finite = np.isfinite(pts).all(axis=1)
    out = []
    for i in range(len(pts)):
        if not finite[i]:
            out.append(False)
            continue
        dominated = any(
            finite[j] and (signed[j] <= signed[i]).all() and (signed[j] < signed[i]).any()
            for j in range(len(pts)) if j != i)
        out.append(not dominated)
    return np.array(out, dtype=bool)


def brute_hypervolume(goodness: np.ndarray) -> float:
    """Union of boxes [0, g] by inclusion-exclusion (exact, fine for a few points)."""
    g = [row for row in goodness if (row > 0).all()]
    total = 0.0
    for k in range(1, len(g) + 1):
        for subset in itertools.combinations(g, k):
            total += (-1) ** (k + 1) * float(np.prod(np.min(subset, axis=0)))
    return total


@st.composite
def point_sets(draw, max_points=12):
    m = draw(st.integers(1, 4))
    n = draw(st.integers(0, max_points))
    # Few distinct values: ties and exact duplicates are common.
    value = st.one_of(st.integers(0, 4).map(float), st.just(float("nan")))
    pts = np.array(draw(st.lists(st.lists(value, min_size=m, max_size=m), min_size=n,
                                 max_size=n)), dtype=float).reshape(n, m)
    maximise = draw(st.lists(st.booleans(), min_size=m, max_size=m))
    return pts, maximise


@settings(max_examples=300, deadline=None)
@given(point_sets())
def test_nondominated_matches_brute_force(case):
    pts, maximise = case
    np.testing.assert_array_equal(pareto.nondominated(pts, maximise), brute_front(pts, maximise))


def test_duplicates_of_a_front_point_are_all_on_the_front():
    pts = np.array([[0.9, 10.0], [0.9, 10.0], [0.9, 12.0], [0.5, 1.0]])
    mask = pareto.nondominated(pts, [True, False])
    assert mask.tolist() == [True, True, False, True]


def test_nondominated_rejects_three_dimensional_input():
    with pytest.raises(pareto.ObjectiveError, match="2-D"):
        pareto.nondominated(np.zeros((2, 2, 2)))


def test_hypervolume_two_objectives_by_hand():
    # Base: 80 % accuracy at 100 MACs. Reference: accuracy 0, MACs 110; scales 0.8 and 100.
    ref = pareto.reference({"accuracy": "max", "macs": "min"}, {"accuracy": 0.8, "macs": 100})
    assert ref.worst == pytest.approx((0.0, 110.0)) and ref.scale == (0.8, 100.0)
    assert pareto.hypervolume([[0.8, 100]], ref) == pytest.approx(0.1)
    # Boxes 1 x 0.1 and 0.5 x 1.0 overlapping in 0.5 x 0.1.
    pts = [[0.8, 100], [0.4, 10]]
    assert pareto.hypervolume(pts, ref) == pytest.approx(0.55)
    # A dominated point and a point costlier than the reference add nothing.
    assert pareto.hypervolume(pts + [[0.3, 50], [0.99, 200]], ref) == pytest.approx(0.55)


def test_hypervolume_three_objectives_by_hand():
    ref = pareto.Reference(("a", "b", "c"), (True, True, False), (0.0, 0.0, 4.0), (1.0, 2.0, 1.0))
    # Goodness (1, 1, 1) and (2, 0.5, 0.5): 1 + 0.5 - 0.25.
    pts = [[1.0, 2.0, 3.0], [2.0, 1.0, 3.5]]
    np.testing.assert_allclose(ref.goodness(pts), [[1, 1, 1], [2, 0.5, 0.5]])
    assert pareto.hypervolume(pts, ref) == pytest.approx(1.25)
    # Adding (1.5, 1.5, 0.25) in goodness: inclusion-exclusion by hand gives 1.25 + 0.5625
    # - 0.25 - 0.1875 + 0.125 = 1.5.
    assert pareto.hypervolume(pts + [[1.5, 3.0, 3.75]], ref) == pytest.approx(1.5)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 3).flatmap(lambda m: st.lists(
    st.lists(st.floats(-0.5, 2.0, allow_nan=False), min_size=m, max_size=m),
    min_size=0, max_size=7)))
def test_hypervolume_matches_inclusion_exclusion(rows):
    m = len(rows[0]) if rows else 2
    pts = np.array(rows, dtype=float).reshape(len(rows), m)
    ref = pareto.Reference(tuple("abc"[:m]), (True,) * m, (0.0,) * m, (1.0,) * m)
    assert pareto.hypervolume(pts, ref) == pytest.approx(brute_hypervolume(pts), abs=1e-12)


def test_hypervolume_by_trial_is_cumulative_and_skips_unfinished():
    ref = pareto.reference({"accuracy": "max", "macs": "min"}, {"accuracy": 0.8, "macs": 100})
    pts = np.array([[0.8, 100], [np.nan, np.nan], [0.4, 10], [0.3, 50], [0.8, 50]])
    hv = pareto.hypervolume_by_trial(pts, ref)
    np.testing.assert_allclose(hv[:4], [0.1, 0.1, 0.55, 0.55])
    assert hv[-1] == pytest.approx(pareto.hypervolume(pts, ref))
    assert (np.diff(hv) >= 0).all()


def test_reference_falls_back_to_observed_range_and_accepts_a_stated_point():
    objectives = {"accuracy": "max", "accuracy_drop": "min", "compression": "max"}
    values = np.array([[0.9, 0.02, 3.0], [0.7, 0.20, 9.0]])
    ref = pareto.reference(objectives, {"accuracy": 0.92}, values)
    # accuracy_drop has no usable base value (0): observed range 0.02..0.20, 10 % beyond.
    assert ref.worst == pytest.approx((0.0, 0.218, 0.0))
    assert ref.scale == pytest.approx((0.92, 0.18, 1.0))  # compression: implied base 1
    stated = pareto.reference(objectives, {"accuracy": 0.92}, values, worst={"accuracy": 0.5})
    assert stated.worst[0] == 0.5 and stated.scale[0] == 0.92
    with pytest.raises(pareto.ObjectiveError, match="latency_ms"):
        pareto.reference(objectives, {}, values, worst={"latency_ms": 3.0})


def test_bad_direction_is_named():
    with pytest.raises(pareto.ObjectiveError, match="'macs'.*'minimise'.*max, min"):
        pareto.maximise_flags({"accuracy": "max", "macs": "minimise"})


def test_knee_by_hand_and_invariant_to_units_and_direction():
    pts = np.array([[0.99, 100.0], [0.98, 20.0], [0.90, 5.0], [0.50, 1.0], [0.89, 50.0]])
    # Scaled to the front's range: (0.98, 20) is 0.193 from the ideal, (0.90, 5) is 0.188.
    assert pareto.knee(pts, [True, False]) == 2
    scaled = pts * [100.0, 1e-6]
    assert pareto.knee(scaled, [True, False]) == 2
    flipped = pts * [-1.0, 1.0]  # "error" to minimise instead of accuracy to maximise
    assert pareto.knee(flipped, [False, False]) == 2
    assert pareto.knee(np.full((3, 2), np.nan), [True, False]) is None
    # Duplicated knee: the earliest copy.
    assert pareto.knee(np.vstack([pts[[3]], pts[[2]], pts[[2]], pts[[0]]]), [True, False]) == 1
