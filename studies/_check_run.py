"""Spec checks of how a study runs: objectives and constraints, sampler and scheduler,
resources, storage, latency, loggers and warm start."""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import math
import random
import re
import warnings
from typing import Any

from prune_core import columns
from prune_core.measure import RUNTIMES
from prune_core.methods import ParamError, chain_name, parse_chain
from studies._values import (
    CONTROL,
    LOGGERS,
    MAX_TRIALS,
    PIPELINE,
    SCHEDULERS,
    URI_RE,
    Checker,
    ParamSpace,
    SpecError,
    named,
    probe,
    read_yaml,
    show,
)
from studies.samplers import AUTO, GRID, MAX_SEARCHED, SAMPLERS, sampler_class


def check_objectives(c: Checker, value: Any) -> dict[str, str]:
    """``objectives`` as ``{column: max|min}`` over result columns."""
    if value is None:
        c.error("objectives", "missing; for example {accuracy: max, macs: min}")
        return {}
    if isinstance(value, list):  # [{accuracy: max}, {macs: min}] keeps the order too
        merged: dict = {}
        for item in value:
            if not isinstance(item, dict):
                c.error("objectives", f"{show(item)} is not column: max|min")
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
        if not isinstance(col, str) or col not in columns.objectives():
            c.error(f"objectives.{col}", f"unknown result column {col!r}; allowed: "
                                         f"{', '.join(columns.objectives())}")
        elif mode not in ("max", "min"):
            c.error(f"objectives.{col}", f"{mode!r} is not valid; allowed: max, min")
        else:
            out[col] = mode
    return out


