"""Per-layer allocation: how a channel-pruning method spreads its ratio over a model.

A method's ``allocation`` parameter says which channels its ratio removes:

- ``global``: one ranking over every group, so a group whose channels score low loses
  more of them (Network Slimming's threshold, TransTailor's ranking);
- ``uniform``: every dependency group loses the same share (Torch-Pruning's default, and
  structured magnitude pruning's);
- ``per_stage``: one ratio per *stage*, a run of groups whose root conv writes at one
  spatial resolution (a ResNet stage, a VGG block between poolings);
- ``per_group``: one ratio per dependency group (channels coupled through additions,
  concatenations and depthwise convs share one ratio, as they are removed together).

The per-stage and per-group ratios are parameters generated from the model, named
``ratio@<name>`` after its own modules: a group by its root conv (``ratio@layer2.0.conv1``),
a stage by the module path its groups share (``ratio@layer2``), or by its first group's
root conv where they share none. A spec searches them like declared parameters; one it
does not name takes the space of the method's own ratio.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from prune_core.groups import ChannelGroup, select_global, select_per_group
from prune_core.methods._registry import GENERATED_PREFIX as PREFIX
from prune_core.methods._registry import Param, ParamError, ratio_param
from prune_core.surgery import example_input

ALLOCATIONS = ("global", "uniform", "per_stage", "per_group")
GENERATED = ("per_stage", "per_group")  # the allocations whose ratios come from the model


@dataclass(frozen=True)
class Allocation:
    """What a method allocates: ``ratio`` names its parameter spread over the groups, and
    ``groups(model, input_shape)`` lists the groups it prunes."""

    ratio: str
    groups: Callable[[nn.Module, tuple[int, ...]], list[ChannelGroup]]


def allocation_param(default: str) -> Param:
    """The ``allocation`` parameter of a channel-pruning method."""
    return Param(name="allocation", kind="categorical", default=default, choices=ALLOCATIONS,
                 doc="how the ratio is spread over the layers: global (one ranking over all "
                     "groups), uniform (the same share of every group), per_stage or "
                     "per_group (one searchable ratio@<module> parameter per stage or "
                     "dependency group, generated from the model)",
                 search={"choices": ["global", "uniform"]})


@torch.no_grad()
def stage_of(model: nn.Module, groups: list[ChannelGroup], input_shape: tuple[int, ...]
             ) -> dict[str, tuple[int, tuple[int, ...]]]:
    """``{group root: (stage number, spatial size)}``: groups in forward order of their
    root conv, a new stage (from 0) at each change of the spatial size it writes (``()``
    for flat features)."""
    sizes: dict[str, tuple[int, ...]] = {}
    roots = {g.root for g in groups}

    def seen(name: str):
        def hook(_m, _i, out) -> None:
            sizes.setdefault(name, tuple(out.shape[2:]))
        return hook

    handles = [m.register_forward_hook(seen(n)) for n, m in model.named_modules()
               if n in roots]
    was = model.training
    model.eval()
    try:
        model(example_input(model, input_shape))
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    order = list(sizes)
    out, last, k = {}, None, -1
    for root in sorted(roots, key=lambda r: order.index(r) if r in sizes else len(order)):
        size = sizes.get(root, ())
        if size != last:
            k += 1
        last = size
        out[root] = (k, size)
    return out


def _shared_path(names: list[str]) -> str:
    """The leading module path every name shares, whole components only."""
    parts = [n.split(".") for n in names]
    common = []
    for level in zip(*parts, strict=False):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    # A shared path equal to a whole name would name that one module, not the stage.
    while common and any(len(p) == len(common) for p in parts):
        common.pop()
    return ".".join(common)


def units(model: nn.Module, groups: list[ChannelGroup], input_shape: tuple[int, ...],
          how: str) -> dict[str, list[str]]:
    """``{name: [group roots]}``: what each generated ratio covers, in forward order. A
    group of one channel, which always stays whole, gets no ratio."""
    groups = [g for g in groups if g.size >= 2]
    if how == "per_group":
        return {g.root: [g.root] for g in groups}
    if how != "per_stage":
        raise ValueError(f"allocation {how!r} generates no ratios")
    stage = stage_of(model, groups, input_shape)
    members: dict[int, list[str]] = {}
    for root in sorted(stage, key=stage.get):
        members.setdefault(stage[root][0], []).append(root)
    shared = {k: _shared_path(v) for k, v in members.items()}
    taken = [s for s in shared.values() if s]
    out = {}
    for k, roots in members.items():
        name = shared[k] if shared[k] and taken.count(shared[k]) == 1 else roots[0]
        out[name] = roots
    return out


def generated_params(model: nn.Module, input_shape: tuple[int, ...], method, how: str
                     ) -> list[Param]:
    """The ``ratio@...`` parameters ``method`` has on ``model`` under allocation ``how``
    (none for global and uniform), each documented with the groups it covers."""
    if method.allocation is None or how not in GENERATED:
        return []
    groups = method.allocation.groups(model, input_shape)
    size = {g.root: g.size for g in groups}
    base = method.param(method.allocation.ratio)
    out = []
    for name, roots in units(model, groups, input_shape, how).items():
        what = (f"group {name}" if how == "per_group" else
                f"stage {name} ({len(roots)} group(s): {', '.join(roots[:4])}"
                f"{', ...' if len(roots) > 4 else ''})")
        out.append(ratio_param(PREFIX + name, base,
                               f"{base.name} of {what}, {sum(size[r] for r in roots)} "
                               "channels"))
    return out


def group_ratios(params: dict, ratio: str, model: nn.Module, groups: list[ChannelGroup],
                 input_shape: tuple[int, ...]) -> dict[str, float]:
    """``{group root: share to remove}`` under ``params["allocation"]``: the generated
    ratio of the group's stage or group, else the method's own ratio."""
    how = params["allocation"]
    if how not in GENERATED:
        return {g.root: params[ratio] for g in groups}
    covered = units(model, groups, input_shape, how)
    given = {k.removeprefix(PREFIX) for k in params if k.startswith(PREFIX)}
    unknown = sorted(given - set(covered))
    if unknown:
        raise ParamError(f"{PREFIX}{unknown[0]}: this model has no {how.removeprefix('per_')} "
                         f"named {unknown[0]!r}; its names: {', '.join(covered)}")
    return {root: params.get(PREFIX + name, params[ratio])
            for name, roots in covered.items() for root in roots}


def select(scores: dict[str, torch.Tensor], how: str, ratio: float,
           ratios: dict[str, float] | None = None, *, min_keep: float = 0.0,
           min_count: int = 0) -> dict[str, list[int]]:
    """The channels to remove, ``{group root: [indices]}``, from each group's scores.

    ``global`` ranks every group's channels together and removes ``ratio`` of them
    (keeping ``max(1, ceil(min_keep * size))`` per group, at least ``min_count`` in all);
    otherwise each group loses ``round(share * size)`` of its lowest-scored channels
    (one always kept), the share being ``ratios[root]`` (``ratio`` where absent).
    """
    if how == "global":
        return select_global(scores, ratio, min_keep, min_count=min_count)
    plan: dict[str, list[int]] = {}
    for root, v in scores.items():
        share = ratio if ratios is None else ratios.get(root, ratio)
        plan.update(select_per_group({root: v}, share))
    if min_count and not any(plan.values()):  # at least the weakest channel of the model
        best = min(((float(v.min()), r) for r, v in scores.items() if v.numel() > 1),
                   default=None)
        if best is not None:
            plan[best[1]] = [int(torch.argmin(scores[best[1]]))]
    return plan


__all__ = ["ALLOCATIONS", "GENERATED", "PREFIX", "Allocation", "allocation_param",
           "generated_params", "group_ratios", "select", "stage_of",
           "units"]
