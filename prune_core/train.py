"""Training, fine-tuning and evaluation loops.

``fit`` takes hooks so methods can change the gradient (slimming's L1 term,
RePr's frozen filters) or re-apply masks after each optimizer step, without
copying the loop.
"""

from __future__ import annotations

import copy
import math
import numbers
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prune_core.data import Data
from prune_core.errors import PruneStudyError
from prune_core.models import classifier_name

SCHEDULES = ("cosine", "step", "constant")
MONITORS = ("accuracy", "balanced_accuracy")


class TrainingDiverged(PruneStudyError, RuntimeError):
    """The loss became NaN or infinite."""


MAX_EPOCHS = 100_000


def _whole(v: object, low: int, high: int) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and low <= v <= high


def _real(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _milestones(v: object) -> bool:
    if not isinstance(v, tuple | list) or not all(_real(m) and 0 < m < 1 for m in v):
        return False
    return all(a < b for a, b in zip(v, v[1:], strict=False))


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run; every field is plain data so it can be hashed."""

    epochs: int = 30
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    schedule: str = "cosine"
    milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of the epochs, for "step"
    gamma: float = 0.1
    classifier_lr: float | None = None  # a separate rate for the last linear layer
    label_smoothing: float = 0.0
    patience: int | None = None  # early stopping on validation accuracy
    seed: int = 0
    # What early stopping watches on the validation split, and which Linear layers take
    # classifier_lr: "last" (the classifier) or "all" (every fully connected layer).
    monitor: str = "accuracy"
    classifier_layers: str = "last"

    def __post_init__(self) -> None:
        checks = [
            ("epochs", _whole(self.epochs, 0, MAX_EPOCHS), f"an integer in [0, {MAX_EPOCHS}]"),
            ("lr", _real(self.lr) and self.lr > 0, "a finite number > 0"),
            ("momentum", _real(self.momentum) and 0 <= self.momentum < 1, "a number in [0, 1)"),
            ("weight_decay", _real(self.weight_decay) and self.weight_decay >= 0,
             "a finite number >= 0"),
            ("batch_size", _whole(self.batch_size, 1, 2**20), "an integer in [1, 1048576]"),
            ("schedule", self.schedule in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
            ("milestones", _milestones(self.milestones),
             "increasing fractions of the epochs, each in (0, 1), e.g. [0.5, 0.75]"),
            ("gamma", _real(self.gamma) and 0 <= self.gamma <= 1, "a number in [0, 1]"),
            ("classifier_lr", self.classifier_lr is None
             or (_real(self.classifier_lr) and self.classifier_lr > 0), "a finite number > 0"),
            ("label_smoothing", _real(self.label_smoothing) and 0 <= self.label_smoothing < 1,
             "a number in [0, 1)"),
            ("patience", self.patience is None or _whole(self.patience, 1, MAX_EPOCHS),
             f"an integer in [1, {MAX_EPOCHS}]"),
            ("seed", _whole(self.seed, 0, 2**32 - 1), "an integer in [0, 2**32 - 1]"),
            ("monitor", self.monitor in MONITORS, f"one of {', '.join(MONITORS)}"),
            ("classifier_layers", self.classifier_layers in ("last", "all"), "last or all"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"{name} = {getattr(self, name)!r} is invalid; allowed: {allowed}")

    def with_(self, **kw) -> TrainConfig:
        """A copy with the given settings replaced (None leaves a setting as it is)."""
        return replace(self, **{k: v for k, v in kw.items() if v is not None})

    def to_dict(self) -> dict:
        """The settings as plain data."""
        d = asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    def key_dict(self) -> dict:
        """``to_dict`` without the settings added since cached base models were first keyed,
        where they keep their defaults: those caches stay valid."""
        d = self.to_dict()
        for name in ("monitor", "classifier_layers"):
            if d[name] == TrainConfig.__dataclass_fields__[name].default:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict | None) -> TrainConfig:
        """Settings from plain data; unknown names raise ``ValueError``."""
        d = dict(d or {})
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(
                f"unknown training setting(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(cls.__dataclass_fields__)}"
            )
        if "milestones" in d:
            d["milestones"] = tuple(d["milestones"])
        return cls(**d)


@dataclass
class Hooks:
    """Callbacks inside the training loop.

    after_backward(model): change gradients before the step (L1 terms, frozen filters).
    after_step(model): restore invariants after the step (masks held at zero).
    """

    after_backward: list[Callable[[nn.Module], None]] = field(default_factory=list)
    after_step: list[Callable[[nn.Module], None]] = field(default_factory=list)
    # After weights are restored from a checkpoint: rebuild state derived from them (masks).
    on_load: list[Callable[[nn.Module], None]] = field(default_factory=list)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; returns a generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def memory_format(device: torch.device) -> torch.memory_format:
    """The layout ``fit`` trains in: channels_last on CUDA, contiguous on the CPU.

    torch 2.14.1's CPU channels_last backward corrupts the heap (segfault, "double free or
    corruption") on networks whose channel counts are nothing unusual: a ResNet-20 pruned
    on dependency groups to uneven counts (7, 8, 9, 15, 17, ...) and timm's unpruned
    ``repvgg_a0`` (every count a multiple of 16), the latter in 3 of 3 runs of six SGD
    steps at batch 4 and 32 px. A crash kills the trial's worker, so the CPU trains
    contiguous whatever the widths, giving up the about 20 % that channels_last gained
    on an unpruned VGG here.
    """
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    """SGD with momentum; the classifier (or, with ``classifier_layers: all``, every Linear
    layer) gets its own rate when ``classifier_lr`` is set."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.classifier_lr is None:
        groups = [{"params": params, "lr": cfg.lr}]
    else:
        heads = [model.get_submodule(classifier_name(model))] if cfg.classifier_layers == \
            "last" else [m for m in model.modules() if isinstance(m, nn.Linear)]
        head_ids = {id(p) for head in heads for p in head.parameters()}
        groups = [
            {"params": [p for p in params if id(p) not in head_ids], "lr": cfg.lr},
            {"params": [p for p in params if id(p) in head_ids], "lr": cfg.classifier_lr},
        ]
    for g in groups:
        g["initial_lr"] = g["lr"]  # kept in the optimizer's state, so a resumed run reschedules
    return torch.optim.SGD(groups, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _lr_factor(cfg: TrainConfig, epoch: int) -> float:
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * epoch / max(1, cfg.epochs)))
    if cfg.schedule == "step":
        return cfg.gamma ** sum(epoch >= m * cfg.epochs for m in cfg.milestones)
    return 1.0


