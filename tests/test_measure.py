"""Measurement columns: counts, sparsity-aware MACs, ops, bytes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prune_core import measure, models


def test_nonzero_counts_follow_zeroed_weights():
    model = models.build("vgg11", width=0.25)
    dense = measure.measure(model, (3, 32, 32))
    _, per_layer = measure.count_macs(model, (3, 32, 32))
    conv = model.features.conv3
    with torch.no_grad():
        conv.weight[: conv.out_channels // 2] = 0
    sparse = measure.measure(model, (3, 32, 32))
    zeroed = conv.weight[: conv.out_channels // 2].numel()
    assert sparse["params"] == dense["params"]
    assert dense["nonzero_params"] - sparse["nonzero_params"] == zeroed
    assert sparse["macs"] == dense["macs"]
    expected_drop = per_layer["features.conv3"] * zeroed / conv.weight.numel()
    assert dense["nonzero_macs"] - sparse["nonzero_macs"] == pytest.approx(expected_drop, abs=2)


def test_ops_add_one_per_activation_output():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    row = measure.measure(model, (1, 5, 5))
    # (m - n + 1)^2 * n^2 per filter and input channel, plus one op per activation output
    macs = 2 * (5 - 3 + 1) ** 2 * 3 * 3
    assert row["macs"] == macs
    assert row["ops"] == macs + 2 * 3 * 3


def test_size_bytes_counts_every_stored_tensor():
    model = models.build("c3", k=8)
    n_params = sum(p.numel() for p in model.parameters())
    assert measure.size_bytes(model) == 4 * n_params
    half = model.half()
    assert measure.size_bytes(half) == 2 * n_params


def test_parametrized_layers_are_measured_as_deployed():
    model = models.build("c3", k=8)
    plain = measure.measure(model, (3, 32, 32))
    nn.utils.parametrizations.orthogonal(model.classifier)
    ortho = measure.measure(model, (3, 32, 32))
    # The deployed model stores the weight: same params and MACs, no parametrization matmuls.
    assert ortho["params"] == plain["params"]
    assert ortho["macs"] == plain["macs"]
    assert measure.parametrize.is_parametrized(model.classifier), "the model itself is untouched"


@pytest.mark.parametrize("text", ["3x32", "a x b", "3x0x32", ""])
def test_parse_shape_rejects_bad_input(text):
    with pytest.raises(ValueError, match="CxHxW"):
        measure.parse_shape(text)


def test_latency_is_positive_and_channel_counts_named():
    model = models.build("c3", k=4)
    assert measure.latency_ms(model, (3, 32, 32), repeats=3, warmup=1) > 0
    assert measure.channel_counts(model) == {"features.conv0": 4, "features.conv1": 4,
                                             "features.conv2": 4}
