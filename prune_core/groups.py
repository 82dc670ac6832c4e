"""Channel groups from torch-pruning's dependency graph: what structured methods rank and remove.

A group is a set of channels that can only be removed together: a conv's output
channels with its BatchNorm and the input channels of every layer that reads them,
and in residual networks every conv and BN coupled through the additions
(``out + shortcut``), through concatenations (with the index offsets they imply)
and through depthwise convs (whose channels follow their input). Structure always
comes from the graph, never from the order modules were registered in.

A structured method scores each group's channels, picks channels to remove per
group (or globally, keeping at least one per group) and hands the plan,
``{root conv name: [channel indices]}``, to :func:`prune_core.surgery.remove_channels`.
Before removal, :func:`fold_removed` moves the mean signal each removed channel
carried into the layers that read it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from prune_core.surgery import example_input, out_pruning_fn

CONV_LINEAR = (nn.Conv2d, nn.Linear)
BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass
class Reader:
    """A layer reading a group's channels through its weights (conv or linear input).

    ``idxs[j]`` is an input index of the layer carrying root channel ``root_idxs[j]``
    (a linear layer behind a flatten reads several columns per channel).
    """

    name: str
    idxs: torch.Tensor
    root_idxs: torch.Tensor

    def columns(self, channels: torch.Tensor) -> torch.Tensor:
        """The layer's input indices that carry the given root channels."""
        return self.idxs[torch.isin(self.root_idxs, channels.to(self.root_idxs.device))]


@dataclass
class ChannelGroup:
    """Channels removed together, numbered by the output channels of ``root`` (a conv).

    Layers are held by name, so a group found on one model addresses any copy of it
    with the same channel counts.
    """

    root: str
    size: int
    convs: list[str]  # conv layers whose output channels are in the group
    bns: list[str]  # BatchNorm layers of the group
    readers: list[Reader]  # layers reading the channels through their weights
    outputs: list[tuple[str, torch.Tensor, torch.Tensor]]  # (layer, idxs, root_idxs) emitting
    depthwise: list[str]  # depthwise convs carried along (input = output channels)
    # Root channels that are one channel: a depthwise conv copying channels of the group
    # to other positions of it (GhostNet's cheap operation, concatenated beside its own
    # input) makes removing either copy remove both. Classes of two or more.
    ties: list[list[int]] = field(default_factory=list)

    def parts(self) -> list[torch.Tensor]:
        """The root channels each conv of the group writes (depthwise convs aside).

        Removing all of one part would empty that conv: a concatenation's inputs are
        parts of one group, a residual stream's convs each write all of it.
        """
        return [root_idxs for layer, _, root_idxs in self.outputs
                if layer in self.convs and layer not in self.depthwise]

    @property
    def coupled(self) -> bool:
        """True where several convs write the same channels (added: a residual stream).

        Convs concatenated side by side write disjoint channels and are not coupled;
        a depthwise conv only carries its input's channels along.
        """
        written: set[int] = set()
        for layer, _, root_idxs in self.outputs:
            if layer in self.convs and layer not in self.depthwise:
                idxs = set(root_idxs.tolist())
                if written & idxs:
                    return True
                written |= idxs
        return False


def output_layers(model: nn.Module) -> list[nn.Module]:
    """The layers whose outputs are the model's outputs: never pruned at the output.

    The last linear layer, or (a model without one) the last conv layer.
    """
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if linears:
        return [linears[-1]]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1:]


def dependency_graph(model: nn.Module, input_shape: tuple[int, ...]) -> tp.DependencyGraph:
    """torch-pruning's dependency graph of ``model``, traced in eval mode on a zero input."""
    # The graph is traced through autograd: frozen weights would leave no trace.
    frozen = [p for p in model.parameters() if not p.requires_grad]
    was_training = model.training
    model.eval()
    try:
        for p in frozen:
            p.requires_grad_(True)
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(
                model, example_inputs=example_input(model, input_shape))
    finally:
        for p in frozen:
            p.requires_grad_(False)
        model.train(was_training)


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels


def _is_grouped(m: nn.Module) -> bool:
    """A grouped conv that is not depthwise (ResNeXt, RegNet): its channels come in blocks
    of ``in_channels / groups`` that a removal would have to keep equal."""
    return isinstance(m, nn.Conv2d) and 1 < m.groups < m.in_channels


