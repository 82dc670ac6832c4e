"""What validate accepts, a trial runs: the rehearsal of each chain at the corners of its
space, on the structures users' networks are built from."""

from __future__ import annotations

import subprocess

import pytest
import yaml
from torch import nn

from prune_core.methods import parse_chain
from prune_core.rehearsal import rehearse
from studies._check_model import rehearsal_points
from studies._values import ParamSpace
from studies.spec import SpecError, parse_spec
from tests.conftest import ROOT
from tests.user_models import dense_gate_net, fixed_head_net

# The dense-block user model (conv(x) concatenated with x, a depthwise conv, a
# squeeze-excite gate, a residual addition) with every method, validated and run as a
# trial, is the "user" row of tests/test_any_network.py.


def _spec(method: str, model: dict, size: int = 16) -> dict:
    space = {"slimming": {"prune_ratio": {"low": 0.3, "high": 0.9}, "sparsity_epochs": 1,
                          "finetune_epochs": 1},
             "magnitude": {"mode": "structured", "ratio": {"low": 0.3, "high": 0.9},
                           "finetune_epochs": 1}}[method]
    return {"name": f"rehearsal-{method}", "model": model, "methods": method,
            "data": {"name": "digits", "image_size": size}, "baseline": {"epochs": 4},
            "trials": 1, "objectives": {"accuracy": "max", "macs": "min"},
            "space": {f"{method}.{k}": v for k, v in space.items()}}


def test_a_head_that_hard_codes_its_channels_is_refused_naming_it(tmp_path):
    spec = _spec("slimming", {"import": "tests.user_models:fixed_head_net"})
    with pytest.raises(SpecError) as err:
        parse_spec(spec)
    line = next(e for e in err.value.errors if e.startswith("methods"))
    assert "in module '2'" in line and "slimming.prune_ratio=0.9" in line, line
    assert "shape" in line and "narrow the space" in line
    # Removing no channels at all runs: unstructured magnitude is accepted on it.
    spec = {**spec, "methods": "magnitude",
            "space": {"magnitude.mode": "unstructured", "magnitude.ratio": 0.9}}
    assert parse_spec(spec).model == "import:tests.user_models:fixed_head_net"
    # prune-study validate says the same, exits 2, and shows no traceback.
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(_spec("magnitude", {"import":
                                                       "tests.user_models:fixed_head_net"})))
    proc = subprocess.run([str(ROOT / ".venv/bin/prune-study"), "validate", str(path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "in module '2'" in out and "Traceback" not in out, out


class _AuxHeads(nn.Module):
    """Returns (logits, auxiliary logits) while training, as GoogLeNet does."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
        self.fc = nn.Linear(8, 10)
        self.aux = nn.Linear(8, 10)

    def forward(self, x):
        h = self.conv(x).mean((2, 3))
        return (self.fc(h), self.aux(h)) if self.training else self.fc(h)


def test_a_model_whose_training_forward_is_not_logits_is_refused():
    failure = rehearse(_AuxHeads, parse_chain(["none"]), [{"none.finetune_epochs": 1}],
                       (3, 8, 8))
    assert failure is not None and failure.stage is None
    assert "the model as built failed" in str(failure)
    assert "not a tensor of logits" in str(failure)
    assert "aux_logits: false" in str(failure)


def test_the_rehearsal_takes_the_high_ends_then_the_low_ends_and_every_choice():
    space = {"m.ratio": ParamSpace("m.ratio", "float", 0.1, 0.9),
             "m.epochs": ParamSpace("m.epochs", "int", 1, 5),
             "m.round_to": ParamSpace("m.round_to", "categorical", choices=(1, 8, 16)),
             "m.mode": ParamSpace("m.mode", "fixed", value="structured"),
             "other.ratio": ParamSpace("other.ratio", "float", 0.2, 0.4)}
    points = rehearsal_points(space, ["m"])
    assert points == [
        {"m.ratio": 0.9, "m.epochs": 5, "m.round_to": 1, "m.mode": "structured"},
        {"m.ratio": 0.1, "m.epochs": 1, "m.round_to": 8, "m.mode": "structured"},
        # a third choice is a third point: it can be the one a structure refuses
        {"m.ratio": 0.9, "m.epochs": 5, "m.round_to": 16, "m.mode": "structured"},
    ]


def test_every_point_is_rehearsed_until_one_fails():
    """A ratio the head survives passes; the same model fails at the corner that removes
    channels from the group feeding the head."""
    chain = parse_chain(["magnitude"])
    low = {"magnitude.mode": "unstructured", "magnitude.ratio": 0.5}
    high = {"magnitude.mode": "structured", "magnitude.ratio": 0.5}
    assert rehearse(fixed_head_net, chain, [low], (3, 8, 8)) is None
    failure = rehearse(fixed_head_net, chain, [low, high], (3, 8, 8))
    assert failure is not None and failure.values == high and failure.module == "2"
    assert rehearse(dense_gate_net, chain, [low, high], (3, 8, 8)) is None
