"""RePr: orthogonality ranking, exact zeros while dropped, orthogonal re-initialisation."""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from prune_core import models
from prune_core.data import Split
from prune_core.methods import Context, ParamError, conv_units, fresh_copy, get_method
from prune_core.methods.repr import (
    FilterDrop,
    drop_plan,
    orthogonality_scores,
    reinit_filters,
)
from prune_core.train import Hooks, TrainConfig, evaluate, fit, make_optimizer
from tests.conftest import ROOT


def _few(data, n: int = 256):
    """The same dataset with only ``n`` training images: a few optimizer steps per epoch."""
    return dataclasses.replace(data, train=Split(data.train.x[:n], data.train.y[:n]))


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a.reshape(a.shape[0], -1).double()
    b = b.reshape(b.shape[0], -1).double()
    return (a / a.norm(dim=1, keepdim=True)) @ (b / b.norm(dim=1, keepdim=True)).T


def _trained_c3(k: int = 16) -> nn.Module:
    torch.manual_seed(0)
    model = models.build("c3", num_classes=10, k=k)
    with torch.no_grad():  # weights with some structure: not the symmetric initial ones
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.add_(0.05 * torch.randn_like(m.weight))
                m.bias.normal_()
    return model


def test_the_overlapping_filters_rank_worst():
    w = torch.zeros(4, 2, 1, 1)
    w[0, 0] = 1.0
    w[1, 1] = 1.0
    w[2] = torch.tensor([1.0, 0.1]).view(2, 1, 1)
    w[3] = torch.tensor([1.0, 0.12]).view(2, 1, 1)  # 0, 2 and 3 point nearly the same way
    scores = orthogonality_scores(w)
    assert set(scores.argsort(descending=True)[:2].tolist()) == {2, 3}
    assert scores[1] == scores.min()


def test_drop_plan_global_and_per_layer():
    model = _trained_c3(16)
    units = conv_units(model, (3, 32, 32))
    plan = drop_plan(model, units, 0.25, "global")
    assert sum(len(v) for v in plan.values()) == round(0.25 * 48)
    layer = drop_plan(model, units, 0.25, "layer")
    assert all(len(v) == 4 for v in layer.values())
    greedy = drop_plan(model, units, 0.99, "global")
    assert all(len(v) == 15 for v in greedy.values())  # one filter stays in every layer


def test_inverted_ranking_drops_the_most_orthogonal():
    model = _trained_c3(16)
    units = conv_units(model, (3, 32, 32))
    for u in units:
        scores = orthogonality_scores(model.get_submodule(u.conv).weight)
        worst = drop_plan(model, [u], 0.25, "layer")[u.conv]
        best = drop_plan(model, [u], 0.25, "layer", drop="orthogonal")[u.conv]
        assert set(worst.tolist()) == set(scores.argsort(descending=True)[:4].tolist())
        assert set(best.tolist()) == set(scores.argsort()[:4].tolist())


def test_without_zero_next_the_readers_keep_their_weights():
    model = _trained_c3(16)
    units = conv_units(model, (3, 32, 32))
    idx = torch.tensor([1, 5])
    reader = model.features.conv1.weight.detach().clone()
    reinit_filters(model, units[0], idx, zero_next=False,
                   generator=torch.Generator().manual_seed(0))
    assert torch.equal(model.features.conv1.weight.detach(), reader)
    reinit_filters(model, units[0], idx, generator=torch.Generator().manual_seed(0))
    assert model.features.conv1.weight[:, idx].abs().sum() == 0


def test_dropped_filters_stay_exactly_zero_through_sgd(digits):
    digits = _few(digits)
    model = _trained_c3(8)
    units = conv_units(model, (3, 32, 32))
    drop = FilterDrop(units, drop_plan(model, units, 0.5, "layer"))
    cfg = TrainConfig(epochs=1, lr=0.05, momentum=0.9, weight_decay=5e-4, seed=0)
    # Stale momentum from training before the drop: the worst case for held zeros.
    opt = make_optimizer(model, cfg)
    for x, y in digits.batches("train", 128):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        break
    before = copy.deepcopy(model)
    drop.apply(model)
    leaky = copy.deepcopy(model)
    fit(model, digits, cfg, hooks=drop.hooks(), optimizer=opt)
    assert drop.max_abs(model) == 0.0
    keep = ~torch.isin(torch.arange(8), drop.plan["features.conv1"])
    assert not torch.equal(model.features.conv1.weight[keep], before.features.conv1.weight[keep])
    # Without re-masking after the step, the stale momentum moves the dropped filters.
    leaky_opt = make_optimizer(leaky, cfg)
    leaky_opt.load_state_dict(opt.state_dict())
    for group in leaky_opt.state.values():
        group["momentum_buffer"].fill_(0.01)
    fit(leaky, digits, cfg, hooks=Hooks(after_backward=[drop.zero_grads]), optimizer=leaky_opt)
    assert drop.max_abs(leaky) > 0


