"""The base model as it is: the reference row of every study."""

from __future__ import annotations

from torch import nn

from prune_core.methods._registry import register_method


@register_method("none", doc="the base model unchanged (reference point)")
def none(model: nn.Module, params: dict, ctx) -> nn.Module:
    return model
