"""A trial rehearsed on a handful of random images, before a study spends anything.

:func:`rehearse` runs a chain's stages, the same functions a trial runs, on a copy of the
model at each given point of the search space (its corners): grouping, coupling, the
channels a ratio removes, the removal itself, every training phase (cut to one epoch of
two batches), the checkpoint a resumed trial reloads, and the final forward pass. Where
a point fails, it says where: the stage, the values, the module the forward pass was in
and the error. ``prune-study validate`` and a new study refuse a model and method pair
that fails here, so a pair they accept cannot fail in a trial for a structural reason.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from prune_core.compressed import STAGE_SEED
from prune_core.data import Data, Split
from prune_core.measure import count_cost
from prune_core.methods import ParamError, Stage, split_params
from prune_core.methods._context import Context
from prune_core.surgery import load_resized
from prune_core.train import TrainConfig, TrainingDiverged, seed_everything

SAMPLES = 4  # images per split: one training batch
BATCH = 4
# Points of the space rehearsed per chain: the range ends twice, and each choice of a
# categorical of up to this many choices once.
MAX_POINTS = 4
# The highest learning rate a rehearsal trains at: the steps are there to run every
# training path once, not to move the weights (batches of noise images can give
# gradients large enough to blow a normal step up).
LR = 1e-6


class _Context(Context):
    """A stage context whose every training phase is one epoch at a small learning rate."""

    def fit(self, model: nn.Module, epochs: int, **kw) -> list[dict]:
        for k in ("lr", "classifier_lr"):
            if k in kw:
                kw[k] = min(float(kw[k]), LR)
        return super().fit(model, min(int(epochs), 1), **kw)


def random_data(input_shape: tuple[int, ...], num_classes: int, seed: int = 0) -> Data:
    """Three splits of ``SAMPLES`` random images with random labels."""
    g = torch.Generator().manual_seed(seed)

    def split() -> Split:
        x = torch.randint(0, 256, (SAMPLES, *input_shape), generator=g, dtype=torch.uint8)
        y = torch.arange(SAMPLES) % num_classes
        return Split(x, y[torch.randperm(SAMPLES, generator=g)])

    channels = input_shape[0]
    return Data("rehearsal", num_classes, split(), split(), split(), (0.5,) * channels,
                (0.25,) * channels)


@dataclass
class Failure:
    """Where a rehearsal failed: the stage, the point's values, the module and the error."""

    stage: str | None  # None: the model as built, before any stage
    values: dict
    module: str | None
    error: BaseException

    def __str__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.values.items())
        where = ("" if self.module is None else " in the model's own forward" if not self.module
                 else f" in module {self.module!r}")
        what = "the model as built" if self.stage is None else \
            f"stage {self.stage!r} at {shown or 'its default values'}"
        return f"{what} failed{where}: {type(self.error).__name__}: {_first_line(self.error)}"


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else ""


class _Locator:
    """Which module the model's forward pass was inside when it raised."""

    def __init__(self, model: nn.Module):
        self.stack: list[str] = []
        self.inside = False  # a forward of the whole model started and has not returned
        self.handles = [model.register_forward_pre_hook(self._start),
                        model.register_forward_hook(self._end)]
        for name, m in model.named_modules():
            if name:
                self.handles.append(m.register_forward_pre_hook(self._enter(name)))
                self.handles.append(m.register_forward_hook(self._leave(name)))

    def _start(self, _m, _args) -> None:
        self.stack.clear()
        self.inside = True

    def _end(self, _m, _args, _out) -> None:
        self.inside = False

    def _enter(self, name: str):
        def hook(_m, _args):
            self.stack.append(name)
        return hook

    def _leave(self, name: str):
        def hook(_m, _args, _out):
            if name in self.stack:  # it returned, and so did everything it called
                del self.stack[len(self.stack) - 1 - self.stack[::-1].index(name):]
        return hook

    def close(self) -> str | None:
        """The innermost module of a forward pass that raised, if one did."""
        for h in self.handles:
            h.remove()
        if not self.inside:
            return None
        return self.stack[-1] if self.stack else ""  # "": the model's own forward


