"""Factorized weights: orthogonal parametrization, separable k x 1 + 1 x k convolutions, or
low-rank linear layers.

``orthogonal`` wraps the largest layers in ``torch.nn.utils.parametrizations.orthogonal``
(as seed 002 suggests). PyTorch makes the last two dimensions of the weight orthogonal:
the whole matrix of a linear layer, and each kh x kw kernel slice of a conv layer. The
stored weight is unchanged in size (the deployed model materialises it), so the method
records its degrees of freedom instead: ``dof_params`` counts each orthogonal m x n
matrix as m(n + 1) / 2, the seed's formula, and ``stiefel_dof_params`` as
mn - k(k + 1) / 2 with k = min(m, n), the dimension of the set of such matrices.

``lowrank`` replaces each of the largest linear layers and 1 x 1 convs (a transformer's
MLP and attention projections, a pointwise conv) by two: ``in -> r`` then ``r -> out``,
initialised from the weight's rank-``r`` truncated SVD (Denton et al., NeurIPS 2014),
``r`` a share of ``min(in, out)``. Stored weights fall from ``in out`` to ``r (in + out)``.

``separable`` replaces each of the largest conv layers (kernels 3 x 3 and bigger) by a
kh x 1 conv to ``r`` channels followed by a 1 x kw conv, the vertical-horizontal
decomposition of Tai et al. (ICLR 2016). Both start from the truncated SVD of the
kernel unfolded to a (C_in kh) x (C_out kw) matrix, which is exact at full rank
(r = min(C_in kh, C_out kw)), so accuracy before fine-tuning is not random. Stored
weights fall from C_out C_in kh kw to r (C_in kh + C_out kw) per layer.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import orthogonal

from prune_core.measure import count_params
from prune_core.methods._registry import Param, register_method
from prune_core.surgery import replace_module
from prune_core.train import evaluate, refresh_bn_stats

if TYPE_CHECKING:
    from prune_core.methods._context import Context

# The largest matrix side ``orthogonal`` takes: PyTorch's map builds an n x n matrix
# (n the larger side) and takes its exponential at every forward pass, O(n^3): 0.5 s
# at n = 1024 on one core here, 3.4 s at 2048, minutes at AlexNet's 9216.
ORTHOGONAL_MAX = 1024


KINDS = {"any": (nn.Conv2d, nn.Linear), "conv": (nn.Conv2d,), "linear": (nn.Linear,)}


def _eligible(model: nn.Module, variant: str, only: str = "any") -> dict[str, nn.Module]:
    out = {}
    for name, m in model.named_modules():
        if parametrize.is_parametrized(m) or not isinstance(m, KINDS[only]):
            continue
        if variant == "orthogonal" and isinstance(m, nn.Conv2d | nn.Linear) \
                and max(m.weight.shape[-2:]) <= ORTHOGONAL_MAX:
            out[name] = m
        elif (variant == "separable" and isinstance(m, nn.Conv2d) and m.groups == 1
              and min(m.kernel_size) >= 3 and m.padding_mode == "zeros"
              and not isinstance(m.padding, str)):
            out[name] = m
        elif variant == "lowrank" and (isinstance(m, nn.Linear) or _pointwise(m)):
            out[name] = m
    return out


def _pointwise(m: nn.Module) -> bool:
    return (isinstance(m, nn.Conv2d) and m.groups == 1 and m.kernel_size == (1, 1)
            and m.padding in ((0, 0), 0) and m.dilation == (1, 1))


def largest_layers(model: nn.Module, variant: str, k: int,
                   reference: nn.Module | None = None, only: str = "any") -> list[str]:
    """Names of the ``k`` eligible layers (of the kinds ``only`` names) with the most
    weights (ties: forward order).

    Sizes are read from ``reference`` (the base model) where given, so the choice does not
    depend on an earlier pruning stage and a fresh model reproduces it.
    """
    sizes = {n: m.weight.numel()
             for n, m in _eligible(reference or model, variant, only).items()}
    present = _eligible(model, variant, only)
    order = [n for n in sizes if n in present]
    order.sort(key=lambda n: -sizes[n])  # stable: ties keep forward order
    return order[:k]


def separable_rank(conv: nn.Conv2d, rank: float) -> int:
    """Intermediate channels: ``rank`` times the input channels, at most full rank."""
    kh, kw = conv.kernel_size
    full = min(conv.in_channels * kh, conv.out_channels * kw)
    return max(1, min(full, int(round(rank * conv.in_channels))))


def separable_pair(conv: nn.Conv2d, r: int) -> nn.Sequential:
    """An uninitialised kh x 1 then 1 x kw pair with the conv's stride, padding, dilation."""
    kh, kw = conv.kernel_size
    (sh, sw), (ph, pw), (dh, dw) = conv.stride, conv.padding, conv.dilation
    v = nn.Conv2d(conv.in_channels, r, (kh, 1), stride=(sh, 1), padding=(ph, 0),
                  dilation=(dh, 1), bias=False)
    h = nn.Conv2d(r, conv.out_channels, (1, kw), stride=(1, sw), padding=(0, pw),
                  dilation=(1, dw), bias=conv.bias is not None)
    return nn.Sequential(OrderedDict(v=v, h=h)).to(conv.weight.device)


