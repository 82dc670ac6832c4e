"""Training loop: settings checked, metrics right, divergence caught, resume exact."""

from __future__ import annotations

import copy
import json
import math
import re
import subprocess
import sys

import pytest
import torch
from torch import nn

from prune_core import data as datasets
from prune_core import models
from prune_core.train import (
    TrainConfig,
    TrainingDiverged,
    bn_stats_stale,
    evaluate,
    fit,
    make_optimizer,
    memory_format,
)
from tests.conftest import ROOT


@pytest.mark.parametrize("field, value, allowed", [
    ("lr", 0.0, "a finite number > 0"), ("lr", math.inf, "a finite number > 0"),
    ("lr", math.nan, "a finite number > 0"), ("momentum", 1.0, r"a number in \[0, 1\)"),
    ("schedule", "poly", "one of cosine"), ("batch_size", 0, r"an integer in \[1, "),
    ("patience", 0, r"an integer in \[1, "), ("epochs", 2.5, r"an integer in \[0, "),
    ("epochs", True, r"an integer in \[0, "), ("epochs", 10**9, r"an integer in \[0, "),
    ("milestones", (0.9, 0.5), "increasing fractions"), ("milestones", (2,), "increasing"),
    ("gamma", math.nan, r"a number in \[0, 1\]"), ("seed", 2**40, r"an integer in \[0, 2"),
])
def test_bad_settings_name_field_value_and_domain(field, value, allowed):
    shown = re.escape(repr(value))
    with pytest.raises(ValueError, match=rf"{field} = {shown} is invalid; allowed: {allowed}"):
        TrainConfig(**{field: value})


def test_unknown_setting_lists_the_allowed_ones():
    with pytest.raises(ValueError, match="unknown training setting.*epochz.*allowed: epochs"):
        TrainConfig.from_dict({"epochz": 3})


class _Fixed(nn.Module):
    """Predicts class 0 for every input: accuracy is class 0's share, balanced is 1/classes."""

    def __init__(self, classes):
        super().__init__()
        self.classes = classes
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        out = torch.zeros(x.shape[0], self.classes)
        out[:, 0] = 1
        return out + self.dummy


def test_balanced_accuracy_is_mean_per_class_recall(digits):
    row = evaluate(_Fixed(digits.num_classes), digits, "test")
    share0 = float((digits.test.y == 0).float().mean())
    assert row["accuracy"] == pytest.approx(share0)
    assert row["balanced_accuracy"] == pytest.approx(1 / digits.num_classes)


def test_classifier_gets_its_own_learning_rate():
    model = models.build("vgg11", width=0.25)
    opt = make_optimizer(model, TrainConfig(lr=5e-4, classifier_lr=5e-3))
    rates = sorted(g["lr"] for g in opt.param_groups)
    assert rates == [5e-4, 5e-3]
    head = {id(p) for p in model.classifier.parameters()}
    fast = next(g for g in opt.param_groups if g["lr"] == 5e-3)
    assert {id(p) for p in fast["params"]} == head


def test_divergence_raises(digits):
    model = models.build("c3", k=4)
    with pytest.raises(TrainingDiverged, match="loss became"):
        fit(model, digits, TrainConfig(epochs=2, lr=1e6, momentum=0.0))


def test_resumed_training_equals_uninterrupted(digits):
    cfg = TrainConfig(epochs=3, lr=0.05, seed=3)
    torch.manual_seed(0)
    start = models.build("c3", k=4)
    straight = copy.deepcopy(start)
    fit(straight, digits, cfg)

    saved = {}

    def keep(epoch, opt):
        if epoch == 1:
            saved["model"] = copy.deepcopy(part.state_dict())
            saved["opt"] = copy.deepcopy(opt.state_dict())

    part = copy.deepcopy(start)
    fit(part, digits, cfg, on_epoch_state=keep)
    resumed = copy.deepcopy(start)
    resumed.load_state_dict(saved["model"])
    opt = make_optimizer(resumed, cfg)
    opt.load_state_dict(saved["opt"])
    history = fit(resumed, digits, cfg, start_epoch=1, optimizer=opt)
    assert [h["epoch"] for h in history] == [2, 3]
    for k, v in straight.state_dict().items():
        assert torch.allclose(v.float(), resumed.state_dict()[k].float(), atol=1e-5), k


def test_early_stopping_stops_and_keeps_best(digits):
    model = models.build("c3", k=4)
    # A learning rate of zero after the first epoch: validation accuracy cannot improve.
    cfg = TrainConfig(epochs=8, lr=0.05, patience=2, schedule="step", milestones=(0.1,),
                      gamma=0.0)
    history = fit(model, digits, cfg)
    assert len(history) == 3
    best = max(h["val_accuracy"] for h in history)
    assert evaluate(model, digits, "val")["accuracy"] == pytest.approx(best)


def test_early_stopping_can_watch_balanced_accuracy(digits):
    model = models.build("c3", k=4)
    cfg = TrainConfig(epochs=3, lr=0.05, patience=3, monitor="balanced_accuracy")
    history = fit(model, digits, cfg)
    best = max(h["val_balanced_accuracy"] for h in history)
    assert evaluate(model, digits, "val")["balanced_accuracy"] == pytest.approx(best)


