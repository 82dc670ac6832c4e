"""Magnitude pruning: exact masks, scopes, held zeros, re-initialisation, structured removal."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from prune_core.measure import channel_counts
from prune_core.methods import Context
from prune_core.methods import magnitude as M
from prune_core.surgery import Masks, mask_channels, remove_channels
from prune_core.train import TrainConfig
from prune_core.trial import TrialSpec, fresh_model, run_trial


def _spec(**kw) -> TrialSpec:
    return TrialSpec(model="vgg11", model_kw={"width": 0.25}, data="digits",
                     baseline={"epochs": 12, "lr": 0.05}, methods="magnitude", **kw)


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach().clone() for n, m in M.weight_layers(model).items()}


@pytest.fixture(scope="module")
def global80(base_vgg):
    """Global 80 % unstructured pruning with 5 fine-tuning epochs, through run_trial."""
    params = {"magnitude.ratio": 0.8, "magnitude.scope": "global",
              "magnitude.finetune_epochs": 5}
    return run_trial({"study": _spec(), "params": params}, base=base_vgg)


def test_global_80_percent_keeps_a_fifth_within_two_points(global80, base_vgg):
    row = global80
    model = base_vgg.build()
    prunable = sum(m.weight.numel() for m in M.weight_layers(model).values())
    other = base_vgg.row["params"] - prunable  # BN parameters and biases are not pruned
    assert row["params"] == base_vgg.row["params"]
    assert row["nonzero_params"] <= round(0.2 * prunable) + other
    assert row["nonzero_params"] <= 0.2 * row["params"] + other
    assert row["accuracy_drop"] <= 0.02, row["accuracy"]
    sparsity = row["magnitude.layer_sparsity"]
    assert set(sparsity) == set(M.weight_layers(model))
    # one global threshold: large layers lose more than the first conv
    assert sparsity["features.conv6"] > sparsity["features.conv0"]


def test_masks_are_exact_and_scopes_differ(base_vgg):
    model = base_vgg.build()
    sizes = {n: m.weight.numel() for n, m in M.weight_layers(model).items()}
    layer = M.unstructured_masks(model, 0.8, "layer")
    glob = M.unstructured_masks(model, 0.8, "global")
    for n, mask in layer.items():
        assert int((mask == 0).sum()) == round(0.8 * sizes[n])
    assert int(sum((m == 0).sum() for m in glob.values())) == round(0.8 * sum(sizes.values()))
    per_layer = {n: float((m == 0).float().mean()) for n, m in glob.items()}
    assert max(per_layer.values()) - min(per_layer.values()) > 0.1
    # the global mask removes exactly the smallest weights overall
    w = torch.cat([m.weight.detach().abs().flatten() for m in M.weight_layers(model).values()])
    kept = torch.cat([glob[n].flatten() for n in M.weight_layers(model)]).bool()
    assert float(w[kept].min()) >= float(w[~kept].max())


def test_masked_weights_stay_zero_through_momentum_and_weight_decay(base_vgg, digits):
    model = base_vgg.build()
    masks = Masks(M.unstructured_masks(model, 0.6, "layer"))
    masks.apply(model)
    before = _weights(model)
    ctx = Context(data=digits, train=TrainConfig(epochs=1, lr=0.05, momentum=0.9,
                                                 weight_decay=5e-3))
    ctx.fit(model, 2, hooks=masks.hooks(), lr=0.05)
    after = _weights(model)
    for n, mask in masks.masks.items():
        assert torch.all(after[n][mask == 0] == 0)
        assert not torch.equal(after[n][mask == 1], before[n][mask == 1])  # survivors train
    for m in model.modules():  # plain tensors: no pruning hooks or *_orig parameters
        assert not m._forward_pre_hooks
        assert not any(n.endswith("_orig") for n, _ in m.named_parameters(recurse=False))


def test_rewind_is_reproducible_and_random_is_another_draw(base_vgg, digits):
    got = {}
    for how in ("rewind", "random", "rewind"):
        ctx = Context(data=digits, train=TrainConfig(epochs=1), seed=3,
                      fresh_model=lambda seed: fresh_model(base_vgg, seed))
        params = {"mode": "unstructured", "scope": "layer", "ratio": 0.5, "n": 2,
                  "reinit": how, "finetune_epochs": 0, "lr": 0.01}
        model = M.magnitude(base_vgg.build(), params, ctx)
        got.setdefault(how, []).append(_weights(model)["features.conv3"])
    fresh = fresh_model(base_vgg, 3).features.conv3.weight.detach()
    trained = base_vgg.build().features.conv3.weight.detach()
    rewound = got["rewind"][0]
    assert torch.equal(rewound, got["rewind"][1])
    mask = M.unstructured_masks(base_vgg.build(), 0.5, "layer")["features.conv3"]
    torch.testing.assert_close(rewound, fresh * mask)  # survivors from init, at trained positions
    assert not torch.equal(got["random"][0], rewound)
    assert not torch.equal(rewound, trained * mask)


def test_reinit_without_a_model_factory_names_the_parameter(base_vgg, digits):
    ctx = Context(data=digits, train=TrainConfig(epochs=1), stage="magnitude")
    params = {"mode": "unstructured", "scope": "layer", "ratio": 0.5, "n": 2,
              "reinit": "rewind", "finetune_epochs": 0, "lr": 0.01}
    with pytest.raises(ValueError, match=r"magnitude\.reinit"):
        M.magnitude(base_vgg.build(), params, ctx)


def test_structured_removes_filters_and_lowers_macs(base_vgg):
    params = {"magnitude.mode": "structured", "magnitude.ratio": 0.5, "magnitude.n": 1,
              "magnitude.finetune_epochs": 1}
    row = run_trial({"study": _spec(), "params": params}, base=base_vgg)
    assert row["speedup"] > 2.5 and row["params"] < 0.5 * base_vgg.row["params"]
    base_counts = channel_counts(base_vgg.build())
    by_layer = row["magnitude.filters_removed_by_layer"]
    assert row["magnitude.filters_removed"] == sum(by_layer.values()) > 0
    for name, removed in by_layer.items():
        assert removed == round(0.5 * base_counts[name])
        assert row["channels"][name] == pytest.approx(1 - removed / base_counts[name])
    assert 0 < row["magnitude.layer_sparsity"]["features.conv5"] < 1


def test_structured_plan_ranks_by_norm_and_removal_matches_masking(base_vgg, digits):
    model = base_vgg.build().eval()
    plan = M.filter_plan(model, 0.4, 2, digits.input_shape)
    w = model.features.conv2.weight.detach().flatten(1).norm(dim=1)
    cut = plan["features.conv2"]
    assert len(cut) == round(0.4 * 64)
    keep = sorted(set(range(64)) - set(cut))
    assert float(w[cut].max()) <= float(w[keep].min())
    masked = mask_channels(copy.deepcopy(model), plan, digits.input_shape).eval()
    removed = remove_channels(copy.deepcopy(model), plan, digits.input_shape).eval()
    x = next(digits.batches("test", 32))[0]
    torch.testing.assert_close(removed(x), masked(x), atol=1e-4, rtol=1e-4)


def test_structured_ratio_near_one_keeps_a_filter_per_layer(base_vgg, digits):
    plan = M.filter_plan(base_vgg.build(), 0.99, 2, digits.input_shape)
    counts = channel_counts(base_vgg.build())
    assert plan and all(len(v) == counts[k] - 1 for k, v in plan.items())
