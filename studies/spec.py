"""The study spec: a YAML file checked field by field before any Ray process starts.

``load_spec(path)`` returns a :class:`StudySpec` or raises :class:`SpecError`
listing every mistake found, each with its field path, the value and what is
allowed. The checks use the same tables trials use (models, datasets, each
method's declared parameters), so a spec that validates runs.
"""

from __future__ import annotations

import inspect
import itertools
import math
import random
import re
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from prune_core import data as datasets
from prune_core import models
from prune_core.methods import (
    Method,
    Param,
    ParamError,
    chain_name,
    incompatibilities,
    list_methods,
    parse_chain,
)
from prune_core.train import TrainConfig
from prune_core.trial import TrialSpec
from studies.samplers import SAMPLERS, sampler_class

# Columns of the result row a study may optimise (DESIGN.md, Measurement).
OBJECTIVE_COLUMNS = (
    "accuracy", "balanced_accuracy", "val_accuracy", "accuracy_drop", "params",
    "nonzero_params", "macs", "nonzero_macs", "ops", "size_bytes", "latency_ms",
    "compression", "speedup", "train_seconds",
)
# Objectives ASHA can stop on: their per-epoch proxy is the validation accuracy.
ASHA_OBJECTIVES = ("accuracy", "balanced_accuracy", "val_accuracy", "accuracy_drop")
SCHEDULERS = ("asha",)
SPACE_KEYS = ("type", "low", "high", "log", "step", "choices")
SEARCH_WORD = "search"  # `stage.param: search` takes the method's declared range
PIPELINE = "pipeline"  # the categorical parameter choosing between chains
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
DEVICE_RE = re.compile(r"auto|cpu|mps|cuda(:\d{1,2})?")
MAX_TRIALS = 1_000_000
MAX_INT = 2**32 - 1  # seeds and counts: what numpy and Optuna take
TOP_KEYS = (
    "name", "data", "model", "baseline", "finetune", "methods", "space", "objectives",
    "sampler", "trials", "scheduler", "resources", "max_concurrent", "storage",
    "optuna_storage", "max_failures", "seed", "device", "latency", "constraints", "loggers",
    "warm_start",
)
LOGGERS = ("csv", "json", "tensorboard", "mlflow")


class SpecError(ValueError):
    """Every mistake found in a spec, one line each, naming the field."""

    def __init__(self, errors: list[str], source: str = "spec"):
        self.errors = list(errors)
        self.source = source
        n = len(errors)
        lines = "\n".join(f"  - {e}" for e in errors)
        super().__init__(f"{n} error{'s' if n != 1 else ''} in {source}:\n{lines}")


class StudyError(ValueError):
    """A study directory is missing, foreign, or already used."""


@dataclass(frozen=True)
class ParamSpace:
    """How one ``stage.param`` is searched: a range, choices, or a fixed value."""

    name: str
    kind: str  # float | int | categorical | fixed
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple | None = None
    value: Any = None

    @property
    def stage(self) -> str:
        return self.name.partition(".")[0]

    def to_dict(self) -> dict:
        if self.kind == "fixed":
            return {"type": "fixed", "value": self.value}
        if self.kind == "categorical":
            return {"type": "categorical", "choices": list(self.choices)}
        d = {"type": self.kind, "low": self.low, "high": self.high, "log": self.log}
        if self.step is not None:
            d["step"] = self.step
        return d


@dataclass(frozen=True)
class StudySpec:
    """A validated study spec. Build it with :func:`load_spec` or :func:`parse_spec`."""

    name: str
    data: str
    data_kw: dict
    model: str
    model_kw: dict
    baseline: dict
    transfer: dict | None
    finetune: dict
    chains: tuple[tuple, ...]  # each a chain as parse_chain takes it
    space: dict[str, ParamSpace]
    objectives: dict[str, str]
    sampler: str = "tpe"
    sampler_seed: int = 0
    sampler_options: dict = field(default_factory=dict)
    trials: int = 20
    scheduler: dict | None = None
    resources: dict = field(default_factory=lambda: {"cpu": 1.0, "gpu": 0.0})
    max_concurrent: int | None = None
    storage: str = "runs"
    optuna_storage: str | None = None
    max_failures: int = 2
    seed: int = 0
    device: str = "auto"
    latency: bool | dict = False  # True, or {batch, threads, compiled, runs, warmup}
    # column -> {"min": x, "max": y}: a trial outside is infeasible (told to the sampler)
    constraints: dict = field(default_factory=dict)
    # Ray Tune result loggers: {"csv": {}, "mlflow": {"tracking_uri": ..., "experiment": ...}}
    loggers: dict = field(default_factory=dict)
    # {"storage": Optuna storage URL, "study": name}: whose front starts this study
    warm_start: dict | None = None
    source: dict = field(default_factory=dict)  # the spec as written, for spec.yaml

    # ------------------------------------------------------------------ derived

    @property
    def chain_names(self) -> list[str]:
        return [chain_name(parse_chain(list(c))) for c in self.chains]

    @property
    def methods_label(self) -> str | list[str]:
        """The chain name, or the list of chains a study chooses between."""
        names = self.chain_names
        return names[0] if len(names) == 1 else names

    @property
    def is_remote_storage(self) -> bool:
        return "://" in self.storage

    @property
    def study_dir(self) -> Path:
        """Where the study's files go (a local directory even for cloud storage)."""
        root = Path("runs") if self.is_remote_storage else Path(self.storage).expanduser()
        return (root / self.name).resolve()

    @property
    def cache_dir(self) -> Path:
        """Base models by content hash, shared by every study in the storage."""
        root = Path("runs") if self.is_remote_storage else Path(self.storage).expanduser()
        return (root / "_cache").resolve()

    @property
    def fixed(self) -> dict:
        return {k: p.value for k, p in self.space.items() if p.kind == "fixed"}

    @property
    def searched(self) -> dict[str, ParamSpace]:
        return {k: p for k, p in self.space.items() if p.kind != "fixed"}

    def stages_of(self, chain_index: int) -> list[str]:
        return [s.name for s in parse_chain(list(self.chains[chain_index]))]

    def trial_spec(self) -> TrialSpec:
        """What every trial of this study shares, as ``prune_core.trial`` takes it."""
        return TrialSpec(
            model=self.model, model_kw=dict(self.model_kw), data=self.data,
            data_kw=dict(self.data_kw), baseline=dict(self.baseline),
            transfer=dict(self.transfer) if self.transfer is not None else None,
            finetune=dict(self.finetune), methods=list(self.chains[0]), fixed=self.fixed,
            seed=self.seed, device=self.device, latency=self.latency,
            cache_dir=str(self.cache_dir),
        )

    def with_overrides(self, **kw) -> StudySpec:
        """A copy with top-level fields replaced (``--trials``, ``--storage``, ``--name``),
        checked again."""
        raw = dict(self.source)
        raw.update({k: v for k, v in kw.items() if v is not None})
        return parse_spec(raw, source=f"spec {self.name!r} with overrides")

    def to_yaml(self) -> str:
        """The spec as written, with local paths made absolute so it resumes from anywhere."""
        source = dict(self.source)
        if not self.is_remote_storage:
            source["storage"] = str(Path(self.storage).expanduser().resolve())
        if "root" in self.data_kw:
            source["data"] = {"name": self.data, **self.data_kw}
        if "weights" in self.model_kw:
            given = self.source.get("model")
            if isinstance(given, dict) and "import" in given:
                source["model"] = {**given, "weights": self.model_kw["weights"]}
            else:
                source["model"] = {"name": self.model, **self.model_kw}
        return yaml.safe_dump(source, sort_keys=False)


