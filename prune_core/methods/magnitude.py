"""Magnitude pruning: L1-unstructured weights (per layer or global) or Ln-structured filters.

Unstructured mode zeroes the ``ratio`` smallest-|w| weights of every conv and linear
layer (``scope=layer``) or of all of them together (``scope=global``, one threshold),
as ``torch.nn.utils.prune.l1_unstructured`` / ``global_unstructured`` do, and holds
those zeros fixed through fine-tuning with :class:`prune_core.surgery.Masks`. The
deployed weights are plain tensors with zeros: no pruning hooks are left behind.

Structured mode ranks the channels of each dependency group by the Ln norm of their
filters (as ``torch.nn.utils.prune.ln_structured(dim=0)`` ranks one layer's filters;
in a group, averaged over its coupled convs) and removes the weakest ``ratio`` of
each group physically, with every layer coupled to them, so params and MACs fall.

The surviving weights keep their trained values (``keep``), or are re-initialised
(``random``), or are set back to initial values (``rewind``, Frankle & Carbin 2019).
The base model's true initial weights are not stored, so ``rewind`` takes those of
a model freshly built under the study seed, and ``random`` those of one built under
another seed: both are draws from the same initialisation, one reproducible per seed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from prune_core.groups import ChannelGroup, channel_groups, group_norms, keep_every_conv, round_plan
from prune_core.methods._allocation import (
    GENERATED,
    Allocation,
    allocation_param,
    group_ratios,
    select,
)
from prune_core.methods._registry import ROUND_TO, Param, ParamError, register_method
from prune_core.surgery import Masks, remove_channels

if TYPE_CHECKING:
    from prune_core.methods._context import Context

RANDOM_SEED_OFFSET = 7919  # ``random`` re-initialises under seed + this, ``rewind`` under seed


def weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Conv and linear layers by name (the ones magnitude pruning touches)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}


def _smallest(values: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of exactly the ``k`` smallest entries (ties broken by position)."""
    mask = torch.zeros(values.numel(), dtype=torch.bool, device=values.device)
    if k > 0:
        mask[torch.argsort(values.flatten(), stable=True)[:k]] = True
    return mask.view_as(values)


@torch.no_grad()
def unstructured_masks(model: nn.Module, ratio: float, scope: str) -> dict[str, torch.Tensor]:
    """Keep-masks (1 keep, 0 pruned) removing ``ratio`` of the weights by |w|."""
    layers = weight_layers(model)
    if scope == "layer":
        return {n: (~_smallest(m.weight.abs(), int(round(ratio * m.weight.numel())))).float()
                for n, m in layers.items()}
    flat = torch.cat([m.weight.abs().flatten() for m in layers.values()])
    pruned = _smallest(flat, int(round(ratio * flat.numel())))
    masks, start = {}, 0
    for n, m in layers.items():
        size = m.weight.numel()
        masks[n] = (~pruned[start:start + size]).float().view_as(m.weight)
        start += size
    return masks


def filter_groups(model: nn.Module, input_shape: tuple[int, ...]) -> list[ChannelGroup]:
    """The groups structured mode prunes: every group of at least two channels."""
    return channel_groups(model, input_shape, min_size=2)


def filter_plan(model: nn.Module, ratio: float, n: float, input_shape: tuple[int, ...],
                round_to: int = 1, allocation: str = "uniform",
                ratios: dict[str, float] | None = None) -> dict[str, list[int]]:
    """The ``round(ratio * C)`` channels of smallest Ln norm in each group (>= 1 kept),
    each pruned group keeping a multiple of ``round_to`` channels; with ``ratios``, each
    group's own share, and with ``allocation: global`` the ``ratio`` of all channels
    with the smallest norms (each group's divided by its mean, so wide and narrow layers
    compete on one scale)."""
    groups = filter_groups(model, input_shape)
    scores = group_norms(model, groups, p=n)
    if allocation == "global":
        scores = {k: v / v.mean().clamp_min(1e-12) for k, v in scores.items()}
    plan = round_plan(select(scores, allocation, ratio, ratios), scores, round_to)
    return keep_every_conv(plan, groups, scores)