# What a group rooted at a linear layer may hold besides linear layers: a hidden layer of
# an MLP (a transformer block's, ConvNeXt's, a classifier's), read by the next linear
# layer through activations. A group reaching a LayerNorm, a residual stream, attention
# heads or a parameter used outside a layer is left whole.
_HIDDEN_OPS = ("_ElementWiseOp", "_ReshapeOp")


def _hidden_linear(graph: tp.DependencyGraph, group: tp.Group) -> bool:
    """True for a linear layer's output read only by linear layers (through activations)."""
    writers = 0
    for item in group:
        m = item.dep.target.module
        if isinstance(m, nn.Linear | nn.BatchNorm1d):
            writers += isinstance(m, nn.Linear) and \
                graph.is_out_channel_pruning_fn(item.dep.handler)
        elif type(m).__name__ not in _HIDDEN_OPS:
            return False
    return writers == 1


def _describe(graph: tp.DependencyGraph, group: tp.Group, names: dict, root: nn.Module
              ) -> ChannelGroup:
    convs, bns, readers, outputs, depthwise = [], [], [], [], []
    outs = {item.dep.target.module for item in group
            if graph.is_out_channel_pruning_fn(item.dep.handler)}
    for item in group:
        m, handler = item.dep.target.module, item.dep.handler
        name = names.get(m)
        if name is None:
            continue
        idxs = torch.as_tensor(list(item.idxs), dtype=torch.long)
        root_idxs = torch.as_tensor(list(item.root_idxs), dtype=torch.long)
        if isinstance(m, BATCHNORM):
            if name not in bns:
                bns.append(name)
                outputs.append((name, idxs, root_idxs))
        elif graph.is_out_channel_pruning_fn(handler) and isinstance(m, CONV_LINEAR):
            if name not in convs:
                convs.append(name)
                outputs.append((name, idxs, root_idxs))
                if _is_depthwise(m):
                    depthwise.append(name)
        elif (graph.is_in_channel_pruning_fn(handler) and isinstance(m, CONV_LINEAR)
              and m not in outs and getattr(m, "groups", 1) == 1):
            readers.append(Reader(name, idxs, root_idxs))
    ties = _ties(graph, group, root) if depthwise and any(
        type(item.dep.target.module).__name__ == "_ConcatOp" for item in group) else []
    return ChannelGroup(names[root], _width(root), convs, bns, readers, outputs, depthwise,
                        ties)


