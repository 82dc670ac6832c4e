"""Mistaken specs a user can write, each named, for ``prune-study validate``.

``BAD_SPECS`` maps a kind of mistake to how it is made from a valid spec and to
the field the error must name. ``spec_text(kind)`` gives the file's bytes.
``fuzz_specs()`` is a hypothesis strategy of valid specs mutated structurally
and by value. The tests and ``benchmarks/reliability.py`` share these.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# A valid spec that validates in well under a second (its model is tiny).
BASE: dict = {
    "name": "hostile",
    "data": {"name": "digits", "image_size": 16},
    "model": {"name": "vgg11", "width": 0.125},
    "baseline": {"epochs": 1, "lr": 0.05},
    "methods": "slimming",
    "space": {
        "slimming.lambda": {"low": 1e-3, "high": 5e-2, "log": True},
        "slimming.prune_ratio": {"low": 0.3, "high": 0.9},
        "slimming.sparsity_epochs": 1,
        "slimming.finetune_epochs": 1,
    },
    "objectives": {"accuracy": "max", "macs": "min"},
    "sampler": {"name": "tpe", "seed": 0},
    "trials": 4,
    "resources": {"cpu": 1},
}


@dataclass(frozen=True)
class BadSpec:
    """A mistake: ``make(spec)`` edits a copy of BASE, or ``text`` is the whole file;
    ``field`` is what the error message must name."""

    field: str
    make: Callable[[dict], Any] | None = None
    text: bytes | None = None


def _set(path: str, value: Any) -> Callable[[dict], dict]:
    """Set the field ``a.b.c`` (mappings on the way are created) to ``value``."""
    def make(spec: dict) -> dict:
        *parents, last = path.split(".")
        node = spec
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
        return spec
    return make


def _space(key: str, value: Any) -> Callable[[dict], dict]:
    def make(spec: dict) -> dict:
        spec["space"][key] = value
        return spec
    return make


def _drop(key: str) -> Callable[[dict], dict]:
    def make(spec: dict) -> dict:
        spec.pop(key)
        return spec
    return make


def _with(**fields: Any) -> Callable[[dict], dict]:
    def make(spec: dict) -> dict:
        spec.update(copy.deepcopy(fields))
        return spec
    return make


def _storage_file(spec: dict) -> dict:
    spec["storage"] = str(Path(__file__).resolve())  # an existing file, not a directory
    return spec


_REPR = {
    "methods": "repr", "model": {"name": "c3", "k": 8},
    "space": {"repr.epochs": {"low": 10, "high": 30}, "repr.s1": {"low": 2, "high": 6},
              "repr.s2": {"low": 1, "high": 4}, "repr.cycles": {"low": 1, "high": 3}},
}
_VALID_TEXT = yaml.safe_dump(BASE, sort_keys=False).encode()

# an existing folder as data.root: the mistakes below are in other fields
_IMAGEFOLDER = {"name": "imagefolder", "root": str(Path(__file__).resolve().parent)}

BAD_SPECS: dict[str, BadSpec] = {
    # the file itself
    "empty file": BadSpec("spec", text=b""),
    "a list, not a mapping": BadSpec("spec", text=b"- name: x\n"),
    "a scalar, not a mapping": BadSpec("spec", text=b"just words\n"),
    "not UTF-8": BadSpec("UTF-8", text=b"name: caf\xe9\n" + _VALID_TEXT[12:]),
    "invalid YAML": BadSpec("YAML", text=b"name: [unclosed\n"),
    "tab indentation": BadSpec("YAML", text=b"model:\n\tname: vgg11\n"),
    "duplicate top-level key": BadSpec("name", text=_VALID_TEXT + b"name: again\n"),
    "duplicate key in space": BadSpec(
        "slimming.lambda", text=_VALID_TEXT.replace(
            b"space:\n", b"space:\n  slimming.lambda: 0.01\n", 1)),
    "python object tag": BadSpec("YAML", text=b"name: !!python/object/apply:os.getcwd []\n"),
    "file over 1 MiB": BadSpec("spec", text=_VALID_TEXT + b"#" * (1 << 20) + b"\n"),
    "unknown top-level field": BadSpec("colour", _with(colour="blue")),
    "misspelled field": BadSpec("objective", _with(objective={"accuracy": "max"})),
    # name
    "name missing": BadSpec("name", _drop("name")),
    "name with a newline": BadSpec("name", _with(name="q\n")),
    "name with a slash": BadSpec("name", _with(name="a/b")),
    "name '..'": BadSpec("name", _with(name="..")),
    "name a number": BadSpec("name", _with(name=5)),
    "name 300 characters": BadSpec("name", _with(name="n" * 300)),
    "name with NUL": BadSpec("name", _with(name="a\x00b")),
    # data
    "unknown dataset": BadSpec("data.name", _with(data="mnist-fashion")),
    "data.val_fraction 0.7": BadSpec("data.val_fraction", _set("data.val_fraction", 0.7)),
    "data.val_fraction NaN": BadSpec("data.val_fraction", _set("data.val_fraction", math.nan)),
    "data.image_size infinite": BadSpec("data.image_size", _set("data.image_size", math.inf)),
    "data.image_size 2.5": BadSpec("data.image_size", _set("data.image_size", 2.5)),
    "data.image_size true": BadSpec("data.image_size", _set("data.image_size", True)),
    "data.image_size negative": BadSpec("data.image_size", _set("data.image_size", -8)),
    "data.image_size huge": BadSpec("data.image_size", _set("data.image_size", 100_000)),
    "cifar10 without root": BadSpec("data.root", _with(data="cifar10")),
    "data unknown setting": BadSpec("data.colour", _set("data.colour", "red")),
    "data as a list": BadSpec("data", _with(data=["digits"])),
    "data.download a string": BadSpec("data.download", _set("data.download", "yes")),
    "data.augment a string": BadSpec("data.augment", _set("data.augment", "no")),
    "data.resize unknown": BadSpec("data.resize", _with(
        data={**_IMAGEFOLDER, "resize": "zoom"})),
    "data.bad_images unknown": BadSpec("data.bad_images", _with(
        data={**_IMAGEFOLDER, "bad_images": "ignore"})),
    "data.decode unknown": BadSpec("data.decode", _with(
        data={**_IMAGEFOLDER, "decode": "fpga"})),
    "data.mean two numbers": BadSpec("data.mean", _with(
        data={**_IMAGEFOLDER, "mean": [0.5, 0.5]})),
    "data.std zero": BadSpec("data.std", _with(
        data={**_IMAGEFOLDER, "std": [0.2, 0, 0.2]})),
    "data.split_files missing file": BadSpec("data.split_files.test", _with(
        data={**_IMAGEFOLDER, "split_files": {"train": "__init__.py",
                                              "test": "no-such-list.txt"}})),
    "data.max_memory_bytes negative": BadSpec("data.max_memory_bytes",
                                              _set("data.max_memory_bytes", -1)),
    # model
    "unknown model": BadSpec("model.name", _with(model="resnet9000")),
    "model.width 0": BadSpec("model.width", _set("model.width", 0)),
    "model.width NaN": BadSpec("model.width", _set("model.width", math.nan)),
    "model.width true": BadSpec("model.width", _set("model.width", True)),
    "model unknown setting": BadSpec("model.depth", _set("model.depth", 3)),
    "model.weights missing file": BadSpec("model.weights", _with(
        model={"name": "resnet18", "weights": "/nonexistent/w.pt"})),
    "model.import unknown module": BadSpec("model", _with(model={"import": "nosuchmod:net"})),
    "model.import without factory": BadSpec("model", _with(model={"import": "collections"})),
    "model name and import": BadSpec("model.name", _with(
        model={"name": "vgg11", "import": "tests.user_models:small_net"})),
    "torchvision model unknown": BadSpec("model", _with(model="torchvision:nosuchnet")),
    "model a number": BadSpec("model", _with(model=11)),
    "model.width a string": BadSpec("model.width", _set("model.width", "wide")),
    # training settings
    "baseline.epochs 2.5": BadSpec("baseline.epochs", _set("baseline.epochs", 2.5)),
    "baseline.epochs true": BadSpec("baseline.epochs", _set("baseline.epochs", True)),
    "baseline.epochs negative": BadSpec("baseline.epochs", _set("baseline.epochs", -1)),
    "baseline.epochs a billion": BadSpec("baseline.epochs", _set("baseline.epochs", 10**9)),
    "baseline.lr infinite": BadSpec("baseline.lr", _set("baseline.lr", math.inf)),
    "baseline.lr NaN": BadSpec("baseline.lr", _set("baseline.lr", math.nan)),
    "baseline.lr 0": BadSpec("baseline.lr", _set("baseline.lr", 0)),
    "baseline.lr a word": BadSpec("baseline.lr", _set("baseline.lr", "fast")),
    "baseline.momentum 1": BadSpec("baseline.momentum", _set("baseline.momentum", 1.0)),
    "baseline.batch_size 0": BadSpec("baseline.batch_size", _set("baseline.batch_size", 0)),
    "baseline.schedule unknown": BadSpec("baseline.schedule", _set("baseline.schedule", "warp")),
    "baseline.milestones decreasing": BadSpec("baseline.milestones",
                                              _set("baseline.milestones", [0.9, 0.5])),
    "baseline.milestones outside (0, 1)": BadSpec("baseline.milestones",
                                                  _set("baseline.milestones", [2])),
    "baseline.weight_decay negative": BadSpec("baseline.weight_decay",
                                              _set("baseline.weight_decay", -1)),
    "baseline.patience 0": BadSpec("baseline.patience", _set("baseline.patience", 0)),
    "baseline unknown setting": BadSpec("baseline.lrate", _set("baseline.lrate", 0.1)),
    "baseline as a list": BadSpec("baseline", _with(baseline=[1, 2])),
    "finetune.label_smoothing 1.5": BadSpec("finetune.label_smoothing",
                                            _set("finetune.label_smoothing", 1.5)),
    "baseline.seed 2**40": BadSpec("baseline.seed", _set("baseline.seed", 2**40)),
    "baseline.gamma NaN": BadSpec("baseline.gamma", _set("baseline.gamma", math.nan)),
    # methods
    "methods missing": BadSpec("methods", _drop("methods")),
    "unknown method": BadSpec("methods", _with(methods="slimmer")),
    "chain entry with a list as method": BadSpec("methods", _with(
        methods=[{"method": ["slimming"]}])),
    "stage name with a dot": BadSpec("methods", _with(
        methods=[{"stage": "a.b", "method": "slimming"}])),
    "terminal method first": BadSpec("methods", _with(methods=["quantize", "slimming"])),
    "empty chain": BadSpec("methods", _with(methods=[])),
    "empty choice": BadSpec("methods", _with(methods={"choice": []})),
    "choice lists a chain twice": BadSpec("methods.choice", _with(
        methods={"choice": ["slimming", "slimming"]}, space={})),
    "methods a number": BadSpec("methods", _with(methods=5)),
    # space
    "space unknown stage": BadSpec("space.prune.ratio", _space("prune.ratio", 0.5)),
    "space unknown parameter": BadSpec("space.slimming.gamma", _space("slimming.gamma", 0.5)),
    "space low above high": BadSpec("space.slimming.prune_ratio", _space(
        "slimming.prune_ratio", {"low": 0.9, "high": 0.3})),
    "space low NaN": BadSpec("space.slimming.prune_ratio.low", _space(
        "slimming.prune_ratio", {"low": math.nan, "high": 0.3})),
    "space high infinite": BadSpec("space.slimming.lambda.high", _space(
        "slimming.lambda", {"low": 1e-3, "high": math.inf})),
    "space step NaN": BadSpec("space.slimming.prune_ratio.step", _space(
        "slimming.prune_ratio", {"low": 0.3, "high": 0.9, "step": math.nan})),
    "space step negative": BadSpec("space.slimming.prune_ratio.step", _space(
        "slimming.prune_ratio", {"low": 0.3, "high": 0.9, "step": -0.1})),
    "space int step fractional": BadSpec("space.slimming.sparsity_epochs.step", _space(
        "slimming.sparsity_epochs", {"low": 1, "high": 5, "step": 0.5})),
    "space log with low 0": BadSpec("space.slimming.lambda.low", _space(
        "slimming.lambda", {"low": 0, "high": 0.1, "log": True})),
    "space unknown type": BadSpec("space.slimming.lambda.type", _space(
        "slimming.lambda", {"type": "complex", "low": 0, "high": 1})),
    "space empty choices": BadSpec("space.slimming.prune_ratio.choices", _space(
        "slimming.prune_ratio", {"choices": []})),
    "space duplicate choices": BadSpec("space.slimming.prune_ratio.choices", _space(
        "slimming.prune_ratio", {"choices": [0.5, 0.5]})),
    "space choice outside domain": BadSpec("space.slimming.prune_ratio.choices[1]", _space(
        "slimming.prune_ratio", {"choices": [0.5, 1.5]})),
    "space fixed value outside domain": BadSpec("space.slimming.prune_ratio", _space(
        "slimming.prune_ratio", 1.5)),
    "space fixed value a list": BadSpec("space.slimming.prune_ratio", _space(
        "slimming.prune_ratio", [0.3, 0.5])),
    "space float type on an int": BadSpec("space.slimming.sparsity_epochs.type", _space(
        "slimming.sparsity_epochs", {"type": "float", "low": 1, "high": 3})),
    "space int low fractional": BadSpec("space.slimming.sparsity_epochs.low", _space(
        "slimming.sparsity_epochs", {"low": 1.5, "high": 3})),
    "space sets pipeline": BadSpec("space.pipeline", _space("pipeline", "slimming")),
    "space key without stage": BadSpec("space.lambda", _space("lambda", 0.01)),
    "space a list": BadSpec("space", _with(space=["slimming.lambda"])),
    "space int range a billion wide": BadSpec("space.slimming.sparsity_epochs.high", _space(
        "slimming.sparsity_epochs", {"low": 1, "high": 10**9})),
    "repr epoch budget drawable": BadSpec("repr.epochs", _with(**_REPR)),
    # objectives
    "objectives missing": BadSpec("objectives", _drop("objectives")),
    "objective unknown column": BadSpec("objectives.loss", _with(objectives={"loss": "min"})),
    "objective mode misspelled": BadSpec("objectives.accuracy", _with(
        objectives={"accuracy": "maximize"})),
    "objective twice with two directions": BadSpec("objectives", _with(
        objectives=[{"accuracy": "max"}, {"accuracy": "min"}])),
    "objectives empty": BadSpec("objectives", _with(objectives={})),
    "objectives a word": BadSpec("objectives", _with(objectives="accuracy")),
    # sampler
    "unknown sampler": BadSpec("sampler", _with(sampler="cmaes2")),
    "sampler.seed 5e9": BadSpec("sampler.seed", _set("sampler.seed", 5_000_000_000)),
    "sampler.seed negative": BadSpec("sampler.seed", _set("sampler.seed", -1)),
    "sampler option unknown": BadSpec("sampler.options.warmup", _set("sampler.options",
                                                                     {"warmup": 3})),
    "sampler n_startup_trials negative": BadSpec(
        "sampler.options.n_startup_trials", _set("sampler.options", {"n_startup_trials": -3})),
    "sampler n_startup_trials NaN": BadSpec(
        "sampler.options.n_startup_trials",
        _set("sampler.options", {"n_startup_trials": math.nan})),
    "sampler options a list": BadSpec("sampler.options", _set("sampler.options", [1])),
    "sampler unknown key": BadSpec("sampler.speed", _set("sampler.speed", 2)),
    "sampler multivariate a string": BadSpec(
        "sampler.options.multivariate", _set("sampler.options", {"multivariate": "yes"})),
    "sampler option takes an object": BadSpec(
        "sampler.options.gamma", _set("sampler.options", {"gamma": 0.1})),
    # trials
    "trials 0": BadSpec("trials", _with(trials=0)),
    "trials 1e300": BadSpec("trials", _with(trials=1e300)),
    "trials a 400-digit integer": BadSpec("trials", _with(trials=10**400)),
    "trials true": BadSpec("trials", _with(trials=True)),
    "trials 2.5": BadSpec("trials", _with(trials=2.5)),
    "trials a word": BadSpec("trials", _with(trials="many")),
    # scheduler
    "unknown scheduler": BadSpec("scheduler", _with(scheduler="hyperband")),
    "asha with two objectives": BadSpec("scheduler", _with(scheduler="asha")),
    "scheduler.grace_period 0": BadSpec("scheduler.grace_period", _with(
        scheduler={"name": "asha", "grace_period": 0}, objectives={"accuracy": "max"})),
    "scheduler.max_t infinite": BadSpec("scheduler.max_t", _with(
        scheduler={"name": "asha", "max_t": math.inf}, objectives={"accuracy": "max"})),
    # resources
    "resources.cpu infinite": BadSpec("resources.cpu", _set("resources.cpu", math.inf)),
    "resources.cpu NaN": BadSpec("resources.cpu", _set("resources.cpu", math.nan)),
    "resources.cpu 0": BadSpec("resources.cpu", _set("resources.cpu", 0)),
    "resources.gpu negative": BadSpec("resources.gpu", _set("resources.gpu", -1)),
    "resources.gpu 1.5": BadSpec("resources.gpu", _set("resources.gpu", 1.5)),
    "resources.tpu": BadSpec("resources.tpu", _set("resources.tpu", 1)),
    "resources.cpu 100000": BadSpec("resources.cpu", _set("resources.cpu", 100_000)),
    "max_concurrent 0": BadSpec("max_concurrent", _with(max_concurrent=0)),
    "max_concurrent true": BadSpec("max_concurrent", _with(max_concurrent=True)),
    # storage
    "storage ~unknown user": BadSpec("storage", _with(storage="~nosuchuser/runs")),
    "storage an existing file": BadSpec("storage", _storage_file),
    "storage empty": BadSpec("storage", _with(storage="")),
    "storage with NUL": BadSpec("storage", _with(storage="runs\x00x")),
    "storage a number": BadSpec("storage", _with(storage=7)),
    "optuna_storage unknown driver": BadSpec("optuna_storage", _with(
        optuna_storage="mysql+nosuchdriver://u@localhost/db")),
    "optuna_storage unknown dialect": BadSpec("optuna_storage", _with(
        optuna_storage="nosuchdb://u@localhost/db")),
    "optuna_storage a number": BadSpec("optuna_storage", _with(optuna_storage=5)),
    "optuna_storage password in the URL": BadSpec("optuna_storage", _with(
        optuna_storage="sqlite:///x.db?password=hunter2")),
    # the rest
    "max_failures negative": BadSpec("max_failures", _with(max_failures=-1)),
    "seed 5e9": BadSpec("seed", _with(seed=5_000_000_000)),
    "seed negative": BadSpec("seed", _with(seed=-1)),
    "seed a word": BadSpec("seed", _with(seed="abc")),
    "device with a newline": BadSpec("device", _with(device="cpu\n")),
    "device unknown": BadSpec("device", _with(device="tpu")),
    "device cuda without resources.gpu": BadSpec("device", _with(device="cuda")),
    "latency a string": BadSpec("latency", _with(latency="yes")),
}


# Classes of mistake, each made in every field of its kind: a number no float holds (or a
# bool, or text that overflows to infinity) in each numeric field, and a path the system
# cannot take in each path field. A new numeric or path field belongs in these tables.
HUGE = 10**400  # a 401-digit integer: float() and math.isfinite() of it raise OverflowError
BAD_NUMBERS = {"a 401-digit integer": HUGE, "true": True, "1e400 (text: infinity)": "1e400"}
_IMPORT_MODEL = {"import": "tests.user_models:small_net"}
_ASHA = {"objectives": {"accuracy": "max"}}
# field the error must name -> how to put a value there
NUMERIC_FIELDS: dict[str, Callable[[Any], Callable[[dict], Any]]] = {
    "space.slimming.sparsity_epochs.high": lambda v: _space(
        "slimming.sparsity_epochs", {"low": 2, "high": v}),
    "space.slimming.lambda.low": lambda v: _space("slimming.lambda", {"low": v, "high": 0.1}),
    "space.slimming.prune_ratio.step": lambda v: _space(
        "slimming.prune_ratio", {"low": 0.3, "high": 0.9, "step": v}),
    "space.slimming.sparsity_epochs": lambda v: _space("slimming.sparsity_epochs", v),
    "space.slimming.prune_ratio.choices[1]": lambda v: _space(
        "slimming.prune_ratio", {"choices": [0.5, v]}),
    "baseline.epochs": lambda v: _set("baseline.epochs", v),
    "baseline.lr": lambda v: _set("baseline.lr", v),
    "finetune.milestones": lambda v: _set("finetune.milestones", [0.5, v]),
    "baseline.transfer.batch_size": lambda v: _set("baseline.transfer", {"batch_size": v}),
    "trials": lambda v: _with(trials=v),
    "max_concurrent": lambda v: _with(max_concurrent=v),
    "max_failures": lambda v: _with(max_failures=v),
    "seed": lambda v: _with(seed=v),
    "sampler.seed": lambda v: _set("sampler.seed", v),
    "sampler.options.n_startup_trials": lambda v: _set("sampler.options",
                                                       {"n_startup_trials": v}),
    "resources.cpu": lambda v: _set("resources.cpu", v),
    "resources.gpu": lambda v: _set("resources.gpu", v),
    "resources.time_limit_s": lambda v: _set("resources.time_limit_s", v),
    "constraints.accuracy_drop.max": lambda v: _with(constraints={"accuracy_drop": {"max": v}}),
    "scheduler.max_t": lambda v: _with(scheduler={"name": "asha", "max_t": v}, **_ASHA),
    "scheduler.grace_period": lambda v: _with(
        scheduler={"name": "mo_asha", "grace_period": v}),
    "scheduler.reduction_factor": lambda v: _with(
        scheduler={"name": "mo_asha", "reduction_factor": v}),
    "latency.runs": lambda v: _with(latency={"runs": v}),
    "latency.batch": lambda v: _with(latency={"batch": [1, v]}),
    "data.val_fraction": lambda v: _set("data.val_fraction", v),
    "data.image_size": lambda v: _set("data.image_size", v),
    "data.test_fraction": lambda v: _with(data={**_IMAGEFOLDER, "test_fraction": v}),
    "model.width": lambda v: _set("model.width", v),
    "model.k": lambda v: _with(model={"name": "c3", "k": v}),
    # an imported model's arguments are free-form: only a number no float holds is refused
    "model.kwargs.width": lambda v: _with(model={**_IMPORT_MODEL, "kwargs": {"width": v}}),
}
FREE_FORM = ("model.kwargs.width",)  # true may be a valid argument there

BAD_PATHS = {
    "~ of no such user": "~nosuchuser/prune",
    "with a NUL byte": "prune\x00x",
    "5000 bytes long": "/tmp/" + "d/" * 2500,
    "a 300-byte name": "/tmp/" + "n" * 300,
}
PATH_FIELDS: dict[str, Callable[[str], Callable[[dict], Any]]] = {
    "data.root": lambda p: _with(data={"name": "cifar10", "root": p}),
    "model.weights": lambda p: _with(model={"name": "resnet18", "weights": p}),
    "storage": lambda p: _with(storage=p),
    "optuna_storage": lambda p: _with(optuna_storage=p),
    "warm_start": lambda p: _with(warm_start=p),
    "loggers.mlflow.tracking_uri": lambda p: _with(loggers={"mlflow": {"tracking_uri": p}}),
}
BAD_SPECS.update({
    f"{field} {kind}": BadSpec(field, put(value))
    for field, put in NUMERIC_FIELDS.items() for kind, value in BAD_NUMBERS.items()
    if not (field in FREE_FORM and isinstance(value, bool))
})
BAD_SPECS.update({
    f"{field} {kind}": BadSpec(field, put(path))
    for field, put in PATH_FIELDS.items() for kind, path in BAD_PATHS.items()
})
BAD_SPECS.update({
    "optuna_storage sqlite URL with ~": BadSpec("optuna_storage", _with(
        optuna_storage="sqlite:///~/optuna.db")),
    "optuna_storage sqlite URL 5000 bytes long": BadSpec("optuna_storage", _with(
        optuna_storage="sqlite:///" + BAD_PATHS["5000 bytes long"] + "o.db")),
    "warm_start.storage sqlite URL 5000 bytes long": BadSpec("warm_start.storage", _with(
        warm_start={"storage": "sqlite:///" + BAD_PATHS["5000 bytes long"] + "o.db",
                    "study": "old"})),
    "asha reduction_factor 1": BadSpec("scheduler.reduction_factor", _with(
        scheduler={"name": "asha", "reduction_factor": 1}, **_ASHA)),
    "asha grace_period above the default max_t": BadSpec("scheduler.max_t", _with(
        scheduler={"name": "asha", "grace_period": 200}, **_ASHA)),
    "mo_asha reduction_factor barely above 1": BadSpec("scheduler.reduction_factor", _with(
        scheduler={"name": "mo_asha", "reduction_factor": 1.000000001, "max_t": 10**6})),
})


def spec_text(kind: str) -> bytes:
    """The bytes of the spec file for one kind of mistake."""
    bad = BAD_SPECS[kind]
    if bad.text is not None:
        return bad.text
    return yaml.safe_dump(bad.make(copy.deepcopy(BASE)), sort_keys=False,
                          allow_unicode=True).encode()


# --------------------------------------------------------------------------- fuzzing

def fuzz_specs(bases: int = 3):
    """A hypothesis strategy: BASE, a chain variant or a RePr variant (the first ``bases``
    of them) with 1 to 4 mutations, each replacing, deleting or adding a value anywhere, or
    putting a bad path into one of the path fields."""
    from hypothesis import strategies as st

    paths = st.one_of(st.sampled_from(list(BAD_PATHS.values())), st.sampled_from(
        ["~", "~nosuchuser", "", " ", ".", "/", "x\n", "journal:~nosuchuser/j.log",
         "sqlite:///~/o.db", "/dev/null", "/proc/self"]), st.text(max_size=12))
    leaves = st.one_of(
        st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
        st.sampled_from(["search", "max", "min", "slimming", "quantize", "tpe", "asha", "cpu",
                         "~", "../x", "1e-3", ".nan", "choice", "low", "high", "1e400",
                         "~nosuchuser/x"]),
        st.sampled_from([HUGE, -HUGE, 2**1024, 10**309]),  # integers no float holds
    )
    values = st.recursive(leaves, lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
        max_leaves=6)
    starts = st.sampled_from([
        BASE,
        {**BASE, "methods": ["magnitude", "quantize"],
         "space": {"magnitude.ratio": "search", "quantize.per_channel": "search"}},
        {**BASE, **_REPR, "space": {"repr.epochs": 12, "repr.s1": {"low": 1, "high": 3},
                                    "repr.s2": {"low": 1, "high": 2}, "repr.cycles": 2}},
    ][:bases])

    @st.composite
    def mutated(draw):
        spec = copy.deepcopy(draw(starts))
        for _ in range(draw(st.integers(min_value=1, max_value=4))):
            path = _paths(spec)
            parent, key = draw(st.sampled_from(path))
            action = draw(st.sampled_from(["replace", "replace", "delete", "add", "path"]))
            if action == "path":
                put = PATH_FIELDS[draw(st.sampled_from(sorted(PATH_FIELDS)))]
                spec = put(draw(paths))(spec)
            elif action == "delete" and key is not None:
                del parent[key]
            elif action == "add" and isinstance(parent, dict):
                parent[draw(st.text(min_size=1, max_size=8))] = draw(values)
            elif key is not None:
                parent[key] = draw(values)
        return spec

    return mutated()


def _paths(node: Any, out: list | None = None) -> list[tuple[Any, Any]]:
    """Every (container, key) in a tree of dicts and lists, and (root, None)."""
    out = [(node, None)] if out is None else out
    items = node.items() if isinstance(node, dict) else \
        enumerate(node) if isinstance(node, list) else ()
    for k, v in list(items):
        out.append((node, k))
        _paths(v, out)
    return out
