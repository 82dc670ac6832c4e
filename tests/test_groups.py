"""The global ranking slimming, RePr and TransTailor share: ``groups.select_global``."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from prune_core.groups import select_global, select_per_group


def _scores(**groups: list[float]) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v) for k, v in groups.items()}


def test_a_group_ranked_low_everywhere_keeps_its_best_channel():
    scores = _scores(a=[0.01, 0.03, 0.02], b=[1.0, 2.0, 3.0, 4.0, 5.0])
    plan = select_global(scores, 0.5)
    # Four of eight go: the global threshold alone would take all of a first.
    assert plan == {"a": [0, 2], "b": [0, 1]}


def test_ratio_zero_selects_nothing_and_names_every_group():
    assert select_global(_scores(a=[0.3, 0.1], b=[0.2]), 0.0) == {"a": [], "b": []}


@pytest.mark.parametrize("ratio", [0.99, 0.999999])
def test_ratio_near_one_leaves_exactly_the_best_channel_of_each_group(ratio):
    scores = _scores(a=[0.5, 0.9, 0.1], b=[3.0, 1.0], c=[7.0])
    plan = select_global(scores, ratio)
    assert plan == {"a": [0, 2], "b": [1], "c": []}


def test_ties_break_by_group_order_then_index():
    scores = _scores(a=[1.0, 1.0, 1.0], b=[1.0, 1.0, 1.0])
    assert select_global(scores, 1 / 6) == {"a": [0], "b": []}
    assert select_global(scores, 0.5) == {"a": [0, 1], "b": [0]}
    # Among tied channels of one group, the last one is the one that stays.
    assert select_global(scores, 0.99) == {"a": [0, 1], "b": [0, 1]}
    # The order of the mapping is the group order.
    assert select_global(dict(reversed(scores.items())), 1 / 6) == {"b": [0], "a": []}


def test_min_keep_protects_a_share_of_each_group():
    scores = _scores(a=[0.0] * 10, b=[1.0] * 10)
    plan = select_global(scores, 0.9, min_keep=0.25)
    assert len(plan["a"]) == 10 - math.ceil(0.25 * 10)
    assert len(plan["b"]) == 10 - math.ceil(0.25 * 10)


def test_min_count_chooses_at_least_that_many():
    scores = _scores(a=[0.2, 0.1, 0.3], b=[0.4, 0.5])
    assert select_global(scores, 0.01) == {"a": [], "b": []}
    assert select_global(scores, 0.01, min_count=1) == {"a": [1], "b": []}
    # never more than the candidates: each group still keeps one
    assert select_global(scores, 0.01, min_count=10) == {"a": [0, 1], "b": [0]}


def test_random_rankings_remove_the_lowest_candidates_exactly():
    gen = torch.Generator().manual_seed(0)
    for trial in range(50):
        sizes = torch.randint(1, 12, (int(torch.randint(1, 6, (1,), generator=gen)),),
                              generator=gen).tolist()
        scores = {f"g{i}": torch.rand(n, generator=gen) for i, n in enumerate(sizes)}
        ratio = float(torch.rand(1, generator=gen))
        plan = select_global(scores, ratio)
        total = sum(sizes)
        candidates = total - len(sizes)
        assert sum(map(len, plan.values())) == min(round(ratio * total), candidates), trial
        removed = [float(scores[k][i]) for k, v in plan.items() for i in v]
        for k, v in plan.items():
            assert len(v) < scores[k].numel() and v == sorted(set(v))
            # a group's kept channels outrank its removed ones ...
            kept = [float(scores[k][i]) for i in range(scores[k].numel()) if i not in v]
            assert not v or max(float(scores[k][i]) for i in v) <= min(kept)
            # ... and every candidate left behind outranks everything removed
            spare = sorted(kept)[:-1]
            assert not removed or not spare or min(spare) >= max(removed)


def test_per_group_selection_keeps_one_per_group():
    scores = _scores(a=[0.3, 0.1, 0.2, 0.4], b=[0.5])
    assert select_per_group(scores, 0.5) == {"a": [1, 2], "b": []}
    assert select_per_group(scores, 0.99) == {"a": [0, 1, 2], "b": []}


def test_round_plan_keeps_a_multiple_of_n_by_removing_the_lowest_scored():
    from prune_core.groups import round_plan

    scores = {"a": torch.arange(20.0), "b": torch.arange(6.0), "c": torch.arange(16.0)}
    plan = {"a": [0, 1, 2, 3, 4, 5, 6], "b": [0, 1], "c": []}  # a keeps 13, b is small
    out = round_plan(plan, scores, 8)
    assert out["a"] == list(range(4))  # 13 kept -> 16 (nearest); the 4 lowest removed
    assert out["b"] == [] and out["c"] == []  # no multiple of 8 below 6: whole; untouched
    assert round_plan(plan, scores, 8, down=True)["a"] == list(range(12))  # 13 -> 8
    assert round_plan({"a": list(range(18))}, scores, 8)["a"] == list(range(12))  # >= 8 kept
    assert round_plan(plan, scores, 1) is plan
    shuffled = {"a": torch.tensor([5.0, 0.0, 9.0, 1.0] * 5)}
    kept = 20 - len(round_plan({"a": [1, 3, 5]}, shuffled, 4)["a"])
    # the four lowest scores (the zeros), not the plan's own picks
    assert kept == 16 and round_plan({"a": [1, 3, 5]}, shuffled, 4)["a"] == [1, 5, 9, 13]


@pytest.mark.parametrize("methods,params", [
    ("magnitude", {"magnitude.mode": "structured", "magnitude.ratio": 0.4,
                   "magnitude.finetune_epochs": 0, "magnitude.round_to": 8}),
    ("slimming", {"slimming.prune_ratio": 0.6, "slimming.sparsity_epochs": 1,
                  "slimming.finetune_epochs": 0, "slimming.round_to": 8}),
])
def test_round_to_makes_every_pruned_layer_a_multiple_of_n(methods, params):
    from prune_core.trial import TrialSpec, run_trial
    from tests.conftest import TEST_CACHE

    spec = TrialSpec(model="vgg11", model_kw={"width": 0.25}, baseline={"epochs": 2},
                     finetune={"epochs": 1}, methods=methods, cache_dir=str(TEST_CACHE))
    out: dict = {}
    row = run_trial({"study": spec.to_dict(), "params": params}, model_out=out)
    widths = [m.out_channels for m in out["model"].modules() if isinstance(m, nn.Conv2d)]
    assert all(w % 8 == 0 for w in widths), widths
    assert row["macs"] < row["macs"] * row["speedup"]  # it did prune