# --------------------------------------------------------------------------- loading


MAX_SPEC_BYTES = 1 << 20


class _UniqueKeyLoader(yaml.SafeLoader):
    """The safe loader, refusing a key given twice in one mapping (YAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: the base loader reports it
                continue
            if first != key_node.start_mark.line + 1:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (lines {first} and "
                    f"{key_node.start_mark.line + 1}); keep one", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> Any:
    """A YAML file's data: UTF-8, at most 1 MiB, safe tags only, no key given twice."""
    try:
        size = path.stat().st_size
        if size > MAX_SPEC_BYTES:
            raise SpecError([f"the file is {size} bytes; a spec is at most {MAX_SPEC_BYTES}"],
                            str(path))
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError([f"not UTF-8 text: byte 0x{e.object[e.start]:02x} at position "
                         f"{e.start}; save the file as UTF-8"], str(path)) from e
    except OSError as e:
        raise SpecError([f"cannot read it: {e.strerror or e}"], str(path)) from e
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as e:
        raise SpecError([f"not valid YAML: {e}"], str(path)) from e
    except RecursionError as e:
        raise SpecError(["not valid YAML: nested too deeply"], str(path)) from e


def load_spec(path: str | Path) -> StudySpec:
    """Read and check a YAML spec; raise :class:`SpecError` with every mistake."""
    path = Path(path)
    if not path.is_file():
        raise SpecError([f"spec file {str(path)!r} does not exist"], str(path))
    return parse_spec(read_yaml(path), source=str(path))


def parse_overrides(items: list[str]) -> dict:
    """``["stage.param=value", ...]`` -> ``{"stage.param": value}`` with YAML-typed values."""
    out: dict = {}
    errors = []
    for item in items:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or not key:
            errors.append(f"--set {item!r}: expected stage.param=value")
            continue
        if "." not in key and key != PIPELINE:
            errors.append(f"--set {item!r}: parameter {key!r} must be named stage.param")
            continue
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as e:
            errors.append(f"--set {item!r}: value is not valid YAML ({e})")
            continue
        out[key] = _maybe_number(value)
    if errors:
        raise SpecError(errors, "--set")
    return out


def parse_spec(raw: Any, source: str = "spec") -> StudySpec:
    """Check a spec given as plain data (what YAML gives) and build a :class:`StudySpec`."""
    c = _Checker()
    if not isinstance(raw, dict):
        raise SpecError([f"the spec must be a mapping of fields; got {type(raw).__name__}"],
                        source)
    for k in raw:
        if k not in TOP_KEYS:
            c.error(str(k), f"unknown field; allowed: {', '.join(TOP_KEYS)}")

    name = raw.get("name")
    if name is None:
        c.error("name", "missing; give the study a name (it names its directory)")
    elif not isinstance(name, str) or not NAME_RE.fullmatch(name):
        c.error("name", f"{_show(name)} is not a valid study name; allowed: 1 to 100 letters, "
                        "digits, '.', '_' and '-', starting with a letter or digit")

    data_name, data_kw = _check_data(c, raw.get("data", "digits"))
    model_name, model_kw = _check_model(c, raw.get("model", {"name": "vgg11", "width": 0.25}))
    baseline_raw = raw.get("baseline") or {}
    transfer = None
    if isinstance(baseline_raw, dict) and "transfer" in baseline_raw:
        baseline_raw = dict(baseline_raw)
        transfer = _check_train(c, "baseline.transfer", baseline_raw.pop("transfer") or {})
    baseline = _check_train(c, "baseline", baseline_raw)
    finetune = _check_train(c, "finetune", raw.get("finetune") or {})
    chains = _check_methods(c, raw.get("methods"))
    if not c.errors:
        _check_compatible(c, model_name, model_kw, data_name, data_kw, chains)
    space = _check_space(c, raw.get("space") or {}, chains)
    if not c.errors:
        _check_constraints(c, space, chains)
    objectives = _check_objectives(c, raw.get("objectives"))
    n_objectives = len(raw["objectives"]) if isinstance(raw.get("objectives"), dict | list) \
        else len(objectives)
    sampler, sampler_seed, sampler_options = _check_sampler(c, raw.get("sampler", "tpe"),
                                                            raw.get("seed", 0))
    trials = c.integer("trials", raw.get("trials", 20), low=1, high=MAX_TRIALS)
    scheduler = _check_scheduler(c, raw.get("scheduler"), objectives, n_objectives)
    resources = _check_resources(c, raw.get("resources") or {})
    max_concurrent = raw.get("max_concurrent")
    if max_concurrent is not None:
        max_concurrent = c.integer("max_concurrent", max_concurrent, low=1, high=10_000)
    storage = _check_storage(c, raw.get("storage", "runs"))
    optuna_storage = _check_optuna_storage(c, raw.get("optuna_storage"))
    max_failures = c.integer("max_failures", raw.get("max_failures", 2), high=1000)
    seed = c.integer("seed", raw.get("seed", 0))
    device = c.text("device", raw.get("device", "auto"), DEVICE_RE,
                    "auto, cpu, cuda, cuda:N, mps") or "auto"
    if device.startswith("cuda") and resources["gpu"] == 0:
        c.error("device", f"{device!r} needs a GPU per trial, but resources.gpu is 0; "
                          "set resources.gpu (fractions such as 0.5 share a GPU)")
    latency = _check_latency(c, raw.get("latency", False))
    latency = latency or "latency_ms" in objectives
    constraints = _check_constraint_bounds(c, raw.get("constraints"))
    latency = latency or "latency_ms" in constraints
    loggers = _check_loggers(c, raw.get("loggers"))
    warm_start = _check_warm_start(c, raw.get("warm_start"))

    if c.errors:
        raise SpecError(c.errors, source)
    return StudySpec(
        name=name, data=data_name, data_kw=data_kw, model=model_name, model_kw=model_kw,
        baseline=baseline, transfer=transfer, finetune=finetune, chains=chains, space=space,
        objectives=objectives, sampler=sampler, sampler_seed=sampler_seed,
        sampler_options=sampler_options, trials=trials, scheduler=scheduler,
        resources=resources, max_concurrent=max_concurrent, storage=storage,
        optuna_storage=optuna_storage, max_failures=max_failures, seed=seed, device=device,
        latency=latency, constraints=constraints, loggers=loggers, warm_start=warm_start,
        source=dict(raw),
    )


