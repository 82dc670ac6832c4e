"""Factorization: separable pairs (exact at full rank, exact param count) and orthogonal
layers (orthogonal kernels, degrees of freedom), with checkpoints that reload."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from prune_core.measure import count_params
from prune_core.methods import factorize as Fz
from prune_core.methods import get_method
from prune_core.trial import TrialSpec, run_trial


def _spec() -> TrialSpec:
    return TrialSpec(model="vgg11", model_kw={"width": 0.25}, data="digits",
                     baseline={"epochs": 12, "lr": 0.05}, methods="factorize")


def _roundtrip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("conv", [
    nn.Conv2d(4, 6, 3, padding=1),
    nn.Conv2d(5, 3, (5, 3), stride=2, padding=(2, 1), bias=False),
    nn.Conv2d(3, 4, 3, dilation=2, padding=2),
])
def test_separable_pair_is_exact_at_full_rank(conv):
    torch.manual_seed(0)
    kh, kw = conv.kernel_size
    pair = Fz.separable_from(conv, min(conv.in_channels * kh, conv.out_channels * kw))
    assert pair.v.kernel_size == (kh, 1) and pair.h.kernel_size == (1, kw)
    x = torch.randn(2, conv.in_channels, 11, 13)
    torch.testing.assert_close(pair(x), conv(x), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        err = [float((Fz.separable_from(conv, r)(x) - conv(x)).norm()) for r in (1, 2, 4)]
    assert err[0] > err[1] > err[2]  # truncated SVD: more rank, less error


def test_largest_layers_choice_and_rank():
    from prune_core.models import build

    model = build("vgg11", width=0.25)
    assert Fz.largest_layers(model, "separable", 3) == [
        "features.conv5", "features.conv6", "features.conv7"]
    assert Fz.largest_layers(model, "separable", 100)[-1] == "features.conv0"
    conv = model.features.conv1  # 16 -> 32 channels
    assert Fz.separable_rank(conv, 0.5) == 8
    assert Fz.separable_rank(conv, 4.0) == 16 * 3  # capped at full rank
    assert Fz.separable_rank(conv, 0.01) == 1


@pytest.mark.parametrize("layer", [nn.Linear(12, 7), nn.Linear(5, 9, bias=False),
                                   nn.Conv2d(6, 4, 1, stride=2)])
def test_lowrank_pair_is_exact_at_full_rank_and_stores_r_in_plus_out(layer):
    torch.manual_seed(0)
    out, inp = layer.weight.shape[:2]
    x = torch.randn(3, inp) if isinstance(layer, nn.Linear) else torch.randn(2, inp, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(Fz.lowrank_from(layer, min(out, inp))(x), layer(x),
                                   atol=1e-5, rtol=1e-4)
        err = [float((Fz.lowrank_from(layer, r)(x) - layer(x)).norm()) for r in (1, 2, 3)]
    assert err[0] > err[1] > err[2] > 0  # truncation, best first
    pair = Fz.lowrank_from(layer, 2)
    assert sum(m.weight.numel() for m in pair) == 2 * (inp + out)


def test_lowrank_takes_the_largest_linear_layers_of_a_transformer():
    import timm
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=10).eval()
    names = Fz.largest_layers(model, "lowrank", 3)
    assert names == ["blocks.0.mlp.fc1", "blocks.0.mlp.fc2", "blocks.1.mlp.fc1"]
    assert Fz.lowrank_rank(model.blocks[0].mlp.fc1, 0.5) == 96  # of min(192, 768)
    before = count_params(model)[0]
    x = torch.randn(2, 3, 32, 32)
    ref = model(x)
    Fz.factorize_layers(model, {"variant": "lowrank", "layers": 3, "rank": 4.0})
    assert isinstance(model.blocks[0].mlp.fc1, nn.Sequential)
    torch.testing.assert_close(model(x), ref, atol=1e-4, rtol=1e-4)  # full rank: exact
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=10)
    Fz.factorize_layers(model, {"variant": "lowrank", "layers": 2, "rank": 0.5})
    # the first MLP's 192 -> 768 and 768 -> 192 layers, each to 96 inner features
    assert count_params(model)[0] == before - 2 * 192 * 768 + 2 * 96 * (192 + 768)


@pytest.fixture(scope="module")
def separable(base_vgg):
    params = {"factorize.variant": "separable", "factorize.layers": 3,
              "factorize.rank": 0.5, "factorize.finetune_epochs": 2}
    return run_trial({"study": _spec(), "params": params}, base=base_vgg)


def test_separable_params_drop_by_the_formula(separable, base_vgg):
    row = separable
    model = base_vgg.build()
    mods = dict(model.named_modules())
    names = row["factorize.layers_factorized"]
    assert names == ["features.conv5", "features.conv6", "features.conv7"]
    expected = base_vgg.row["params"]
    for n in names:
        o, i, kh, kw = mods[n].weight.shape
        r = round(0.5 * i)
        expected += r * (i * kh + o * kw) - o * i * kh * kw
    assert row["params"] == expected < base_vgg.row["params"]
    assert row["macs"] < base_vgg.row["macs"]
    assert row["factorize.accuracy_before_finetune"] > 0.5  # SVD start, not random
    assert row["accuracy"] > 0.9


def test_orthogonal_keeps_stored_params_and_reports_dof(base_vgg):
    params = {"factorize.variant": "orthogonal", "factorize.layers": 2,
              "factorize.finetune_epochs": 1}
    row = run_trial({"study": _spec(), "params": params}, base=base_vgg)
    assert row["params"] == base_vgg.row["params"]
    names = row["factorize.layers_factorized"]
    assert names == ["features.conv5", "features.conv6"]
    # each 128 x 128 conv holds 128 * 128 orthogonal 3 x 3 kernels: 3 * 4 / 2 = 6 by the
    # seed's m(n + 1) / 2, 9 - 6 = 3 as a manifold dimension, instead of 9 weights
    kernels = 2 * 128 * 128
    assert row["factorize.dof_params"] == base_vgg.row["params"] - kernels * (9 - 6)
    assert row["factorize.stiefel_dof_params"] == base_vgg.row["params"] - kernels * (9 - 3)
    assert 0.0 <= row["accuracy"] <= 1.0 and "factorize.accuracy_before_finetune" in row


def test_orthogonal_layers_are_orthogonal_and_start_at_the_polar_factor(base_vgg, digits):
    model = base_vgg.build()
    w0 = model.features.conv5.weight.detach().clone()
    Fz.factorize_layers(model, {"variant": "orthogonal", "layers": 1, "rank": 1.0})
    conv = model.features.conv5  # the first of the largest (ties keep forward order)
    assert parametrize.is_parametrized(conv)
    w = conv.weight.detach()
    eye = torch.eye(3).expand_as(w)
    torch.testing.assert_close(w @ w.mT, eye, atol=1e-5, rtol=0)
    u, _, vh = torch.linalg.svd(w0)
    torch.testing.assert_close(w, u @ vh, atol=1e-5, rtol=1e-5)
    assert count_params(model)[0] == base_vgg.row["params"]


@pytest.mark.parametrize("variant", ["separable", "orthogonal", "lowrank"])
def test_restructure_reloads_a_checkpoint_with_weights_only(variant, base_vgg, digits):
    params = get_method("factorize").resolve({"variant": variant, "layers": 2, "rank": 0.3})
    model = base_vgg.build().eval()
    Fz.factorize_layers(model, params, base_vgg.build())
    state = _roundtrip({k: v.detach() for k, v in model.state_dict().items()})
    fresh = get_method("factorize").restructure(base_vgg.build(), params)
    fresh.load_state_dict(state)
    fresh.eval()
    x = next(digits.batches("test", 16))[0]
    torch.testing.assert_close(fresh(x), model(x))


def test_orthogonal_linear_survives_weight_decay_steps():
    """A non-square orthogonal layer stays orthogonal (not zero) through SGD with
    momentum and weight decay."""
    torch.manual_seed(0)
    layer = nn.Linear(128, 10)
    Fz.make_orthogonal(layer)
    opt = torch.optim.SGD(layer.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(32, 128)
    for _ in range(3):
        opt.zero_grad()
        layer(x).square().mean().backward()
        opt.step()
    w = layer.weight.detach()
    torch.testing.assert_close(w @ w.T, torch.eye(10), atol=1e-5, rtol=0)


def test_orthogonal_leaves_linear_layers_wider_than_its_limit():
    model = nn.Sequential(nn.Linear(8, Fz.ORTHOGONAL_MAX + 1), nn.ReLU(),
                          nn.Linear(Fz.ORTHOGONAL_MAX + 1, 16), nn.Linear(16, 4))
    assert Fz.largest_layers(model, "orthogonal", 3) == ["3"]
    assert Fz.largest_layers(model, "lowrank", 3) == ["2", "0", "3"]


def test_only_limits_the_largest_layers_to_one_kind():
    """Seed 002's "every conv" on a VGG whose classifier holds the largest matrices:
    ``only: conv`` takes the convs, not the fully connected layers."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 16, 3), nn.AdaptiveAvgPool2d(4),
                          nn.Flatten(), nn.Linear(256, 512), nn.Linear(512, 10))
    assert Fz.largest_layers(model, "orthogonal", 2) == ["4", "5"]
    assert Fz.largest_layers(model, "orthogonal", 2, only="conv") == ["1", "0"]
    assert Fz.largest_layers(model, "orthogonal", 5, only="linear") == ["4", "5"]
    params = get_method("factorize").resolve({"variant": "orthogonal", "layers": 2,
                                              "only": "conv"})
    assert Fz.factorize_layers(model, params) == ["1", "0"]