def test_reinit_in_the_null_space_is_orthogonal_and_output_preserving():
    model = _trained_c3(16).eval()
    units = conv_units(model, (3, 32, 32))
    unit = units[0]  # fan-in 3*3*3 = 27 > 12 survivors: a null space exists
    idx = torch.tensor([1, 5, 9, 14])
    drop = FilterDrop(units, {u.conv: (idx if u is unit else torch.empty(0, dtype=torch.long))
                              for u in units})
    previous = model.get_submodule(unit.conv).weight.detach()[idx].clone()
    drop.apply(model)
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    info = reinit_filters(model, unit, idx, variant="qr", clip=100.0,
                          generator=torch.Generator().manual_seed(0), previous=previous)
    w = model.get_submodule(unit.conv).weight.detach()
    survivors = torch.tensor([i for i in range(16) if i not in idx.tolist()])
    assert torch.equal(info["basis"], survivors)
    assert _cos(w[idx], w[survivors]).abs().max() < 1e-5
    # 12 survivors + 2 * 4 <= 27: room to be orthogonal to the dropped values too
    assert info["previous"] and _cos(w[idx], previous).abs().max() < 1e-5
    mutual = _cos(w[idx], w[idx]) - torch.eye(4, dtype=torch.float64)
    assert mutual.abs().max() < 1e-5
    # scaled like the survivors, not left at unit norm
    norms = w.reshape(16, -1).norm(dim=1)
    assert torch.allclose(norms[idx], norms[survivors].mean().expand(4), rtol=1e-4)
    # the next layer's matching input channels are zeroed, so the output is unchanged
    assert [r.name for r in unit.readers] == ["features.conv1"]
    assert model.features.conv1.weight[:, idx].abs().sum() == 0
    with torch.no_grad():
        assert torch.allclose(model(x), before, atol=1e-6)


def test_reinit_without_null_space_uses_the_most_overlapping_and_clips():
    model = _trained_c3(32)
    units = conv_units(model, (3, 32, 32))
    unit = units[0]  # 29 survivors span all 27 input dimensions: no null space
    idx = torch.tensor([0, 10, 20])
    drop = FilterDrop(units, {u.conv: (idx if u is unit else torch.empty(0, dtype=torch.long))
                              for u in units})
    drop.apply(model)
    info = reinit_filters(model, unit, idx, variant="qr", clip=0.5,
                          generator=torch.Generator().manual_seed(0))
    w = model.get_submodule(unit.conv).weight.detach()
    assert len(info["basis"]) == 27 - 3
    survivors = [i for i in range(32) if i not in idx.tolist()]
    ranked = orthogonality_scores(w[survivors]).argsort(descending=True)[:24]
    assert sorted(info["basis"].tolist()) == sorted(torch.tensor(survivors)[ranked].tolist())
    assert _cos(w[idx], w[info["basis"]]).abs().max() < 1e-5
    # clip = 0.5 std binds: no new weight exceeds it
    assert w[idx].abs().max() <= info["limit"] * (1 + 1e-6)
    assert info["limit"] == pytest.approx(0.5 * float(w[survivors].double().std()), rel=1e-6)


def test_reinit_of_the_last_conv_zeroes_the_classifier_columns():
    model = _trained_c3(8)
    units = conv_units(model, (3, 32, 32))
    last = units[-1]
    assert [r.name for r in last.readers] == ["classifier"]
    idx = torch.tensor([2, 3])
    reinit_filters(model, last, idx, variant="random", clip=3.0)
    cols = model.classifier.weight.view(10, 8, 16)[:, idx]  # flatten of [8, 4, 4]
    assert cols.abs().sum() == 0
    assert model.classifier.weight.view(10, 8, 16)[:, 0].abs().sum() > 0


def test_fresh_copy_has_the_same_architecture_and_new_weights(base_vgg):
    trained = base_vgg.build()
    a, b = fresh_copy(trained, 3), fresh_copy(trained, 3)
    assert [p.shape for p in a.parameters()] == [p.shape for p in trained.parameters()]
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.features.conv3.weight, trained.features.conv3.weight)
    c = fresh_copy(trained, 4)
    assert not torch.equal(a.features.conv3.weight, c.features.conv3.weight)