# --------------------------------------------------------------------------- checks


class _Checker:
    """Collects errors instead of stopping at the first."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def error(self, where: str, message: str) -> None:
        self.errors.append(f"{where}: {message}")

    def integer(self, where: str, value: Any, low: int = 0, high: int = MAX_INT) -> int:
        """An integer in [low, high] (an integral float such as 1e3 counts; a bool not)."""
        value = _maybe_number(value)
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            self.error(where, f"{_show(value)} is not valid; allowed: an integer in "
                              f"[{low}, {high}]")
            return low
        return value

    def number(self, where: str, value: Any, low: float, high: float, *,
               low_open: bool = False) -> float | None:
        """A finite number in [low, high] (or (low, high] with ``low_open``)."""
        value = _maybe_number(value)
        if not _finite(value) or value > high or value < low or (low_open and value == low):
            self.error(where, f"{_show(value)} is not valid; allowed: a number in "
                              f"{'(' if low_open else '['}{low:g}, {high:g}]")
            return None
        return float(value)

    def text(self, where: str, value: Any, pattern: re.Pattern, allowed: str) -> str | None:
        if not isinstance(value, str) or not pattern.fullmatch(value):
            self.error(where, f"{_show(value)} is not valid; allowed: {allowed}")
            return None
        return value


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) \
        and math.isfinite(value)


def _show(value: Any, n: int = 60) -> str:
    """``repr`` shortened for messages (a 400-digit number stays readable)."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**n else \
        f"an integer of {len(str(abs(value)))} digits"
    return text if len(text) <= n else text[: n - 3] + "..."