def test_classifier_rate_reaches_every_linear_layer_with_all():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 30 * 30, 8),
                          nn.ReLU(), nn.Linear(8, 10))
    for layers, fast_layers in (("last", [model[4]]), ("all", [model[2], model[4]])):
        opt = make_optimizer(model, TrainConfig(lr=1e-3, classifier_lr=1e-2,
                                                classifier_layers=layers))
        fast = next(g for g in opt.param_groups if g["lr"] == 1e-2)
        assert {id(p) for p in fast["params"]} == {id(p) for m in fast_layers
                                                   for p in m.parameters()}


def test_new_settings_at_their_defaults_keep_cached_base_keys():
    from prune_core.baseline import BaseSpec

    plain = BaseSpec(model="c3", train=TrainConfig(epochs=2))
    assert "monitor" not in json.dumps(TrainConfig(epochs=2).key_dict())
    assert BaseSpec(model="c3", train=TrainConfig(epochs=2, monitor="accuracy")).key() == \
        plain.key()
    assert BaseSpec(model="c3", train=TrainConfig(epochs=2, monitor="balanced_accuracy")
                    ).key() != plain.key()


def test_the_cpu_trains_contiguous_and_cuda_channels_last():
    assert memory_format(torch.device("cpu")) is torch.contiguous_format
    assert memory_format(torch.device("cuda")) is torch.channels_last


# A ResNet-20 slimmed on its dependency groups to uneven widths, then trained by ``fit``:
# on torch 2.14.1's CPU kernels this crashed the process (segfault, "double free or
# corruption") while ``fit`` trained every model in channels_last.
CRASH = """
import torch
from prune_core import data as D, models as M
from prune_core.methods.slimming import prune
from prune_core.train import TrainConfig, fit
torch.set_num_threads(2)
torch.manual_seed(0)
data = D.load("digits")
m = M.build("resnet20", num_classes=10)
with torch.no_grad():
    for bn in m.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.weight.uniform_(0, 1)
prune(m, 0.5, data, fold_bias=False)
counts = sorted({c.out_channels for c in m.modules() if isinstance(c, torch.nn.Conv2d)})
assert any(c % 16 for c in counts), counts
fit(m, data, TrainConfig(epochs=2, lr=0.05, seed=0))
assert all(p.is_contiguous() for p in m.parameters())
print("trained", counts)
"""


# timm's repvgg_a0, unpruned (every width a multiple of 16), died the same way in
# channels_last backward in 3 of 3 runs.
REPVGG = """
import dataclasses, timm, torch
from prune_core import data as D
from prune_core.train import TrainConfig, fit
torch.set_num_threads(1)
torch.manual_seed(0)
data = D.load("digits", image_size=32)
data = dataclasses.replace(data, train=D.Split(data.train.x[:64], data.train.y[:64]))
m = timm.create_model("repvgg_a0", num_classes=10)
fit(m, data, TrainConfig(epochs=1, lr=0.01, batch_size=4, seed=0))
print("trained")
"""


@pytest.mark.slow
@pytest.mark.parametrize("script", [CRASH, REPVGG], ids=["resnet20-uneven", "repvgg_a0"])
def test_networks_that_crashed_channels_last_backward_train_in_their_own_process(script):
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert proc.stdout.startswith("trained")


def _slow_bn_net(momentum: float) -> nn.Module:
    """A small conv net whose BatchNorms average as slowly as MobileNetV3's (0.01)."""
    def cbr(c_in, c_out):
        return [nn.Conv2d(c_in, c_out, 3, 2, 1, bias=False),
                nn.BatchNorm2d(c_out, momentum=momentum), nn.ReLU()]
    return nn.Sequential(*cbr(3, 16), *cbr(16, 32), *cbr(32, 32), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(32, 10))


def test_slowly_averaged_batchnorm_is_reestimated_before_evaluation(monkeypatch):
    """With BN momentum 0.01, a dozen steps leave the running statistics at about their
    starting values: the model trains well and evaluates far below what it learned
    (at chance on 32-pixel digits). Evaluation inside fit re-estimates them while they
    are stale."""
    assert bn_stats_stale(_slow_bn_net(0.1), 13) and not bn_stats_stale(_slow_bn_net(0.1), 14)
    assert not bn_stats_stale(_slow_bn_net(0.1).eval(), 1)  # frozen statistics stay
    assert bn_stats_stale(_slow_bn_net(0.01), 137)
    assert not bn_stats_stale(nn.Sequential(nn.BatchNorm2d(4, momentum=None)), 1)
    digits = datasets.load("digits", image_size=16)
    cfg = TrainConfig(epochs=6, lr=0.1, seed=0)
    torch.manual_seed(0)
    model = _slow_bn_net(0.01)
    start = copy.deepcopy(model.state_dict())
    history = fit(model, digits, cfg)
    assert history[-1]["val_accuracy"] > 0.6, history[-1]
    assert evaluate(model, digits, "test")["accuracy"] > 0.6
    # The same training with the statistics left as they are evaluates near chance.
    monkeypatch.setattr("prune_core.train.STALE_BN", 1.0)
    model.load_state_dict(start)
    stale = fit(model, digits, cfg)
    assert stale[-1]["train_accuracy"] > 0.6, stale[-1]
    assert stale[-1]["val_accuracy"] < history[-1]["val_accuracy"] - 0.25, (stale, history)
