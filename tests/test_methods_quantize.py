"""int8 post-training quantization (torchao PT2E): size, accuracy, float layers, chains."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prune_core.measure import measure, size_bytes
from prune_core.methods import ParamError, parse_chain
from prune_core.methods import quantize as Q
from prune_core.train import evaluate
from prune_core.trial import TrialSpec, run_trial


def _spec(methods) -> TrialSpec:
    return TrialSpec(model="vgg11", model_kw={"width": 0.25}, data="digits",
                     baseline={"epochs": 12, "lr": 0.05}, methods=methods)


def _int8_elements(q: nn.Module) -> int:
    return sum(t.numel() for t in q.buffers() if t.dtype == torch.int8)


@pytest.fixture(scope="module")
def quantized(base_vgg):
    """The base model through the quantize stage of run_trial, and the row."""
    row = run_trial({"study": _spec("quantize"), "params": {}}, base=base_vgg)
    return row


def test_int8_model_is_a_quarter_of_the_bytes_within_one_point(quantized, base_vgg):
    row = quantized
    assert row["size_bytes"] <= 0.3 * base_vgg.row["size_bytes"]
    assert row["accuracy_drop"] <= 0.01
    # params and MACs count the float structure the int8 model came from
    assert row["params"] == base_vgg.row["params"]
    assert row["macs"] == base_vgg.row["macs"]


def test_converted_graph_stores_int8_weights_and_no_float_copies(base_vgg, digits):
    model = base_vgg.build()
    q = Q.quantize_model(model, digits, calibration_batches=2, per_channel=True)
    weights = {n: m.weight for n, m in model.named_modules()
               if isinstance(m, nn.Conv2d | nn.Linear)}
    assert _int8_elements(q) == sum(w.numel() for w in weights.values())
    float_bytes = sum(p.numel() * p.element_size() for p in q.parameters())
    assert float_bytes < 4 * 2000  # only biases are left in float
    assert size_bytes(q) == measure(q, digits.input_shape, structure=q.float_structure)[
        "size_bytes"]
    # evaluable like any model: eval()/train() are harmless, outputs match the float model
    q.eval()
    x, _ = next(digits.batches("test", 64))
    agree = (q(x).argmax(1) == model.eval()(x).argmax(1)).float().mean()
    assert float(agree) > 0.97
    assert q.float_structure is not None and "float_structure" not in dict(q.named_modules())


def test_per_tensor_and_float_layers(base_vgg, digits):
    model = base_vgg.build()
    per_channel = Q.quantize_model(model, digits, calibration_batches=2, per_channel=True)
    per_tensor = Q.quantize_model(model, digits, calibration_batches=2, per_channel=False)
    # one scale per tensor instead of one per output channel
    assert size_bytes(per_tensor) < size_bytes(per_channel)
    assert evaluate(per_tensor, digits, "test")["accuracy"] > 0.9
    kept = Q.quantize_model(model, digits, calibration_batches=2, per_channel=True,
                            keep_float="first_last")
    assert Q.float_layers(model, "first_last") == ["features.conv0", "classifier"]
    first_last = model.features.conv0.weight.numel() + model.classifier.weight.numel()
    assert _int8_elements(kept) == _int8_elements(per_channel) - first_last
    assert size_bytes(kept) > size_bytes(per_channel)


def test_slimming_then_quantize_compounds_both_savings(quantized, base_vgg):
    params = {"slimming.lambda": 3e-2, "slimming.prune_ratio": 0.5,
              "slimming.sparsity_epochs": 2, "slimming.finetune_epochs": 1,
              "quantize.calibration_batches": 2}
    row = run_trial({"study": _spec(["slimming", "quantize"]), "params": params},
                    base=base_vgg)
    assert row["method"] == "slimming+quantize"
    assert row["params"] < 0.5 * base_vgg.row["params"]  # counted on the pruned structure
    assert row["size_bytes"] < quantized["size_bytes"]  # below quantization alone
    assert row["size_bytes"] < 0.3 * 4 * row["params"]  # slimming alone stores 4 B a param
    assert row["slimming.channels_removed"] == 344


def test_magnitude_then_quantize_runs(base_vgg):
    params = {"magnitude.ratio": 0.5, "magnitude.finetune_epochs": 0,
              "quantize.calibration_batches": 1}
    row = run_trial({"study": _spec(["magnitude", "quantize"]), "params": params},
                    base=base_vgg)
    assert row["status"] == "ok" and row["accuracy"] > 0.5
    assert row["nonzero_params"] < 0.55 * row["params"]


def test_quantize_must_be_the_last_stage():
    with pytest.raises(ParamError, match="last stage"):
        parse_chain(["quantize", "slimming"])


class _SharedRelu(nn.Module):
    """A stem and torchvision's own ResNet block, which applies one ReLU module twice
    (after its first conv and after the residual addition)."""

    def __init__(self):
        super().__init__()
        from torchvision.models.resnet import BasicBlock
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        self.block = BasicBlock(16, 16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(self.block(self.stem(x)).mean((2, 3)))


def test_a_module_called_twice_quantizes(digits):
    # The quantizer refused torchvision's ResNets: the shared ReLU made one pattern with
    # two outputs ("Input partition has more than one output node").
    torch.manual_seed(0)
    model = _SharedRelu().eval()
    q = Q.quantize_model(model, digits, calibration_batches=2, per_channel=True)
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert _int8_elements(q) == sum(w.numel() for w in weights)
    x, _ = next(digits.batches("test", 64))
    with torch.no_grad():
        ref = model(x)
        assert (q(x) - ref).norm() < 0.1 * ref.norm()
