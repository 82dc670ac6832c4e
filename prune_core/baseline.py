"""Train-or-load the base model, cached by a content hash of what determines it.

The key covers the model and its arguments, the data and its arguments, the
training settings and the seed. Files hold only tensors and plain data, and are
read with ``torch.load(weights_only=True)``: a foreign file never runs code.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import prune_core.models as models
from prune_core._io import CheckpointError, atomic_save, safe_load
from prune_core.data import Data, data_key
from prune_core.measure import measure
from prune_core.train import TrainConfig, evaluate, fit, seed_everything

CACHE_FORMAT = 1


@dataclass(frozen=True)
class BaseSpec:
    """Everything that determines a base model."""

    model: str
    model_kw: dict = field(default_factory=dict)
    data: str = "digits"
    data_kw: dict = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    # On transfer datasets: fine-tuning from the source task to the target task.
    transfer: TrainConfig | None = None

    def key(self) -> str:
        """Content hash of everything that determines the trained base model."""
        blob = json.dumps(
            {
                "format": CACHE_FORMAT,
                "model": self.model,
                "model_kw": self.model_kw,
                "data": self.data,
                "data_kw": data_key(self.data, self.data_kw),
                "train": self.train.key_dict(),
                "transfer": self.transfer.key_dict() if self.transfer else None,
            },
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class BaseModel:
    """A trained base model as plain data: rebuilt on demand, cheap to ship to workers."""

    key: str
    model: str
    model_kw: dict
    num_classes: int
    state_dict: dict[str, torch.Tensor]
    row: dict  # test/val accuracy and the measurement columns
    history: list[dict] = field(default_factory=list)

    def build(self, device: torch.device | str = "cpu") -> nn.Module:
        """The model, built afresh with the trained weights, on ``device``."""
        # The trained weights replace any pretrained file the model started from.
        kw = {k: v for k, v in self.model_kw.items() if k != "weights"}
        m = models.build(self.model, num_classes=self.num_classes, **kw)
        m.load_state_dict(self.state_dict)
        return m.to(device)

    def weights_hash(self) -> str:
        """Content hash of the trained weights (:func:`weights_hash`)."""
        return weights_hash(self.state_dict)

    def to_payload(self) -> dict:
        """The cache file's content: tensors and JSON strings, loadable with weights_only."""
        return {
            "format": CACHE_FORMAT, "key": self.key, "model": self.model,
            "model_kw_json": json.dumps(self.model_kw), "num_classes": self.num_classes,
            "state_dict": self.state_dict, "row_json": json.dumps(self.row),
            "history_json": json.dumps(self.history),
        }

    @classmethod
    def from_payload(cls, payload: Any, source: str) -> BaseModel:
        """Read a payload written by :meth:`to_payload`; ``CheckpointError`` for anything else."""
        need = {"format", "key", "model", "model_kw_json", "num_classes", "state_dict", "row_json"}
        if not isinstance(payload, dict) or not need <= set(payload):
            raise CheckpointError(f"{source!r} is not a prune-study base model file")
        if payload["format"] != CACHE_FORMAT:
            raise CheckpointError(f"{source!r} has cache format {payload['format']}, "
                                  f"this version reads {CACHE_FORMAT}; delete it to retrain")
        return cls(
            key=payload["key"], model=payload["model"],
            model_kw=json.loads(payload["model_kw_json"]), num_classes=payload["num_classes"],
            state_dict=payload["state_dict"], row=json.loads(payload["row_json"]),
            history=json.loads(payload.get("history_json", "[]")),
        )