def _reinitialised(model: nn.Module, how: str, ctx: Context) -> nn.Module:
    if how == "keep":
        return model
    if ctx.fresh_model is None:
        raise ParamError(f"{ctx.stage or 'magnitude'}.reinit = {how!r} needs a context that can "
                         f"build a fresh model (run it through run_trial)")
    seed = ctx.seed + (RANDOM_SEED_OFFSET if how == "random" else 0)
    return ctx.fresh_model(seed).to(ctx.device)


def _sizes(model: nn.Module) -> dict[str, int]:
    return {n: m.weight.numel() for n, m in weight_layers(model).items()}


def compatible(model: nn.Module, input_shape: tuple[int, ...]) -> str | None:
    """Why magnitude pruning has nothing to act on in ``model`` (None: it has)."""
    if not weight_layers(model):
        return "no conv or linear layer"
    if not channel_groups(model, input_shape, min_size=2):
        return "no group of conv channels that structured mode could remove"
    return None


@register_method(
    "magnitude",
    check=compatible,
    doc="magnitude pruning: L1-unstructured (layer or global) or Ln-structured filters",
    seed="002",
    params=[
        Param(name="mode", kind="categorical", default="unstructured",
              choices=("unstructured", "structured"),
              doc="zero single weights, or remove whole filters physically",
              search={"choices": ["unstructured", "structured"]}),
        Param(name="scope", kind="categorical", default="global", choices=("layer", "global"),
              doc="unstructured: one threshold per layer or one over all layers",
              search={"choices": ["layer", "global"]}),
        Param(name="ratio", kind="float", default=0.5, low=0, high=1, high_open=True,
              doc="share of weights (unstructured) or of each layer's filters (structured) "
                  "removed", search={"low": 0.1, "high": 0.98}),
        allocation_param("uniform"),
        Param(name="n", kind="categorical", default=2, choices=(1, 2),
              doc="structured: the norm ranking filters (L1 or L2)",
              search={"choices": [1, 2]}),
        Param(name="reinit", kind="categorical", default="keep",
              choices=("keep", "random", "rewind"),
              doc="surviving weights: trained values, a fresh random draw, or the initial "
                  "values of a model built under the study seed",
              search={"choices": ["keep", "random", "rewind"]}),
        Param(name="finetune_epochs", kind="int", default=10, low=0, high=1000,
              doc="fine-tuning epochs after pruning", search={"low": 0, "high": 20}),
        Param(name="lr", kind="float", default=0.01, low=0, low_open=True, high=10,
              doc="learning rate of fine-tuning", search={"low": 1e-3, "high": 0.1, "log": True}),
        ROUND_TO,
    ],
    allocation=Allocation("ratio", filter_groups),
)
def magnitude(model: nn.Module, params: dict, ctx: Context) -> nn.Module:
    """Prune by weight magnitude (single weights or whole filters), then fine-tune."""
    before = _sizes(model)
    hooks = None
    if params["mode"] == "unstructured":
        masks = unstructured_masks(model, params["ratio"], params["scope"])
        model = _reinitialised(model, params["reinit"], ctx)
        keep = Masks({n: m.to(ctx.device) for n, m in masks.items()})
        keep.apply(model)
        hooks = keep.hooks()
        ctx.result("layer_sparsity", keep.sparsity())
    else:
        ratios = group_ratios(params, "ratio", model, filter_groups(model, ctx.input_shape),
                              ctx.input_shape) if params["allocation"] in GENERATED else None
        plan = filter_plan(model, params["ratio"], params["n"], ctx.input_shape,
                           params["round_to"], params["allocation"], ratios)
        model = _reinitialised(model, params["reinit"], ctx)
        remove_channels(model, {k: v for k, v in plan.items() if v}, ctx.input_shape)
        after = _sizes(model)
        ctx.result("filters_removed", sum(len(v) for v in plan.values()))
        ctx.result("filters_removed_by_layer", {k: len(v) for k, v in plan.items()})
        ctx.result("groups", len(plan))
        ctx.result("layer_sparsity",
                   {k: 1.0 - after[k] / v for k, v in before.items() if k in after})
    if params["finetune_epochs"] > 0:
        ctx.fit(model, params["finetune_epochs"], phase="finetune", hooks=hooks,
                lr=params["lr"])
    return model


__all__ = ["filter_groups", "filter_plan", "unstructured_masks", "weight_layers"]
