"""Filter-level helpers shared by TransTailor, RePr and parallel-branch pruning.

They address the plain sequential CNNs of the registry (VGG, C3 and torchvision's
``vgg16_bn``): every conv layer, the BatchNorm right after it (if any) and the
layer that consumes its channels next.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from prune_core import models
from prune_core.surgery import conv_followers


@dataclass(frozen=True)
class ConvUnit:
    """A conv layer, its BatchNorm (or None) and the conv / linear layer fed by it."""

    conv: str
    bn: str | None
    next: str | None


def conv_units(model: nn.Module) -> list[ConvUnit]:
    """Every conv layer of a sequential CNN in forward order, with its BN and successor."""
    return [ConvUnit(name, bn, nxt) for name, (bn, nxt) in conv_followers(model).items()]


def filter_counts(model: nn.Module) -> dict[str, int]:
    """Output channels of each conv layer."""
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def total_filters(model: nn.Module) -> int:
    return sum(filter_counts(model).values())


@torch.no_grad()
def zero_input_channels(model: nn.Module, unit: ConvUnit, idx: torch.Tensor) -> None:
    """Zero the weights through which the next layer reads ``unit.conv``'s channels ``idx``.

    A linear successor reads a flattened ``[C, h, w]`` map: channel ``c`` owns the
    ``h * w`` contiguous input columns starting at ``c * h * w``.
    """
    if unit.next is None or len(idx) == 0:
        return
    nxt = model.get_submodule(unit.next)
    channels = model.get_submodule(unit.conv).out_channels
    if isinstance(nxt, nn.Conv2d):
        nxt.weight[:, idx] = 0
        return
    per = nxt.in_features // channels
    if per * channels != nxt.in_features:
        raise ValueError(f"{unit.next!r} has {nxt.in_features} inputs, not a multiple of the "
                         f"{channels} channels of {unit.conv!r}")
    cols = (idx.to(nxt.weight.device)[:, None] * per
            + torch.arange(per, device=nxt.weight.device)).reshape(-1)
    nxt.weight[:, cols] = 0


def _vgg_cfg(model: models.VGG) -> list[int | str]:
    cfg: list[int | str] = []
    for m in model.features:
        if isinstance(m, nn.Conv2d):
            cfg.append(m.out_channels)
        elif isinstance(m, nn.MaxPool2d):
            cfg.append("M")
    return cfg


def fresh_copy(model: nn.Module, seed: int) -> nn.Module:
    """The same architecture (channel counts included), initialised afresh from ``seed``.

    Registry VGG and C3 models are rebuilt by their own constructors, so the fresh
    copy gets exactly the initialisation a new model of that kind gets; any other
    model is copied and every layer's ``reset_parameters`` is called.
    """
    device = next(model.parameters()).device
    head = model.get_submodule(models.classifier_name(model))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.random.fork_rng(devices=[]):  # the caller's random stream is left untouched
        torch.manual_seed(seed)
        if isinstance(model, models.VGG):
            fresh = models.VGG(_vgg_cfg(model), head.out_features, 1.0, convs[0].in_channels)
        elif isinstance(model, models.C3) and len({c.out_channels for c in convs}) == 1:
            fresh = models.C3(head.out_features, convs[0].out_channels, convs[0].in_channels)
        else:
            fresh = copy.deepcopy(model)
            for m in fresh.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
                if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                    m.reset_running_stats()
    return fresh.to(device)


def saved_result(ctx, key: str, default=None):
    """A result column saved before a checkpoint (what a resumed method replays over)."""
    full = f"{ctx.stage}.{key}" if ctx.stage else key
    return ctx.results.get(full, default)
