"""One trial: compress the base model with a method chain, fine-tune, measure.

``run_trial(config, report)`` is the only entry point Ray calls; it is plain
PyTorch and runs as well from a loop, a test or ``prune-study trial``.

``config`` is ``{"study": {...}, "params": {"stage.param": value, ...}}``; the
study part is :class:`TrialSpec` as a dict. ``report(metrics, checkpoint)`` is
called after every epoch with per-epoch metrics and a checkpoint payload (plain
tensors and data), and once at the end with the full result row.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

import prune_core.data as datasets
import prune_core.models as models
from prune_core.baseline import BaseModel, BaseSpec, get_base
from prune_core.compressed import STAGE_SEED, architecture
from prune_core.environment import environment  # noqa: F401 (the trial's name for it)
from prune_core.measure import channel_counts, measure
from prune_core.methods import Context, chain_name, parse_chain, split_params
from prune_core.surgery import load_resized
from prune_core.train import TrainConfig, evaluate, seed_everything

Report = Callable[..., None]
DEFAULT_CACHE = "runs/_cache"


@dataclass(frozen=True)
class TrialSpec:
    """What every trial of a study shares: model, data, base training, method chain."""

    model: str = "vgg11"
    model_kw: dict = field(default_factory=lambda: {"width": 0.25})
    data: str = "digits"
    data_kw: dict = field(default_factory=dict)
    baseline: dict = field(default_factory=dict)  # TrainConfig of the base model
    transfer: dict | None = None  # TrainConfig of source -> target fine-tuning
    finetune: dict = field(default_factory=dict)  # defaults for methods' fine-tuning
    methods: str | list = "none"  # a chain; a "pipeline" parameter may choose another
    fixed: dict = field(default_factory=dict)  # stage.param values not searched
    seed: int = 0
    device: str = "auto"
    latency: bool | dict = False  # True, or measure_latency's options
    cache_dir: str = DEFAULT_CACHE

    @classmethod
    def from_dict(cls, d: dict) -> TrialSpec:
        """The spec from plain data; unknown names raise ``ValueError``."""
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown trial setting(s) {', '.join(unknown)}; allowed: "
                             f"{', '.join(cls.__dataclass_fields__)}")
        return cls(**d)

    def to_dict(self) -> dict:
        """The spec as plain data."""
        return asdict(self)

    def base_spec(self) -> BaseSpec:
        """What identifies the base model this trial starts from."""
        return BaseSpec(
            model=self.model, model_kw=dict(self.model_kw), data=self.data,
            data_kw=dict(self.data_kw),
            train=TrainConfig.from_dict({"seed": self.seed, **self.baseline}),
            transfer=TrainConfig.from_dict({"seed": self.seed, **self.transfer})
            if self.transfer is not None else None,
        )

    def finetune_config(self) -> TrainConfig:
        """The training settings of the methods' fine-tuning."""
        return TrainConfig.from_dict({"seed": self.seed, "epochs": 10, "lr": 0.01,
                                      **self.finetune})

    def torch_device(self) -> torch.device:
        """The device to train on (``auto``: CUDA where available)."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


_DATA_CACHE: dict[tuple, datasets.Data] = {}


def load_data(spec: TrialSpec) -> datasets.Data:
    """The study's data on the trial's device, loaded once per process."""
    device = spec.torch_device()
    key = (spec.data, repr(sorted(spec.data_kw.items())), str(device))
    if key not in _DATA_CACHE:
        # Decoded files go to the node's data cache beside the base models, mapped by
        # every trial on the node after the first.
        _DATA_CACHE[key] = datasets.load(spec.data, device=device,
                                         cache_dir=Path(spec.cache_dir) / "data", **spec.data_kw)
    return _DATA_CACHE[key]


def resolve_chain(spec: TrialSpec, params: dict):
    """The trial's stages and per-stage parameter values (fixed values, then sampled)."""
    params = dict(params)
    stages = parse_chain(params.pop("pipeline", spec.methods))
    names = {s.name for s in stages}
    # A study choosing between chains fixes values for every chain; keep this chain's.
    fixed = {k: v for k, v in spec.fixed.items() if k.partition(".")[0] in names}
    values = {**fixed, **params}
    return stages, split_params(stages, values)