def check_constraint_bounds(c: Checker, value: Any) -> dict:
    """``{column: {min: x, max: y}}`` over result columns, finite bounds, min <= max."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        c.error("constraints", f"{show(value)} is not valid; write {{column: {{max: x}}}}, "
                               "for example {accuracy_drop: {max: 0.01}}")
        return {}
    out = {}
    for col, bound in value.items():
        where = f"constraints.{col}"
        if not isinstance(col, str) or col not in columns.objectives():
            c.error(where, f"unknown result column; allowed: {', '.join(columns.objectives())}")
            continue
        if not isinstance(bound, dict) or not bound or set(bound) - {"min", "max"}:
            c.error(where, f"{show(bound)} is not valid; allowed: {{min: x}}, {{max: y}} "
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


def check_latency(c: Checker, value: Any) -> bool | dict:
    """``true``, or ``{batch: [1, 32], threads: N, compiled: bool, runs: 30, warmup: 5}``."""
    if isinstance(value, bool):
        return value
    if not isinstance(value, dict):
        c.error("latency", f"{show(value)} is not valid; allowed: true, false, or "
                           "{batch: [1, 32], threads: N, compiled: true, runs: 30}")
        return False
    out: dict = {}
    for k, v in value.items():
        if k == "batch":
            sizes = v if isinstance(v, list) else [v]
            out[k] = [c.integer("latency.batch", b, low=1, high=4096) for b in sizes]
            if not sizes or len(set(out[k])) != len(out[k]):
                c.error("latency.batch", f"{show(v)} is not valid; allowed: distinct batch "
                                         "sizes, e.g. [1, 32]")
        elif k == "threads":
            out[k] = c.integer("latency.threads", v, low=1, high=1024)
        elif k == "runs":
            out[k] = c.integer("latency.runs", v, low=30, high=100_000)
        elif k == "warmup":
            out[k] = c.integer("latency.warmup", v, low=0, high=10_000)
        elif k == "compiled":
            if not isinstance(v, bool):
                c.error("latency.compiled", f"{show(v)} is not true or false")
            out[k] = v is True
        elif k == "runtime":
            if v not in RUNTIMES:
                c.error("latency.runtime", f"{show(v)} is not allowed; allowed: "
                                           f"{', '.join(RUNTIMES)}")
            elif v == "onnxruntime" and importlib.util.find_spec("onnxruntime") is None:
                c.error("latency.runtime", "onnxruntime is not installed here; install the "
                                           "onnx extra: pip install 'prune-study[onnx]'")
            out[k] = v
        else:
            c.error(f"latency.{k}", "unknown setting; allowed: batch, threads, compiled, runs, "
                                    "warmup, runtime")
    if out.get("runtime") == "onnxruntime" and out.get("compiled"):
        c.error("latency.compiled", "true with runtime onnxruntime: ONNX Runtime runs the "
                                    "exported graph itself; leave compiled out")
    return out or True


def check_warm_start(c: Checker, value: Any) -> dict | None:
    """A study directory, or ``{storage: <Optuna storage URL>, study: <name>}``, resolved
    to the latter; or ``sensitivity`` (``{sensitivity: {levels: N}}``): allocations from a
    sensitivity scan of the base model, ``{"sensitivity": {"levels": N}}``."""
    if value is None:
        return None
    if value == "sensitivity" or (isinstance(value, dict) and set(value) == {"sensitivity"}):
        opts = value["sensitivity"] if isinstance(value, dict) else None
        if opts is not None and (not isinstance(opts, dict) or set(opts) - {"levels"}):
            c.error("warm_start.sensitivity", f"{show(opts)} is not valid; allowed: "
                                              "{levels: N} (allocations to enqueue, 1 to 32)")
            return None
        levels = c.integer("warm_start.sensitivity.levels", (opts or {}).get("levels", 4),
                           low=1, high=32)
        return {"sensitivity": {"levels": levels}}
    if isinstance(value, str) and "://" not in value:
        d = c.path("warm_start", value, "a study directory")
        if d is None:
            return None
        if probe(d / "study.json") != "file":
            c.error("warm_start", f"{show(value)} is not a study directory (no study.json); "
                                  "give one, or {storage: <Optuna storage URL>, study: <name>}")
            return None
        try:
            raw = read_yaml(d / "spec.yaml") if probe(d / "spec.yaml") == "file" else {}
        except SpecError as e:
            c.error("warm_start", f"{value!r}: its spec.yaml cannot be read ({e.errors[0]})")
            return None
        storage = raw.get("optuna_storage") if isinstance(raw, dict) else None
        if not isinstance(storage, str) or not storage:
            storage = f"sqlite:///{(d / 'optuna.db').resolve()}"
        elif "://" not in storage:
            theirs = Checker()  # the path comes from the other study's spec.yaml
            path = theirs.path("optuna_storage", storage.removeprefix("journal:"),
                               "a .db or journal file")
            if path is None:
                c.error("warm_start", f"{show(value)}: its spec.yaml's {theirs.errors[0]}")
                return None
            path = path if path.is_absolute() else d.resolve() / path
            storage = f"journal:{path}" if storage.startswith("journal:") or \
                storage.endswith((".log", ".journal")) else f"sqlite:///{path}"
        return {"storage": storage, "study": d.resolve().name}
    if isinstance(value, dict) and set(value) == {"storage", "study"} \
            and all(isinstance(v, str) and v.strip() and not CONTROL.search(v)
                    for v in value.values()):
        if "://" not in value["storage"] or \
                check_optuna_storage(c, value["storage"], "warm_start.storage") is None:
            if "://" not in value["storage"]:
                c.error("warm_start.storage", f"{value['storage']!r} is not a storage URL")
            return None
        return dict(value)
    c.error("warm_start", f"{show(value)} is not valid; allowed: a study directory, "
                          "{storage: <Optuna storage URL>, study: <name>}, or sensitivity")
    return None


def check_loggers(c: Checker, value: Any) -> dict:
    """``[csv, json, tensorboard, mlflow]`` or ``{mlflow: {tracking_uri, experiment}, ...}``."""
    if value is None:
        return {}
    items = {v: {} for v in value if isinstance(v, str)} if isinstance(value, list) else value
    if not isinstance(items, dict) or (isinstance(value, list) and len(items) != len(value)):
        c.error("loggers", f"{show(value)} is not valid; allowed: a list of "
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
            c.error(f"loggers.{name}", f"{show(settings)} is not valid; allowed settings: "
                                       f"{', '.join(allowed) or 'none'}")
            continue
        for k, v in settings.items():
            if not isinstance(v, str) or not v.strip() or CONTROL.search(v):
                c.error(f"loggers.{name}.{k}", f"{show(v)} is not valid; allowed: text")
            elif k == "tracking_uri" and "://" not in v and not v.startswith("file:"):
                # MLflow takes a plain path as the directory of a file store.
                c.path(f"loggers.{name}.{k}", v, "a directory or a URI such as http://host:5000")
        package = LOGGER_PACKAGES.get(name)
        if package and importlib.util.find_spec(package) is None:
            c.error(f"loggers.{name}", f"needs the {package!r} package, which is not installed "
                                       "here; pip install 'prune-study[loggers]'")
            continue
        out[name] = dict(settings)
    return out


LOGGER_PACKAGES = {"tensorboard": "tensorboardX", "mlflow": "mlflow"}


def check_sampler(c: Checker, value: Any, default_seed: Any) -> tuple[str, int, dict]:
    """``sampler``: a known name, a seed, and options the Optuna sampler takes."""
    name, kw = named(c, "sampler", value)
    seed = kw.pop("seed", default_seed)
    seed = c.integer("sampler.seed", seed)
    if name is None:
        return "tpe", seed, {}
    if not isinstance(name, str) or name not in (*SAMPLERS, AUTO, GRID):
        c.error("sampler.name" if isinstance(value, dict) else "sampler",
                f"unknown sampler {name!r}; allowed: {', '.join(SAMPLERS)}, {AUTO}, {GRID}")
        return "tpe", seed, {}
    options = kw.pop("options", None) or {}
    for k in kw:
        c.error(f"sampler.{k}", "unknown key; allowed: name, seed, options")
    if name in (AUTO, GRID):
        if options:
            c.error("sampler.options", f"{name} takes no options (auto sets those of the "
                    "sampler it picks, grid's grid is the space's choices); name another "
                    "sampler to set options")
        return name, seed, {}
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
                c.error(where, f"{show(v)} is not true or false")
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


def check_scheduler(c: Checker, value: Any, objectives: dict, n_objectives: int
                     ) -> dict | None:
    """``scheduler``: asha on one accuracy objective, or mo_asha on objectives it can judge
    per epoch."""
    if value is None:
        return None
    name, kw = named(c, "scheduler", value)
    if name is None:
        return None
    if name not in SCHEDULERS:
        c.error("scheduler", f"unknown scheduler {name!r}; allowed: {', '.join(SCHEDULERS)}")
        return None
    if name == "mo_asha":
        return _check_mo_asha(c, kw, objectives)
    if n_objectives > 1:
        c.error("scheduler", f"asha stops trials on one metric; this study has "
                             f"{n_objectives} objectives. Use mo_asha (it stops trials "
                             "dominated on the front), or keep one objective")
    elif objectives and next(iter(objectives)) not in columns.asha_objectives():
        c.error("scheduler", f"asha judges trials by the per-epoch validation accuracy, "
                             f"which does not track {next(iter(objectives))!r}; allowed "
                             f"objectives with asha: {', '.join(columns.asha_objectives())}; "
                             "mo_asha judges cost objectives too")
    allowed = ("grace_period", "reduction_factor", "max_t", "brackets")
    for k, v in kw.items():
        if k not in allowed:
            c.error(f"scheduler.{k}", f"unknown key; allowed: name, {', '.join(allowed)}")
        else:  # Ray's ASHAScheduler asserts reduction_factor > 1
            kw[k] = c.integer(f"scheduler.{k}", v, low=2 if k == "reduction_factor" else 1,
                              high=MAX_TRIALS)
    _check_rungs(c, kw, default_max_t=100)  # ASHAScheduler's default
    return {"name": name, **kw}


MAX_RUNGS = 1000


def _check_rungs(c: Checker, kw: dict, default_max_t: int) -> None:
    """max_t at or above grace_period (Ray asserts it), and a reduction_factor that reaches
    max_t in at most MAX_RUNGS rungs (one barely above 1 would list millions)."""
    grace = kw.get("grace_period") or 1
    max_t = kw.get("max_t") or default_max_t
    factor = kw.get("reduction_factor")
    if max_t < grace:
        c.error("scheduler.max_t", f"{max_t}{'' if 'max_t' in kw else ' (the default)'} is "
                                   f"below grace_period {grace}: no rung would be reached; "
                                   "allowed: max_t >= grace_period")
    elif factor and factor > 1:
        rungs = math.log(max_t / grace) / math.log(factor) + 1
        if rungs > MAX_RUNGS:
            c.error("scheduler.reduction_factor", f"{factor!r} makes {rungs:.3g} rungs between "
                                                  f"grace_period and max_t; allowed: at most "
                                                  f"{MAX_RUNGS}; raise it (3 is usual)")


def _check_mo_asha(c: Checker, kw: dict, objectives: dict) -> dict:
    for col in objectives:
        if col not in columns.stand_ins():
            c.error("scheduler", f"mo_asha compares trials at each rung on per-epoch stand-ins "
                                 f"of the objectives, and {col!r} has none; objectives mo_asha "
                                 f"can judge: {', '.join(columns.stand_ins())}")
    out: dict = {"name": "mo_asha"}
    for k, v in kw.items():
        if k in ("grace_period", "max_t", "min_dominators"):
            out[k] = c.integer(f"scheduler.{k}", v, low=1, high=MAX_TRIALS)
        elif k == "reduction_factor":
            out[k] = c.number("scheduler.reduction_factor", v, 1, 1e6, low_open=True)
        else:
            c.error(f"scheduler.{k}", "unknown key; allowed: name, grace_period, "
                                      "reduction_factor, max_t, min_dominators")
    _check_rungs(c, out, default_max_t=1000)  # MOASHA's default
    return {k: v for k, v in out.items() if v is not None}


def check_resources(c: Checker, value: Any) -> dict:
    """``resources``: CPUs and GPUs per trial and an optional time limit."""
    if not isinstance(value, dict):
        c.error("resources", f"{show(value)} is not a mapping such as {{cpu: 1, gpu: 0.5}}")
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


def check_storage(c: Checker, value: Any) -> str:
    """A local directory (``~`` expanded; created at run) or a URI such as s3://bucket/x."""
    if not isinstance(value, str) or not value.strip() or CONTROL.search(value):
        c.error("storage", f"{show(value)} is not a path or URI; give a directory or a URI "
                           "such as s3://bucket/studies")
        return "runs"
    if "://" in value:
        if not URI_RE.fullmatch(value):
            c.error("storage", f"{value!r} is not a URI; write scheme://location, for "
                               "example s3://bucket/studies")
            return "runs"
        return value
    path = c.path("storage", value, "a directory")
    if path is None:
        return "runs"
    for p in (path, *path.absolute().parents):
        kind = probe(p)
        if kind is not None:
            if kind != "dir":
                c.error("storage", f"{show(value)}: {show(str(p))} is a file, not a "
                                   "directory; give a directory")
                return "runs"
            break
    return value


