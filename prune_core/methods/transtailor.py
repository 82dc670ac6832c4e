"""TransTailor (Liu et al., AAAI 2021, arXiv 2103.01542): target-aware filter pruning.

Starting from a model fine-tuned to the target task, each round trains one scaling
factor alpha per channel of each dependency group (a conv's filters with everything
coupled to them) with every weight frozen, turns alpha into an importance
beta by a first-order Taylor expansion of the loss, removes the globally least
important ``step_ratio`` of the remaining filters, folds alpha (or, with ``fold: beta``,
the importance beta, the seed's second variant) into the weights and fine-tunes. Rounds
stop once the validation accuracy (or balanced accuracy, ``metric``) has fallen more
than ``tau`` below the last accepted model's (the seed's loop) or the starting model's
(``tau_reference``); the last model within ``tau`` is returned.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from prune_core.data import Data, Split, carve
from prune_core.groups import (
    ChannelGroup,
    channel_groups,
    dependency_graph,
    follower_bn,
    keep_every_conv,
    round_plan,
)
from prune_core.methods._allocation import (
    GENERATED,
    Allocation,
    allocation_param,
    group_ratios,
    select,
)
from prune_core.methods._filters import saved_result, total_filters
from prune_core.methods._registry import ROUND_TO, Param, register_method
from prune_core.surgery import load_resized, remove_channels
from prune_core.train import Hooks, evaluate

if TYPE_CHECKING:
    from prune_core.methods._context import Context


class AlphaScaled(nn.Module):
    """``net`` with a trainable factor on each channel of each channel group; ``net`` frozen.

    A group's factor alpha multiplies every output of the group: each of its BatchNorms,
    and each of its convs that no BN of the group follows. Setting a factor to 0 silences
    the channel everywhere it is written (in a ResNet, the whole residual stream channel),
    which is what removing it does, and folding alpha into those layers' affine weights is
    exact. ``net`` is kept in eval mode even while training: its BN statistics belong to
    the frozen weights.
    """

    def __init__(self, net: nn.Module, input_shape: tuple[int, ...], init: str,
                 generator: torch.Generator):
        super().__init__()
        self.net = net
        self.input_shape = tuple(input_shape)
        for p in net.parameters():
            p.requires_grad_(False)
        device = next(net.parameters()).device
        self.alpha = nn.ParameterDict()
        self._handles: list = []
        self.targets: dict[str, list[tuple[str, torch.Tensor, torch.Tensor]]] = {}
        self.groups: list[ChannelGroup] = []
        for g in self.bind():
            a = torch.ones(g.size) if init == "ones" else torch.rand(g.size, generator=generator)
            self.alpha[self.key(g.root)] = nn.Parameter(a.to(device))

    @staticmethod
    def key(root: str) -> str:
        """The ParameterDict key of the alpha of group ``root``."""
        return root.replace(".", "__")  # ParameterDict keys cannot hold dots

    def bind(self) -> list[ChannelGroup]:
        """Find the groups of ``net`` as it is now and hook alpha onto their outputs."""
        for h in self._handles:
            h.remove()
        graph = dependency_graph(self.net, self.input_shape)
        groups = channel_groups(self.net, self.input_shape, graph=graph)
        self.groups = groups
        self.targets = {}
        for g in groups:
            for layer, idxs, root_idxs in g.outputs:
                module = self.net.get_submodule(layer)
                bn = follower_bn(graph, module) if isinstance(module, nn.Conv2d) else None
                if bn is not None and any(self.net.get_submodule(b) is bn for b in g.bns):
                    continue  # scaled at its BatchNorm
                self.targets.setdefault(layer, []).append((self.key(g.root), idxs, root_idxs))
        self._handles = [self.net.get_submodule(n).register_forward_hook(self._scaler(n))
                         for n in self.targets]
        return groups

    def _scale(self, name: str, channels: int, like: torch.Tensor) -> torch.Tensor:
        scale = like.new_ones(channels)
        for key, idxs, root_idxs in self.targets[name]:
            a = self.alpha[key]
            scale = scale.index_put((idxs.to(a.device),), a[root_idxs.to(a.device)].to(scale))
        return scale

    def _scaler(self, name: str):
        def hook(module, _inputs, out):
            if isinstance(module, nn.Linear):  # features on the last dimension
                return out * self._scale(name, out.shape[-1], out)
            s = self._scale(name, out.shape[1], out)
            return out * s.view(1, -1, *([1] * (out.dim() - 2)))

        return hook

    def train(self, mode: bool = True) -> AlphaScaled:
        super().train(mode)
        self.net.eval()
        return self

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Also resize alpha to the checkpoint's channel counts (a resumed trial)."""
        for key, a in list(self.alpha.items()):
            t = state_dict.get(f"alpha.{key}")
            if t is not None and t.shape != a.shape:
                self.alpha[key] = nn.Parameter(torch.empty(t.shape, dtype=a.dtype,
                                                           device=a.device))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def hooks(self) -> Hooks:
        """Training hooks: after a resume resized ``net``, find its groups again."""
        return Hooks(on_load=[lambda _m: self.bind()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @torch.no_grad()
    def fold(self, factors: dict[str, torch.Tensor] | None = None) -> nn.Module:
        """Multiply alpha (or ``factors``, keyed and shaped as alpha) into the weights, drop
        the hooks, unfreeze; returns ``net``."""
        if factors is not None:
            for key, a in self.alpha.items():
                a.copy_(factors[key])
        for h in self._handles:
            h.remove()
        self._handles = []
        for name in self.targets:
            layer = self.net.get_submodule(name)
            s = self._scale(name, layer.weight.shape[0], layer.weight).detach()
            layer.weight.mul_(s.view(-1, *([1] * (layer.weight.dim() - 1))))
            if layer.bias is not None:
                layer.bias.mul_(s)
        for p in self.net.parameters():
            p.requires_grad_(True)
        return self.net


class _Carry(nn.Module):
    """Fine-tunes ``net`` while carrying the last accepted model, frozen, in its state.

    A checkpoint taken during fine-tuning then holds the model a resumed trial must
    fall back to when this round exceeds tau. ``kept`` is registered first so that
    ``net``'s classifier is the module's last linear layer (its own learning rate).
    """

    def __init__(self, kept: nn.Module, net: nn.Module):
        super().__init__()
        self.kept = kept
        self.net = net
        for p in kept.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> _Carry:
        super().train(mode)
        self.kept.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def taylor_importance(wrapper: AlphaScaled, data, batch_size: int = 128) -> dict[str, torch.Tensor]:
    """beta = sum over training batches of |dL_b/dalpha * alpha| per filter."""
    wrapper.eval()
    scores = {k: torch.zeros_like(a) for k, a in wrapper.alpha.items()}
    for x, y in data.batches("train", batch_size, shuffle=False, augment=False):
        wrapper.zero_grad(set_to_none=True)
        F.cross_entropy(wrapper(x).float(), y).backward()
        for k, a in wrapper.alpha.items():
            scores[k] += (a.grad * a).abs().detach()
    wrapper.zero_grad(set_to_none=True)
    return scores


def prune_plan(scores: dict[str, torch.Tensor], step_ratio: float,
               layer_norm: bool = True, allocation: str = "global",
               ratios: dict[str, float] | None = None) -> dict[str, list[int]]:
    """The globally least important ``step_ratio`` of all filters (at least one), one
    kept per layer; with another ``allocation``, each group's least important share
    (``ratios[key]``, else ``step_ratio``) of its own filters.

    With ``layer_norm`` each layer's scores are divided by their L2 norm first, so
    layers of different widths and gradient scales compete on one scale.
    """
    if layer_norm:
        scores = {k: s / s.norm().clamp_min(1e-12) for k, s in scores.items()}
    return select(scores, allocation, step_ratio, ratios, min_count=1)


def _alpha_stats(wrapper: AlphaScaled) -> dict:
    a = torch.cat([p.detach().flatten() for p in wrapper.alpha.values()])
    return {"alpha_mean": float(a.mean()), "alpha_min": float(a.min())}


PARAMS = [
    Param(name="tau", kind="float", default=0.02, low=0.0, high=1.0,
          doc="largest drop (0..1) of the validation metric against the reference model "
              "(tau_reference: the last accepted round's, or the start's)",
          search={"low": 0.005, "high": 0.1, "log": True}),
    Param(name="step_ratio", kind="float", default=0.1, low=0.0, high=1.0, low_open=True,
          high_open=True, doc="share of the remaining filters removed per round (see "
                              "allocation)", search={"low": 0.05, "high": 0.3}),
    allocation_param("global"),
    Param(name="alpha_epochs", kind="int", default=2, low=1, high=1000,
          doc="epochs training the scaling factors alpha (weights frozen) per round",
          search={"low": 1, "high": 5}),
    Param(name="alpha_lr", kind="float", default=0.01, low=0.0, low_open=True, high=10.0,
          doc="learning rate of the scaling factors", search={"low": 1e-3, "high": 0.1,
                                                                "log": True}),
    Param(name="alpha_init", kind="categorical", default="ones", choices=("ones", "random"),
          doc="alpha starts at 1 or uniform in [0, 1)", search={"choices": ["ones", "random"]}),
    Param(name="finetune_epochs", kind="int", default=5, low=1, high=1000,
          doc="fine-tuning epochs after each pruning step (early stopping on val accuracy)",
          search={"low": 2, "high": 10}),
    Param(name="lr", kind="float", default=0.005, low=0.0, low_open=True, high=10.0,
          doc="fine-tuning learning rate of the conv layers",
          search={"low": 5e-4, "high": 0.05, "log": True}),
    Param(name="classifier_lr", kind="float", default=0.05, low=0.0, low_open=True, high=10.0,
          doc="fine-tuning learning rate of the classifier",
          search={"low": 5e-3, "high": 0.5, "log": True}),
    Param(name="patience", kind="int", default=3, low=1, high=1000,
          doc="early stopping: epochs without a better val accuracy", search={"low": 2,
                                                                              "high": 5}),
    Param(name="max_rounds", kind="int", rehearsal_cap=2, default=10, low=1, high=1000,
          doc="most prune-and-fine-tune rounds", search={"low": 2, "high": 20}),
    Param(name="layer_norm", kind="bool", default=True,
          doc="L2-normalise the importance within each layer before the global ranking",
          search={"choices": [True, False]}),
    Param(name="tau_reference", kind="categorical", default="last", choices=("last", "start"),
          doc="the drop is measured from the last accepted model (the seed's W_o = W_p) or "
              "from the starting model", search={"choices": ["last", "start"]}),
    Param(name="metric", kind="categorical", default="accuracy",
          choices=("accuracy", "balanced_accuracy"),
          doc="what tau and early stopping measure on validation data",
          search={"choices": ["accuracy", "balanced_accuracy"]}),
    Param(name="tau_split", kind="categorical", default="val", choices=("val", "holdout"),
          doc="holdout: tau is checked on a stratified half of the validation split that "
              "early stopping never sees (it watches the other half)",
          search={"choices": ["val", "holdout"]}),
    Param(name="fold", kind="categorical", default="alpha", choices=("alpha", "beta"),
          doc="what multiplies into the weights after each round's scoring: the trained "
              "alpha, or the importance beta itself (the seed's second variant, which "
              "collapsed its accuracy to under 1 %)", search={"choices": ["alpha", "beta"]}),
    Param(name="classifier_layers", kind="categorical", default="all", choices=("last", "all"),
          doc="which fully connected layers fine-tune at classifier_lr: every one (the "
              "seed's FC layers) or the last", search={"choices": ["all", "last"]}),
    ROUND_TO,
]


def compatible(model: nn.Module, input_shape: tuple[int, ...]) -> str | None:
    """Why TransTailor has nothing to act on in ``model`` (None: it has)."""
    if not channel_groups(model, input_shape, min_size=2):
        return "no group of conv channels to score and remove"
    return None


@register_method("transtailor", params=PARAMS, seed="000", check=compatible,
                 allocation=Allocation("step_ratio", channel_groups),
                 doc="target-aware filter pruning by trained scaling factors (TransTailor)")
def transtailor(model: nn.Module, params: dict, ctx: Context) -> nn.Module:
    """Prune-and-fine-tune rounds while the validation drop stays within tau."""
    metric = params["metric"]
    tau_data, stopping_data = _tau_splits(ctx.data, params["tau_split"], ctx.seed)
    study_data, ctx.data = ctx.data, stopping_data
    try:
        return _rounds(model, params, ctx, lambda m: evaluate(m, tau_data, "val")[metric])
    finally:
        ctx.data = study_data


def _tau_splits(data: Data, how: str, seed: int) -> tuple[Data, Data]:
    """(data whose val split tau is checked on, data early stopping watches)."""
    if how == "val":
        return data, data
    device = data.val.x.device
    x, y = data.val.x.cpu(), data.val.y.cpu()
    if len(y) < 2:
        raise ValueError(f"tau_split: holdout halves the validation split, which has "
                         f"{len(y)} image(s); use tau_split: val or a larger split")
    rest, held = carve(x, y, 0.5, seed=seed)
    if not len(rest):  # every class has one image: the stratified draw took them all
        half = len(y) // 2
        rest, held = Split(x[half:], y[half:]), Split(x[:half], y[:half])
    return replace(data, val=held.to(device)), replace(data, val=rest.to(device))


def _rounds(model: nn.Module, params: dict, ctx: Context, score) -> nn.Module:
    """Prune-and-fine-tune rounds while the drop of ``score(model)`` stays within tau."""
    reference = score(model)
    start_filters = total_filters(model)
    ratios = None
    if params["allocation"] in GENERATED:
        by_root = group_ratios(params, "step_ratio", model,
                               channel_groups(model, ctx.input_shape), ctx.input_shape)
        ratios = {AlphaScaled.key(root): r for root, r in by_root.items()}
    ctx.result("start_val_accuracy", reference)
    kept = model
    saved = saved_result(ctx, "rounds", [])
    rounds: list[dict] = []
    train = {"lr": params["lr"], "classifier_lr": params["classifier_lr"],
             "patience": params["patience"], "monitor": params["metric"],
             "classifier_layers": params["classifier_layers"]}
    for r in range(1, params["max_rounds"] + 1):
        candidate = copy.deepcopy(kept)
        # one generator per round: a resumed trial draws the same random alpha
        gen = torch.Generator().manual_seed(ctx.seed * 1009 + r)
        wrapper = AlphaScaled(candidate, ctx.input_shape, params["alpha_init"], gen)
        if ctx.resume is None:
            marks = {"init_score": score(wrapper)}  # alpha as drawn, not yet trained
            ctx.keep("round_marks", dict(marks))
        else:  # replaying, or resuming inside this round: the checkpoint carries them
            marks = dict(ctx.kept.get("round_marks", {}))
        ctx.fit(wrapper, params["alpha_epochs"], phase="alpha", lr=params["alpha_lr"],
                classifier_lr=params["alpha_lr"], weight_decay=0.0, extra=_alpha_stats,
                hooks=wrapper.hooks())
        # Weights are frozen while alpha trains: the wrapped copy is the accepted model,
        # and after a resume inside this call it is the only intact copy of it.
        load_resized(kept, candidate.state_dict())
        scores = taylor_importance(wrapper, ctx.data)
        # Each round keeps the multiple below, so a round always removes filters.
        plan = round_plan(prune_plan(scores, params["step_ratio"], params["layer_norm"],
                                     params["allocation"], ratios),
                          scores, params["round_to"], down=True)
        plan = keep_every_conv({g.root: plan[AlphaScaled.key(g.root)] for g in wrapper.groups},
                               wrapper.groups,
                               {g.root: scores[AlphaScaled.key(g.root)] for g in wrapper.groups})
        candidate = wrapper.fold(scores if params["fold"] == "beta" else None)
        if not any(plan.values()):
            break  # every layer is down to one filter
        remove_channels(candidate, {k: v for k, v in plan.items() if v}, ctx.input_shape)
        carry = _Carry(kept, candidate)
        skipped = ctx.replaying  # a resumed trial re-runs this call instantly
        if ctx.resume is None:
            marks["pruned_score"] = score(candidate)  # before fine-tuning
            ctx.keep("round_marks", dict(marks))
        ctx.fit(carry, params["finetune_epochs"], phase="finetune", **train)
        for p in kept.parameters():
            p.requires_grad_(True)
        if skipped:
            # A resumed trial re-runs rounds it had finished; their outcome was saved.
            record = saved[r - 1] if r - 1 < len(saved) else {"round": r, "accepted": True}
        else:
            value = score(candidate)
            drop = reference - value
            record = {"round": r, "filters": total_filters(candidate), **marks,
                      "score": value, "reference": reference, "drop": drop,
                      "accepted": drop <= params["tau"]}
            ctx.report({"phase": "round", **{k: v for k, v in record.items()
                                             if k != "accepted"},
                        "accepted": float(record["accepted"])})
        rounds.append(record)
        ctx.result("rounds", list(rounds))
        if not record["accepted"]:
            break
        kept = candidate
        if params["tau_reference"] == "last":
            reference = record.get("score", reference)  # the seed's W_o = W_p
    ctx.result("rounds_accepted", sum(1 for rec in rounds if rec["accepted"]))
    ctx.result("filters_removed", start_filters - total_filters(kept))
    ctx.result("filters_removed_share", 1.0 - total_filters(kept) / start_filters)
    return kept


__all__ = ["AlphaScaled", "prune_plan", "taylor_importance"]
