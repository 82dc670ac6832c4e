"""How much of each channel group a model can lose before fine-tuning: a sensitivity scan.

For one channel group at a time (:mod:`prune_core.groups`: channels coupled through
additions, concatenations and depthwise convs go together), :func:`scan_group` removes
10 %, 20 % ... 90 % of its channels from a copy of the trained model, ranked as the method
ranks them, and measures validation accuracy and MACs without any fine-tuning. Network
Slimming ranks by the BatchNorm scale factors and folds the removed channels' mean signal
into the layers reading them, as its removal does; structured magnitude pruning and
TransTailor rank by the filters' L1 norm (TransTailor's own ranking, its trained alpha,
needs training a scan does not do). Every group keeps at least one channel.

Each group also gets its *stage*: the groups whose root conv writes at one spatial
resolution, in forward order (a ResNet stage, a VGG block between poolings).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from prune_core.errors import InputError
from prune_core.groups import (
    ChannelGroup,
    channel_groups,
    fold_removed,
    group_bn_scales,
    group_norms,
    select_per_group,
)
from prune_core.measure import count_cost
from prune_core.methods._allocation import stage_of
from prune_core.surgery import remove_channels
from prune_core.train import evaluate

RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
# How each method ranks a group's channels, and whether its removal folds their mean signal.
RANKING = {"slimming": ("bn_scale", True), "magnitude": ("l1", False),
           "transtailor": ("l1", False)}


class SensitivityError(InputError):
    """The scan cannot run as asked."""


@dataclass(frozen=True)
class GroupInfo:
    """A group as the scan reports it."""

    root: str
    size: int
    stage: str
    convs: list[str]
    coupled: bool


def scannable(model: nn.Module, input_shape: tuple[int, ...], method: str
              ) -> list[ChannelGroup]:
    """The groups ``method`` prunes in ``model``, in forward order."""
    if method not in RANKING:
        raise SensitivityError(f"method {method!r} has no sensitivity scan; choose one of "
                               f"{', '.join(sorted(RANKING))}")
    groups = channel_groups(model, input_shape, min_size=2)
    if RANKING[method][0] == "bn_scale":
        groups = [g for g in groups if g.bns]
    if not groups:
        raise SensitivityError(f"{type(model).__name__} has no channel group that "
                               f"{method} can prune")
    return groups


def stages(model: nn.Module, groups: list[ChannelGroup], input_shape: tuple[int, ...]
           ) -> dict[str, str]:
    """``{group root: stage name}``: groups numbered by the spatial size their root conv
    writes, a new stage at each change of it along the forward pass."""
    return {root: f"stage{k + 1} ({'x'.join(map(str, size)) or 'flat'})"
            for root, (k, size) in stage_of(model, groups, input_shape).items()}


def group_info(model: nn.Module, input_shape: tuple[int, ...], method: str
               ) -> list[GroupInfo]:
    """The groups a scan covers, with their stage."""
    groups = scannable(model, input_shape, method)
    stage = stages(model, groups, input_shape)
    order = {r: i for i, r in enumerate(stage)}
    groups.sort(key=lambda g: order[g.root])
    return [GroupInfo(g.root, g.size, stage[g.root], list(g.convs), g.coupled)
            for g in groups]


def _scores(model: nn.Module, group: ChannelGroup, ranking: str) -> torch.Tensor:
    if ranking == "bn_scale":
        return group_bn_scales(model, [group])[group.root]
    return group_norms(model, [group], p=1)[group.root]


def scan_group(model: nn.Module, data, method: str, root: str,
               ratios: tuple[float, ...] = RATIOS) -> list[dict]:
    """One row per ratio: ``{"group", "ratio", "removed", "val_accuracy", "macs"}`` after
    removing that share of group ``root``'s channels from a copy of ``model`` (which is
    left untouched), with no fine-tuning."""
    ranking, fold = RANKING[method]
    shape = data.input_shape
    groups = {g.root: g for g in scannable(model, shape, method)}
    if root not in groups:
        raise SensitivityError(f"{root!r} is not a channel group {method} prunes; groups: "
                               f"{', '.join(groups)}")
    group = groups[root]
    scores = _scores(model, group, ranking)
    rows = []
    for ratio in ratios:
        pruned = copy.deepcopy(model)
        plan = select_per_group({root: scores}, float(ratio))
        if fold and plan[root]:
            fold_removed(pruned, [group], plan, data)
        if plan[root]:
            remove_channels(pruned, plan, shape)
        rows.append({"group": root, "ratio": float(ratio), "removed": len(plan[root]),
                     "val_accuracy": evaluate(pruned, data, "val")["accuracy"],
                     "macs": count_cost(pruned, shape)["macs"]})
    return rows


def reference(model: nn.Module, data) -> dict:
    """The unpruned model's validation accuracy and MACs, the scan's zero."""
    return {"val_accuracy": evaluate(model, data, "val")["accuracy"],
            "macs": count_cost(model, data.input_shape)["macs"]}


def greedy_allocation(doc: dict, target: float) -> dict | None:
    """Per-group shares to remove that reach ``target`` (a fraction of the base MACs) with
    the least predicted loss, by the greedy equal-loss rule (after AIMET's greedy
    per-layer selection): for a loss bound ``epsilon``, each group takes the largest share
    whose scanned accuracy loss stays within it; the smallest ``epsilon`` whose predicted
    MACs reach the target wins. The MACs are predicted by adding each group's scanned
    saving, which overstates the saving a little where neighbouring groups are both cut
    (the conv between them shrinks on both sides). None where even the largest shares
    of every group do not reach the target.

    Returns ``{"target", "ratios": {group: share}, "predicted_macs", "epsilon"}`` with
    the loss bound in accuracy (a fraction).
    """
    base_acc, base_macs = doc["base"]["val_accuracy"], doc["base"]["macs"]
    by_group: dict[str, list[tuple[float, float, int]]] = {}
    for r in doc["rows"]:
        by_group.setdefault(r["group"], []).append(
            (float(r["ratio"]), base_acc - float(r["val_accuracy"]), int(r["macs"])))

    def allocate(eps: float) -> tuple[dict[str, float], float]:
        ratios, saved = {}, 0
        for group, rows in by_group.items():
            ok = [(ratio, macs) for ratio, loss, macs in rows if loss <= eps + 1e-12]
            ratio, macs = max(ok) if ok else (0.0, base_macs)
            ratios[group] = ratio
            saved += base_macs - macs
        return ratios, base_macs - saved

    candidates = sorted({0.0, *(loss for rows in by_group.values() for _, loss, _ in rows)})
    goal = target * base_macs
    if allocate(candidates[-1])[1] > goal:
        return None
    lo, hi = 0, len(candidates) - 1  # the first candidate whose MACs reach the goal
    while lo < hi:
        mid = (lo + hi) // 2
        if allocate(candidates[mid])[1] <= goal:
            hi = mid
        else:
            lo = mid + 1
    ratios, macs = allocate(candidates[lo])
    return {"target": float(target), "ratios": ratios, "predicted_macs": int(macs),
            "epsilon": float(max(candidates[lo], 0.0))}


def smallest_reach(doc: dict) -> float:
    """The smallest fraction of the base MACs the scan predicts, every group at its largest
    scanned share (savings added, as :func:`greedy_allocation` predicts them)."""
    base = doc["base"]["macs"]
    least: dict[str, int] = {}
    for r in doc["rows"]:
        least[r["group"]] = min(least.get(r["group"], base), int(r["macs"]))
    return (base - sum(base - m for m in least.values())) / base


def allocation_levels(doc: dict, levels: int) -> list[dict]:
    """Greedy allocations (:func:`greedy_allocation`) at ``levels`` MAC targets evenly
    spaced between the base model and the smallest the scan reaches (both ends left out),
    most MACs first; a target the greedy rule cannot place is skipped."""
    low = max(smallest_reach(doc), 0.0)
    targets = [1 - (1 - low) * (i + 1) / (levels + 1) for i in range(levels)]
    found = [greedy_allocation(doc, t) for t in targets]
    return [a for a in found if a is not None]


__all__ = ["RANKING", "RATIOS", "GroupInfo", "SensitivityError", "allocation_levels",
           "greedy_allocation", "smallest_reach",
           "group_info", "reference", "scan_group", "scannable", "stages"]