def _forward(model: nn.Module, x: torch.Tensor, train: bool) -> torch.Tensor:
    """The model's output on ``x`` (a tensor of logits, or an error that says so)."""
    model.train(train)
    out = model(x)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the model's {'training' if train else 'eval'}-mode forward returns "
                        f"{type(out).__name__}, not a tensor of logits (auxiliary heads: "
                        "build it without them, e.g. aux_logits: false)")
    return out


def _check_model(model: nn.Module, data: Data) -> None:
    """A training step's forward and backward, and eval-mode logits of the right shape."""
    x = data.normalize(data.train.x[:BATCH])
    out = _forward(model, x, train=True)
    out.float().sum().backward()
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        out = _forward(model, x, train=False)
    if tuple(out.shape) != (len(x), data.num_classes):
        raise ValueError(f"the model returns shape {tuple(out.shape)} for a batch of "
                         f"{len(x)}; expected ({len(x)}, {data.num_classes})")


def rehearse(build: Callable[[], nn.Module], stages: list[Stage], points: list[dict],
             input_shape: tuple[int, ...], num_classes: int = 10, seed: int = 0
             ) -> Failure | None:
    """Run ``stages`` on a fresh model from ``build()`` at each point (``{stage.param:
    value}``); the first failure, or None. A point the methods' constraints refuse is
    skipped (the search space cannot draw it); repetitions (``Param.rehearsal_cap``) are
    cut to their cap."""
    data = random_data(tuple(input_shape), num_classes, seed)
    train = TrainConfig(epochs=1, batch_size=BATCH, lr=LR, seed=seed)
    model = _fresh(build, seed)
    locator = _Locator(model)
    try:
        _check_model(model, data)
    except Exception as e:
        return Failure(None, {}, locator.close(), e)
    locator.close()
    for point in points[:MAX_POINTS] or [{}]:
        try:
            values = split_params(stages, dict(point))
        except ParamError:
            continue
        for stage in stages:
            for p in stage.method.params:
                if p.rehearsal_cap is not None:
                    v = values[stage.name]
                    v[p.name] = min(v[p.name], p.rehearsal_cap)
        failure = _one(build, stages, point, values, data, train, seed)
        if failure is not None:
            return failure
    return None


def _one(build, stages: list[Stage], point: dict, values: dict, data: Data,
         train: TrainConfig, seed: int) -> Failure | None:
    model = _fresh(build, seed)
    for i, stage in enumerate(stages):
        shown = {k: v for k, v in point.items() if k.partition(".")[0] == stage.name}
        locator = _Locator(model)
        try:
            seed_everything(seed + STAGE_SEED * i)
            ctx = _Context(data=data, train=train, stage=stage.name, results={},
                           base_model=copy.deepcopy(model), seed=seed,
                           fresh_model=lambda s: _fresh(build, s))
            model = stage.method(model, values[stage.name], ctx)
            if not stage.method.terminal:
                _check_model(model, data)
        except TrainingDiverged:
            return None  # numbers on noise, not structure: every path before it ran
        except Exception as e:  # anything a method can raise on this model is the answer
            return Failure(stage.name, shown, locator.close(), e)
        locator.close()
        if not stage.method.terminal:
            try:
                _reload(build, stages[: i + 1], values, model.state_dict(), data)
            except Exception as e:
                return Failure(stage.name, shown, None, RuntimeError(
                    f"a checkpoint taken after this stage does not load into the rebuilt "
                    f"model ({type(e).__name__}: {_first_line(e)})"))
    try:
        with torch.no_grad():
            model.eval()
            model(data.normalize(data.test.x[:BATCH]))
        if not any(s.method.terminal for s in stages):
            count_cost(model, data.input_shape)
    except Exception as e:
        last = stages[-1]
        return Failure(last.name, {k: v for k, v in point.items()
                                   if k.partition(".")[0] == last.name}, None, e)
    return None


def _fresh(build, seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _reload(build, stages: list[Stage], values: dict, state: dict, data: Data) -> None:
    """Load a checkpoint the way a resumed trial does: rebuilt, restructured, resized."""
    model = _fresh(build, 0)
    for s in stages:
        if s.method.restructure is not None:
            model = s.method.restructure(model, values[s.name])
    load_resized(model, state)
    with torch.no_grad():
        _forward(model, data.normalize(data.test.x[:BATCH]), train=False)


__all__ = ["Failure", "random_data", "rehearse"]