@torch.no_grad()
def evaluate(model: nn.Module, data: Data, split: str = "test", batch_size: int = 512) -> dict:
    """Accuracy, balanced accuracy (mean per-class recall) and mean loss on a split."""
    model.eval()
    device = data.device
    correct = torch.zeros(data.num_classes, device=device)
    total = torch.zeros(data.num_classes, device=device)
    loss_sum = 0.0
    for x, y in data.batches(split, batch_size, shuffle=False, augment=False):
        with _autocast(device):
            out = model(x)
        out = out.float()
        loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
        hit = (out.argmax(1) == y).float()
        total.index_add_(0, y, torch.ones_like(hit))
        correct.index_add_(0, y, hit)
    n = float(total.sum())
    present = total > 0
    return {
        "accuracy": float(correct.sum()) / n,
        "balanced_accuracy": float((correct[present] / total[present]).mean()),
        "loss": loss_sum / n,
    }


@torch.no_grad()
def refresh_bn_stats(model: nn.Module, data: Data, batch_size: int = 256) -> None:
    """Re-estimate every BN's running statistics over the training split (no augmentation).

    After training that moved the weights in few steps (on digits about a dozen per
    epoch), running averages with momentum 0.1 lag the trained model; an exact average
    over the training data fixes that.
    """
    was_training = model.training
    model.train()
    # BNs a wrapper keeps in eval mode (frozen statistics, as in TransTailor's alpha
    # training) are left as they are.
    bns = [m for m in model.modules()
           if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d) and m.training]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    with torch.no_grad():
        for x, _ in data.batches("train", batch_size, shuffle=False, augment=False):
            model(x)
    model.train(was_training)
    for m, mom in zip(bns, saved, strict=True):
        m.momentum = mom


# Running BN statistics still holding more than this share of what they were before
# training count as stale: evaluation re-estimates them first (see bn_stats_stale).
STALE_BN = 0.25


def bn_stats_stale(model: nn.Module, steps: int) -> bool:
    """True while some BN in training mode, after ``steps`` training batches, still holds
    more than ``STALE_BN`` of its starting running averages: ``(1 - momentum) ** steps``.

    Momentum 0.1 (PyTorch's default) is fresh after 14 batches; the 0.01 of torchvision's
    MobileNetV3 and EfficientNet only after 138, and evaluated before that such a model
    can score chance while it trains well.
    """
    return any(isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d) and m.training
               and m.track_running_stats and m.momentum is not None
               and (1 - m.momentum) ** steps > STALE_BN for m in model.modules())


