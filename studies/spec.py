"""The study spec: a YAML file checked field by field before any Ray process starts.

``load_spec(path)`` returns a :class:`StudySpec` or raises :class:`SpecError`
listing every mistake found, each with its field path, the value and what is
allowed. The checks use the same tables trials use (models, datasets, each
method's declared parameters), so a spec that validates runs.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from prune_core.methods import (
    chain_name,
    parse_chain,
)
from prune_core.trial import TrialSpec
from studies._check_model import (
    check_allocation,
    check_compatible,
    check_data,
    check_methods,
    check_model,
    check_rehearsal,
    check_sensitivity_start,
    check_space,
    check_train,
)
from studies._check_run import (
    check_constraint_bounds,
    check_constraints,
    check_enqueue,
    check_grid,
    check_latency,
    check_loggers,
    check_objectives,
    check_optuna_storage,
    check_resources,
    check_sampler,
    check_scheduler,
    check_searched,
    check_storage,
    check_warm_start,
)
from studies._values import (  # noqa: F401 (re-exported: the spec's public names)
    DEVICE_RE,
    KEEP_MODELS,
    LOGGERS,
    MAX_REPEATS,
    MAX_TRIALS,
    NAME_RE,
    PIPELINE,
    SCHEDULERS,
    TOP_KEYS,
    Checker,
    ParamSpace,
    SpecError,
    StudyError,
    maybe_number,
    read_yaml,
    show,
)
from studies.samplers import GRID, SAMPLERS, grid_values


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
    trials: int = 20  # configurations the sampler chooses
    repeats: int = 1  # runs of each configuration, seeds seed, seed + REPEAT_SEED, ...
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
    # exact points ({stage.param: value}) run first, in order
    enqueue: list = field(default_factory=list)
    # front: a trial's model is kept until a feasible finished trial dominates it
    keep_models: str = "front"
    source: dict = field(default_factory=dict)  # the spec as written, for spec.yaml

    # ------------------------------------------------------------------ derived

    @property
    def runs(self) -> int:
        """Ray Tune trials the study runs: each configuration ``repeats`` times."""
        return self.trials * self.repeats

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

    def with_overrides(self, *, rehearse: bool = True, **kw) -> StudySpec:
        """A copy with top-level fields replaced (``--trials``, ``--storage``, ``--name``),
        checked again (``rehearse``: see :func:`parse_spec`)."""
        raw = dict(self.source)
        raw.update({k: v for k, v in kw.items() if v is not None})
        return parse_spec(raw, source=f"spec {self.name!r} with overrides", rehearse=rehearse)

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


def load_spec(path: str | Path, *, rehearse: bool = True, settings: list[str] = ()) -> StudySpec:
    """Read and check a YAML spec; raise :class:`SpecError` with every mistake
    (``rehearse``: see :func:`parse_spec`; ``settings``: ``run --set``, see
    :func:`apply_settings`)."""
    path = Path(path)
    if not path.is_file():
        raise SpecError([f"spec file {str(path)!r} does not exist"], str(path))
    raw = read_yaml(path)
    if settings and isinstance(raw, dict):
        return parse_spec(apply_settings(raw, settings), source=f"{path} with --set",
                          rehearse=rehearse)
    return parse_spec(raw, source=str(path), rehearse=rehearse)


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
        meant = maybe_number(value)
        if isinstance(meant, int | float) and not isinstance(meant, bool):
            check = Checker()  # 10**400 or 1e400: refused here, before the trial starts
            if check.numeric(key, value, "a finite number") is None:
                errors.append(f"--set {show(item)}: {check.errors[0]}")
                continue
        out[key] = meant
    if errors:
        raise SpecError(errors, "--set")
    return out


def apply_settings(raw: dict, items: list[str]) -> dict:
    """``run --set``: a copy of the spec's fields with each ``KEY=VALUE`` applied.

    A key whose first part is a spec field (``trials=40``, ``baseline.epochs=3``,
    ``sampler.name=nsga2``) replaces that field, a field given as a bare name
    (``data: digits``) becoming ``{name: ...}`` when a sub-field is set; any other key is a
    search-space parameter (``slimming.lr=0.01``, ``pipeline=...``) and is fixed to the
    value. Values are YAML (``[1, 2]``, ``true``, ``1e-3``). The result is checked by
    :func:`parse_spec` like any spec, and saved as the study's ``spec.yaml``.
    """
    out = copy.deepcopy(raw)
    errors = []
    for item in items:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or not key or any(not part for part in key.split(".")):
            errors.append(f"--set {item!r}: expected FIELD=VALUE or STAGE.PARAM=VALUE")
            continue
        try:
            value = maybe_number(yaml.safe_load(text) if text.strip() else None)
        except yaml.YAMLError as e:
            errors.append(f"--set {item!r}: value is not valid YAML ({e})")
            continue
        path = key.split(".")
        if path[0] not in TOP_KEYS:
            if len(path) < 2 and key != PIPELINE:
                errors.append(f"--set {item!r}: {key!r} is neither a spec field ("
                              f"{', '.join(TOP_KEYS)}) nor a parameter named stage.param")
                continue
            space = out.get("space")
            out["space"] = {**(space if isinstance(space, dict) else {}), key: value}
            continue
        node = out
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if isinstance(child, str):
                child = {"name": child}
            elif child is None:
                child = {}
            elif not isinstance(child, dict):
                errors.append(f"--set {item!r}: {'.'.join(path[:i + 1])} is "
                              f"{type(child).__name__} {child!r}, not a mapping of fields")
                break
            node[part] = child
            node = child
        else:
            node[path[-1]] = value
    if errors:
        raise SpecError(errors, "--set")
    return out


def parse_spec(raw: Any, source: str = "spec", *, rehearse: bool = True) -> StudySpec:
    """Check a spec given as plain data (what YAML gives) and build a :class:`StudySpec`.

    ``rehearse`` runs every chain on the model at the corners of its space
    (:func:`studies._check_model.check_rehearsal`); a study's own saved spec, accepted when
    the study began, is read without.
    """
    c = Checker()
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
        c.error("name", f"{show(name)} is not a valid study name; allowed: 1 to 100 letters, "
                        "digits, '.', '_' and '-', starting with a letter or digit")

    data_name, data_kw = check_data(c, raw.get("data", "digits"))
    model_name, model_kw = check_model(c, raw.get("model", {"name": "vgg11", "width": 0.25}))
    baseline_raw = raw.get("baseline") or {}
    transfer = None
    if isinstance(baseline_raw, dict) and "transfer" in baseline_raw:
        baseline_raw = dict(baseline_raw)
        transfer = check_train(c, "baseline.transfer", baseline_raw.pop("transfer") or {})
    baseline = check_train(c, "baseline", baseline_raw)
    finetune = check_train(c, "finetune", raw.get("finetune") or {})
    chains = check_methods(c, raw.get("methods"))
    if not c.errors:
        check_compatible(c, model_name, model_kw, data_name, data_kw, chains)
    space = check_space(c, raw.get("space") or {}, chains)
    if not c.errors:
        space = check_allocation(c, model_name, model_kw, data_name, data_kw, chains, space)
    if not c.errors:
        check_constraints(c, space, chains)
    if not c.errors and rehearse:
        check_rehearsal(c, model_name, model_kw, data_name, data_kw, chains, space)
    objectives = check_objectives(c, raw.get("objectives"))
    n_objectives = len(raw["objectives"]) if isinstance(raw.get("objectives"), dict | list) \
        else len(objectives)
    sampler, sampler_seed, sampler_options = check_sampler(c, raw.get("sampler", "tpe"),
                                                            raw.get("seed", 0))
    check_searched(c, space, sampler)
    if sampler == GRID and "trials" not in raw:  # each combination once
        trials = math.prod(len(v) for v in grid_values(space).values())
    else:
        trials = c.integer("trials", raw.get("trials", 20), low=1, high=MAX_TRIALS)
    repeats = c.integer("repeats", raw.get("repeats", 1), low=1, high=MAX_REPEATS)
    if trials * repeats > MAX_TRIALS:
        c.error("repeats", f"{trials} trials x {repeats} repeats is {trials * repeats} runs; "
                           f"at most {MAX_TRIALS} allowed")
    if sampler == GRID and not c.errors:
        check_grid(c, space, chains, trials)
    enqueue = check_enqueue(c, raw.get("enqueue"), space, chains)
    if sampler == GRID and enqueue:
        c.error("enqueue", "the grid runs every combination already; for exact points alone "
                           "use another sampler (random) with trials equal to their count")
    scheduler = check_scheduler(c, raw.get("scheduler"), objectives, n_objectives)
    resources = check_resources(c, raw.get("resources") or {})
    max_concurrent = raw.get("max_concurrent")
    if max_concurrent is not None:
        max_concurrent = c.integer("max_concurrent", max_concurrent, low=1, high=10_000)
    storage = check_storage(c, raw.get("storage", "runs"))
    optuna_storage = check_optuna_storage(c, raw.get("optuna_storage"))
    max_failures = c.integer("max_failures", raw.get("max_failures", 2), high=1000)
    seed = c.integer("seed", raw.get("seed", 0))
    device = c.text("device", raw.get("device", "auto"), DEVICE_RE,
                    "auto, cpu, cuda, cuda:N, mps") or "auto"
    if device.startswith("cuda") and resources["gpu"] == 0:
        c.error("device", f"{device!r} needs a GPU per trial, but resources.gpu is 0; "
                          "set resources.gpu (fractions such as 0.5 share a GPU)")
    latency = check_latency(c, raw.get("latency", False))
    latency = latency or "latency_ms" in objectives
    constraints = check_constraint_bounds(c, raw.get("constraints"))
    latency = latency or "latency_ms" in constraints
    loggers = check_loggers(c, raw.get("loggers"))
    warm_start = check_warm_start(c, raw.get("warm_start"))
    if warm_start and "sensitivity" in warm_start and not c.errors:
        check_sensitivity_start(c, space, chains)
    keep_models = raw.get("keep_models", "front")
    if keep_models not in KEEP_MODELS:
        c.error("keep_models", f"{show(keep_models)} is not allowed; allowed: "
                f"{', '.join(KEEP_MODELS)} (front: the models of trials on the front or "
                "still able to reach it)")
        keep_models = "front"

    if c.errors:
        raise SpecError(c.errors, source)
    return StudySpec(
        name=name, data=data_name, data_kw=data_kw, model=model_name, model_kw=model_kw,
        baseline=baseline, transfer=transfer, finetune=finetune, chains=chains, space=space,
        objectives=objectives, sampler=sampler, sampler_seed=sampler_seed,
        sampler_options=sampler_options, trials=trials, repeats=repeats, scheduler=scheduler,
        resources=resources, max_concurrent=max_concurrent, storage=storage,
        optuna_storage=optuna_storage, max_failures=max_failures, seed=seed, device=device,
        latency=latency, constraints=constraints, loggers=loggers, warm_start=warm_start,
        enqueue=enqueue, keep_models=keep_models, source=dict(raw),
    )


def objective_lists(spec: StudySpec) -> tuple[list[str], list[str]]:
    """``(metrics, modes)`` in the spec's order, as OptunaSearch takes them."""
    return list(spec.objectives), list(spec.objectives.values())


__all__ = ["SAMPLERS", "ParamSpace", "SpecError", "StudyError", "StudySpec",
           "apply_settings", "load_spec", "objective_lists", "parse_overrides",
           "parse_spec"]