def _maybe_number(value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` as a string; take it as the number it means."""
    if isinstance(value, str) and len(value) < 400:
        if re.fullmatch(r"\s*[+-]?\d+\s*", value):
            return int(value)
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _named(c: _Checker, where: str, value: Any, default_kw: dict | None = None
           ) -> tuple[str | None, dict]:
    """``name`` or ``{name: ..., **kw}``."""
    if isinstance(value, str):
        return value, dict(default_kw or {})
    if isinstance(value, dict):
        if "name" not in value:
            c.error(f"{where}.name", "missing")
            return None, {}
        kw = {k: _maybe_number(v) for k, v in value.items() if k != "name"}
        return value["name"], kw
    c.error(where, f"{value!r} is not valid; allowed: a name, or a mapping with name and "
                   "settings")
    return None, {}


def _check_data(c: _Checker, value: Any) -> tuple[str, dict]:
    name, kw = _named(c, "data", value)
    if name is None:
        return "digits", {}
    if name not in datasets.list_datasets():
        c.error("data.name", f"unknown dataset {name!r}; valid names: "
                             f"{', '.join(datasets.list_datasets())}")
        return name, kw
    allowed = _dataset_kwargs(name)
    for k in kw:
        if k not in allowed:
            c.error(f"data.{k}", f"dataset {name!r} does not take {k!r}; it takes: "
                                 f"{', '.join(allowed)}")
    vf = kw.get("val_fraction", 0.1)
    if not _finite(vf) or not 0 < vf < 0.5:
        c.error("data.val_fraction", f"{_show(vf)} is not valid; allowed: a number in (0, 0.5)")
    if "image_size" in kw:
        kw["image_size"] = c.integer("data.image_size", kw["image_size"], low=8, high=512)
    for flag in ("download", "augment"):
        if not isinstance(kw.get(flag, False), bool):
            c.error(f"data.{flag}", f"{_show(kw[flag])} is not true or false")
    download = kw.get("download", False) is True
    if datasets.needs_root(name):
        root = kw.get("root")
        if root is None:
            c.error("data.root", f"dataset {name!r} needs a root directory; set data.root")
        elif not isinstance(root, str) or not root.strip() or _CONTROL.search(root):
            c.error("data.root", f"{_show(root)} is not a path")
        elif not Path(root).expanduser().exists() and not download:
            c.error("data.root", f"{root!r} does not exist; put the {name} files there, or "
                                 "set data.download: true on a machine with internet")
        elif isinstance(root, str):
            kw["root"] = str(Path(root).expanduser().resolve())
    return name, kw


def _dataset_kwargs(name: str) -> list[str]:
    """The settings a spec may give a dataset: its own options and load()'s (bar the
    device budget, which the trial sets)."""
    common = [k for k in datasets.LOAD_OPTIONS if k != "max_device_bytes"]
    return [*common, *datasets.dataset_options(name)]


IMPORT_KEYS = ("import", "kwargs", "weights")  # model: {import: "pkg.mod:factory", ...}


def _check_model(c: _Checker, value: Any) -> tuple[str, dict]:
    """A registry name with its settings, ``torchvision:``/``timm:`` names, or
    ``{import: "pkg.mod:factory", kwargs: {...}, weights: file}``."""
    if isinstance(value, dict) and "import" in value:
        return _check_import_model(c, value)
    name, kw = _named(c, "model", value)
    if name is None:
        return "vgg11", {}
    if isinstance(name, str) and models.model_source(name) is not None:
        _check_weights(c, kw)
        _check_built(c, name, kw, "model.name", "model.")
        return name, kw
    if name not in models.list_models():
        c.error("model.name", f"unknown model {name!r}; valid names: "
                              f"{', '.join(models.list_models())}; or torchvision:<name>, "
                              "timm:<name>, {import: 'pkg.module:factory'} "
                              "(see prune-study models)")
        return name, kw
    allowed = models.model_kwargs(name)
    for k in kw:
        if k not in allowed:
            c.error(f"model.{k}", f"model {name!r} does not take {k!r}; it takes: "
                                  f"{', '.join(allowed)}")
    _check_weights(c, kw)
    if "width" in kw:
        w = kw["width"]
        if not isinstance(w, int | float) or isinstance(w, bool) or not 0 < w <= 4:
            c.error("model.width", f"{w!r} is not valid; allowed: a number in (0, 4]")
    return name, kw


def _check_weights(c: _Checker, kw: dict) -> None:
    """An existing local file, made absolute in ``kw`` (dropped from ``kw`` if it is not)."""
    weights = kw.get("weights")
    if weights is None:
        return
    if not isinstance(weights, str) or not Path(weights).expanduser().is_file():
        c.error("model.weights", f"{weights!r} is not a file; give the path of a local "
                                 "weights file (nothing is downloaded at run time)")
        kw.pop("weights")
    else:
        kw["weights"] = str(Path(weights).expanduser().resolve())


def _check_import_model(c: _Checker, value: dict) -> tuple[str, dict]:
    target = value["import"]
    for k in value:
        if k == "name":
            c.error("model.name", "give either name or import, not both")
        elif k not in IMPORT_KEYS:
            c.error(f"model.{k}", f"unknown key beside import; allowed: "
                                  f"{', '.join(IMPORT_KEYS)} (the factory's arguments go "
                                  "under kwargs)")
    kwargs = value.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        c.error("model.kwargs", f"{kwargs!r} is not a mapping of the factory's arguments")
        kwargs = {}
    kw = {str(k): _maybe_number(v) for k, v in kwargs.items()}
    if "weights" in kw:
        c.error("model.kwargs.weights", "'weights' is read by prune-study itself; give the "
                                        "file as model.weights")
        kw.pop("weights")
    if not isinstance(target, str) or not target.strip():
        c.error("model.import", f"{target!r} is not valid; write 'pkg.module:factory'")
        return "vgg11", {}
    name = f"import:{target.strip()}"
    if "weights" in value:
        kw["weights"] = value["weights"]
        _check_weights(c, kw)
    _check_built(c, name, kw, "model.import", "model.kwargs.")
    return name, kw


def _check_built(c: _Checker, name: str, kw: dict, where: str, key_prefix: str) -> None:
    """Build a non-registry model once, so every mistake in it is reported now."""
    try:
        # The classifier warning of a weights file names a class count that, here, is
        # only the one the check builds with.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            models.build(name, num_classes=10, **kw)
    except models.ModelError as e:
        field_ = where if e.key is None else \
            "model.weights" if e.key == "weights" else f"{key_prefix}{e.key}"
        c.error(field_, str(e))
    except Exception as e:  # user code: anything can go wrong in it
        c.error("model", f"building {name} failed: {type(e).__name__}: {e}")


def _check_train(c: _Checker, where: str, value: Any) -> dict:
    """TrainConfig fields, each checked on its own so every bad one is reported."""
    if not isinstance(value, dict):
        c.error(where, f"{value!r} is not a mapping of training settings")
        return {}
    known = {f.name for f in fields(TrainConfig)}
    out = {}
    for k, v in value.items():
        if k not in known:
            c.error(f"{where}.{k}", f"unknown training setting; allowed: "
                                    f"{', '.join(sorted(known))}")
            continue
        v = [_maybe_number(x) for x in v] if isinstance(v, list) else _maybe_number(v)
        if k in _INT_SETTINGS and isinstance(v, float) and v.is_integer():
            v = int(v)  # epochs: 1e2
        try:
            TrainConfig.from_dict({k: v})
        except (ValueError, TypeError) as e:
            c.error(f"{where}.{k}", f"{_show(v)} is not valid ({e})")
            continue
        out[k] = v
    return out


_INT_SETTINGS = ("epochs", "batch_size", "patience", "seed")
_COMPATIBLE: dict[tuple, list[str]] = {}  # checks already made in this process


def _check_compatible(c: _Checker, model_name: str, model_kw: dict, data_name: str,
                      data_kw: dict, chains: tuple[tuple, ...]) -> None:
    """Build the model once and ask each method whether it has anything to act on."""
    size = data_kw.get("image_size", datasets.dataset_options(data_name).get("image_size", 32))
    shape = (3, int(size), int(size))
    key = (model_name, repr(sorted(model_kw.items())), shape, repr(chains))
    if key not in _COMPATIBLE:
        kw = {k: v for k, v in model_kw.items() if k != "weights"}
        try:
            model = models.build(model_name, num_classes=10, **kw)
        except Exception as e:  # reported by _check_model already where it can be
            _COMPATIBLE[key] = [f"building the model failed: {type(e).__name__}: {e}"]
        else:
            _COMPATIBLE[key] = [line for chain in chains for line in
                                incompatibilities(parse_chain(list(chain)), model, shape,
                                                  model_name)]
    for line in dict.fromkeys(_COMPATIBLE[key]):
        c.error("methods", line)


def _check_methods(c: _Checker, value: Any) -> tuple[tuple, ...]:
    """A chain (``slimming``, ``slimming+quantize``, a list) or ``{choice: [chains]}``."""
    if value is None:
        c.error("methods", "missing; name a method, a chain [a, b], or {choice: [chains]}")
        return ()
    if isinstance(value, dict):
        if set(value) != {"choice"} or not isinstance(value["choice"], list) \
                or not value["choice"]:
            c.error("methods", f"{value!r} is not valid; a choice between chains is written "
                               "{choice: [slimming, [magnitude, quantize], ...]}")
            return ()
        items = [(f"methods.choice[{i}]", v) for i, v in enumerate(value["choice"])]
        for where, v in items:
            if isinstance(v, list) and any(isinstance(x, dict) for x in v):
                c.error(where, "chains in a choice are written with method names only")
    else:
        items = [("methods", value)]
    chains = []
    for where, v in items:
        chain = v.split("+") if isinstance(v, str) else v
        if not isinstance(chain, list):
            c.error(where, f"{v!r} is not a method name or a list of them")
            continue
        try:
            parse_chain(list(chain))
        except ParamError as e:
            c.error(where, str(e))
            # Keep the known methods, so the space is still checked against them.
            known = tuple(dict.fromkeys(m for m in chain if isinstance(m, str)
                                        and m in list_methods()))
            if known and not isinstance(value, dict) and _parses(known):
                chains.append(known)
            continue
        chains.append(tuple(chain))
    names = [chain_name(parse_chain(list(ch))) for ch in chains]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        c.error("methods.choice", f"chain(s) {', '.join(dupes)} listed twice")
    return tuple(chains)


def _parses(chain: tuple) -> bool:
    try:
        parse_chain(list(chain))
    except ParamError:
        return False
    return True


def _check_constraints(c: _Checker, space: dict[str, ParamSpace], chains: tuple[tuple, ...]
                       ) -> None:
    """Refuse a space that can draw values a method cannot run together (RePr's epochs
    below cycles * (s1 + s2)): every corner of the stage's ranges and 256 random points."""
    rng = random.Random(0)
    for chain in chains:
        for stage in parse_chain(list(chain)):
            if stage.method.constraint is None:
                continue
            mine = {k.partition(".")[2]: p for k, p in space.items() if p.stage == stage.name}
            options = {k: _extremes(p) for k, p in mine.items()}
            corners = itertools.islice(itertools.product(*options.values()), 4096)
            points = [dict(zip(options, values, strict=True)) for values in corners]
            points += [{k: _draw(p, rng) for k, p in mine.items()} for _ in range(256)]
            for point in points:
                try:
                    stage.method.resolve(point, stage.name)
                except ParamError as e:
                    shown = ", ".join(f"{stage.name}.{k} = {v!r}" for k, v in point.items())
                    c.error("space", f"the space can draw {shown or 'the defaults'}, where {e}; "
                                     "narrow the ranges so that every point holds")
                    break


def _extremes(p: ParamSpace) -> list:
    if p.kind == "fixed":
        return [p.value]
    if p.kind == "categorical":
        return list(p.choices)
    return [int(p.low), int(p.high)] if p.kind == "int" else [p.low, p.high]


def _draw(p: ParamSpace, rng: random.Random):
    if p.kind in ("fixed", "categorical"):
        return rng.choice(_extremes(p))
    if p.kind == "int":
        return rng.randint(int(p.low), int(p.high))
    return rng.uniform(p.low, p.high)


def _stage_methods(chains: tuple[tuple, ...]) -> dict[str, Method]:
    out: dict[str, Method] = {}
    for chain in chains:
        for s in parse_chain(list(chain)):
            out.setdefault(s.name, s.method)
    return out


def _check_space(c: _Checker, value: Any, chains: tuple[tuple, ...]) -> dict[str, ParamSpace]:
    if not isinstance(value, dict):
        c.error("space", f"{value!r} is not a mapping of stage.param to a range, choices or "
                         "a value")
        return {}
    stages = _stage_methods(chains)
    out: dict[str, ParamSpace] = {}
    for key, spec in value.items():
        where = f"space.{key}"
        if key == PIPELINE:
            c.error(where, "'pipeline' is set by methods: {choice: [...]}, not in space")
            continue
        stage, dot, pname = str(key).partition(".")
        if not dot or not pname:
            c.error(where, f"parameter {key!r} must be named stage.param")
            continue
        if stage not in stages:
            if chains:
                c.error(where, f"unknown stage {stage!r}; stages of this study: "
                               f"{', '.join(stages)}")
            continue
        method = stages[stage]
        try:
            param = method.param(pname)
        except ParamError as e:
            c.error(where, str(e))
            continue
        ps = _check_param_space(c, where, f"{stage}.{pname}", param, spec)
        if ps is not None:
            out[key] = ps
    return out


def _check_param_space(c: _Checker, where: str, name: str, param: Param, spec: Any
                       ) -> ParamSpace | None:
    domain = f"the domain of {name}: {param.domain()}"
    if spec is None or spec == SEARCH_WORD or spec == {}:
        if not param.search:
            c.error(where, f"{name} declares no search range; give low/high or choices")
            return None
        spec = dict(param.search)
        where = f"{where} (declared search range)"
    if isinstance(spec, list):
        c.error(where, f"{spec!r}: a fixed value must be one value; to search these, write "
                       "{choices: [...]}")
        return None
    if not isinstance(spec, dict):
        value = _maybe_number(spec) if param.kind in ("float", "int") else spec
        if not param.contains(value):
            c.error(where, f"{value!r} is outside {domain}")
            return None
        return ParamSpace(name, "fixed", value=param.check(value, name))
    for k in spec:
        if k not in SPACE_KEYS:
            c.error(f"{where}.{k}", f"unknown key; allowed: {', '.join(SPACE_KEYS)}")
    kind = spec.get("type")
    if kind is None:
        kind = "categorical" if "choices" in spec else param.kind
    if kind not in ("float", "int", "categorical"):
        c.error(f"{where}.type", f"{kind!r} is not valid; allowed: float, int, categorical")
        return None
    if kind == "categorical" or param.kind in ("categorical", "bool"):
        return _check_choices(c, where, name, param, spec, domain)
    if kind == "float" and param.kind == "int":
        c.error(f"{where}.type", f"float does not fit {name}, which is an integer")
        return None
    bad = False
    bounds = {}
    for end in ("low", "high"):
        v = _maybe_number(spec.get(end))
        if v is None:
            c.error(f"{where}.{end}", f"missing; a {kind} range needs low and high")
            bad = True
        elif not _finite(v):
            c.error(f"{where}.{end}", f"{_show(v)} is not a finite number")
            bad = True
        elif kind == "int" and not float(v).is_integer():
            c.error(f"{where}.{end}", f"{v!r} is not an integer")
            bad = True
        elif not param.contains(int(v) if kind == "int" else v):
            c.error(f"{where}.{end}", f"{v!r} is outside {domain}")
            bad = True
        bounds[end] = v
    log = spec.get("log", False)
    if not isinstance(log, bool):
        c.error(f"{where}.log", f"{log!r} is not true or false")
        bad = True
    step = _maybe_number(spec.get("step"))
    if step is not None and (not _finite(step) or step <= 0
                             or (kind == "int" and not float(step).is_integer())):
        c.error(f"{where}.step", f"{_show(step)} is not valid; allowed: "
                                 f"{'an integer' if kind == 'int' else 'a number'} > 0")
        bad = True
    if bad:
        return None
    low, high = bounds["low"], bounds["high"]
    if low > high:
        c.error(where, f"low {low!r} is above high {high!r}")
        return None
    if log and low <= 0:
        c.error(f"{where}.low", f"{low!r} with log: true; a log range needs low > 0")
        return None
    if log and step is not None:
        c.error(f"{where}.step", "step cannot be combined with log: true")
        return None
    if kind == "int":
        return ParamSpace(name, "int", int(low), int(high), log,
                          int(step) if step is not None else None)
    return ParamSpace(name, "float", float(low), float(high), log,
                      float(step) if step is not None else None)


def _check_choices(c: _Checker, where: str, name: str, param: Param, spec: dict,
                   domain: str) -> ParamSpace | None:
    choices = spec.get("choices")
    if choices is None and param.kind == "bool":
        choices = [True, False]
    if not isinstance(choices, list) or not choices:
        c.error(f"{where}.choices", f"{choices!r} is not valid; allowed: a non-empty list of "
                                    f"values from {domain}")
        return None
    out = []
    for i, v in enumerate(choices):
        v = _maybe_number(v) if param.kind in ("float", "int") else v
        if not isinstance(v, str | int | float | bool) and v is not None:
            c.error(f"{where}.choices[{i}]", f"{v!r} is not a plain value")
        elif not param.contains(v):
            c.error(f"{where}.choices[{i}]", f"{v!r} is outside {domain}")
        else:
            out.append(param.check(v, name))
    if len(out) != len(choices):
        return None
    if len(set(map(repr, out))) != len(out):
        c.error(f"{where}.choices", f"{choices!r} lists a value twice")
        return None
    return ParamSpace(name, "categorical", choices=tuple(out))


def _check_objectives(c: _Checker, value: Any) -> dict[str, str]:
    if value is None:
        c.error("objectives", "missing; for example {accuracy: max, macs: min}")
        return {}
    if isinstance(value, list):  # [{accuracy: max}, {macs: min}] keeps the order too
        merged: dict = {}
        for item in value:
            if not isinstance(item, dict):
                c.error("objectives", f"{_show(item)} is not column: max|min")
                continue
            for col, mode in item.items():
                if col in merged:
                    c.error("objectives", f"{col!r} is listed twice ({merged[col]!r} and "
                                          f"{mode!r}); list each column once")
                merged[col] = mode
        value = merged
    if not isinstance(value, dict) or not value:
        c.error("objectives", f"{value!r} is not valid; allowed: a mapping column: max|min")
        return {}
    out = {}
    for col, mode in value.items():
        if not isinstance(col, str) or col not in OBJECTIVE_COLUMNS:
            c.error(f"objectives.{col}", f"unknown result column {col!r}; allowed: "
                                         f"{', '.join(OBJECTIVE_COLUMNS)}")
        elif mode not in ("max", "min"):
            c.error(f"objectives.{col}", f"{mode!r} is not valid; allowed: max, min")
        else:
            out[col] = mode
    return out


def _check_constraint_bounds(c: _Checker, value: Any) -> dict:
    """``{column: {min: x, max: y}}`` over result columns, finite bounds, min <= max."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        c.error("constraints", f"{_show(value)} is not valid; write {{column: {{max: x}}}}, "
                               "for example {accuracy_drop: {max: 0.01}}")
        return {}
    out = {}
    for col, bound in value.items():
        where = f"constraints.{col}"
        if not isinstance(col, str) or col not in OBJECTIVE_COLUMNS:
            c.error(where, f"unknown result column; allowed: {', '.join(OBJECTIVE_COLUMNS)}")
            continue
        if not isinstance(bound, dict) or not bound or set(bound) - {"min", "max"}:
            c.error(where, f"{_show(bound)} is not valid; allowed: {{min: x}}, {{max: y}} "
                           "or both")
            continue
        checked = {k: c.number(f"{where}.{k}", v, -1e300, 1e300) for k, v in bound.items()}
        if None in checked.values():
            continue
        if checked.get("min", -math.inf) > checked.get("max", math.inf):
            c.error(where, f"min {checked['min']:g} is above max {checked['max']:g}")
            continue
        out[col] = checked
    return out


def _check_latency(c: _Checker, value: Any) -> bool | dict:
    """``true``, or ``{batch: [1, 32], threads: N, compiled: bool, runs: 30, warmup: 5}``."""
    if isinstance(value, bool):
        return value
    if not isinstance(value, dict):
        c.error("latency", f"{_show(value)} is not valid; allowed: true, false, or "
                           "{batch: [1, 32], threads: N, compiled: true, runs: 30}")
        return False
    out: dict = {}
    for k, v in value.items():
        if k == "batch":
            sizes = v if isinstance(v, list) else [v]
            out[k] = [c.integer("latency.batch", b, low=1, high=4096) for b in sizes]
            if not sizes or len(set(out[k])) != len(out[k]):
                c.error("latency.batch", f"{_show(v)} is not valid; allowed: distinct batch "
                                         "sizes, e.g. [1, 32]")
        elif k == "threads":
            out[k] = c.integer("latency.threads", v, low=1, high=1024)
        elif k == "runs":
            out[k] = c.integer("latency.runs", v, low=30, high=100_000)
        elif k == "warmup":
            out[k] = c.integer("latency.warmup", v, low=0, high=10_000)
        elif k == "compiled":
            if not isinstance(v, bool):
                c.error("latency.compiled", f"{_show(v)} is not true or false")
            out[k] = v is True
        else:
            c.error(f"latency.{k}", "unknown setting; allowed: batch, threads, compiled, runs, "
                                    "warmup")
    return out or True


def _check_warm_start(c: _Checker, value: Any) -> dict | None:
    """A study directory, or ``{storage: <Optuna storage URL>, study: <name>}``; resolved to
    the latter."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip() and not _CONTROL.search(value) \
            and "://" not in value:
        d = Path(value).expanduser()
        info = d / "study.json"
        if not info.is_file():
            c.error("warm_start", f"{value!r} is not a study directory (no study.json); give "
                                  "one, or {storage: <Optuna storage URL>, study: <name>}")
            return None
        try:
            raw = read_yaml(d / "spec.yaml") if (d / "spec.yaml").is_file() else {}
        except SpecError as e:
            c.error("warm_start", f"{value!r}: its spec.yaml cannot be read ({e.errors[0]})")
            return None
        storage = raw.get("optuna_storage") if isinstance(raw, dict) else None
        if not isinstance(storage, str) or not storage:
            storage = f"sqlite:///{(d / 'optuna.db').resolve()}"
        elif "://" not in storage:
            path = Path(storage.removeprefix("journal:")).expanduser()
            path = path if path.is_absolute() else d.resolve() / path
            storage = f"journal:{path}" if storage.startswith("journal:") or \
                storage.endswith((".log", ".journal")) else f"sqlite:///{path}"
        return {"storage": storage, "study": d.resolve().name}
    if isinstance(value, dict) and set(value) == {"storage", "study"} \
            and all(isinstance(v, str) and v.strip() and not _CONTROL.search(v)
                    for v in value.values()):
        if "://" not in value["storage"] or \
                _check_optuna_storage(c, value["storage"], "warm_start.storage") is None:
            if "://" not in value["storage"]:
                c.error("warm_start.storage", f"{value['storage']!r} is not a storage URL")
            return None
        return dict(value)
    c.error("warm_start", f"{_show(value)} is not valid; allowed: a study directory, or "
                          "{storage: <Optuna storage URL>, study: <name>}")
    return None


def _check_loggers(c: _Checker, value: Any) -> dict:
    """``[csv, json, tensorboard, mlflow]`` or ``{mlflow: {tracking_uri, experiment}, ...}``."""
    if value is None:
        return {}
    items = {v: {} for v in value if isinstance(v, str)} if isinstance(value, list) else value
    if not isinstance(items, dict) or (isinstance(value, list) and len(items) != len(value)):
        c.error("loggers", f"{_show(value)} is not valid; allowed: a list of "
                           f"{', '.join(LOGGERS)}, or a mapping of them to settings")
        return {}
    out = {}
    for name, settings in items.items():
        if name not in LOGGERS:
            c.error(f"loggers.{name}", f"unknown logger; allowed: {', '.join(LOGGERS)}")
            continue
        settings = settings or {}
        allowed = ("tracking_uri", "experiment") if name == "mlflow" else ()
        if not isinstance(settings, dict) or set(settings) - set(allowed):
            c.error(f"loggers.{name}", f"{_show(settings)} is not valid; allowed settings: "
                                       f"{', '.join(allowed) or 'none'}")
            continue
        for k, v in settings.items():
            if not isinstance(v, str) or not v.strip() or _CONTROL.search(v):
                c.error(f"loggers.{name}.{k}", f"{_show(v)} is not valid; allowed: text")
        out[name] = dict(settings)
    return out


def _check_sampler(c: _Checker, value: Any, default_seed: Any) -> tuple[str, int, dict]:
    name, kw = _named(c, "sampler", value)
    seed = kw.pop("seed", default_seed)
    seed = c.integer("sampler.seed", seed)
    if name is None:
        return "tpe", seed, {}
    if not isinstance(name, str) or name not in SAMPLERS:
        c.error("sampler.name" if isinstance(value, dict) else "sampler",
                f"unknown sampler {name!r}; allowed: {', '.join(SAMPLERS)}")
        return "tpe", seed, {}
    options = kw.pop("options", None) or {}
    for k in kw:
        c.error(f"sampler.{k}", "unknown key; allowed: name, seed, options")
    if not isinstance(options, dict):
        c.error("sampler.options", f"{options!r} is not a mapping")
        return name, seed, {}
    cls = sampler_class(name)
    params = {p.name: p for p in inspect.signature(cls.__init__).parameters.values()
              if p.name not in ("self", "seed")}
    out = {}
    for k, v in options.items():
        where = f"sampler.options.{k}"
        if k not in params:
            c.error(where, f"the {name} sampler does not take {k!r}; it takes: "
                           f"{', '.join(params)}")
            continue
        default = params[k].default
        if isinstance(default, bool):
            if not isinstance(v, bool):
                c.error(where, f"{_show(v)} is not true or false")
                continue
        elif isinstance(default, int):
            v = c.integer(where, v, low=2 if k == "population_size" else
                          1 if k == "n_ei_candidates" else 0, high=MAX_TRIALS)
        elif isinstance(default, float) or (default is None and k.endswith("_prob")):
            v = None if v is None and default is None else \
                c.number(where, v, 0, 1 if k.endswith("_prob") else 1e6)
        else:
            c.error(where, f"the {name} sampler's {k!r} takes a Python object, which a spec "
                           "cannot give; leave it at its default")
            continue
        out[k] = v
    if len(out) == len(options):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cls(seed=seed, **out)
        except (ValueError, TypeError) as e:
            c.error("sampler.options", f"the {name} sampler refuses these options: {e}")
    return name, seed, out


def _check_scheduler(c: _Checker, value: Any, objectives: dict, n_objectives: int
                     ) -> dict | None:
    if value is None:
        return None
    name, kw = _named(c, "scheduler", value)
    if name is None:
        return None
    if name not in SCHEDULERS:
        c.error("scheduler", f"unknown scheduler {name!r}; allowed: {', '.join(SCHEDULERS)}")
        return None
    if n_objectives > 1:
        c.error("scheduler", f"asha stops trials on one metric; this study has "
                             f"{n_objectives} objectives. "
                             "Remove the scheduler or keep one objective")
    elif objectives and next(iter(objectives)) not in ASHA_OBJECTIVES:
        c.error("scheduler", f"asha judges trials by the per-epoch validation accuracy, "
                             f"which does not track {next(iter(objectives))!r}; allowed "
                             f"objectives with asha: {', '.join(ASHA_OBJECTIVES)}")
    allowed = ("grace_period", "reduction_factor", "max_t", "brackets")
    for k, v in kw.items():
        if k not in allowed:
            c.error(f"scheduler.{k}", f"unknown key; allowed: name, {', '.join(allowed)}")
        else:
            kw[k] = c.integer(f"scheduler.{k}", v, low=1, high=MAX_TRIALS)
    return {"name": name, **kw}


def _check_resources(c: _Checker, value: Any) -> dict:
    if not isinstance(value, dict):
        c.error("resources", f"{_show(value)} is not a mapping such as {{cpu: 1, gpu: 0.5}}")
        return {"cpu": 1.0, "gpu": 0.0}
    out = {"cpu": 1.0, "gpu": 0.0}
    for k, v in value.items():
        if k == "cpu":
            out[k] = c.number("resources.cpu", v, 0, 1024, low_open=True) or 1.0
        elif k == "gpu":
            gpu = c.number("resources.gpu", v, 0, 64)
            if gpu is not None and gpu > 1 and not gpu.is_integer():
                c.error("resources.gpu", f"{gpu!r} is not valid; a trial takes a fraction of "
                                         "one GPU (0 < gpu < 1) or whole GPUs")
            out[k] = gpu or 0.0
        elif k == "time_limit_s":
            # Seconds a trial may run (Tune's time_total_s); a trial past it is a `timeout`.
            limit = c.number("resources.time_limit_s", v, 0, 1e9, low_open=True)
            if limit is not None:
                out[k] = limit
        else:
            c.error(f"resources.{k}", "unknown resource; allowed: cpu, gpu, time_limit_s")
    return out


def _check_storage(c: _Checker, value: Any) -> str:
    """A local directory (``~`` expanded; created at run) or a URI such as s3://bucket/x."""
    if not isinstance(value, str) or not value.strip() or _CONTROL.search(value):
        c.error("storage", f"{_show(value)} is not a path or URI; give a directory or a URI "
                           "such as s3://bucket/studies")
        return "runs"
    if "://" in value:
        if not URI_RE.fullmatch(value):
            c.error("storage", f"{value!r} is not a URI; write scheme://location, for "
                               "example s3://bucket/studies")
            return "runs"
        return value
    try:
        path = Path(value).expanduser()
    except RuntimeError:
        path = Path(value)
    if value.startswith("~") and str(path).startswith("~"):
        c.error("storage", f"{value!r}: no such user's home directory; give an existing path")
        return "runs"
    for p in (path, *path.absolute().parents):
        if p.exists():
            if not p.is_dir():
                c.error("storage", f"{value!r}: {str(p)!r} is a file, not a directory")
                return "runs"
            break
    return value


def _check_optuna_storage(c: _Checker, value: Any, where: str = "optuna_storage"
                          ) -> str | None:
    """A SQLAlchemy URL whose driver imports here, a .db file, or a journal file."""
    if value is None:
        return None
    allowed = "a SQLAlchemy URL, a .db file, or a journal file (.log / .journal)"
    if not isinstance(value, str) or not value.strip() or _CONTROL.search(value):
        c.error(where, f"{_show(value)} is not valid; allowed: {allowed}")
        return None
    if "://" not in value:
        return value
    from sqlalchemy.engine import make_url

    try:
        url = make_url(value)
    except Exception as e:  # sqlalchemy raises ArgumentError and ValueError subclasses
        c.error(where, f"{value!r} is not a SQLAlchemy URL ({e}); allowed: {allowed}")
        return None
    shown = url.render_as_string(hide_password=True)
    env_ref = re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}", str(url.password or ""))
    if (url.password is not None and not env_ref) or "password" in url.query:
        c.error(where, f"{shown!r} holds a password, which would be copied into "
                                  "spec.yaml and logs; leave it out of the URL and give it in "
                                  "the environment (PostgreSQL: PGPASSWORD or ~/.pgpass), or "
                                  "name a variable: postgresql://user:${PGPW}@host/db")
        return None
    try:
        url.get_dialect().import_dbapi()
    except Exception as e:  # NoSuchModuleError (dialect) or ImportError (driver)
        hint = " (pip install 'prune-study[postgres]')" if url.get_backend_name() == \
            "postgresql" else ""
        c.error(where, f"{shown!r}: the database driver cannot be loaded here "
                                  f"({type(e).__name__}: {e}){hint}")
        return None
    return value


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
URI_RE = re.compile(r"[a-z][a-z0-9+.-]*://[^\s]+")


def objective_lists(spec: StudySpec) -> tuple[list[str], list[str]]:
    """``(metrics, modes)`` in the spec's order, as OptunaSearch takes them."""
    return list(spec.objectives), list(spec.objectives.values())


__all__ = ["OBJECTIVE_COLUMNS", "SAMPLERS", "ParamSpace", "SpecError", "StudyError", "StudySpec",
           "load_spec", "objective_lists", "parse_overrides", "parse_spec"]
