"""Physical removal of channels through torch-pruning's dependency graph, and masks.

``remove_channels`` takes a plan ``{conv_name: [channel indices]}`` and removes
those output channels together with everything that depends on them: the
BatchNorm after the conv, the input channels of the next conv or linear layer,
and in residual networks every layer coupled through the skip connections.
``mask_channels`` zeroes the same channels without changing shapes; both give
the same outputs, which the tests pin.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.dependency import index_mapping as _index_mapping

from prune_core.errors import InputError
from prune_core.train import Hooks


def _mark_unmapped(update):
    """torch-pruning's reshape index mapping, except that a reshape it cannot map is
    marked (``node.unmapped``) instead of failing the whole graph.

    It maps channel indices through a reshape only where the reshape flattens or
    unflattens channels. A channel shuffle (ShuffleNet: a view to ``[b, g, c / g, h, w]``,
    a transpose, a view back) permutes channels, and there the build raised
    ZeroDivisionError. Groups reaching a marked reshape are left whole
    (``prune_core.groups.channel_groups``); channels inside a branch still prune.
    """
    def mapped(graph, node):
        try:
            update(graph, node)
        except ZeroDivisionError:
            node.unmapped = True
    mapped.marks_unmapped = True
    return mapped


if not getattr(_index_mapping.update_reshape_index_mapping, "marks_unmapped", False):
    _index_mapping.update_reshape_index_mapping = _mark_unmapped(
        _index_mapping.update_reshape_index_mapping)


class SurgeryError(InputError):
    """A removal plan cannot be carried out."""


def example_input(model: nn.Module, input_shape: tuple[int, ...]) -> torch.Tensor:
    """A zero batch of one input on the model's device."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return torch.zeros((1, *input_shape), device=device)


def _graph(model: nn.Module, input_shape: tuple[int, ...]) -> tp.DependencyGraph:
    was_training = model.training
    model.eval()
    try:
        return tp.DependencyGraph().build_dependency(
            model, example_inputs=example_input(model, input_shape))
    finally:
        model.train(was_training)


def _planned(model: nn.Module, plan: dict[str, Iterable[int]]) -> dict[str, list[int]]:
    """The plan's non-empty entries, checked against the model."""
    modules = dict(model.named_modules())
    out = {}
    for name, idxs in plan.items():
        layer = modules.get(name)
        if not isinstance(layer, nn.Conv2d | nn.Linear):
            raise SurgeryError(f"plan names {name!r}, which is not a conv or linear layer of "
                               "the model")
        idxs = sorted({int(i) for i in idxs})
        if not idxs:
            continue
        width = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
        if idxs[0] < 0 or idxs[-1] >= width:
            raise SurgeryError(
                f"channel indices for {name!r} must be in [0, {width}); got {idxs}"
            )
        if len(idxs) >= width:
            raise SurgeryError(f"plan removes all {width} channels of {name!r}")
        out[name] = idxs
    return out


def _groups(model: nn.Module, plan: dict[str, list[int]], input_shape: tuple[int, ...]):
    """The graph and each planned conv's group; refuses a plan naming two convs of one
    group (convs added together, or multiplied by a gate, write the same channels: their
    group is planned once, through one of them).

    Convs whose outputs are concatenated, or read by one depthwise conv, are in separate
    groups and are planned independently.
    """
    graph = _graph(model, input_shape)
    groups, owner = {}, {}
    for name, idxs in plan.items():
        root = model.get_submodule(name)
        group = graph.get_pruning_group(root, out_pruning_fn(root), idxs=idxs)
        for dep, _ in group:
            if isinstance(dep.target.module, nn.Conv2d | nn.Linear) and _is_out(graph, dep):
                other = owner.setdefault(id(dep.target.module), name)
                if other != name:
                    raise SurgeryError(
                        f"{name!r} and {other!r} write the same channels (added together or "
                        f"gated): plan one of them")
        groups[name] = group
    return graph, groups


def out_pruning_fn(m: nn.Module):
    """torch-pruning's function removing ``m``'s output channels (conv or linear)."""
    return tp.prune_conv_out_channels if isinstance(m, nn.Conv2d) else \
        tp.prune_linear_out_channels


def _slots(group) -> set[tuple[int, str]]:
    """Which side (output or input channels) of which layer or operation a group prunes."""
    return {(id(dep.target.module), dep.handler.__name__) for dep, _ in group}


def _is_out(graph, dep) -> bool:
    return graph.is_out_channel_pruning_fn(dep.handler)


def remove_channels(
    model: nn.Module, plan: dict[str, Iterable[int]], input_shape: tuple[int, ...]
) -> nn.Module:
    """Remove the planned output channels in place; returns the model.

    Groups are removed one after another. A group pruning the same side of a layer as one
    removed before it (the input channels of a concatenation's reader, whose offsets
    moved) is found afresh on a graph of the model as it is now; its root conv's own
    channels have not moved.
    """
    plan = _planned(model, plan)
    graph, groups = _groups(model, plan, input_shape)
    touched: set[int] = set()
    stale = False  # something was removed since ``graph`` was traced
    for name, idxs in plan.items():
        group = groups[name]
        if _slots(group) & touched:
            if stale:
                graph, stale = _graph(model, input_shape), False
            root = model.get_submodule(name)
            group = graph.get_pruning_group(root, out_pruning_fn(root), idxs=idxs)
        if not graph.check_pruning_group(group):
            raise SurgeryError("torch-pruning refused a group: it would remove every channel")
        group.prune()
        sync_heads(model)  # before any re-trace runs the model again
        touched |= _slots(group)
        stale = True
    return model


