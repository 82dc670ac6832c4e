"""RePr (Prakash et al., CVPR 2019, arXiv 1811.07275): a training schedule, not a compressor.

A freshly initialised copy of the model trains S1 epochs; the filters that overlap
most with the others of their layer (inter-filter orthogonality) are dropped for S2
epochs, held at exactly zero; then they come back, re-initialised orthogonally to the
surviving filters, with the next layer's matching input channels zeroed. After
``cycles`` such cycles the network trains plainly up to ``epochs``. The same fresh
copy is also trained plainly for ``epochs`` (the control), reported as
``plain_accuracy``.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from torch import nn

from prune_core.groups import select_global, select_per_group
from prune_core.methods._filters import (
    ConvUnit,
    conv_units,
    fresh_copy,
    saved_result,
    zero_input_channels,
)
from prune_core.methods._registry import Param, register_method
from prune_core.train import Hooks

if TYPE_CHECKING:
    from prune_core.methods._context import Context


def orthogonality_scores(weight: torch.Tensor) -> torch.Tensor:
    """Per filter: row sum of |W W^T - I| over the layer's unit-normalised filters.

    High means the filter overlaps with the others of its layer (RePr ranks it worst).
    """
    w = weight.detach().reshape(weight.shape[0], -1).double()
    w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
    overlap = w @ w.T - torch.eye(w.shape[0], dtype=w.dtype, device=w.device)
    return overlap.abs().sum(dim=1).float()


def drop_plan(model: nn.Module, units: list[ConvUnit], ratio: float,
              rank: str = "global", drop: str = "overlapping") -> dict[str, torch.Tensor]:
    """Indices of the worst-ranked filters per conv layer; one filter always stays.

    ``rank="global"`` drops the worst ``ratio`` of all filters of the network (so
    layers with more overlap lose more), ``"layer"`` the worst ``ratio`` of each layer.
    ``drop="orthogonal"`` inverts the ranking (the seed's ablation): the most
    orthogonal filters go.
    """
    sign = -1.0 if drop == "overlapping" else 1.0  # the lowest worth is dropped
    worth = {u.conv: sign * orthogonality_scores(model.get_submodule(u.conv).weight)
             for u in units}
    select = select_per_group if rank == "layer" else select_global
    plan = select(worth, ratio)
    return {k: torch.tensor(v, dtype=torch.long) for k, v in plan.items()}


class FilterDrop:
    """Dropped filters held at exactly zero through training.

    Their conv weights and bias and their BN scale and shift are zeroed, so the
    channel emits zero. After each backward pass their gradients are zeroed (a fresh
    optimizer then never builds momentum or weight decay there) and after each step
    they are zeroed again.
    """

    def __init__(self, units: list[ConvUnit], plan: dict[str, torch.Tensor]):
        self.units = units
        self.plan = plan

    def _rows(self, model: nn.Module, unit: ConvUnit) -> list[torch.Tensor]:
        conv = model.get_submodule(unit.conv)
        out = [conv.weight, conv.bias]
        if unit.bn is not None:
            bn = model.get_submodule(unit.bn)
            out += [bn.weight, bn.bias]
        return [t for t in out if t is not None]

    @torch.no_grad()
    def apply(self, model: nn.Module) -> None:
        """Zero the dropped filters' weights, biases and BN affine parameters."""
        for u in self.units:
            idx = self.plan[u.conv]
            if len(idx):
                for t in self._rows(model, u):
                    t[idx.to(t.device)] = 0

    @torch.no_grad()
    def zero_grads(self, model: nn.Module) -> None:
        """Zero the gradients of the dropped filters."""
        for u in self.units:
            idx = self.plan[u.conv]
            if len(idx):
                for t in self._rows(model, u):
                    if t.grad is not None:
                        t.grad[idx.to(t.device)] = 0

    def reload(self, model: nn.Module) -> None:
        """After a resume: the dropped filters are the all-zero ones of the loaded weights."""
        for u in self.units:
            w = model.get_submodule(u.conv).weight.detach()
            self.plan[u.conv] = torch.nonzero(w.reshape(w.shape[0], -1).abs().sum(1) == 0
                                              ).flatten().cpu()

    def hooks(self) -> Hooks:
        """Training hooks that hold the drop through every step and across a resume."""
        return Hooks(after_backward=[self.zero_grads], after_step=[self.apply],
                     on_load=[self.reload])

    @torch.no_grad()
    def max_abs(self, model: nn.Module) -> float:
        """Largest magnitude left in any dropped filter (0.0 while the drop holds)."""
        vals = [t[self.plan[u.conv].to(t.device)].abs().max()
                for u in self.units if len(self.plan[u.conv]) for t in self._rows(model, u)]
        return float(max(vals)) if vals else 0.0

    def shares(self, model: nn.Module) -> dict[str, float]:
        """Share of each conv layer's filters dropped."""
        return {u.conv: len(self.plan[u.conv]) / model.get_submodule(u.conv).out_channels
                for u in self.units}


@torch.no_grad()
def reinit_filters(model: nn.Module, unit: ConvUnit, idx: torch.Tensor, *, variant: str = "qr",
                   clip: float = 3.0, generator: torch.Generator | None = None,
                   previous: torch.Tensor | None = None, zero_next: bool = True) -> dict:
    """Give the dropped filters ``idx`` of ``unit.conv`` new weights.

    ``variant="qr"``: random vectors in the null space of the surviving filters (from a
    complete QR decomposition), mutually orthonormal where the null space is large
    enough; ``previous`` (the dropped filters' weights before the drop) joins the
    survivors where the null space still has room for every new filter, so the new
    filters also differ from what was dropped, as in the paper. Where the survivors span
    the whole fan-in (no null space), the new filters are made orthogonal to the most
    overlapping survivors only, as many as leave room for them. ``variant="random"``:
    random directions. Either way each new filter is
    scaled to the survivors' mean norm and then shrunk, keeping its direction, until no
    weight exceeds ``clip`` times the survivors' weight standard deviation. Biases and
    BN shifts restart at zero, BN scales at the survivors' mean; the next layer's input
    channels for these filters are zeroed, so the network's output does not change.

    Returns ``{"basis": survivor indices the new filters are orthogonal to, "previous":
    whether they are orthogonal to ``previous`` too, "limit": the clip bound}``.
    """
    conv = model.get_submodule(unit.conv)
    if len(idx) == 0:
        return {"basis": torch.empty(0, dtype=torch.long), "previous": False, "limit": 0.0}
    w = conv.weight.detach().reshape(conv.out_channels, -1).double().cpu()
    n, d = w.shape[1], len(idx)
    keep = torch.ones(conv.out_channels, dtype=torch.bool)
    keep[idx] = False
    survivors = torch.nonzero(keep).flatten()
    s = w[survivors]
    basis = torch.empty(0, dtype=torch.long)
    with_previous = False
    if variant == "qr":
        basis = survivors
        if len(survivors) >= n:
            # No null space: relax to the most overlapping survivors, leaving room for d.
            m = max(0, n - d)
            order = orthogonality_scores(s).argsort(descending=True)[:m]
            basis = survivors[order.sort().values]
        rows = w[basis]
        if previous is not None and len(survivors) + 2 * d <= n:
            rows = torch.cat([rows, previous.detach().reshape(d, -1).double().cpu()])
            with_previous = True
        if len(rows):
            q, _ = torch.linalg.qr(rows.T, mode="complete")
            null = q[:, len(rows):]
        else:
            null = torch.eye(n, dtype=torch.float64)
        g = torch.randn(null.shape[1], d, generator=generator, dtype=torch.float64)
        v = null @ g
        if d <= null.shape[1]:
            v, _ = torch.linalg.qr(v)  # orthonormal to each other too, still in the null space
    else:
        v = torch.randn(n, d, generator=generator, dtype=torch.float64)
    v = v / v.norm(dim=0, keepdim=True).clamp_min(1e-12)
    v = v * s.norm(dim=1).mean()
    limit = clip * float(s.std()) if s.numel() > 1 else float("inf")
    peak = v.abs().amax(dim=0).clamp_min(1e-12)
    v = v * torch.clamp(limit / peak, max=1.0)
    dev_idx = idx.to(conv.weight.device)
    conv.weight[dev_idx] = v.T.reshape(d, *conv.weight.shape[1:]).to(conv.weight)
    if conv.bias is not None:
        conv.bias[dev_idx] = 0
    if unit.bn is not None:
        bn = model.get_submodule(unit.bn)
        kept = keep.to(bn.weight.device)
        bn.weight[dev_idx] = bn.weight[kept].mean() if kept.any() else 1.0
        bn.bias[dev_idx] = 0
        bn.running_mean[dev_idx] = 0
        bn.running_var[dev_idx] = 1
    if zero_next:
        zero_input_channels(model, unit, idx)
    return {"basis": basis, "previous": with_previous, "limit": limit}


# The default search ranges keep every combination feasible: 3 * (6 + 4) <= 30.
PARAMS = [
    Param(name="epochs", kind="int", default=30, low=1, high=10_000,
          doc="total training epochs (the same budget the plain control gets)",
          search={"low": 30, "high": 60}),
    Param(name="s1", kind="int", default=5, low=1, high=10_000,
          doc="epochs of full-network training before each drop", search={"low": 2, "high": 6}),
    Param(name="s2", kind="int", default=3, low=1, high=10_000,
          doc="epochs of training with the dropped filters held at zero",
          search={"low": 1, "high": 4}),
    Param(name="ratio", kind="float", default=0.3, low=0.0, high=1.0, low_open=True,
          high_open=True, doc="share of filters dropped in each cycle",
          search={"low": 0.1, "high": 0.5}),
    Param(name="cycles", kind="int", rehearsal_cap=2, default=2, low=1, high=1000,
          doc="number of drop / re-initialise cycles", search={"low": 1, "high": 3}),
    Param(name="rank", kind="categorical", default="global", choices=("global", "layer"),
          doc="rank filters over the whole network or within each layer",
          search={"choices": ["global", "layer"]}),
    Param(name="reinit", kind="categorical", default="qr", choices=("qr", "random"),
          doc="re-initialise in the survivors' null space (qr) or at random",
          search={"choices": ["qr", "random"]}),
    Param(name="clip", kind="float", default=3.0, low=0.0, low_open=True, high=1000.0,
          doc="largest new weight, in standard deviations of the surviving filters' weights",
          search={"low": 1.0, "high": 5.0}),
    Param(name="lr", kind="float", default=0.02, low=0.0, low_open=True, high=10.0,
          doc="constant learning rate of both RePr and the plain control",
          search={"low": 5e-3, "high": 0.1, "log": True}),
    Param(name="drop", kind="categorical", default="overlapping",
          choices=("overlapping", "orthogonal"),
          doc="drop the most overlapping filters (RePr) or, inverted, the most orthogonal",
          search={"choices": ["overlapping", "orthogonal"]}),
    Param(name="zero_next", kind="bool", default=True,
          doc="zero the next layer's input channels of re-initialised filters (RePr); "
              "false keeps them", search={"choices": [True, False]}),
]


def compatible(model: nn.Module, input_shape: tuple[int, ...]) -> str | None:
    """Why RePr has nothing to act on in ``model`` (None: it has)."""
    if not any(model.get_submodule(u.conv).out_channels > 1
               for u in conv_units(model, input_shape)):
        return "no conv layer with more than one filter to drop and re-initialise"
    return None


def epoch_budget(params: dict) -> str | None:
    """Why the cycles do not fit in the epochs (None: they fit)."""
    need = params["cycles"] * (params["s1"] + params["s2"])
    if need > params["epochs"]:
        return (f"epochs = {params['epochs']} is below cycles * (s1 + s2) = "
                f"{params['cycles']} * ({params['s1']} + {params['s2']}) = {need}")
    return None


@register_method("repr", params=PARAMS, seed="003", check=compatible, constraint=epoch_budget,
                 doc="RePr training (drop overlapping filters, re-initialise) vs plain training")
def repr_training(model: nn.Module, params: dict, ctx: Context) -> nn.Module:
    """RePr training of a fresh copy, with a plainly trained copy as the control."""
    epochs, s1, s2, cycles = params["epochs"], params["s1"], params["s2"], params["cycles"]
    # Both runs use one constant rate: a per-phase schedule would restart at each phase
    # and the two runs would no longer see the same rate at the same epoch.
    train = {"lr": params["lr"], "schedule": "constant"}
    fresh = fresh_copy(model, ctx.seed)
    plain = copy.deepcopy(fresh)
    skipped = ctx.replaying  # a resumed trial re-runs this call instantly: keep saved results
    ctx.fit(plain, epochs, phase="plain", **train)
    if not skipped:
        test = ctx.evaluate(plain, "test")
        ctx.result("plain_accuracy", test["accuracy"])
        ctx.result("plain_balanced_accuracy", test["balanced_accuracy"])
        ctx.result("plain_val_accuracy", ctx.evaluate(plain, "val")["accuracy"])
        # Training-split accuracy beside test accuracy: the generalisation gap RePr is about.
        ctx.result("plain_train_accuracy", ctx.evaluate(plain, "train")["accuracy"])
    del plain

    net = fresh
    units = conv_units(net, ctx.input_shape)
    saved = saved_result(ctx, "pruned_share_per_cycle", [])
    saved_reinit = saved_result(ctx, "reinit_val_accuracy_per_cycle", [])
    shares: list[dict[str, float]] = []
    reinit_acc: list[float] = []
    for c in range(cycles):
        ctx.fit(net, s1, phase="s1", **train)
        drop = FilterDrop(units, drop_plan(net, units, params["ratio"], params["rank"],
                                           params["drop"]))
        # The dropped filters' values before the drop are gone from a checkpoint taken
        # inside S2 (it holds zeros there): they travel with it.
        if ctx.resume is not None and not ctx.replaying:  # resuming inside this S2
            previous = ctx.kept[f"previous{c}"]
        else:
            previous = {u.conv: net.get_submodule(u.conv).weight.detach()[
                drop.plan[u.conv]].clone().cpu() for u in units}
            ctx.keep(f"previous{c}", previous)
        drop.apply(net)
        skipped = ctx.replaying
        ctx.fit(net, s2, phase="s2", hooks=drop.hooks(),
                extra=lambda m, _d=drop: {"dropped_max_abs": _d.max_abs(m)}, **train)
        shares.append(saved[c] if skipped and c < len(saved) else drop.shares(net))
        ctx.result("pruned_share_per_cycle", list(shares))
        # One generator per cycle: a trial resumed in this cycle draws the same filters.
        gen = torch.Generator().manual_seed(ctx.seed * 1009 + 7 + c)
        for u in units:
            reinit_filters(net, u, drop.plan[u.conv], variant=params["reinit"],
                           clip=params["clip"], generator=gen, previous=previous[u.conv],
                           zero_next=params["zero_next"])
        # Validation accuracy right after the re-initialisation, before training resumes.
        reinit_acc.append(saved_reinit[c] if skipped and c < len(saved_reinit)
                          else ctx.evaluate(net, "val")["accuracy"])
        ctx.result("reinit_val_accuracy_per_cycle", list(reinit_acc))
    rest = epochs - cycles * (s1 + s2)
    if rest:
        ctx.fit(net, rest, phase="final", **train)
    ctx.result("train_accuracy", ctx.evaluate(net, "train")["accuracy"])
    return net


__all__ = [
    "FilterDrop", "drop_plan", "epoch_budget", "orthogonality_scores", "reinit_filters",
]