def fresh_model(base: BaseModel, seed: int, device: torch.device | str = "cpu") -> nn.Module:
    """The base architecture freshly initialised under ``seed``; the global RNG is untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        m = models.build(base.model, num_classes=base.num_classes, **base.model_kw)
    return m.to(device)


def _base_row(base: BaseModel) -> dict:
    return base.row


def run_trial(
    config: dict,
    report: Report | None = None,
    *,
    base: BaseModel | None = None,
    resume: dict | None = None,
    log: Callable[[str], None] = lambda _m: None,
    model_out: dict | None = None,
) -> dict:
    """Run one trial and return its result row (docs/study-directory.md, The result row).

    ``model_out``, where given, receives the final model under ``"model"`` and its
    description (:func:`prune_core.compressed.architecture`) under ``"architecture"``.
    """
    t0 = time.perf_counter()
    spec = config["study"] if isinstance(config["study"], TrialSpec) else \
        TrialSpec.from_dict(config["study"])
    params = dict(config.get("params", {}))
    stages, values = resolve_chain(spec, params)
    data = load_data(spec)
    device = data.device
    if base is None:
        base, _ = get_base(spec.base_spec(), data, spec.cache_dir, log=log)
    model = base.build(device)
    original = base.build(device)
    results: dict = {}
    step = int(resume["step"]) if resume else 0
    first_stage = int(resume["stage"]) if resume else 0

    def emit(metrics: dict, checkpoint: dict | None = None) -> None:
        if report is not None:
            report(metrics, checkpoint)

    if resume is not None:
        results.update(resume.get("results", {}))
        for s in stages[: first_stage + (1 if resume.get("inner") is None else 0)]:
            if s.method.restructure is not None:
                model = s.method.restructure(model, values[s.name])
        if resume.get("inner") is None:
            load_resized(model, resume["state_dict"])
            first_stage += 1

    for i, stage in enumerate(stages):
        if i < first_stage:
            continue
        inner = resume.get("inner") if resume is not None and i == int(resume["stage"]) else None

        def stage_report(row: dict, _stage=stage.name) -> None:
            nonlocal step
            step += 1
            emit({"stage": _stage, "step": step, **row})

        def stage_save(payload: dict, _i=i) -> None:
            emit({"checkpoint": True, "step": step},
                 {"stage": _i, "step": step, "inner": payload, "results": dict(results)})

        ctx = Context(
            data=data, train=spec.finetune_config(), stage=stage.name, report=stage_report,
            results=results, base_model=original, seed=spec.seed, log=log,
            save=stage_save if not stage.method.terminal else None,
            resume=inner, fresh_model=lambda seed: fresh_model(base, seed, device),
        )
        if inner is not None:
            results.update(inner.get("results", {}))
        log(f"stage {stage.name}: {values[stage.name]}")
        # Layers a method creates before its first fit draw from the global RNG: seed it per
        # stage, so a trial (and a trial resumed inside this stage) is reproducible.
        seed_everything(spec.seed + STAGE_SEED * i)
        model = stage.method(model, values[stage.name], ctx)
        if not stage.method.terminal and i < len(stages) - 1:
            state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            emit({"checkpoint": True, "step": step},
                 {"stage": i, "step": step, "inner": None, "state_dict": state,
                  "results": dict(results)})

    row = finish(model, data, base, spec, stages, values, results)
    if model_out is not None:
        model_out["model"] = model
        model_out["architecture"] = architecture(
            model=base.model, model_kw=base.model_kw, num_classes=base.num_classes,
            stages=stages, values=values, input_shape=data.input_shape, mean=data.mean,
            std=data.std, seed=spec.seed, finetune=spec.finetune_config().to_dict())
    row["train_seconds"] = time.perf_counter() - t0
    emit({"final": True, "step": step + 1, **row})
    return row


def finish(model: nn.Module, data: datasets.Data, base: BaseModel, spec: TrialSpec, stages,
           values: dict, results: dict) -> dict:
    """Evaluate and measure the final model into the result row."""
    structure = getattr(model, "float_structure", None)
    test = evaluate(model, data, "test")
    val = evaluate(model, data, "val")
    if not math.isfinite(test["loss"]):
        raise FloatingPointError("the compressed model outputs NaN or infinity")
    m = measure(model, data.input_shape, structure=structure, with_latency=spec.latency)
    brow = _base_row(base)
    base_channels = channel_counts(base.build("cpu"))
    kept = channel_counts(structure if structure is not None else model)
    row = {
        "status": "ok",
        "method": chain_name(stages),
        "accuracy": test["accuracy"],
        "test_images": len(data.test),  # n of the accuracy's confidence interval
        "balanced_accuracy": test["balanced_accuracy"],
        "val_accuracy": val["accuracy"],
        "base_accuracy": brow["accuracy"],
        "accuracy_drop": brow["accuracy"] - test["accuracy"],
        **m,
        "compression": brow["params"] / max(1, m["params"]),
        "speedup": brow["macs"] / max(1, m["macs"]),
        "channels": {k: kept.get(k, 0) / v for k, v in base_channels.items() if k in kept},
    }
    for stage in stages:
        for k, v in values[stage.name].items():
            row[f"{stage.name}.{k}"] = v
    row.update(results)
    return row


def save_json_safe(row: dict) -> dict:
    """Row with every value JSON-serialisable (tensors become floats, paths strings)."""
    out = {}
    for k, v in row.items():
        if isinstance(v, torch.Tensor):
            v = v.tolist()
        elif isinstance(v, Path):
            v = str(v)
        out[k] = v
    return out


__all__ = [
    "DEFAULT_CACHE", "Report", "TrialSpec", "environment", "finish", "fresh_model", "load_data",
    "resolve_chain", "run_trial", "save_json_safe",
]