@torch.no_grad()
def separable_from(conv: nn.Conv2d, r: int) -> nn.Sequential:
    """The pair initialised from the rank-``r`` truncated SVD of the conv's kernel."""
    pair = separable_pair(conv, r)
    w = conv.weight.detach().float()
    o, i, kh, kw = w.shape
    mat = w.permute(1, 2, 0, 3).reshape(i * kh, o * kw)  # rows (i, a), columns (o, c)
    u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    root = s[:r].sqrt()
    left = u[:, :r] * root  # (i kh, r)
    right = vh[:r].T * root  # (o kw, r)
    pair.v.weight.copy_(left.T.reshape(r, i, kh, 1))
    pair.h.weight.copy_(right.reshape(o, kw, r).permute(0, 2, 1).unsqueeze(2))
    if conv.bias is not None:
        pair.h.bias.copy_(conv.bias)
    return pair


def lowrank_rank(layer: nn.Linear | nn.Conv2d, rank: float) -> int:
    """Inner width: ``rank`` times ``min(in, out)``, at least 1, at most full rank."""
    w = layer.weight
    full = min(w.shape[0], w.shape[1])
    return max(1, min(full, int(round(rank * full))))


def lowrank_pair(layer: nn.Linear | nn.Conv2d, r: int) -> nn.Sequential:
    """An uninitialised ``in -> r -> out`` pair of the layer's kind (the conv's stride on
    the first), the bias on the second."""
    bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        first = nn.Linear(layer.in_features, r, bias=False)
        second = nn.Linear(r, layer.out_features, bias=bias)
    else:
        first = nn.Conv2d(layer.in_channels, r, 1, stride=layer.stride, bias=False)
        second = nn.Conv2d(r, layer.out_channels, 1, bias=bias)
    return nn.Sequential(OrderedDict(down=first, up=second)).to(layer.weight.device)


@torch.no_grad()
def lowrank_from(layer: nn.Linear | nn.Conv2d, r: int) -> nn.Sequential:
    """The pair initialised from the rank-``r`` truncated SVD of the layer's weight."""
    pair = lowrank_pair(layer, r)
    w = layer.weight.detach().float().flatten(1)  # (out, in)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    root = s[:r].sqrt()
    pair.down.weight.copy_((vh[:r] * root[:, None]).reshape(pair.down.weight.shape))
    pair.up.weight.copy_((u[:, :r] * root).reshape(pair.up.weight.shape))
    if layer.bias is not None:
        pair.up.bias.copy_(layer.bias)
    return pair


def _parametrize(layer: nn.Module) -> None:
    # The matrix exponential for every shape: PyTorch's default for non-square weights,
    # Householder, reads signs from the diagonal of its parameter with int(), and a
    # single step of weight decay moves -1 to -0.9999995, which int() makes 0: the whole
    # weight becomes zero (seen on the 10 x 128 classifier).
    orthogonal(layer, orthogonal_map="matrix_exp")


@torch.no_grad()
def make_orthogonal(layer: nn.Module) -> None:
    """Parametrize in place, starting from the nearest orthogonal matrices (polar factors)."""
    w = layer.weight.detach()
    u, _, vh = torch.linalg.svd(w, full_matrices=False)
    _parametrize(layer)
    layer.weight = (u @ vh).contiguous()


def seed_dof(m: int, n: int) -> int:
    """Seed 002's size of an orthogonal m x n matrix: m (n + 1) / 2."""
    return m * (n + 1) // 2


def stiefel_dof(m: int, n: int) -> int:
    """Dimension of the m x n matrices with orthonormal rows or columns."""
    k = min(m, n)
    return m * n - k * (k + 1) // 2