def weights_hash(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's names, dtypes, shapes and values: equal iff the weights are."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # Viewed as bytes: every dtype (bfloat16 included) hashes without a conversion.
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cache_path(cache_dir: str | Path, spec: BaseSpec) -> Path:
    """``base-<model>-<data>-<key>.pt``; characters of ``torchvision:...`` or
    ``import:pkg.mod:fn`` names that do not belong in a file name become ``_`` (registry
    names have none, so their files keep their names; the key keeps files apart)."""
    model = re.sub(r"[^A-Za-z0-9_-]", "_", spec.model)
    return Path(cache_dir) / f"base-{model}-{spec.data}-{spec.key()}.pt"


def load_cached(cache_dir: str | Path, spec: BaseSpec) -> BaseModel | None:
    """The cached base model for ``spec``, or None if none is cached."""
    path = cache_path(cache_dir, spec)
    if not path.exists():
        return None
    return BaseModel.from_payload(safe_load(path), str(path))


def train_base(spec: BaseSpec, data: Data, log=print,
               on_epoch: Callable[[dict], None] | None = None) -> BaseModel:
    """Train the base model (on a transfer dataset: source task, then target task).
    ``on_epoch`` receives each epoch's row (see :func:`_tagged`)."""
    t0 = time.perf_counter()
    history: list[dict] = []
    transfer = spec.transfer or spec.train
    total = spec.train.epochs + (transfer.epochs if data.source is not None else 0)
    # The initial weights (and a transfer model's new classifier) come from the spec's seed:
    # the same spec trains the same base model in any process.
    seed_everything(spec.train.seed)
    if data.source is not None:
        model = models.build(spec.model, num_classes=data.source.num_classes, **spec.model_kw)
        log(f"training base {spec.model} on {data.source.name} for {spec.train.epochs} epochs")
        history += fit(model, data.source, spec.train,
                       on_epoch=_tagged("source", spec.train.epochs, total, on_epoch))
        seed_everything(spec.train.seed + 1)
        models.replace_classifier(model, data.num_classes)
        log(f"fine-tuning to {data.name} for {transfer.epochs} epochs")
        history += fit(model, data, transfer,
                       on_epoch=_tagged("transfer", transfer.epochs, total, on_epoch))
    else:
        model = models.build(spec.model, num_classes=data.num_classes, **spec.model_kw)
        log(f"training base {spec.model} on {data.name} for {spec.train.epochs} epochs")
        history += fit(model, data, spec.train,
                       on_epoch=_tagged("base", spec.train.epochs, total, on_epoch))
    test = evaluate(model, data, "test")
    row = {
        "accuracy": test["accuracy"],
        "balanced_accuracy": test["balanced_accuracy"],
        "val_accuracy": evaluate(model, data, "val")["accuracy"],
        **measure(model, data.input_shape),
        "train_seconds": time.perf_counter() - t0,
    }
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return BaseModel(spec.key(), spec.model, dict(spec.model_kw), data.num_classes, state, row,
                     history)


def _tagged(phase: str, epochs: int, total: int,
            on_epoch: Callable[[dict], None] | None) -> Callable[[dict], None]:
    """``fit``'s epoch callback for a base-training phase: tags each row (in the history
    ``fit`` returns too) with the phase, its epoch count and every phase's together
    (``total_epochs``), and passes it on."""
    def tag(row: dict) -> None:
        row.update(phase=phase, epochs=epochs, total_epochs=total)
        if on_epoch is not None:
            on_epoch(dict(row))
    return tag


def get_base(spec: BaseSpec, data: Data, cache_dir: str | Path,
             log=print) -> tuple[BaseModel, bool]:
    """The cached base model, or a freshly trained one (then cached). Returns (base, trained).

    Processes that share a cache train each base once: the first holds a lock on
    ``<file>.lock`` while it trains, and the others wait for it, then load its file."""
    path = cache_path(cache_dir, spec)
    cached = load_cached(cache_dir, spec)
    if cached is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".lock"), "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log(f"waiting for another process training base {spec.model} into {path}")
                fcntl.flock(lock, fcntl.LOCK_EX)
            cached = load_cached(cache_dir, spec)
            if cached is None:
                base = train_base(spec, data, log)
                atomic_save(base.to_payload(), path)
                return base, True
    log(f"base model {spec.model} loaded from cache {path}")
    return cached, False


__all__ = [
    "CACHE_FORMAT", "BaseModel", "BaseSpec", "CheckpointError", "atomic_save", "cache_path",
    "get_base", "load_cached", "safe_load", "train_base", "weights_hash",
]
