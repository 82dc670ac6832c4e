"""Filter-level helpers shared by the methods that rank or replace filters (TransTailor,
RePr, branch, slimming): every conv layer, the BatchNorm that follows it and the layers
that read its filters, found on the dependency graph."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

import prune_core.models as models
from prune_core.groups import Reader, dependency_graph, follower_bn, group_of, output_layers

if TYPE_CHECKING:
    from prune_core.methods._context import Context


@dataclass(frozen=True)
class ConvUnit:
    """A conv layer, the BatchNorm that alone follows it (or None), and the layers reading
    its filters' outputs through their weights, from the dependency graph.

    ``readers`` is empty where the conv adds into channels other convs write too (a
    residual block's last conv): there no reader's input carries this conv's filter alone;
    and where a channel shuffle permutes its channels (the graph cannot map them).
    """

    conv: str
    bn: str | None
    readers: tuple[Reader, ...]


def conv_units(model: nn.Module, input_shape: tuple[int, ...]) -> list[ConvUnit]:
    """Every conv layer but an output layer, in module order, with its BN and readers."""
    graph = dependency_graph(model, input_shape)
    names = {m: n for n, m in model.named_modules()}
    skip = output_layers(model)
    units = []
    for name, m in model.named_modules():
        if not isinstance(m, nn.Conv2d) or m in skip:
            continue
        g = group_of(model, graph, name)
        bn = follower_bn(graph, m)
        units.append(ConvUnit(name, names.get(bn) if bn is not None else None,
                              () if g is None or g.coupled else tuple(g.readers)))
    return units


def filter_counts(model: nn.Module) -> dict[str, int]:
    """Output channels of each conv layer."""
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def total_filters(model: nn.Module) -> int:
    """Output channels of all conv layers together."""
    return sum(filter_counts(model).values())


@torch.no_grad()
def zero_input_channels(model: nn.Module, unit: ConvUnit, idx: torch.Tensor) -> None:
    """Zero the weights through which the readers of ``unit.conv`` see its filters ``idx``.

    The graph maps each filter to its readers' input indices: offsets behind a
    concatenation, and ``h * w`` columns of a linear layer behind a flatten.
    """
    if len(idx) == 0:
        return
    for rd in unit.readers:
        layer = model.get_submodule(rd.name)
        layer.weight[:, rd.columns(idx).to(layer.weight.device)] = 0


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


def saved_result(ctx: Context, key: str, default=None):
    """A result column saved before a checkpoint (what a resumed method replays over)."""
    full = f"{ctx.stage}.{key}" if ctx.stage else key
    return ctx.results.get(full, default)


__all__ = [
    "ConvUnit", "conv_units", "filter_counts", "fresh_copy", "saved_result", "total_filters",
    "zero_input_channels",
]