def sync_heads(model: nn.Module) -> nn.Module:
    """Set each attention block's head count from its ``qkv`` layer after whole heads were
    removed (timm's ``Attention`` reshapes by ``num_heads`` and ``attn_dim``)."""
    for m in model.modules():
        qkv, head_dim = getattr(m, "qkv", None), getattr(m, "head_dim", None)
        if not isinstance(qkv, nn.Linear) or not isinstance(head_dim, int) \
                or not isinstance(getattr(m, "num_heads", None), int):
            continue
        heads, rest = divmod(qkv.out_features, 3 * head_dim)
        if rest or not heads or heads == m.num_heads:
            continue  # not whole heads removed (another layout of qkv): left as it is
        m.num_heads = heads
        if isinstance(getattr(m, "attn_dim", None), int):
            m.attn_dim = heads * head_dim
    return model


def mask_channels(
    model: nn.Module, plan: dict[str, Iterable[int]], input_shape: tuple[int, ...]
) -> nn.Module:
    """Zero the planned channels (and their coupled channels) so they emit exactly zero."""
    graph, groups = _groups(model, _planned(model, plan), input_shape)
    for group in groups.values():
        for dep, idxs in group:
            if not _is_out(graph, dep):
                continue
            m = dep.target.module
            idx = torch.as_tensor(list(idxs), dtype=torch.long)
            _zero_out_channels(m, idx)
    return model


@torch.no_grad()
def _zero_out_channels(m: nn.Module, idx: torch.Tensor) -> None:
    if isinstance(m, nn.Conv2d | nn.Linear):
        m.weight[idx] = 0
        if m.bias is not None:
            m.bias[idx] = 0
    elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
        m.weight[idx] = 0
        m.bias[idx] = 0


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` where the qualified ``name`` is in ``model``."""
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


@torch.no_grad()
def load_resized(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Load a state dict whose shapes may be smaller (pruned) than the model's, resizing
    every tensor that differs first (a layer's, or one a block holds itself, such as
    ConvNeXt's layer scale) and the sizes conv, linear and norm layers keep. Structural
    edits beyond shapes must be made before (see ``Method.restructure``)."""
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        own = list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False))
        for attr, cur in own:
            t = state_dict.get(prefix + attr)
            if t is None or cur is None or cur.shape == t.shape:
                continue
            new = torch.empty(t.shape, dtype=cur.dtype, device=cur.device)
            if isinstance(cur, nn.Parameter):
                setattr(m, attr, nn.Parameter(new, requires_grad=cur.requires_grad))
            else:
                setattr(m, attr, new)
        w = state_dict.get(prefix + "weight")
        if w is None:
            continue
        if isinstance(m, nn.Conv2d):
            if m.groups > 1 and m.groups == m.in_channels == m.out_channels:
                m.groups = w.shape[0]  # depthwise: one group per channel, however many
            m.out_channels, m.in_channels = w.shape[0], w.shape[1] * m.groups
        elif isinstance(m, nn.Linear):
            m.out_features, m.in_features = w.shape
        elif isinstance(m, nn.LayerNorm):
            m.normalized_shape = tuple(w.shape)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.num_features = w.shape[0]
    model.load_state_dict(state_dict)
    return sync_heads(model)


class Masks:
    """Fixed binary masks on weights, held through training.

    After each backward pass the masked gradients are zeroed (so momentum never
    accumulates there) and after each step the weights are masked again (so weight
    decay and stale momentum cannot move them).
    """

    def __init__(self, masks: dict[str, torch.Tensor]):
        self.masks = masks

    @classmethod
    def from_zeros(cls, model: nn.Module, names: Iterable[str] | None = None) -> Masks:
        """Masks keeping the non-zero weights of ``names`` (default: every conv and linear)."""
        mods = dict(model.named_modules())
        names = names or [n for n, m in mods.items() if isinstance(m, nn.Conv2d | nn.Linear)]
        return cls({n: (mods[n].weight != 0).to(mods[n].weight.dtype) for n in names})

    @torch.no_grad()
    def apply(self, model: nn.Module) -> None:
        """Multiply each masked layer's weight by its mask."""
        mods = dict(model.named_modules())
        for n, mask in self.masks.items():
            mods[n].weight.mul_(mask.to(mods[n].weight.device))

    @torch.no_grad()
    def zero_grads(self, model: nn.Module) -> None:
        """Multiply each masked layer's weight gradient by its mask."""
        mods = dict(model.named_modules())
        for n, mask in self.masks.items():
            g = mods[n].weight.grad
            if g is not None:
                g.mul_(mask.to(g.device))

    def reload(self, model: nn.Module) -> None:
        """Re-derive the masks from the zeros of restored weights (after a resume)."""
        mods = dict(model.named_modules())
        self.masks = {n: (mods[n].weight != 0).to(mods[n].weight.dtype) for n in self.masks}

    def hooks(self) -> Hooks:
        """Training hooks that keep the masked weights at zero, also across a resume."""
        return Hooks(after_backward=[self.zero_grads], after_step=[self.apply],
                     on_load=[self.reload])

    def sparsity(self) -> dict[str, float]:
        """Share of masked-out weights per layer."""
        return {n: 1.0 - float(m.mean()) for n, m in self.masks.items()}


__all__ = [
    "Masks", "SurgeryError", "example_input", "load_resized", "mask_channels",
    "out_pruning_fn", "remove_channels", "replace_module",
]
