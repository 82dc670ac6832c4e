"""Parallel-branch pruning (seed 004): a narrow branch learns to replace each conv layer.

Beside a conv layer runs a branch fed by the conv's raw output ``y``: a 1x1 compress P
(C -> k = keep_ratio * C), its own BN, the layer's own channel-wise path (activation,
pooling: copies of the modules between the layer's BN and its readers) and a 1x1 expand
E (k -> C). The layers reading the conv's channels see ``alpha * original + (1 - alpha)
* branch`` while alpha follows a schedule from 1 to 0, and everything trains at each
alpha. At alpha = 0 the original path is unused and the branch merges exactly:

* ``P`` is linear and acts on the raw conv output, so the conv becomes ``W' = P W``
  (k filters) and the branch's BN becomes the layer's BN;
* ``E`` is linear, last in the branch and without bias; every reader (a zero-padded
  conv, or a linear layer after global pooling) is linear in its input, so ``E`` folds
  into its input channels, ``V' = V E``.

The path sits before ``E`` so that max-pooling, which does not commute with a linear
map, acts on the k branch channels, exactly as it will in the merged model.

Which layers qualify comes from the dependency graph and one traced forward pass: a
conv whose channels no other conv writes (in a ResNet: the first conv of each block),
followed by a BatchNorm that alone reads it, then only channel-wise modules, then the
readers. :func:`branch_blocks` lists them; a model with none is refused.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from prune_core.errors import InputError
from prune_core.groups import CONV_LINEAR, dependency_graph, follower_bn, group_of
from prune_core.methods._filters import saved_result
from prune_core.methods._registry import Param, register_method
from prune_core.surgery import example_input, replace_module

if TYPE_CHECKING:
    from prune_core.methods._context import Context

# Modules that act on each channel alone (so they commute with removing channels).
CHANNELWISE = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardtanh,
    nn.Mish, nn.Sigmoid, nn.Tanh, nn.Identity, nn.Dropout, nn.Dropout2d, nn.MaxPool2d,
    nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten,
)

SCHEDULES = ("step", "linear", "cosine", "exponential")


class BranchError(InputError):
    """The model does not have the structure parallel-branch pruning needs."""


def alpha_values(schedule: str, steps: int) -> list[float]:
    """The alpha of each of ``steps`` training stages; the last is exactly 0.

    linear: 1 - t; cosine: (1 + cos(pi t)) / 2, slow at both ends; exponential:
    (e^{-5t} - e^{-5}) / (1 - e^{-5}), fast first and slow near 0; step: alpha halves
    at each stage (0.5, 0.25, ...). ``t = j / steps`` for stage ``j = 1..steps``.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"alpha_schedule = {schedule!r} is invalid; allowed: one of "
                         f"{', '.join(SCHEDULES)}")
    out = []
    for j in range(1, steps + 1):
        t = j / steps
        if schedule == "linear":
            a = 1 - t
        elif schedule == "cosine":
            a = 0.5 * (1 + math.cos(math.pi * t))
        elif schedule == "exponential":
            a = (math.exp(-5 * t) - math.exp(-5)) / (1 - math.exp(-5))
        else:
            a = 0.5 ** j
        out.append(a)
    out[-1] = 0.0
    return out


@dataclass(frozen=True)
class Block:
    """A conv layer a branch can replace: conv -> BN -> ``path`` -> ``readers``."""

    conv: str
    bn: str
    path: tuple[str, ...]  # channel-wise modules between the BN and the readers
    readers: tuple[str, ...]  # conv / linear layers reading the result


@dataclass
class _Call:
    name: str
    module: nn.Module
    inp: tuple[int, int] | None  # (data pointer, numel) of the first input
    out: tuple[int, int] | None


def _key(t) -> tuple[int, int] | None:
    return (t.data_ptr(), t.numel()) if isinstance(t, torch.Tensor) else None