def _train_epoch(model: nn.Module, data: Data, cfg: TrainConfig, opt: torch.optim.Optimizer,
                 hooks: Hooks, gen: torch.Generator, fmt: torch.memory_format):
    """One pass over the training split; returns (summed loss, hits, samples seen)."""
    device = data.device
    model.train()
    loss_sum = torch.zeros((), device=device)
    hits = torch.zeros((), device=device)
    seen = 0
    for x, y in data.batches("train", cfg.batch_size, generator=gen):
        x = x.contiguous(memory_format=fmt)
        with _autocast(device):
            out = model(x)
            loss = F.cross_entropy(out.float(), y, label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for h in hooks.after_backward:
            h(model)
        opt.step()
        for h in hooks.after_step:
            h(model)
        loss_sum += loss.detach() * len(y)
        hits += (out.argmax(1) == y).sum()
        seen += len(y)
    return loss_sum, hits, seen


def fit(
    model: nn.Module,
    data: Data,
    cfg: TrainConfig,
    *,
    hooks: Hooks | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    start_epoch: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    on_epoch_state: Callable[[int, torch.optim.Optimizer], None] | None = None,
    early_stopping: dict | None = None,
) -> list[dict]:
    """Train ``model`` in place for ``cfg.epochs`` epochs and return the per-epoch history.

    ``on_epoch_state(epochs_done, optimizer)`` lets the caller checkpoint after each
    epoch; ``start_epoch`` and ``optimizer`` resume from such a checkpoint.
    With ``patience`` set, training stops when the validation ``monitor`` (accuracy or
    balanced accuracy) has not improved for that many epochs, and the best weights are
    restored. Its state (``accuracy``: the best monitored value, ``stale``, ``state_dict``
    of the best epoch) lives in ``early_stopping``, updated in
    place before ``on_epoch_state`` is called: a caller that checkpoints it and passes it
    back on resuming stops and restores exactly as an uninterrupted run.
    """
    hooks = hooks or Hooks()
    device = data.device
    fmt = memory_format(device)
    model.to(device=device, memory_format=fmt)
    seed_everything(cfg.seed + start_epoch)
    opt = optimizer or make_optimizer(model, cfg)
    base_lrs = [g.get("initial_lr", g["lr"]) for g in opt.param_groups]
    history: list[dict] = []
    best = early_stopping if early_stopping is not None else {}
    for key, value in (("accuracy", -1.0), ("stale", 0), ("state_dict", None)):
        best.setdefault(key, value)
    for epoch in range(start_epoch, cfg.epochs):
        if cfg.patience is not None and best["stale"] >= cfg.patience:
            break
        t0 = time.perf_counter()
        factor = _lr_factor(cfg, epoch)
        for g, lr in zip(opt.param_groups, base_lrs, strict=True):
            g["lr"] = lr * factor
        # One generator per epoch: a run resumed at epoch k sees the same batches as one
        # that never stopped.
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        # Dropout draws from the global generator: seed it per epoch as well (and leave
        # the caller's stream as it was), so a resumed run repeats its epochs exactly.
        cuda = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(cfg.seed * 100_003 + epoch)
            loss_sum, hits, seen = _train_epoch(model, data, cfg, opt, hooks, gen, fmt)
        train_loss = float(loss_sum) / max(1, seen)
        if not math.isfinite(train_loss):
            raise TrainingDiverged(f"training loss became {train_loss} at epoch {epoch + 1}")
        if bn_stats_stale(model, (epoch + 1) * math.ceil(len(data.train) / cfg.batch_size)):
            refresh_bn_stats(model, data)
        val = evaluate(model, data, "val")
        row = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "train_accuracy": float(hits) / max(1, seen),
            "val_accuracy": val["accuracy"],
            "val_balanced_accuracy": val["balanced_accuracy"],
            "val_loss": val["loss"],
            "lr": opt.param_groups[0]["lr"],
            "epoch_seconds": time.perf_counter() - t0,
        }
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if cfg.patience is not None:
            if val[cfg.monitor] > best["accuracy"]:
                best.update(accuracy=val[cfg.monitor], stale=0,
                            state_dict=copy.deepcopy(model.state_dict()))
            else:
                best["stale"] += 1
        if on_epoch_state is not None:
            on_epoch_state(epoch + 1, opt)
    if best["state_dict"] is not None:
        model.load_state_dict(best["state_dict"])
    return history


__all__ = [
    "MAX_EPOCHS", "MONITORS", "SCHEDULES", "STALE_BN", "Hooks",
    "TrainConfig", "TrainingDiverged", "bn_stats_stale", "evaluate", "fit", "make_optimizer",
    "memory_format", "refresh_bn_stats", "seed_everything",
]