def factorize_layers(model: nn.Module, params: dict, reference: nn.Module | None = None,
                     *, init: bool = True) -> list[str]:
    """Apply the variant to the ``layers`` largest layers in place; returns their names."""
    names = largest_layers(model, params["variant"], params["layers"], reference,
                           params.get("only", "any"))  # absent in older model files
    mods = dict(model.named_modules())
    for name in names:
        if params["variant"] == "orthogonal":
            if init:
                make_orthogonal(mods[name])
            else:
                _parametrize(mods[name])
        elif params["variant"] == "lowrank":
            r = lowrank_rank(mods[name], params["rank"])
            build = lowrank_from if init else lowrank_pair
            replace_module(model, name, build(mods[name], r))
        else:
            r = separable_rank(mods[name], params["rank"])
            build = separable_from if init else separable_pair
            replace_module(model, name, build(mods[name], r))
    return names


def restructure(model: nn.Module, params: dict) -> nn.Module:
    """The same structural edit on a freshly built model, for loading a checkpoint."""
    factorize_layers(model, params, init=False)
    return model


def compatible(model: nn.Module, input_shape: tuple[int, ...]) -> str | None:
    """Why factorization has nothing to act on in ``model`` (None: it has)."""
    if not _eligible(model, "orthogonal"):
        return "no conv or linear layer"
    return None


@register_method(
    "factorize",
    check=compatible,
    doc="orthogonal parametrization, separable kx1 + 1xk convs or low-rank linear layers "
        "on the largest layers",
    seed="002",
    restructure=restructure,
    params=[
        Param(name="variant", kind="categorical", default="separable",
              choices=("orthogonal", "separable", "lowrank"),
              doc="which factorization: orthogonal layers, separable kx1 + 1xk convs, "
                  "low-rank linear layers and 1x1 convs",
              search={"choices": ["orthogonal", "separable"]}),
        Param(name="layers", kind="int", default=2, low=1, high=1000,
              doc="how many of the largest layers (by weight count) to factorize",
              search={"low": 1, "high": 8}),
        Param(name="only", kind="categorical", default="any", choices=tuple(KINDS),
              doc="which layers may be chosen: conv and linear (any), or one kind; "
                  "separable takes convs only, lowrank linear layers and 1x1 convs",
              search={"choices": list(KINDS)}),
        Param(name="rank", kind="float", default=0.5, low=0, low_open=True, high=4,
              doc="separable: intermediate channels as a multiple of the layer's input "
                  "channels (1 is the seed's layout); lowrank: as a share of min(in, out); "
                  "capped at full rank",
              search={"low": 0.05, "high": 1.5, "log": True}),
        Param(name="finetune_epochs", kind="int", default=10, low=0, high=1000,
              doc="fine-tuning epochs after factorizing", search={"low": 0, "high": 20}),
        Param(name="lr", kind="float", default=0.01, low=0, low_open=True, high=10,
              doc="learning rate of fine-tuning", search={"low": 1e-3, "high": 0.1, "log": True}),
    ],
)
def factorize(model: nn.Module, params: dict, ctx: Context) -> nn.Module:
    """Factorize the largest layers, then fine-tune."""
    names = factorize_layers(model, params, ctx.base_model)
    model.to(ctx.device)
    ctx.result("layers_factorized", names)
    if params["variant"] == "orthogonal":
        mods = dict(model.named_modules())
        total = count_params(model)[0]
        shapes = [mods[n].weight.shape for n in names]
        dense = sum(s.numel() for s in shapes)
        batch = [s[:-2].numel() for s in shapes]
        ctx.result("dof_params", total - dense + sum(
            b * seed_dof(s[-2], s[-1]) for b, s in zip(batch, shapes, strict=True)))
        ctx.result("stiefel_dof_params", total - dense + sum(
            b * stiefel_dof(s[-2], s[-1]) for b, s in zip(batch, shapes, strict=True)))
    if ctx.resume is None:  # a resumed trial restores the weights and saved results
        # New weights change every later layer's input statistics; re-measure them so the
        # accuracy before fine-tuning reflects the factorization, not stale BN averages.
        refresh_bn_stats(model, ctx.data)
        ctx.result("accuracy_before_finetune", evaluate(model, ctx.data, "test")["accuracy"])
    if params["finetune_epochs"] > 0:
        ctx.fit(model, params["finetune_epochs"], phase="finetune", lr=params["lr"])
    return model


__all__ = [
    "ORTHOGONAL_MAX", "factorize_layers", "largest_layers", "lowrank_from", "lowrank_pair",
    "lowrank_rank", "make_orthogonal", "restructure", "seed_dof", "separable_from",
    "separable_pair", "separable_rank", "stiefel_dof",
]