def check_optuna_storage(c: Checker, value: Any, where: str = "optuna_storage"
                          ) -> str | None:
    """A SQLAlchemy URL whose driver imports here, a .db file, or a journal file."""
    if value is None:
        return None
    allowed = "a SQLAlchemy URL, a .db file, or a journal file (.log / .journal)"
    if not isinstance(value, str) or not value.strip() or CONTROL.search(value):
        c.error(where, f"{show(value)} is not valid; allowed: {allowed}")
        return None
    if "://" not in value:
        path = c.path(where, value.removeprefix("journal:"), "a .db or journal file")
        return value if path is not None else None
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
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        if url.database.startswith("~"):
            c.error(where, f"{shown!r}: SQLite does not expand ~ in a URL; write the full "
                           "path, or give the file without sqlite:/// (a bare .db file's ~ "
                           "is expanded)")
            return None
        if c.path(where, url.database, "a database file") is None:
            return None
    return value


def check_searched(c: Checker, space: dict[str, ParamSpace], sampler: str) -> None:
    """Refuse a space with more searched parameters than the sampler takes
    (``samplers.MAX_SEARCHED``): per_group allocation on a deep model generates many."""
    searched = [k for k, p in space.items() if p.kind != "fixed"]
    limit = MAX_SEARCHED.get(sampler)
    if limit is not None and len(searched) > limit:
        generated = sum("ratio@" in k for k in searched)
        c.error("space", f"{len(searched)} searched parameters ({generated} generated by "
                         f"per-stage or per-group allocation); sampler {sampler!r} takes at "
                         f"most {limit}: use allocation per_stage, fix some ratio@ "
                         "parameters, or choose "
                         + ("sampler tpe" if sampler == "gp" else "sampler random"))


