"""What a method sees besides the model: data, training defaults, reporting, resuming."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from prune_core.data import Data
from prune_core.measure import count_cost
from prune_core.surgery import load_resized
from prune_core.train import Hooks, TrainConfig, evaluate, fit, make_optimizer

__all__ = ["Context"]


def _ignore(*_args) -> None:
    pass


@dataclass
class Context:
    """Per-stage context handed to a method.

    ``train`` holds the study's fine-tuning defaults; ``report`` takes per-epoch
    metrics (the trial adds the stage name and a global step); ``results`` collects
    extra result columns ``<stage>.<key>``.

    Every ``fit`` call is checkpointed after each epoch through ``save``. A trial
    resumed from such a checkpoint replays the method: ``fit`` calls before the
    checkpointed one return at once, the checkpointed one reloads the weights and
    optimizer and continues at its epoch, and results recorded before the
    checkpoint keep their saved values.
    """

    data: Data
    train: TrainConfig
    stage: str = ""
    report: Callable[[dict], None] = _ignore
    results: dict = field(default_factory=dict)
    base_model: nn.Module | None = None
    seed: int = 0
    log: Callable[[str], None] = _ignore
    # Checkpointing: save(payload) persists; resume is a payload saved earlier in this stage.
    save: Callable[[dict], None] | None = None
    resume: dict | None = None
    # fresh_model(seed): the base architecture freshly initialised under ``seed`` (for
    # methods that re-initialise weights); None where the caller cannot build one.
    fresh_model: Callable[[int], nn.Module] | None = None
    # Tensors a method keeps with every later checkpoint (see ``keep``).
    kept: dict = field(default_factory=dict)
    _calls: int = 0

    def __post_init__(self) -> None:
        if self.resume is not None:
            self.kept = dict(self.resume.get("kept", {}))

    @property
    def device(self) -> torch.device:
        """Where the stage's data and model live."""
        return self.data.device

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """One sample's shape (channels, height, width)."""
        return self.data.input_shape

    @property
    def replaying(self) -> bool:
        """True while a resumed method re-runs the part before its checkpoint."""
        return self.resume is not None and self._calls < self.resume["fit_call"]

    def keep(self, key: str, value) -> None:
        """Keep tensors or plain data with every later checkpoint of this stage: state a
        method derived from weights that later training overwrites. A resumed method
        finds it in ``kept``."""
        self.kept[key] = value

    def result(self, key: str, value) -> None:
        """Record an extra result column ``<stage>.<key>``."""
        key = f"{self.stage}.{key}" if self.stage else key
        if self.replaying and key in self.results:
            return
        self.results[key] = value

    def fit(
        self,
        model: nn.Module,
        epochs: int,
        *,
        phase: str = "finetune",
        hooks: Hooks | None = None,
        extra: Callable[[nn.Module], dict] | None = None,
        **overrides,
    ) -> list[dict]:
        """Train with the study's defaults, ``epochs`` and any TrainConfig overrides.

        Each epoch is reported with ``phase`` and the cost of the model being trained
        (params, MACs and their non-zero counts, taken once when training starts: a
        scheduler compares trials on them); ``extra(model)`` adds columns (sparsity, alpha).
        """
        call = self._calls
        self._calls += 1
        cfg = self.train.with_(epochs=epochs, seed=self.seed + 1000 * call, **overrides)
        hooks = hooks or Hooks()
        start, optimizer, stopping = 0, None, {}
        if self.resume is not None and call < self.resume["fit_call"]:
            return []
        if self.resume is not None and call == self.resume["fit_call"]:
            load_resized(model, self.resume["state_dict"])
            model.to(self.device)
            for h in hooks.on_load:
                h(model)
            optimizer = make_optimizer(model, cfg)
            optimizer.load_state_dict(self.resume["optimizer"])
            start = int(self.resume["epoch"])
            stopping = dict(self.resume.get("early_stopping") or {})
            self.resume = None

        cost = count_cost(model, self.input_shape)

        def on_epoch(row: dict) -> None:
            row = {**row, "phase": phase, "epochs": epochs, **cost}
            if extra is not None:
                row.update(extra(model))
            self.report(row)

        def on_state(epoch: int, opt: torch.optim.Optimizer) -> None:
            if self.save is None:
                return
            self.save({
                "fit_call": call, "epoch": epoch,
                "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                "optimizer": copy.deepcopy(opt.state_dict()),
                "results": dict(self.results),
                "kept": dict(self.kept),
                "early_stopping": dict(stopping),
            })

        return fit(model, self.data, cfg, hooks=hooks, on_epoch=on_epoch, start_epoch=start,
                   optimizer=optimizer, on_epoch_state=on_state, early_stopping=stopping)

    def evaluate(self, model: nn.Module, split: str = "val") -> dict:
        """Loss, accuracy and balanced accuracy of ``model`` on ``split``."""
        return evaluate(model, self.data, split)
