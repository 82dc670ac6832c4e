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


class _TokenStages(nn.Module):
    """PiT's pattern: a view of a parameter (a class token) handed between stages."""

    def __init__(self):
        super().__init__()
        self.token = nn.Parameter(torch.zeros(1, 1, 8))
        self.stages = nn.Sequential(_Pair(), _Pair())
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x, token = self.stages((x.flatten(2).transpose(1, 2), self.token.expand(len(x), -1, -1)))
        return self.head(token[:, 0] + x.mean(1))


class _Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, pair):
        x, token = pair
        return self.fc(x), self.fc(token)


def test_macs_count_a_model_passing_a_parameter_view_between_modules():
    model = _TokenStages()
    cost = measure.count_cost(model, (8, 2, 2))
    # per stage: 4 tokens and the class token through an 8 x 8 layer; then the head
    assert cost["macs"] == 2 * 5 * 64 + 80
    assert all(p.requires_grad for p in model.parameters())


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
    # the model itself is untouched
    assert torch.nn.utils.parametrize.is_parametrized(model.classifier)


@pytest.mark.parametrize("text", ["3x32", "a x b", "3x0x32", ""])
def test_parse_shape_rejects_bad_input(text):
    with pytest.raises(ValueError, match="CxHxW"):
        measure.parse_shape(text)


def test_latency_is_positive_and_channel_counts_named():
    model = models.build("c3", k=4)
    assert measure.latency_ms(model, (3, 32, 32), repeats=3, warmup=1) > 0
    assert measure.channel_counts(model) == {"features.conv0": 4, "features.conv1": 4,
                                             "features.conv2": 4}


def test_latency_per_batch_size_with_spread():
    model = models.build("vgg11", width=0.0625)
    row = measure.measure_latency(model, (3, 16, 16), batch=[1, 16], runs=30, warmup=2,
                                  threads=1)
    assert set(row) == {"latency_ms", "latency_iqr_ms", "latency_ms_b1", "latency_iqr_ms_b1",
                        "latency_ms_b16", "latency_iqr_ms_b16"}
    assert row["latency_ms"] == row["latency_ms_b1"] > 0
    assert all(v >= 0 for v in row.values())
    assert row["latency_ms_b16"] > row["latency_ms_b1"]  # sixteen images cost more than one


def test_compiled_int8_latency_runs_the_int8_graph(digits):
    from prune_core.methods.quantize import quantize_model

    model = models.build("vgg11", width=0.0625).eval()
    small = datasets_first(digits, 256)
    q = quantize_model(model, small, calibration_batches=1, per_channel=True)
    row = measure.measure(q, small.input_shape, structure=model,
                          with_latency={"compiled": True, "runs": 30, "warmup": 1})
    assert row["latency_ms"] > 0 and row["latency_iqr_ms"] >= 0
    import torch._inductor.config as inductor_config

    assert inductor_config.freezing is False  # the setting was patched only while timing


def datasets_first(data, n: int):
    from dataclasses import replace

    from prune_core.data import Split

    return replace(data, train=Split(data.train.x[:n], data.train.y[:n]))


def test_onnxruntime_latency_times_the_exported_model(monkeypatch):
    model = models.build("vgg11", width=0.0625)
    sessions = []
    real = measure.onnx_session

    def recording(*args):
        run = real(*args)
        sessions.append(args)
        return lambda x: (sessions.append(x.shape), run(x))[1]

    monkeypatch.setattr(measure, "onnx_session", recording)
    row = measure.measure_latency(model, (3, 16, 16), batch=[1, 16], runs=30, warmup=2,
                                  threads=1, runtime="onnxruntime")
    assert sessions[0][2] == 1  # one intra-op thread, as asked
    # every timed call ran through ONNX Runtime, on numpy batches of each size
    calls = sessions[1:]
    assert calls.count((1, 3, 16, 16)) >= 32 and calls.count((16, 3, 16, 16)) >= 32
    assert set(calls) == {(1, 3, 16, 16), (16, 3, 16, 16)}
    assert row["latency_ms_b16"] > row["latency_ms_b1"] > 0
    with pytest.raises(ValueError, match="allowed: torch, onnxruntime"):
        measure.measure_latency(model, (3, 16, 16), runtime="tensorrt")