def check_constraints(c: Checker, space: dict[str, ParamSpace], chains: tuple[tuple, ...]
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


def check_grid(c: Checker, space: dict[str, ParamSpace], chains: tuple[tuple, ...],
               trials: int) -> None:
    """``sampler: grid``: every searched parameter lists its values, one chain, and
    ``trials`` is the number of combinations (each runs once)."""
    ranges = sorted(k for k, p in space.items() if p.kind in ("int", "float"))
    for k in ranges:
        c.error(f"space.{k}", "a grid needs listed values; give {choices: [...]} or one "
                              "value, or use another sampler for ranges")
    if len(chains) > 1:
        c.error("methods", "a grid runs one chain; run a grid study per chain, or use "
                           "another sampler to choose between chains")
    if ranges or len(chains) > 1:
        return
    sizes = {k: len(p.choices) for k, p in space.items() if p.kind == "categorical"}
    points = math.prod(sizes.values())
    if trials != points:
        shape = " x ".join(f"{k} ({n})" for k, n in sizes.items()) or "no searched parameter"
        c.error("trials", f"{trials}, but the grid over {shape} has {points} point"
                          f"{'s' * (points != 1)}; set trials: {points}")


def check_enqueue(c: Checker, value: Any, space: dict[str, ParamSpace],
                  chains: tuple[tuple, ...]) -> list[dict]:
    """``enqueue``: exact points (``{stage.param: value}``) run first, in order; a searched
    parameter a point leaves out is sampled."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        c.error("enqueue", f"{show(value)} is not a list of points ({{stage.param: value}})")
        return []
    searched = {k: p for k, p in space.items() if p.kind != "fixed"}
    choices = [chain_name(parse_chain(list(ch))) for ch in chains] if len(chains) > 1 else []
    out = []
    for i, point in enumerate(value):
        ok = True
        for k, v in point.items():
            where = f"enqueue[{i}].{k}"
            if k == PIPELINE and choices:
                if v not in choices:
                    c.error(where, f"{show(v)} is not one of the chains: {', '.join(choices)}")
                    ok = False
            elif k not in searched:
                fixed = k in space
                c.error(where, "is fixed in the space; leave it out" if fixed else
                        f"not a searched parameter; searched: {', '.join(searched) or 'none'}")
                ok = False
            elif not _fits(searched[k], v):
                p = searched[k]
                allowed = (", ".join(map(show, p.choices)) if p.kind == "categorical"
                           else f"{p.kind} in [{p.low:g}, {p.high:g}]")
                c.error(where, f"{show(v)} is outside the space; allowed: {allowed}")
                ok = False
        if ok:
            out.append(dict(point))
    return out


def _fits(p: ParamSpace, value: Any) -> bool:
    if p.kind == "categorical":
        return any(value == ch and type(value) is type(ch) for ch in p.choices)
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value):
        return False
    return p.low <= value <= p.high and (p.kind != "int" or float(value).is_integer())