@torch.no_grad()
def _trace(model: nn.Module, input_shape: tuple[int, ...]) -> list[_Call]:
    """Every leaf module call of one eval forward pass, in order, with its tensors' keys.

    Outputs are held until the end, so no address is reused within the pass; a view
    (``torch.flatten`` of a pooled map) keeps its tensor's key.
    """
    calls: list[_Call] = []
    keep: list = []

    def hook(name):
        def fn(module, args, out):
            calls.append(_Call(name, module, _key(args[0]) if args else None, _key(out)))
            keep.append(out)
        return fn

    leaves = [(n, m) for n, m in model.named_modules() if n and not list(m.children())]
    handles = [m.register_forward_hook(hook(n)) for n, m in leaves]
    was_training = model.training
    model.eval()
    try:
        model(example_input(model, input_shape))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return calls


def branch_blocks(model: nn.Module, input_shape: tuple[int, ...]) -> list[Block]:
    """The conv layers a parallel branch can replace and merge into exactly."""
    graph = dependency_graph(model, input_shape)
    calls = _trace(model, input_shape)
    names = {m: n for n, m in model.named_modules()}
    counts: dict[str, int] = {}
    for c in calls:
        counts[c.name] = counts.get(c.name, 0) + 1
    blocks = []
    for i, call in enumerate(calls):
        m = call.module
        if not isinstance(m, nn.Conv2d) or m.groups != 1 or counts[call.name] != 1:
            continue
        bn = follower_bn(graph, m)
        g = group_of(model, graph, call.name)
        if (bn is None or g is None or g.coupled or g.convs != [call.name]
                or g.bns != [names[bn]]
                or not g.readers
                or any(not torch.equal(r.idxs, r.root_idxs) for r in g.readers)):
            continue
        block = _follow(calls, i, names[bn], counts)
        if block is not None and set(block[1]) == {r.name for r in g.readers}:
            blocks.append(Block(call.name, names[bn], *block))
    return blocks


def _follow(calls: list[_Call], i: int, bn: str, counts: dict
            ) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """From the conv call ``i``: its BN, then channel-wise modules, then the readers."""

    def users(key, at: int) -> list[int]:
        return [j for j in range(at + 1, len(calls)) if calls[j].inp == key]

    first = users(calls[i].out, i)
    if not first or calls[first[0]].name != bn or counts[bn] != 1:
        return None
    at = first[0]
    path: list[str] = []
    while True:
        after = users(calls[at].out, at)
        if not after:
            return None
        nxt = calls[after[0]]
        if isinstance(nxt.module, CHANNELWISE):
            path.append(nxt.name)
            at = after[0]
            continue
        readers = [calls[j] for j in after]
        if not all(isinstance(r.module, CONV_LINEAR) for r in readers):
            return None
        return tuple(path), tuple(r.name for r in readers)


class Branch(nn.Module):
    """compress (1x1, C -> k) -> BN -> the layer's path -> expand (1x1, k -> C)."""

    def __init__(self, channels: int, k: int, path: list[nn.Module]):
        super().__init__()
        self.compress = nn.Conv2d(channels, k, 1, bias=False)
        self.bn = nn.BatchNorm2d(k)
        self.path = nn.Sequential(*[copy.deepcopy(m) for m in path])
        self.expand = nn.Conv2d(k, channels, 1, bias=False)

    @torch.no_grad()
    def start_from(self, bn: nn.BatchNorm2d) -> None:
        """Start as the layer itself restricted to its k channels of largest |BN scale|."""
        k = self.compress.out_channels
        top = bn.weight.detach().abs().argsort(descending=True)[:k].sort().values
        self.compress.weight.zero_()
        self.compress.weight[torch.arange(k), top] = 1.0
        self.expand.weight.zero_()
        self.expand.weight[top, torch.arange(k)] = 1.0
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(self.bn, name).copy_(getattr(bn, name)[top])

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        z = self.path(self.bn(self.compress(y)))
        # E on dimension 1 of whatever the path left: a map, or pooled features
        return torch.einsum("ck,nk...->nc...", self.expand.weight[:, :, 0, 0], z)


