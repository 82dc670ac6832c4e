"""Network Slimming (Liu et al., ICCV 2017): L1 on BatchNorm scale factors, then prune.

Sparsity training adds ``lambda * sign(gamma)`` to the gradient of every prunable BN
scale factor (the subgradient of ``lambda * |gamma|``); a global threshold on
``|gamma|`` then picks ``prune_ratio`` of all prunable channels, and those channels
are removed physically. A removed channel did not emit zero: it emitted roughly a
constant (its BN shift through the ReLU). With ``fold_bias`` that constant is moved
into the next layer before removal, so accuracy right after pruning stays close to
the unpruned model where the removed scale factors were near zero.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from prune_core.methods._registry import Param, register_method
from prune_core.surgery import conv_followers, example_input, remove_channels
from prune_core.train import Hooks, evaluate

# A scale factor counts as near zero below this share of the mean |gamma| the model had
# when sparsity training started (a fixed reference, so the curve is comparable by epoch).
SPARSE_REL = 1e-2
# Every pruned layer keeps at least this share of its channels (and at least one).
MIN_KEEP = 0.02


class SlimmingError(ValueError):
    """The model cannot be slimmed as asked."""


def plain_convs(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, tuple]:
    """Convs whose output channels reach exactly one next layer: name -> (bn, follower).

    Found through torch-pruning's dependency graph: a conv qualifies when removing one
    of its output channels touches only itself, its BatchNorm and the input channels of
    one conv or linear layer. In VGG every conv qualifies; in a ResNet only the first
    conv of each block does (the others are coupled through the skip connections).
    """
    followers = conv_followers(model)
    modules = dict(model.named_modules())
    names = {id(m): n for n, m in modules.items()}
    was_training = model.training
    model.eval()
    graph = tp.DependencyGraph().build_dependency(
        model, example_inputs=example_input(model, input_shape))
    model.train(was_training)
    out: dict[str, tuple] = {}
    for name, (bn, nxt) in followers.items():
        conv = modules[name]
        if nxt is None or conv.groups != 1 or conv.out_channels < 2:
            continue
        group = graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=[0])
        outs, ins = set(), set()
        for dep, _ in group:
            n = names.get(id(dep.target.module))
            if n is None:
                continue
            if graph.is_out_channel_pruning_fn(dep.handler):
                outs.add(n)
            if graph.is_in_channel_pruning_fn(dep.handler):
                ins.add(n)
        if outs <= {name, bn} and ins - {bn} == {nxt}:
            out[name] = (bn, nxt)
    return out


def slimmable(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, tuple]:
    """The plain convs that have a BatchNorm, or an error naming the model."""
    layers = {k: v for k, v in plain_convs(model, input_shape).items() if v[0] is not None}
    if not layers:
        raise SlimmingError(
            f"slimming needs conv layers followed by BatchNorm whose channels feed exactly "
            f"one next layer; {type(model).__name__} has none (e.g. C3 has no BatchNorm)"
        )
    return layers


def gammas(model: nn.Module, layers: dict[str, tuple]) -> dict[str, torch.Tensor]:
    """|gamma| of the BN after each prunable conv, by conv name (detached copies)."""
    mods = dict(model.named_modules())
    return {c: mods[bn].weight.detach().abs().clone() for c, (bn, _) in layers.items()}


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


def select_channels(g: dict[str, torch.Tensor], prune_ratio: float,
                    min_keep: float = MIN_KEEP) -> dict[str, list[int]]:
    """The ``round(prune_ratio * total)`` channels with the smallest |gamma| over all layers.

    Each layer keeps its ``max(1, ceil(min_keep * C))`` largest channels whatever the
    threshold says, so no layer is emptied; the count removed is exact as long as the
    other layers have enough candidates.
    """
    total = sum(v.numel() for v in g.values())
    k = int(round(prune_ratio * total))
    cand_vals, cand_ids = [], []
    for name, v in g.items():
        keep = max(1, math.ceil(min_keep * v.numel()))
        order = torch.argsort(v, stable=True)
        for idx in order[: v.numel() - keep].tolist():
            cand_vals.append(float(v[idx]))
            cand_ids.append((name, idx))
    order = sorted(range(len(cand_vals)), key=lambda i: cand_vals[i])[:k]
    plan: dict[str, list[int]] = {n: [] for n in g}
    for i in order:
        name, idx = cand_ids[i]
        plan[name].append(idx)
    return {n: sorted(v) for n, v in plan.items()}


def channel_constants(bn: nn.BatchNorm2d) -> torch.Tensor:
    """Mean output of each channel after BN and ReLU, from the BN's own parameters.

    BN normalises its input to mean ``beta`` and standard deviation ``|gamma|``; taking
    that as Gaussian, E[relu(y)] = beta * Phi(beta / s) + s * phi(beta / s), s = |gamma|.
    At gamma = 0 this is exactly relu(beta), the value the channel then always emits.
    """
    beta = bn.bias.detach()
    s = bn.weight.detach().abs().clamp_min(1e-12)
    z = beta / s
    normal = torch.distributions.Normal(0.0, 1.0)
    return beta * normal.cdf(z) + s * torch.exp(normal.log_prob(z))


@torch.no_grad()
def _input_sizes(model: nn.Module, names: set[str], input_shape: tuple[int, ...]) -> dict:
    """Spatial size of the input each named conv sees, from one forward pass."""
    mods = dict(model.named_modules())
    sizes: dict[str, tuple[int, int]] = {}
    handles = [mods[n].register_forward_pre_hook(
        lambda _m, args, n=n: sizes.__setitem__(n, tuple(args[0].shape[-2:]))) for n in names]
    was_training = model.training
    model.eval()
    try:
        model(example_input(model, input_shape))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return sizes


@torch.no_grad()
def fold_constants(model: nn.Module, plan: dict[str, list[int]], layers: dict[str, tuple],
                   input_shape: tuple[int, ...]) -> list[str]:
    """Add each removed channel's constant output to the next layer; returns skipped layers.

    Linear layer after global average pooling: add to its bias (exact). Next conv: the
    constant maps through the conv with zero padding, which at the border reaches fewer
    taps (most of a 4 x 4 map is border), so the per-channel shift is the spatial mean of
    that response; it goes into the next BN's running_mean or the conv's bias.
    """
    mods = dict(model.named_modules())
    followers = conv_followers(model)
    convs = {layers[n][1] for n, idxs in plan.items()
             if idxs and isinstance(mods[layers[n][1]], nn.Conv2d)}
    sizes = _input_sizes(model, convs, input_shape) if convs else {}
    skipped = []
    for name, idxs in plan.items():
        if not idxs:
            continue
        bn_name, nxt_name = layers[name]
        idx = torch.as_tensor(idxs, dtype=torch.long, device=mods[bn_name].weight.device)
        const = channel_constants(mods[bn_name])[idx]
        nxt = mods[nxt_name]
        w = nxt.weight[:, idx]
        if isinstance(nxt, nn.Conv2d):
            x = const.view(1, -1, 1, 1).expand(1, len(idxs), *sizes[nxt_name]).contiguous()
            out = F.conv2d(x, w, None, nxt.stride, nxt.padding, nxt.dilation)
            delta = out.mean(dim=(0, 2, 3))
            nxt_bn = followers.get(nxt_name, (None, None))[0]
        else:
            delta, nxt_bn = w @ const, None
        if nxt_bn is not None:
            mods[nxt_bn].running_mean.sub_(delta)
        elif nxt.bias is not None:
            nxt.bias.add_(delta)
        else:
            skipped.append(nxt_name)
    return skipped


@torch.no_grad()
def refresh_bn_stats(model: nn.Module, data, batch_size: int = 256) -> None:
    """Re-estimate every BN's running statistics over the training split (no augmentation).

    Digits gives about a dozen steps per epoch, too few for running averages with
    momentum 0.1 to follow the shrinking scale factors, so the evaluated model lags the
    trained one; an exact average over the training data fixes that.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    was_training = model.training
    model.train()
    for x, _ in data.batches("train", batch_size, shuffle=False, augment=False):
        model(x)
    model.train(was_training)
    for m, mom in zip(bns, saved, strict=True):
        m.momentum = mom


