"""Parallel-branch pruning: schedules, the exact merge, accuracy and MACs on digits."""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from prune_core import models
from prune_core.measure import count_macs
from prune_core.methods import Context, ParamError, get_method
from prune_core.methods.branch import (
    SCHEDULES,
    Branched,
    BranchError,
    alpha_values,
    branch_blocks,
)
from prune_core.train import TrainConfig, evaluate
from tests.conftest import ROOT


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_schedules_fall_from_one_to_zero(schedule):
    a = alpha_values(schedule, 6)
    assert len(a) == 6 and a[-1] == 0.0
    assert all(1.0 > x > y for x, y in zip(a, a[1:], strict=False))


def test_linear_is_the_seed_schedule_and_cosine_lands_gently():
    assert alpha_values("linear", 10) == pytest.approx([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3,
                                                        0.2, 0.1, 0.0])
    # the gradual schedules take smaller steps on the way into 0, where seed 004 collapsed
    assert alpha_values("cosine", 10)[-2] < 0.1 and alpha_values("exponential", 10)[-2] < 0.1


def _randomise(branched: Branched, x: torch.Tensor, seed: int = 0) -> None:
    """Branch weights unlike their start and BN statistics measured on ``x`` at alpha 0,
    so the merge has work to do and activations keep a realistic scale."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for br in branched.branches.values():
            for conv in (br.compress, br.expand):
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g)
                                  / conv.in_channels ** 0.5)
            k = br.bn.num_features
            br.bn.weight.copy_(torch.rand(k, generator=g) + 0.5)
            br.bn.bias.copy_(torch.randn(k, generator=g) * 0.2)
            br.bn.reset_running_stats()
            br.bn.momentum = None  # cumulative: one batch sets the statistics
        branched.set_alpha(0.0)
        branched.train()
        branched(x)
        for br in branched.branches.values():
            br.bn.momentum = 0.1


@pytest.mark.parametrize("layers", [None, ["conv3"], ["conv7"], ["conv0", "conv1"]])
def test_merge_equals_the_alpha_zero_model(base_vgg, digits, layers):
    layers = None if layers is None else [f"features.{n}" for n in layers]
    branched = Branched(base_vgg.build(), 0.75, digits.input_shape, layers)
    x, _ = next(digits.batches("test", 64, shuffle=False, augment=False))
    _randomise(branched, next(digits.batches("train", 128))[0])
    branched.eval()
    with torch.no_grad():
        expected = branched(x)
        for layer in list(branched.alpha):
            branched.merge(layer)
        merged = branched.net.eval()
        got = merged(x)
    assert (got - expected).abs().max() < 1e-4
    assert not branched.branches
    # a plain registry VGG again, with the layer names kept and fewer channels
    assert isinstance(merged, models.VGG)
    blocks = branch_blocks(merged, digits.input_shape)
    assert [b.conv for b in blocks] == [f"features.conv{i}" for i in range(8)]
    full = {b.conv: base_vgg.build().get_submodule(b.conv).out_channels for b in blocks}
    for name, c in full.items():
        expect = round(0.75 * c) if layers is None or name in layers else c
        assert merged.get_submodule(name).out_channels == expect
    assert merged.classifier.in_features == merged.features.conv7.out_channels


def test_mixture_uses_both_paths(base_vgg, digits):
    branched = Branched(base_vgg.build(), 0.5, digits.input_shape, ["features.conv2"])
    _randomise(branched, next(digits.batches("train", 128))[0])
    branched.eval()
    plain = copy.deepcopy(branched.net)
    for m in plain.modules():  # the network alone, without the branch's hooks
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
    x, _ = next(digits.batches("test", 16, shuffle=False, augment=False))
    with torch.no_grad():
        outs = {}
        for a in (1.0, 0.5, 0.0):
            branched.set_alpha(a)
            outs[a] = branched(x)
        assert torch.allclose(outs[1.0], plain(x), atol=1e-5)
        assert not torch.allclose(outs[0.5], outs[1.0], atol=1e-3)
        assert not torch.allclose(outs[0.5], outs[0.0], atol=1e-3)


def test_keep_three_quarters_on_digits_stays_within_two_points(base_vgg, digits):
    model = base_vgg.build()
    base_acc = evaluate(model, digits, "test")["accuracy"]
    _, base_layers = count_macs(model, digits.input_shape)
    rows: list = []
    ctx = Context(data=digits, train=TrainConfig(epochs=1, lr=0.01, seed=0), stage="branch",
                  report=rows.append)
    method = get_method("branch")
    params = method.resolve({"keep_ratio": 0.75, "alpha_schedule": "cosine", "steps": 4,
                             "epochs_per_step": 1, "finetune_epochs": 3, "lr": 0.01})
    out = method(model, params, ctx)
    acc = evaluate(out, digits, "test")["accuracy"]
    assert acc >= base_acc - 0.02
    _, layers = count_macs(out, digits.input_shape)
    for i in range(1, 8):  # interior layers lose input and output channels
        assert layers[f"features.conv{i}"] / base_layers[f"features.conv{i}"] == \
            pytest.approx(0.75 ** 2, rel=0.02)
    assert layers["features.conv0"] / base_layers["features.conv0"] == pytest.approx(0.75)
    assert [r["alpha"] for r in rows if r["phase"] == "branch"] == \
        pytest.approx(alpha_values("cosine", 4))
    # the schedule's trajectory: validation accuracy at the end of each alpha step
    steps = ctx.results["branch.val_accuracy_per_step"]
    assert [s["alpha"] for s in steps] == pytest.approx(alpha_values("cosine", 4))
    assert [s["val_accuracy"] for s in steps] == [r["val_accuracy"] for r in rows
                                                  if r["phase"] == "branch"]
    assert [r["phase"] for r in rows][-4:] == ["branch"] + ["finetune"] * 3


def test_sequential_order_converts_one_layer_per_pass(base_vgg, digits):
    small = dataclasses.replace(digits, train=digits.val)  # a few steps per epoch only
    rows: list = []
    ctx = Context(data=small, train=TrainConfig(epochs=1, seed=0), stage="branch",
                  report=rows.append)
    method = get_method("branch")
    params = method.resolve({"keep_ratio": 0.5, "alpha_schedule": "step", "steps": 1,
                             "epochs_per_step": 1, "order": "sequential",
                             "finetune_epochs": 0})
    out = method(base_vgg.build(), params, ctx)
    assert [r["pass"] for r in rows if r["phase"] == "branch"] == list(range(8))
    widths = [getattr(out.features, f"conv{i}").out_channels for i in range(8)]
    full = [getattr(base_vgg.build().features, f"conv{i}").out_channels for i in range(8)]
    assert widths == [round(0.5 * c) for c in full]
    # without fine-tuning, the merged accuracy is the returned model's
    assert ctx.results["branch.merged_accuracy"] == evaluate(out, small, "test")["accuracy"]
    assert [s["pass"] for s in ctx.results["branch.val_accuracy_per_step"]] == list(range(8))


def test_vgg_blocks_have_their_pooling_on_the_path(digits):
    blocks = {b.conv: b for b in branch_blocks(models.build("vgg11", width=0.25),
                                               digits.input_shape)}
    assert blocks["features.conv0"].path == ("features.relu0", "features.pool0")
    assert blocks["features.conv2"].path == ("features.relu2",)
    assert blocks["features.conv7"].path == ("features.relu7", "avgpool")
    assert blocks["features.conv7"].readers == ("classifier",)


def test_resnet_blocks_are_the_first_conv_of_each_residual_block(digits):
    blocks = branch_blocks(models.build("resnet20", width=0.5), digits.input_shape)
    assert [b.conv for b in blocks] == [f"layer{s}.{i}.conv1" for s in (1, 2, 3)
                                        for i in range(3)]
    assert all(b.readers == (b.conv[:-1] + "2",) for b in blocks)


def test_models_without_batchnorm_are_refused(digits):
    ctx = Context(data=digits, train=TrainConfig(), stage="branch")
    method = get_method("branch")
    with pytest.raises(BranchError, match="no conv layer"):
        method(models.build("c3", num_classes=10, k=4), method.resolve({}), ctx)


@pytest.mark.parametrize("name,value", [("keep_ratio", 0.0), ("keep_ratio", 1.5),
                                        ("alpha_schedule", "sigmoid"), ("steps", 0),
                                        ("order", "random"), ("epochs_per_step", 0),
                                        ("finetune_epochs", -1)])
def test_bad_parameters_name_the_domain(name, value):
    with pytest.raises(ParamError, match=rf"branch\.{name} = .*allowed"):
        get_method("branch").resolve({name: value})


def test_bench_branch_tiny(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_branch", "--tiny",
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "branch.json").read_text())
    arms = [r["arm"] for r in doc["runs"]]
    assert arms[0] == "linear" and {"step", "sequential"} <= set(arms)
    for r in doc["runs"]:
        assert len(r["layers_branched"]) == 8  # every conv of a VGG-11
        assert 0 <= r["accuracy"] <= 1 and r["macs"] < doc["base"]["macs"]
        assert r["alphas"][-1] == 0.0 and r["order"] == doc["method_params"][r["arm"]]["order"]
        passes = len(r["layers_branched"]) if r["order"] == "sequential" else 1
        # one schedule pass per layer in sequential order, each through every alpha
        assert len(r["val_accuracy_per_alpha"]) == passes
        assert all(len(v) == len(r["alphas"]) for v in r["val_accuracy_per_alpha"])
        assert r["epochs"]["branch"] == passes * len(r["alphas"])
    step = next(r for r in doc["runs"] if r["arm"] == "step")
    assert step["alphas"][0] == 0.5 and step["schedule"] == "step"
    # the same keep_ratio merges to the same MACs in either order
    assert len({r["macs"] for r in doc["runs"]}) == 1
    assert "| arm |" in (tmp_path / "branch.md").read_text()