def test_repr_trains_and_reports_beside_plain(digits):
    digits = _few(digits)
    rows: list = []
    ctx = Context(data=digits, train=TrainConfig(epochs=1, seed=0), stage="repr",
                  report=rows.append)
    method = get_method("repr")
    params = method.resolve({"epochs": 3, "s1": 1, "s2": 1, "cycles": 1, "ratio": 0.25})
    start = models.build("c3", num_classes=10, k=8)
    out = method(start, params, ctx)
    assert out is not start
    phases = [r["phase"] for r in rows]
    assert phases == ["plain"] * 3 + ["s1", "s2", "final"]
    assert [r["dropped_max_abs"] for r in rows if r["phase"] == "s2"] == [0.0]
    (shares,) = ctx.results["repr.pruned_share_per_cycle"]
    assert set(shares) == {"features.conv0", "features.conv1", "features.conv2"}
    assert sum(shares.values()) * 8 == pytest.approx(round(0.25 * 24))
    for key in ("repr.plain_accuracy", "repr.plain_balanced_accuracy",
                "repr.plain_train_accuracy"):
        assert 0.0 <= ctx.results[key] <= 1.0
    # train accuracy of the returned model, at the moment its test accuracy is measured
    assert ctx.results["repr.train_accuracy"] == evaluate(out, digits, "train")["accuracy"]
    (reinit,) = ctx.results["repr.reinit_val_accuracy_per_cycle"]  # one per cycle
    assert 0.0 <= reinit <= 1.0
    # the filters came back: nothing is zero any more in the returned model
    assert all(m.weight.reshape(m.out_channels, -1).abs().sum(1).min() > 0
               for m in out.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("name,value", [("s1", 0), ("s2", 0), ("ratio", 1.0), ("ratio", 0.0),
                                        ("rank", "random"), ("reinit", "zeros"), ("clip", 0.0)])
def test_bad_parameters_name_the_domain(name, value):
    with pytest.raises(ParamError, match=rf"repr\.{name} = .*allowed"):
        get_method("repr").resolve({name: value})


def test_epoch_budget_must_hold_the_cycles():
    with pytest.raises(ParamError, match=r"repr\.epochs = 5 is below cycles \* \(s1 \+ s2\) "
                                         r"= 2 \* \(2 \+ 2\) = 8"):
        get_method("repr").resolve({"epochs": 5, "s1": 2, "s2": 2, "cycles": 2})
    assert get_method("repr").resolve({"epochs": 8, "s1": 2, "s2": 2, "cycles": 2})["epochs"] == 8


def test_default_search_ranges_always_fit_the_epoch_budget():
    method = get_method("repr")
    hi = {n: method.param(n).search["high"] for n in ("s1", "s2", "cycles")}
    assert hi["cycles"] * (hi["s1"] + hi["s2"]) <= method.param("epochs").search["low"]


def test_bench_repr_tiny(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_repr", "--tiny",
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "repr.json").read_text())
    seeds, arms = doc["settings"]["seeds"], doc["settings"]["arms"]
    assert len(seeds) >= 2 and {"repr", "orthogonal", "no-augment"} <= set(arms)
    assert len(doc["runs"]) == len(seeds) * len(arms)
    runs = {(r["arm"], r["seed"]): r for r in doc["runs"]}
    for run in doc["runs"]:
        assert 0 <= run["plain_accuracy"] <= 1 and 0 <= run["repr_accuracy"] <= 1
    assert doc["method_params"]["orthogonal"]["drop"] == "orthogonal"
    assert doc["method_params"]["repr"]["drop"] == "overlapping"
    for seed in seeds:
        # one plain control per seed and data setting, trained by the first arm using it
        assert not runs["repr", seed]["plain_shared"] and runs["orthogonal", seed]["plain_shared"]
        assert runs["orthogonal", seed]["plain_accuracy"] == runs["repr", seed]["plain_accuracy"]
        assert not runs["no-augment", seed]["plain_shared"]
        assert not runs["no-augment", seed]["augment"] and runs["repr", seed]["augment"]
    for arm in arms:
        diffs = [runs[arm, s]["repr_accuracy"] - runs[arm, s]["plain_accuracy"] for s in seeds]
        summary = doc["summary"][arm]
        assert summary["difference"]["mean"] == pytest.approx(sum(diffs) / len(diffs))
    md = (tmp_path / "repr.md").read_text()
    assert "| arm | seed |" in md and "| no-augment |" in md

    # An arm run alone trains its own control: the same numbers as with a shared one.
    alone = tmp_path / "alone"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_repr", "--tiny", "--arms",
                           "orthogonal", "--seeds", str(seeds[0]), "--out", str(alone)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (solo,) = json.loads((alone / "repr.json").read_text())["runs"]
    assert not solo["plain_shared"]
    shared = runs["orthogonal", seeds[0]]
    for key in ("plain_accuracy", "repr_accuracy", "pruned_share_per_cycle"):
        assert solo[key] == shared[key]


def test_a_trial_resumed_inside_s2_finds_its_dropped_filters(digits):
    digits = _few(digits, 128)
    method = get_method("repr")
    params = method.resolve({"epochs": 3, "s1": 1, "s2": 1, "cycles": 1, "ratio": 0.3})
    saves: list = []
    ctx = Context(data=digits, train=TrainConfig(seed=0), stage="repr", save=saves.append)
    method(models.build("c3", num_classes=10, k=4), params, ctx)
    s2 = next(p for p in saves if p["fit_call"] == 2)  # plain (0), s1 (1), s2 (2)
    rows: list = []
    ctx2 = Context(data=digits, train=TrainConfig(seed=0), stage="repr", report=rows.append,
                   results=dict(s2["results"]), resume=s2)
    out = method(models.build("c3", num_classes=10, k=4), params, ctx2)
    assert [r["phase"] for r in rows] == ["final"]  # nothing before the checkpoint re-trains
    # plain results kept, the dropped filters recovered from the checkpoint's zeros
    assert ctx2.results == ctx.results
    assert all(m.weight.reshape(m.out_channels, -1).abs().sum(1).min() > 0
               for m in out.modules() if isinstance(m, nn.Conv2d))