def sparsity_of(g: dict[str, torch.Tensor], threshold: float) -> float:
    """Share of scale factors below ``threshold``."""
    flat = torch.cat([v.flatten() for v in g.values()])
    return float((flat < threshold).float().mean())


def prune(model: nn.Module, prune_ratio: float, input_shape: tuple[int, ...], *,
          fold_bias: bool = True, layers: dict[str, tuple] | None = None,
          ) -> dict[str, list[int]]:
    """Remove ``prune_ratio`` of the prunable channels by |gamma| (in place); returns the plan."""
    layers = layers or slimmable(model, input_shape)
    plan = select_channels(gammas(model, layers), prune_ratio)
    if fold_bias:
        fold_constants(model, plan, layers, input_shape)
    remove_channels(model, {k: v for k, v in plan.items() if v}, input_shape)
    return plan


@register_method(
    "slimming",
    doc="Network Slimming: L1 on BN scale factors, global threshold, removal, fine-tune",
    seed="001",
    params=[
        Param(name="lambda", kind="float", default=3e-2, low=0, high=1,
              doc="weight of the L1 penalty on BN scale factors (0: plain training); on "
                  "digits the effect appears near 1e-2, on CIFAR near 1e-4",
              search={"low": 1e-4, "high": 5e-2, "log": True}),
        Param(name="prune_ratio", kind="float", default=0.5, low=0, high=1, high_open=True,
              doc="share of all prunable channels removed (global |gamma| threshold)",
              search={"low": 0.1, "high": 0.95}),
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
    ],
)
def slimming(model: nn.Module, params: dict, ctx) -> nn.Module:
    layers = slimmable(model, ctx.input_shape)
    bns = [bn for bn, _ in layers.values()]
    threshold = SPARSE_REL * float(torch.cat(list(gammas(model, layers).values())).mean())

    def extra(m: nn.Module) -> dict:
        return {"sparsity": sparsity_of(gammas(m, layers), threshold)}

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
        g = gammas(model, layers)
        ctx.result("gammas", [float(v) for t in g.values() for v in t.tolist()])
        ctx.result("sparsity", sparsity_of(g, threshold))
        plan = prune(model, params["prune_ratio"], ctx.input_shape,
                     fold_bias=params["fold_bias"], layers=layers)
        ctx.result("channels_removed", sum(len(v) for v in plan.values()))
        ctx.result("accuracy_before_finetune", evaluate(model, ctx.data, "test")["accuracy"])
    if params["finetune_epochs"] > 0:
        ctx.fit(model, params["finetune_epochs"], phase="finetune", lr=params["lr"])
    return model


__all__ = ["SlimmingError", "plain_convs", "prune", "select_channels", "slimmable"]