class Branched(nn.Module):
    """A network with parallel branches on some of its conv layers and one alpha per branch.

    Hooks carry the branches: each branched conv's output also feeds its branch, and each
    reader's input becomes the alpha mixture. ``forward`` is the network's own.
    """

    def __init__(self, net: nn.Module, keep_ratio: float, input_shape: tuple[int, ...],
                 layers: list[str] | None = None):
        super().__init__()
        self.net = net
        self.blocks = {b.conv: b for b in branch_blocks(net, input_shape)
                       if layers is None or b.conv in layers}
        self.branches = nn.ModuleDict()
        self.alpha: dict[str, float] = {}
        self._outputs: dict[str, torch.Tensor] = {}
        self._handles: dict[str, list] = {}
        for b in self.blocks.values():
            conv = net.get_submodule(b.conv)
            c = conv.out_channels
            branch = Branch(c, max(1, round(keep_ratio * c)),
                            [net.get_submodule(p) for p in b.path])
            branch.start_from(net.get_submodule(b.bn))
            key = self.key(b.conv)
            self.branches[key] = branch.to(conv.weight.device)
            self.alpha[b.conv] = 1.0
            handles = [conv.register_forward_hook(self._feed(b.conv))]
            handles += [net.get_submodule(r).register_forward_pre_hook(self._mix(b.conv))
                        for r in b.readers]
            self._handles[b.conv] = handles

    @staticmethod
    def key(conv: str) -> str:
        """The ModuleDict key of the branch on ``conv``."""
        return conv.replace(".", "__")  # ModuleDict keys cannot hold dots

    def set_alpha(self, value: float) -> None:
        """Give every branch the same mixing weight ``alpha``."""
        for k in self.alpha:
            self.alpha[k] = float(value)

    def _feed(self, conv: str):
        def hook(_module, _args, y):
            if self.alpha[conv] < 1.0:
                self._outputs[conv] = self.branches[self.key(conv)](y)
        return hook

    def _mix(self, conv: str):
        def hook(_module, args):
            a = self.alpha[conv]
            if a >= 1.0:
                return None
            x, b = args[0], self._outputs[conv].reshape(args[0].shape)
            return (b if a <= 0.0 else a * x + (1 - a) * b, *args[1:])
        return hook

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            return self.net(x)
        finally:
            self._outputs.clear()

    @torch.no_grad()
    def merge(self, layer: str) -> None:
        """Fold the branch of ``layer`` into the network (exact at alpha = 0)."""
        block = self.blocks.pop(layer)
        for h in self._handles.pop(layer):
            h.remove()
        branch = self.branches[self.key(layer)]
        conv = self.net.get_submodule(layer)
        p = branch.compress.weight.detach()[:, :, 0, 0]  # [k, C]
        merged = nn.Conv2d(conv.in_channels, p.shape[0], conv.kernel_size, conv.stride,
                           conv.padding, conv.dilation, bias=conv.bias is not None,
                           padding_mode=conv.padding_mode).to(conv.weight.device)
        merged.weight.copy_(torch.einsum("kc,cihw->kihw", p, conv.weight.detach()))
        if conv.bias is not None:
            merged.bias.copy_(p @ conv.bias.detach())
        replace_module(self.net, layer, merged)
        replace_module(self.net, block.bn, branch.bn)
        e = branch.expand.weight.detach()[:, :, 0, 0]  # [C, k]
        for name in block.readers:
            reader = self.net.get_submodule(name)
            if isinstance(reader, nn.Conv2d):
                folded = nn.Conv2d(e.shape[1], reader.out_channels, reader.kernel_size,
                                   reader.stride, reader.padding, reader.dilation,
                                   bias=reader.bias is not None,
                                   padding_mode=reader.padding_mode)
                folded = folded.to(reader.weight.device)
                folded.weight.copy_(torch.einsum("ochw,ck->okhw", reader.weight.detach(), e))
            else:
                folded = nn.Linear(e.shape[1], reader.out_features,
                                   bias=reader.bias is not None).to(reader.weight.device)
                folded.weight.copy_(reader.weight.detach() @ e)
            if reader.bias is not None:
                folded.bias.copy_(reader.bias.detach())
            replace_module(self.net, name, folded)
        del self.branches[self.key(layer)]
        del self.alpha[layer]