def _ties(graph: tp.DependencyGraph, group: tp.Group, root: nn.Module) -> list[list[int]]:
    """Classes of root channels that torch-pruning removes together.

    Its group lists each layer once, so a channel reached on two paths (a depthwise
    conv's copy concatenated beside the channel it copies) shows under one root index
    only; removing one root channel at a time shows what else goes with it. Asked only
    of groups holding both a depthwise conv and a concatenation, where this happens.
    """
    fn = group[0].dep.handler
    parent = list(range(_width(root)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for r in range(len(parent)):
        own = graph.get_pruning_group(root, fn, [r])[0]
        for i in own.idxs:
            a, b = find(r), find(int(i))
            if a != b:
                parent[max(a, b)] = min(a, b)
    classes: dict[int, list[int]] = {}
    for i in range(len(parent)):
        classes.setdefault(find(i), []).append(i)
    return [c for c in classes.values() if len(c) > 1]


def _width(m: nn.Module) -> int:
    """Output channels of a conv, output features of a linear layer."""
    return m.out_channels if isinstance(m, nn.Conv2d) else m.out_features



def channel_groups(model: nn.Module, input_shape: tuple[int, ...], *,
                   graph: tp.DependencyGraph | None = None,
                   min_size: int = 1) -> list[ChannelGroup]:
    """Every prunable group of conv output channels, and of the hidden features of MLPs
    (a linear layer read only by linear layers), in module order of their roots.

    Groups that reach a grouped conv (neither plain nor depthwise) are left out, and so
    are linear layers' groups that reach anything but linear layers and activations.
    """
    graph = graph or dependency_graph(model, input_shape)
    names = {m: n for n, m in model.named_modules()}
    order = {n: i for i, n in enumerate(names.values())}
    heads = _attention_heads(model)
    out: list[ChannelGroup] = []
    for group in _all_groups(graph, output_layers(model)):
        root = group[0].dep.target.module
        if root in heads:
            if _only_heads(group, root, heads[root]):
                g = _describe(graph, group, names, root)
                g.ties = _head_ties(heads[root])
                out.append(g)
            continue
        if any(_is_grouped(item.dep.target.module) for item in group):
            continue  # left whole: channels of a grouped conv go in equal blocks
        if any(getattr(item.dep.target, "unmapped", False) for item in group):
            continue  # left whole: a channel shuffle permutes them (surgery._mark_unmapped)
        if isinstance(root, nn.Linear) and not _hidden_linear(graph, group):
            continue
        if root in names and isinstance(root, CONV_LINEAR) and _width(root) >= min_size:
            out.append(_describe(graph, group, names, root))
    return sorted(out, key=lambda g: order[g.root])


def _all_groups(graph: tp.DependencyGraph, ignored: list[nn.Module]) -> Iterable[tp.Group]:
    """torch-pruning's ``get_all_groups`` for conv and linear roots, except that a group
    whose index mapping fails (a split whose sizes it could not infer behind a channel
    shuffle) is left out, and so left whole, instead of ending the search."""
    ignored = [*ignored, *graph.IGNORED_LAYERS_IN_TRACING]
    visited: set[nn.Module] = set()
    for m in list(graph.module2node):
        if m in ignored or m in visited or not isinstance(m, nn.Conv2d | nn.Linear):
            continue
        fn = out_pruning_fn(m)
        try:
            group = graph.get_pruning_group(m, fn, list(range(_width(m))))
        except (IndexError, ZeroDivisionError):
            visited.add(m)
            continue
        outs = {item.dep.target.module for item in group
                if graph.is_out_channel_pruning_fn(item.dep.handler)}
        visited |= outs
        if not outs & set(ignored):
            yield group


def _attention_heads(model: nn.Module) -> dict[nn.Module, nn.Module]:
    """``{qkv layer: attention block}`` for timm's ``Attention`` blocks (ViT, DeiT and the
    like) without per-head norms or gates: whole heads can go, the block reshapes by
    ``num_heads`` (set again after removal, ``surgery.sync_heads``)."""
    try:
        from timm.layers.attention import Attention
    except ImportError:  # timm is optional
        return {}
    return {m.qkv: m for m in model.modules()
            if type(m) is Attention and getattr(m, "gate", None) is None
            and all(isinstance(getattr(m, a, None), nn.Identity)
                    for a in ("norm", "q_norm", "k_norm"))}


def _only_heads(group: tp.Group, qkv: nn.Module, attn: nn.Module) -> bool:
    """True where the qkv group reaches no layer with weights but its own block's
    output projection."""
    for item in group:
        m = item.dep.target.module
        if m is qkv or m is attn.proj or not isinstance(m, nn.Module):
            continue
        if isinstance(m, nn.Linear) or next(m.parameters(recurse=False), None) is not None:
            return False
    return True


def _head_ties(attn: nn.Module) -> list[list[int]]:
    """Each head's query, key and value channels of ``qkv``: one class per head."""
    dim, hd = attn.num_heads * attn.head_dim, attn.head_dim
    return [[s * dim + h * hd + j for s in range(3) for j in range(hd)]
            for h in range(attn.num_heads)]


def group_of(model: nn.Module, graph: tp.DependencyGraph, conv: str) -> ChannelGroup | None:
    """The group of ``conv``'s output channels, numbered by that conv's channels; None
    where the graph cannot map them (behind a channel shuffle)."""
    m = model.get_submodule(conv)
    try:
        group = graph.get_pruning_group(m, out_pruning_fn(m), list(range(_width(m))))
    except (IndexError, ZeroDivisionError):
        return None
    if any(getattr(item.dep.target, "unmapped", False) for item in group):
        return None
    return _describe(graph, group, {mod: n for n, mod in model.named_modules()}, m)


def follower_bn(graph: tp.DependencyGraph, layer: nn.Module) -> nn.Module | None:
    """The BatchNorm that alone reads ``layer``'s output, if there is one."""
    node = graph.module2node.get(layer)
    if node is None or len(node.outputs) != 1:
        return None
    nxt = node.outputs[0].module
    return nxt if isinstance(nxt, BATCHNORM) else None


@torch.no_grad()
def group_norms(model: nn.Module, groups: list[ChannelGroup], p: float = 2
                ) -> dict[str, torch.Tensor]:
    """Per group: the Ln norm of each channel's filters, averaged over the group's convs."""
    out = {}
    for g in groups:
        total = torch.zeros(g.size)
        for layer, idxs, root_idxs in g.outputs:
            if layer in g.convs:
                w = model.get_submodule(layer).weight.detach()
                norms = w[idxs.to(w.device)].flatten(1).norm(p=p, dim=1).float().cpu()
                total.index_add_(0, root_idxs, norms)
        out[g.root] = _tie_mean(total / max(1, len(g.convs)), g)
    return out


def _tie_mean(scores: torch.Tensor, g: ChannelGroup) -> torch.Tensor:
    """Scores with each class of tied channels given its mean: they go or stay as one."""
    for tie in g.ties:
        scores[tie] = scores[tie].mean()
    return scores


@torch.no_grad()
def group_bn_scales(model: nn.Module, groups: list[ChannelGroup]) -> dict[str, torch.Tensor]:
    """Per group with BatchNorm: each channel's |gamma|, averaged over the group's BNs."""
    out = {}
    for g in groups:
        if not g.bns:
            continue
        total = torch.zeros(g.size)
        for layer, idxs, root_idxs in g.outputs:
            if layer in g.bns:
                w = model.get_submodule(layer).weight.detach()
                total.index_add_(0, root_idxs, w[idxs.to(w.device)].abs().float().cpu())
        out[g.root] = _tie_mean(total / len(g.bns), g)
    return out


def select_global(scores: dict[str, torch.Tensor], prune_ratio: float,
                  min_keep: float = 0.0, *, min_count: int = 0) -> dict[str, list[int]]:
    """The ``round(prune_ratio * total)`` lowest-scored channels over all groups.

    One ranking over every group (slimming, RePr and TransTailor rank this way). Each
    group keeps its ``max(1, ceil(min_keep * size))`` best channels whatever the
    ranking says, so no group is emptied; the count removed is exact as long as the
    other groups have enough candidates. At least ``min_count`` channels are chosen
    (where that many candidates exist). Ties break by group order, then index.
    """
    total = sum(v.numel() for v in scores.values())
    k = max(min_count, int(round(prune_ratio * total)))
    candidates = []
    for gi, (name, v) in enumerate(scores.items()):
        keep = max(1, math.ceil(min_keep * v.numel()))
        order = torch.argsort(v, stable=True)
        candidates += [(float(v[i]), gi, int(i), name) for i in order[: v.numel() - keep]]
    candidates.sort(key=lambda c: (c[0], c[1], c[2]))
    plan: dict[str, list[int]] = {n: [] for n in scores}
    for _, _, i, name in candidates[:k]:
        plan[name].append(i)
    return {n: sorted(v) for n, v in plan.items()}


def round_plan(plan: dict[str, list[int]], scores: dict[str, torch.Tensor], round_to: int,
               *, down: bool = False) -> dict[str, list[int]]:
    """The plan with every pruned group keeping a multiple of ``round_to`` channels (the
    nearest, or the one below with ``down``; at least ``round_to``), its lowest-scored
    channels removed. Kernels run faster on channel counts that are multiples of 8 or 16.
    Groups the plan leaves whole stay whole, and so do groups of at most ``round_to``
    channels (no smaller multiple exists)."""
    if round_to <= 1:
        return plan
    out = {}
    for name, removed in plan.items():
        size = scores[name].numel()
        if not removed:
            out[name] = removed
            continue
        kept = size - len(removed)
        multiple = kept // round_to if down else (2 * kept + round_to) // (2 * round_to)
        target = min(size, max(round_to, multiple * round_to))
        order = torch.argsort(scores[name], stable=True).tolist()
        out[name] = sorted(order[: size - target])
    return out


def keep_every_conv(plan: dict[str, list[int]], groups: list[ChannelGroup],
                    scores: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    """The plan, except that each conv of a group keeps its best-scored channel, and
    tied channels (``ChannelGroup.ties``) are removed only where all of them are planned.

    A group concatenated from several convs could otherwise lose every channel of one
    of them (the ranking sees one group); that conv then keeps one channel. Removing
    part of a tie class would remove the whole class, which could empty a layer.
    """
    out = {}
    for g in groups:
        removed = set(plan.get(g.root, []))
        for part in g.parts():
            part_set = set(part.tolist())
            if part_set and part_set <= removed:
                best = max(part_set, key=lambda i: float(scores[g.root][i]))
                removed.discard(best)
        for tie in g.ties:
            if not removed.issuperset(tie):
                removed.difference_update(tie)
        out[g.root] = sorted(removed)
    return {**plan, **{k: v for k, v in out.items() if k in plan}}


def select_per_group(scores: dict[str, torch.Tensor], ratio: float) -> dict[str, list[int]]:
    """The ``round(ratio * size)`` lowest-scored channels of each group (one always kept)."""
    plan = {}
    for name, v in scores.items():
        k = min(int(round(ratio * v.numel())), v.numel() - 1)
        plan[name] = sorted(torch.argsort(v, stable=True)[:k].tolist())
    return plan


@torch.no_grad()
def _mean_inputs(model: nn.Module, names: Iterable[str], data, batches: int) -> dict:
    """Mean input of each named layer over up to ``batches`` training batches (eval mode)."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name):
        def fn(m, args):
            x = args[0].detach().float()
            if isinstance(m, nn.Linear):
                x = x.reshape(-1, x.shape[-1])
            sums[name] = sums.get(name, 0) + x.sum(0)
            counts[name] = counts.get(name, 0) + x.shape[0]
        return fn

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    was_training = model.training
    model.eval()
    try:
        for i, (x, _) in enumerate(data.batches("train", 256, shuffle=False, augment=False)):
            if i >= batches:
                break
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {n: sums[n] / counts[n] for n in sums}


@torch.no_grad()
def fold_removed(model: nn.Module, groups: list[ChannelGroup], plan: dict[str, list[int]],
                 data, *, graph: tp.DependencyGraph | None = None,
                 batches: int = 8) -> dict[str, list[str]]:
    """Move the mean signal of each channel about to be removed into the layers reading it.

    A removed channel did not carry zero: after BN and ReLU it carried about a constant
    (exactly ``relu(beta)`` once its scale factor is 0). Each reader's response to that
    channel's mean input (measured on training batches) is added to the reader's bias,
    or subtracted from the running mean of the BatchNorm that alone follows it. For a
    linear reader this is exact whenever the channel was constant; for a conv reader
    the response to a constant varies at the zero-padded border, and its spatial mean
    is what a per-channel shift can hold. Readers with neither a bias nor a following
    BN are skipped. Returns ``{"folded": [...], "skipped": [...]}`` by layer name.
    """
    by_root = {g.root: g for g in groups}
    work = [(by_root[r], torch.as_tensor(idxs, dtype=torch.long))
            for r, idxs in plan.items() if idxs]
    readers = sorted({rd.name for g, _ in work for rd in g.readers})
    if not readers:
        return {"folded": [], "skipped": []}
    means = _mean_inputs(model, readers, data, batches)
    deltas: dict[str, torch.Tensor] = {}
    for g, removed in work:
        for rd in g.readers:
            cols = rd.columns(removed)
            layer = model.get_submodule(rd.name)
            if not len(cols) or rd.name not in means:
                continue
            mean = means[rd.name]
            cols = cols.to(layer.weight.device)
            w = layer.weight[:, cols].float()
            if isinstance(layer, nn.Conv2d):
                response = F.conv2d(mean[cols].unsqueeze(0), w, None, layer.stride,
                                    layer.padding, layer.dilation)
                delta = response.mean(dim=(0, 2, 3))
            else:
                delta = w @ mean[cols]
            deltas[rd.name] = deltas.get(rd.name, 0) + delta
    graph = graph or dependency_graph(model, data.input_shape)
    folded, skipped = [], []
    for name, delta in deltas.items():
        layer = model.get_submodule(name)
        bn = follower_bn(graph, layer)
        if layer.bias is not None:
            layer.bias.add_(delta.to(layer.bias))
        elif bn is not None and bn.running_mean is not None:
            bn.running_mean.sub_(delta.to(bn.running_mean))
        else:
            skipped.append(name)
            continue
        folded.append(name)
    return {"folded": folded, "skipped": skipped}


__all__ = [
    "ChannelGroup", "Reader", "channel_groups", "dependency_graph", "fold_removed",
    "follower_bn", "group_bn_scales", "group_of", "group_norms", "keep_every_conv",
    "output_layers", "select_global", "select_per_group",
]
