"""Network Slimming (Liu et al., ICCV 2017): L1 on BatchNorm scale factors, then prune.

Sparsity training adds ``lambda * sign(gamma)`` to the gradient of every BN scale
factor of a prunable channel group (the subgradient of ``lambda * |gamma|``). Each
group's channels are scored by the mean |gamma| of its BNs (in a ResNet a residual
stream's channel has one BN per block writing to it); a global threshold then picks
``prune_ratio`` of all channels, and those are removed physically with everything
coupled to them. A removed channel did not emit zero: it emitted roughly a constant
(its BN shift through the ReLU). With ``fold_bias`` that constant is moved into the
layers reading it before removal, so accuracy right after pruning stays close to the
unpruned model where the removed scale factors were near zero.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from prune_core.errors import InputError
from prune_core.groups import (
    ChannelGroup,
    channel_groups,
    fold_removed,
    group_bn_scales,
    keep_every_conv,
    round_plan,
    select_global,
)
from prune_core.methods._allocation import (
    GENERATED,
    Allocation,
    allocation_param,
    group_ratios,
    select,
)
from prune_core.methods._filters import fresh_copy
from prune_core.methods._registry import ROUND_TO, Param, register_method
from prune_core.surgery import remove_channels
from prune_core.train import Hooks, evaluate, refresh_bn_stats

if TYPE_CHECKING:
    from prune_core.methods._context import Context

# A scale factor counts as near zero below this share of the mean |gamma| the model had
# when sparsity training started (a fixed reference, so the curve is comparable by epoch).
SPARSE_REL = 1e-2
# Every pruned layer keeps at least this share of its channels (and at least one).
MIN_KEEP = 0.02


class SlimmingError(InputError):
    """The model cannot be slimmed as asked."""


def slimmable(model: nn.Module, input_shape: tuple[int, ...]) -> list[ChannelGroup]:
    """The channel groups that hold BatchNorm scale factors, or an error naming the model.

    A group is every conv and BN coupled to a conv's output channels (in a ResNet, the
    whole residual stream of a stage); its channels are ranked by the mean |gamma| of
    its BNs and removed together.
    """
    groups = [g for g in channel_groups(model, input_shape) if g.bns]
    if not groups:
        raise SlimmingError(
            f"slimming needs conv layers followed by BatchNorm; {type(model).__name__} has "
            f"no channel group with a BatchNorm scale factor (e.g. C3 has no BatchNorm)"
        )
    return groups


def bn_names(groups: list[ChannelGroup]) -> list[str]:
    """Every BatchNorm of the groups, once each."""
    return list(dict.fromkeys(bn for g in groups for bn in g.bns))


def gammas(model: nn.Module, groups: list[ChannelGroup]) -> dict[str, torch.Tensor]:
    """|gamma| of every BN of the groups, by BN name (detached copies)."""
    mods = dict(model.named_modules())
    return {n: mods[n].weight.detach().abs().clone() for n in bn_names(groups)}


def l1_subgradient(lam: float, bn_names: list[str]):
    """An after_backward hook adding ``lam * sign(gamma)`` to each BN scale gradient."""

    @torch.no_grad()
    def hook(model: nn.Module) -> None:
        mods = dict(model.named_modules())
        for n in bn_names:
            w = mods[n].weight
            if w.grad is not None:
                w.grad.add_(torch.sign(w), alpha=lam)

    return hook


def select_channels(scores: dict[str, torch.Tensor], prune_ratio: float,
                    min_keep: float = MIN_KEEP) -> dict[str, list[int]]:
    """The ``round(prune_ratio * total)`` channels of smallest score over all groups.

    Each group keeps its ``max(1, ceil(min_keep * C))`` largest channels whatever the
    threshold says, so no layer is emptied.
    """
    return select_global(scores, prune_ratio, min_keep)


def sparsity_of(g: dict[str, torch.Tensor], threshold: float) -> float:
    """Share of scale factors below ``threshold``."""
    flat = torch.cat([v.flatten() for v in g.values()])
    return float((flat < threshold).float().mean())


def prune(model: nn.Module, prune_ratio: float, data, *, fold_bias: bool = True,
          groups: list[ChannelGroup] | None = None, round_to: int = 1,
          allocation: str = "global", ratios: dict[str, float] | None = None
          ) -> tuple[dict[str, list[int]], dict]:
    """Remove ``prune_ratio`` of the groups' channels by |gamma| (in place); each pruned
    group keeps a multiple of ``round_to`` channels. ``allocation`` other than global
    removes each group's share (``ratios[root]``, else ``prune_ratio``) of its own
    channels (:func:`prune_core.methods._allocation.select`).

    Returns the plan ``{root conv: [channels]}`` and which readers took the removed
    channels' mean signal (``{"folded": [...], "skipped": [...]}``).
    """
    groups = groups or slimmable(model, data.input_shape)
    scores = group_bn_scales(model, groups)
    chosen = select_channels(scores, prune_ratio) if allocation == "global" else \
        select(scores, allocation, prune_ratio, ratios)
    plan = keep_every_conv(round_plan(chosen, scores, round_to), groups, scores)
    folding = {"folded": [], "skipped": []}
    if fold_bias:
        folding = fold_removed(model, groups, plan, data)
    remove_channels(model, {k: v for k, v in plan.items() if v}, data.input_shape)
    return plan, folding


def compatible(model: nn.Module, input_shape: tuple[int, ...]) -> str | None:
    """Why slimming has nothing to act on in ``model`` (None: it has)."""
    if not any(g.bns for g in channel_groups(model, input_shape, min_size=2)):
        norms = {type(m).__name__ for m in model.modules()
                 if isinstance(m, nn.LayerNorm | nn.GroupNorm)}
        why = ("no prunable conv channels carry a BatchNorm scale factor (slimming ranks "
               "channels by them)")
        if norms:
            why += (f"; its {', '.join(sorted(norms))} normalise each channel by statistics "
                    "of all channels, so a small scale there does not mean a channel can go "
                    "without changing the others: try magnitude (structured) or transtailor")
        return why
    return None


@register_method(
    "slimming",
    check=compatible,
    doc="Network Slimming: L1 on BN scale factors, global threshold, removal, fine-tune",
    seed="001",
    params=[
        Param(name="lambda", kind="float", default=3e-2, low=0, high=1,
              doc="weight of the L1 penalty on BN scale factors (0: plain training); on "
                  "digits the effect appears near 1e-2, on CIFAR near 1e-4",
              search={"low": 1e-4, "high": 5e-2, "log": True}),
        Param(name="prune_ratio", kind="float", default=0.5, low=0, high=1, high_open=True,
              doc="share of all prunable channels removed (global |gamma| threshold; "
                  "see allocation)", search={"low": 0.1, "high": 0.95}),
        allocation_param("global"),
        Param(name="sparsity_epochs", kind="int", default=10, low=0, high=1000,
              doc="epochs of sparsity training from the base model",
              search={"low": 2, "high": 30}),
        Param(name="finetune_epochs", kind="int", default=10, low=0, high=1000,
              doc="fine-tuning epochs after removal", search={"low": 0, "high": 20}),
        Param(name="sparsity_lr", kind="float", default=0.05, low=0, low_open=True, high=10,
              doc="learning rate of sparsity training (the L1 step per batch is "
                  "sparsity_lr * lambda)", search={"low": 0.01, "high": 0.1, "log": True}),
        Param(name="lr", kind="float", default=0.01, low=0, low_open=True, high=10,
              doc="learning rate of fine-tuning after removal",
              search={"low": 1e-3, "high": 0.1, "log": True}),
        Param(name="fold_bias", kind="bool", default=True,
              doc="move each removed channel's constant output into the next layer",
              search={"choices": [True, False]}),
        Param(name="from_scratch", kind="bool", default=False,
              doc="sparsity training starts from freshly initialised weights (the paper's "
                  "and seed 001's setting) instead of the base model's",
              search={"choices": [False, True]}),
        ROUND_TO,
    ],
    constraint=lambda p: ("sparsity_epochs = 0 with from_scratch: true would prune an "
                          "untrained network; give sparsity_epochs >= 1")
    if p["from_scratch"] and p["sparsity_epochs"] == 0 else None,
    allocation=Allocation("prune_ratio", slimmable),
)
def slimming(model: nn.Module, params: dict, ctx: Context) -> nn.Module:
    """Sparsity training, global |gamma| pruning with removal, then fine-tuning."""
    if params["from_scratch"]:
        model = fresh_copy(model, ctx.seed)
    groups = slimmable(model, ctx.input_shape)
    bns = bn_names(groups)
    threshold = SPARSE_REL * float(torch.cat(list(gammas(model, groups).values())).mean())

    def extra(m: nn.Module) -> dict:
        return {"sparsity": sparsity_of(gammas(m, groups), threshold)}

    if params["sparsity_epochs"] > 0:
        hooks = Hooks(after_backward=[l1_subgradient(params["lambda"], bns)])
        ctx.fit(model, params["sparsity_epochs"], phase="sparsity", hooks=hooks, extra=extra,
                lr=params["sparsity_lr"])
    # A trial resumed inside fine-tuning still holds its checkpoint here: the model is not
    # the sparsity-trained one, the next fit call restores the pruned weights, and the
    # results recorded below were saved with the checkpoint.
    if ctx.resume is None:
        if params["sparsity_epochs"] > 0:
            refresh_bn_stats(model, ctx.data)
        g = gammas(model, groups)
        ctx.result("gammas", [float(v) for t in g.values() for v in t.tolist()])
        ctx.result("sparsity", sparsity_of(g, threshold))
        ratios = group_ratios(params, "prune_ratio", model, groups, ctx.input_shape) \
            if params["allocation"] in GENERATED else None
        plan, folding = prune(model, params["prune_ratio"], ctx.data,
                              fold_bias=params["fold_bias"], groups=groups,
                              round_to=params["round_to"], allocation=params["allocation"],
                              ratios=ratios)
        ctx.result("channels_removed", sum(len(v) for v in plan.values()))
        ctx.result("groups", len(groups))
        ctx.result("fold_skipped", folding["skipped"])
        ctx.result("accuracy_before_finetune", evaluate(model, ctx.data, "test")["accuracy"])
    if params["finetune_epochs"] > 0:
        ctx.fit(model, params["finetune_epochs"], phase="finetune", lr=params["lr"])
    return model


__all__ = [
    "MIN_KEEP", "SPARSE_REL", "SlimmingError", "bn_names", "gammas", "l1_subgradient", "prune",
    "refresh_bn_stats", "select_channels", "slimmable", "sparsity_of",
]
