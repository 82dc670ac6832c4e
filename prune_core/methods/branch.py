"""Parallel-branch pruning (seed 004): a narrow branch learns to replace each conv layer.

Beside each conv layer of a VGG runs a branch fed by the conv's raw output ``y``:
a 1x1 compress P (C -> k = keep_ratio * C), its own BN, ReLU, the layer's pooling and
a 1x1 expand E (k -> C). The next layer sees ``alpha * original + (1 - alpha) * branch``
while alpha follows a schedule from 1 to 0, and everything trains at each alpha.
At alpha = 0 the original path is unused and the branch merges exactly:

* ``P`` is linear and acts on the raw conv output, so the conv becomes ``W' = P W``
  (k filters) and the branch's BN becomes the layer's BN;
* ``E`` is linear, last in the branch and without bias; the next conv is zero-padded
  and linear in its input, so ``E`` folds into its input channels, ``V' = V E``, or,
  after global average pooling, into the classifier's input features.

Pooling sits before ``E`` so that max-pooling, which does not commute with a linear
map, acts on the k branch channels, exactly as it will in the merged model.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from prune_core import models
from prune_core.methods._registry import Param, register_method

SCHEDULES = ("step", "linear", "cosine", "exponential")


class BranchError(ValueError):
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
    """Names, inside ``features``, of one conv layer, its BN, ReLU and pooling (or None)."""

    conv: str
    bn: str
    relu: str
    pool: str | None


def vgg_blocks(model: nn.Module) -> list[Block]:
    """The conv -> BN -> ReLU [-> pool] blocks of a registry VGG, in forward order."""
    if not isinstance(model, models.VGG):
        raise BranchError(f"branch works on the registry's CIFAR VGG models (vgg11 ... vgg19); "
                          f"got {type(model).__name__}")
    items = list(model.features.named_children())
    blocks, i = [], 0
    while i < len(items):
        kinds = [type(m) for _, m in items[i:i + 3]]
        if kinds != [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]:
            raise BranchError(f"features.{items[i][0]}: expected conv -> BN -> ReLU")
        pool = None
        if i + 3 < len(items) and isinstance(items[i + 3][1], nn.MaxPool2d | nn.AvgPool2d):
            pool = items[i + 3][0]
        blocks.append(Block(items[i][0], items[i + 1][0], items[i + 2][0], pool))
        i += 4 if pool else 3
    return blocks


class Branch(nn.Module):
    """compress (1x1, C -> k) -> BN -> ReLU -> pooling -> expand (1x1, k -> C)."""

    def __init__(self, channels: int, k: int, pool: nn.Module | None):
        super().__init__()
        self.compress = nn.Conv2d(channels, k, 1, bias=False)
        self.bn = nn.BatchNorm2d(k)
        self.relu = nn.ReLU()
        self.pool = copy.deepcopy(pool) if pool is not None else nn.Identity()
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
        return self.expand(self.pool(self.relu(self.bn(self.compress(y)))))


class Branched(nn.Module):
    """A VGG with parallel branches on some of its conv layers and one alpha per branch."""

    def __init__(self, net: nn.Module, keep_ratio: float, layers: list[str] | None = None):
        super().__init__()
        self.net = net
        self.blocks = vgg_blocks(net)
        self.branches = nn.ModuleDict()
        self.alpha: dict[str, float] = {}
        f = net.features
        for b in self.blocks:
            if layers is not None and b.conv not in layers:
                continue
            c = getattr(f, b.conv).out_channels
            branch = Branch(c, max(1, round(keep_ratio * c)),
                            getattr(f, b.pool) if b.pool else None)
            branch.start_from(getattr(f, b.bn))
            self.branches[b.conv] = branch.to(getattr(f, b.conv).weight.device)
            self.alpha[b.conv] = 1.0

    def set_alpha(self, value: float) -> None:
        for k in self.alpha:
            self.alpha[k] = float(value)

    def _original(self, b: Block, y: torch.Tensor) -> torch.Tensor:
        f = self.net.features
        x = getattr(f, b.relu)(getattr(f, b.bn)(y))
        return getattr(f, b.pool)(x) if b.pool else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.net.features
        for b in self.blocks:
            y = getattr(f, b.conv)(x)
            a = self.alpha.get(b.conv, 1.0)
            if a >= 1.0:
                x = self._original(b, y)
            elif a <= 0.0:
                x = self.branches[b.conv](y)
            else:
                x = a * self._original(b, y) + (1 - a) * self.branches[b.conv](y)
        return self.net.classifier(torch.flatten(self.net.avgpool(x), 1))

    @torch.no_grad()
    def merge(self, layer: str) -> None:
        """Fold the branch of ``layer`` into the network (exact at alpha = 0)."""
        f = self.net.features
        names = [b.conv for b in self.blocks]
        block = self.blocks[names.index(layer)]
        branch = self.branches[layer]
        conv = getattr(f, layer)
        p = branch.compress.weight.detach()[:, :, 0, 0]  # [k, C]
        merged = nn.Conv2d(conv.in_channels, p.shape[0], conv.kernel_size, conv.stride,
                           conv.padding, bias=conv.bias is not None).to(conv.weight.device)
        merged.weight.copy_(torch.einsum("kc,cihw->kihw", p, conv.weight.detach()))
        if conv.bias is not None:
            merged.bias.copy_(p @ conv.bias.detach())
        setattr(f, layer, merged)
        setattr(f, block.bn, branch.bn)
        e = branch.expand.weight.detach()[:, :, 0, 0]  # [C, k]
        at = names.index(layer)
        if at + 1 < len(names):
            nxt = getattr(f, names[at + 1])
            folded = nn.Conv2d(e.shape[1], nxt.out_channels, nxt.kernel_size, nxt.stride,
                               nxt.padding, bias=nxt.bias is not None).to(nxt.weight.device)
            folded.weight.copy_(torch.einsum("ochw,ck->okhw", nxt.weight.detach(), e))
            if nxt.bias is not None:
                folded.bias.copy_(nxt.bias.detach())
            setattr(f, names[at + 1], folded)
        else:
            head = self.net.classifier
            if head.in_features != e.shape[0]:
                raise BranchError(f"classifier reads {head.in_features} features, "
                                  f"not the {e.shape[0]} channels of {layer}")
            folded = nn.Linear(e.shape[1], head.out_features,
                               bias=head.bias is not None).to(head.weight.device)
            folded.weight.copy_(head.weight.detach() @ e)
            if head.bias is not None:
                folded.bias.copy_(head.bias.detach())
            self.net.classifier = folded
        del self.branches[layer]
        del self.alpha[layer]


PARAMS = [
    Param(name="keep_ratio", kind="float", default=0.75, low=0.0, high=1.0, low_open=True,
          doc="share of each conv layer's filters kept (the branch width k / C)",
          search={"low": 0.25, "high": 1.0}),
    Param(name="alpha_schedule", kind="categorical", default="cosine", choices=SCHEDULES,
          doc="how alpha falls from 1 to 0", search={"choices": list(SCHEDULES)}),
    Param(name="steps", kind="int", default=5, low=1, high=1000,
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


@register_method("branch", params=PARAMS, seed="004",
                 doc="parallel narrow branches replace each conv layer as alpha goes to 0")
def branch(model: nn.Module, params: dict, ctx) -> nn.Module:
    alphas = alpha_values(params["alpha_schedule"], params["steps"])
    convs = [b.conv for b in vgg_blocks(model)]
    passes = [convs] if params["order"] == "all" else [[c] for c in convs]
    net = model
    for i, layers in enumerate(passes):
        branched = Branched(net, params["keep_ratio"], layers)
        for a in alphas:
            branched.set_alpha(a)
            ctx.fit(branched, params["epochs_per_step"], phase="branch", lr=params["lr"],
                    extra=lambda _m, _a=a, _i=i: {"alpha": _a, "pass": _i})
        for layer in layers:
            branched.merge(layer)
        net = branched.net
    if params["finetune_epochs"]:
        ctx.fit(net, params["finetune_epochs"], phase="finetune", lr=params["lr"])
    return net