PARAMS = [
    Param(name="keep_ratio", kind="float", default=0.75, low=0.0, high=1.0, low_open=True,
          doc="share of each conv layer's filters kept (the branch width k / C)",
          search={"low": 0.25, "high": 1.0}),
    Param(name="alpha_schedule", kind="categorical", default="cosine", choices=SCHEDULES,
          doc="how alpha falls from 1 to 0", search={"choices": list(SCHEDULES)}),
    Param(name="steps", kind="int", rehearsal_cap=2, default=5, low=1, high=1000,
          doc="number of alpha values trained at (the last is 0)", search={"low": 2, "high": 10}),
    Param(name="epochs_per_step", kind="int", default=2, low=1, high=1000,
          doc="training epochs at each alpha", search={"low": 1, "high": 4}),
    Param(name="order", kind="categorical", default="all", choices=("all", "sequential"),
          doc="all layers at once, or one layer after another (a schedule pass each)",
          search={"choices": ["all", "sequential"]}),
    Param(name="finetune_epochs", kind="int", default=2, low=0, high=1000,
          doc="training epochs of the merged smaller model (its learning rate decays)",
          search={"low": 0, "high": 5}),
    Param(name="lr", kind="float", default=0.01, low=0.0, low_open=True, high=10.0,
          doc="learning rate while the branches train", search={"low": 1e-3, "high": 0.05,
                                                                  "log": True}),
]


def compatible(model: nn.Module, input_shape: tuple[int, ...]) -> str | None:
    """Why parallel-branch pruning has nothing to act on in ``model`` (None: it has)."""
    if not branch_blocks(model, input_shape):
        return ("no conv layer that a branch can replace: one whose channels no other conv "
                "writes, read by a BatchNorm alone, then only channel-wise layers "
                "(activations, pooling) up to conv or linear layers")
    return None


@register_method("branch", params=PARAMS, seed="004", check=compatible,
                 doc="parallel narrow branches replace each conv layer as alpha goes to 0")
def branch(model: nn.Module, params: dict, ctx: Context) -> nn.Module:
    """Train parallel branches while alpha follows its schedule to 0, then merge them."""
    alphas = alpha_values(params["alpha_schedule"], params["steps"])
    convs = [b.conv for b in branch_blocks(model, ctx.input_shape)]
    if not convs:
        raise BranchError(f"{type(model).__name__} has no conv layer a branch can replace "
                          f"(see prune_core.methods.branch.branch_blocks)")
    passes = [convs] if params["order"] == "all" else [[c] for c in convs]
    net = model
    saved = saved_result(ctx, "val_accuracy_per_step", [])
    steps: list[dict] = []
    for i, layers in enumerate(passes):
        branched = Branched(net, params["keep_ratio"], ctx.input_shape, layers)
        for a in alphas:
            branched.set_alpha(a)
            skipped = ctx.replaying
            rows = ctx.fit(branched, params["epochs_per_step"], phase="branch",
                           lr=params["lr"], extra=lambda _m, _a=a, _i=i: {"alpha": _a,
                                                                          "pass": _i})
            # Validation accuracy at the end of each alpha step (the seed's trajectory);
            # a replayed step returns no rows and keeps its saved value.
            k = len(steps)
            acc = rows[-1]["val_accuracy"] if rows else (
                saved[k]["val_accuracy"] if k < len(saved) else None)
            steps.append({"pass": i, "alpha": a, "val_accuracy": acc})
            ctx.result("val_accuracy_per_step", list(steps))
        for layer in layers:
            branched.merge(layer)
        net = branched.net
    ctx.result("layers_branched", convs)
    if not skipped:  # the merged model's weights are real (not a replay): before fine-tuning
        ctx.result("merged_accuracy", ctx.evaluate(net, "test")["accuracy"])
    if params["finetune_epochs"]:
        ctx.fit(net, params["finetune_epochs"], phase="finetune", lr=params["lr"])
    return net


__all__ = [
    "CHANNELWISE", "SCHEDULES", "Block", "Branch", "BranchError", "Branched", "alpha_values",
    "branch_blocks",
]
