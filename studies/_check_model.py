"""Spec checks of what a trial trains: data, model, training settings, methods and
the search space (with the methods' own parameter tables and constraints)."""

from __future__ import annotations

import warnings
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from prune_core import data as datasets
from prune_core import models
from prune_core.methods import (
    GENERATED_PREFIX,
    Method,
    Param,
    ParamError,
    chain_name,
    incompatibilities,
    list_methods,
    parse_chain,
)
from prune_core.train import TrainConfig
from studies._check_run import _extremes
from studies._values import (
    PIPELINE,
    SEARCH_WORD,
    SPACE_KEYS,
    Checker,
    ParamSpace,
    maybe_number,
    named,
    probe,
    show,
)


def check_data(c: Checker, value: Any) -> tuple[str, dict]:
    """``data``: a registered dataset and the arguments its loader takes."""
    name, kw = named(c, "data", value)
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
    if "val_fraction" in kw:
        kw["val_fraction"] = c.number("data.val_fraction", kw["val_fraction"], 0, 0.5,
                                      low_open=True, high_open=True)
    if "test_fraction" in kw:  # imagefolder's held-out share when it carves the test split
        kw["test_fraction"] = c.number("data.test_fraction", kw["test_fraction"], 0, 1,
                                       low_open=True, high_open=True)
    if "image_size" in kw:
        kw["image_size"] = c.integer("data.image_size", kw["image_size"], low=8, high=512)
    for flag in ("download", "augment"):
        if not isinstance(kw.get(flag, False), bool):
            c.error(f"data.{flag}", f"{show(kw[flag])} is not true or false")
    for k, allowed in (("resize", datasets.RESIZE), ("bad_images", datasets.BAD_IMAGES),
                       ("decode", datasets.DECODE)):
        if k in kw and kw[k] not in allowed:
            c.error(f"data.{k}", f"{show(kw[k])} is not one of {', '.join(allowed)}")
    for k in ("mean", "std"):
        v = kw.get(k)
        if v is not None and not (
                isinstance(v, list) and len(v) == 3
                and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
                and (k == "mean" or min(v) > 0)):
            c.error(f"data.{k}", f"{show(v)} is not three numbers, one per RGB channel"
                                 f"{' (each > 0)' if k == 'std' else ''}; leave it out to use "
                                 "the training split's own")
    if kw.get("max_memory_bytes") is not None:
        kw["max_memory_bytes"] = c.integer("data.max_memory_bytes", kw["max_memory_bytes"],
                                           high=2**62)
    download = kw.get("download", False) is True
    root = kw.get("root")
    files = kw.get("split_files")
    if files is not None and (not isinstance(files, dict) or not {"train", "test"} <= set(files)
                              or not set(files) <= {"train", "val", "test"}):
        c.error("data.split_files", f"{show(files)} is not a mapping of train, test and "
                                    "optionally val to files listing <class>/<image> paths")
    elif files is not None and root is not None:
        for k, f in files.items():
            path = Path(str(f)).expanduser()
            if not (path if path.is_absolute() else Path(str(root)).expanduser() / path
                    ).is_file():
                c.error(f"data.split_files.{k}", f"{show(f)} is not a file (relative paths "
                                                 "are under data.root)")
    if root is None:
        if datasets.needs_root(name):
            c.error("data.root", f"dataset {name!r} needs a root directory; set data.root")
        return name, kw
    path = c.path("data.root", root, "a directory")
    if path is None:
        return name, kw
    if probe(path) is not None:
        kw["root"] = str(path.resolve())
    elif download or not datasets.needs_root(name):
        kw["root"] = str(path.absolute())
    else:
        c.error("data.root", f"{show(root)} does not exist; put the {name} files there, or "
                             "set data.download: true on a machine with internet")
    return name, kw


def _dataset_kwargs(name: str) -> list[str]:
    """The settings a spec may give a dataset: its own options and load()'s (bar the
    device budget, which the trial sets)."""
    common = [k for k in datasets.LOAD_OPTIONS if k != "max_device_bytes"]
    return [*common, *datasets.dataset_options(name)]


IMPORT_KEYS = ("import", "kwargs", "weights")  # model: {import: "pkg.mod:factory", ...}


def check_model(c: Checker, value: Any) -> tuple[str, dict]:
    """A registry name with its settings, ``torchvision:``/``timm:`` names, or
    ``{import: "pkg.mod:factory", kwargs: {...}, weights: file}``."""
    if isinstance(value, dict) and "import" in value:
        return check_import_model(c, value)
    name, kw = named(c, "model", value)
    if name is None:
        return "vgg11", {}
    if isinstance(name, str) and models.model_source(name) is not None:
        check_weights(c, kw)
        if check_free_numbers(c, "model.", kw):
            check_built(c, name, kw, "model.name", "model.")
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
    check_weights(c, kw)
    if "width" in kw:
        kw["width"] = c.number("model.width", kw["width"], 0, 4, low_open=True)
    for k, v in kw.items():  # a registry model's other settings are numbers (c3's k)
        if k not in ("width", "weights"):
            c.numeric(f"model.{k}", v, "a number")
    return name, kw


def check_free_numbers(c: Checker, prefix: str, kw: dict) -> bool:
    """The numbers among settings passed on unchecked (a torchvision or imported model's
    arguments), at any depth, through :meth:`Checker.numeric`; False if one is refused."""
    def walk(where: str, v: Any) -> bool:
        if isinstance(v, dict):
            return all([walk(f"{where}.{k}", x) for k, x in v.items()])
        if isinstance(v, list | tuple):
            return all([walk(f"{where}[{i}]", x) for i, x in enumerate(v)])
        if _is_number(v):
            return c.numeric(where, v, "a finite number") is not None
        return True

    return all([walk(f"{prefix}{k}", v) for k, v in kw.items() if k != "weights"])


def check_weights(c: Checker, kw: dict) -> None:
    """An existing local file, made absolute in ``kw`` (dropped from ``kw`` if it is not)."""
    weights = kw.get("weights")
    if weights is None:
        return
    path = c.path("model.weights", weights, "a weights file")
    if path is None:
        kw.pop("weights")
    elif probe(path) != "file":
        c.error("model.weights", f"{show(weights)} is not a file; give the path of a local "
                                 "weights file (nothing is downloaded at run time)")
        kw.pop("weights")
    else:
        kw["weights"] = str(path.resolve())


def check_import_model(c: Checker, value: dict) -> tuple[str, dict]:
    """``model: {import: module:callable}``: importable from the study's directory, with its
    arguments."""
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
    kw = {str(k): maybe_number(v) for k, v in kwargs.items()}
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
        check_weights(c, kw)
    if check_free_numbers(c, "model.kwargs.", kw):
        check_built(c, name, kw, "model.import", "model.kwargs.")
    return name, kw


def check_built(c: Checker, name: str, kw: dict, where: str, key_prefix: str) -> None:
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


def check_train(c: Checker, where: str, value: Any) -> dict:
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
        v = [maybe_number(x) for x in v] if isinstance(v, list) else maybe_number(v)
        # 10**400 would make TrainConfig's own checks raise, not refuse
        if not all(c.numeric(f"{where}.{k}", x, "a finite number") is not None
                   for x in (v if isinstance(v, list) else [v]) if _is_number(x)):
            continue
        if k in _INT_SETTINGS and isinstance(v, float) and v.is_integer():
            v = int(v)  # epochs: 1e2
        try:
            TrainConfig.from_dict({k: v})
        except (ValueError, TypeError) as e:
            c.error(f"{where}.{k}", f"{show(v)} is not valid ({e})")
            continue
        out[k] = v
    return out


_INT_SETTINGS = ("epochs", "batch_size", "patience", "seed")


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)
_COMPATIBLE: dict[tuple, list[str]] = {}  # checks already made in this process


def check_compatible(c: Checker, model_name: str, model_kw: dict, data_name: str,
                      data_kw: dict, chains: tuple[tuple, ...]) -> None:
    """Build the model once and ask each method whether it has anything to act on."""
    shape = _input_shape(data_name, data_kw)
    key = (model_name, repr(sorted(model_kw.items())), shape, repr(chains))
    if key not in _COMPATIBLE:
        kw = {k: v for k, v in model_kw.items() if k != "weights"}
        try:
            model = models.build(model_name, num_classes=10, **kw)
        except Exception as e:  # reported by check_model already where it can be
            _COMPATIBLE[key] = [f"building the model failed: {type(e).__name__}: {e}"]
        else:
            _COMPATIBLE[key] = [line for chain in chains for line in
                                incompatibilities(parse_chain(list(chain)), model, shape,
                                                  model_name)]
    for line in dict.fromkeys(_COMPATIBLE[key]):
        c.error("methods", line)


_ALLOCATED: dict[tuple, dict | str] = {}  # generated parameters already found


def check_allocation(c: Checker, model_name: str, model_kw: dict, data_name: str,
                     data_kw: dict, chains: tuple[tuple, ...], space: dict[str, ParamSpace]
                     ) -> dict[str, ParamSpace]:
    """The space with the ``ratio@<module>`` parameters of every stage whose allocation is
    per_stage or per_group (:mod:`prune_core.methods._allocation`), generated from the
    built model. One the spec does not name takes the space entry of the method's own
    ratio, else that ratio's declared search range; the method's own ratio, which no
    longer acts, leaves the space."""
    from prune_core.methods._allocation import GENERATED, generated_params

    shape = _input_shape(data_name, data_kw)
    kw = {k: v for k, v in model_kw.items() if k != "weights"}
    out = dict(space)
    for stage, method in _stage_methods(chains).items():
        if method.allocation is None:
            continue
        given = [k for k, p in space.items()
                 if p.stage == stage and k.partition(".")[2].startswith(GENERATED_PREFIX)]
        entry = space.get(f"{stage}.allocation")
        how = method.param("allocation").default if entry is None else entry.value
        if entry is not None and entry.kind != "fixed":
            drawn = [v for v in entry.choices if v in GENERATED]
            if drawn:
                c.error(f"space.{stage}.allocation",
                        f"{list(entry.choices)} includes {drawn[0]!r}, whose ratio@ parameters "
                        "exist only under it; fix the allocation to search per-stage or "
                        "per-group ratios (global and uniform can be searched together)")
            how = None
        if how not in GENERATED:
            if given:
                c.error(f"space.{given[0]}", "ratio@ parameters apply with allocation "
                        f"per_stage or per_group; {stage}.allocation is "
                        f"{'searched' if how is None else repr(how)}")
            continue
        key = (model_name, repr(sorted(kw.items())), shape, method.name, how)
        if key not in _ALLOCATED:
            try:
                model = models.build(model_name, num_classes=10, **kw)
                _ALLOCATED[key] = {p.name: p for p in generated_params(model, shape, method,
                                                                       how)}
            except Exception as e:  # the compatibility check names a model it cannot trace
                _ALLOCATED[key] = f"{type(e).__name__}: {e}"
        found = _ALLOCATED[key]
        if isinstance(found, str):
            c.error(f"space.{stage}.allocation", f"{how}: finding the model's groups failed "
                                                 f"({found})")
            continue
        names = [n.removeprefix(GENERATED_PREFIX) for n in found]
        for k in given:
            if k.partition(".")[2] not in found:
                c.error(f"space.{k}", f"model {model_name!r} has no "
                        f"{how.removeprefix('per_')} named {k.partition('@')[2]!r}; its "
                        f"names under {how}: {', '.join(names)}")
        base = out.pop(f"{stage}.{method.allocation.ratio}", None)
        for name, param in found.items():  # in the model's forward order
            k = f"{stage}.{name}"
            out[k] = out.pop(k) if k in space else replace(base, name=k) if base is not None \
                else check_param_space(c, f"space.{k}", k, param, None)
    return out


def check_sensitivity_start(c: Checker, space: dict[str, ParamSpace],
                            chains: tuple[tuple, ...]) -> None:
    """``warm_start: sensitivity`` needs one chain, with a stage whose method a scan covers
    and whose allocation generates ratios to enqueue."""
    from prune_core.methods._allocation import GENERATED
    from prune_core.sensitivity import RANKING

    if len(chains) > 1:
        c.error("warm_start", "sensitivity: the allocations start one chain; give methods "
                              "one chain, not a choice")
        return
    for stage, method in _stage_methods(chains).items():
        entry = space.get(f"{stage}.allocation")
        if method.name in RANKING and entry is not None and entry.kind == "fixed" \
                and entry.value in GENERATED:
            return
    c.error("warm_start", "sensitivity enqueues per-stage or per-group ratios; set "
                          "<stage>.allocation: per_stage or per_group for a stage of "
                          f"{', '.join(sorted(RANKING))}")


_REHEARSED: dict[tuple, str | None] = {}  # rehearsals already made in this process


def check_rehearsal(c: Checker, model_name: str, model_kw: dict, data_name: str,
                    data_kw: dict, chains: tuple[tuple, ...], space: dict[str, ParamSpace]
                    ) -> None:
    """Rehearse each chain on the model at the corners of its space
    (:func:`prune_core.rehearsal.rehearse`): a pair that fails there fails every trial."""
    from prune_core.rehearsal import rehearse

    shape = _input_shape(data_name, data_kw)
    kw = {k: v for k, v in model_kw.items() if k != "weights"}
    for chain in chains:
        stages = parse_chain(list(chain))
        points = rehearsal_points(space, [s.name for s in stages])
        key = (model_name, repr(sorted(kw.items())), shape, chain, repr(points))
        if key not in _REHEARSED:
            failure = rehearse(lambda: models.build(model_name, num_classes=10, **kw), stages,
                               points, shape)
            _REHEARSED[key] = None if failure is None else str(failure)
        if _REHEARSED[key] is not None:
            c.error("methods", f"{chain_name(stages)} cannot run on model {model_name!r}: "
                               f"rehearsed on random images, {_REHEARSED[key]}; choose "
                               "another method or model, or narrow the space")


def rehearsal_points(space: dict[str, ParamSpace], stages: list[str]) -> list[dict]:
    """Corners of the stages' space: the first takes every range's high end and each
    parameter's first choice, the next the low ends and second choices, and so on until
    every choice is taken (at least 2 points, at most ``rehearsal.MAX_POINTS``)."""
    from prune_core.rehearsal import MAX_POINTS

    options = {k: _corners(p) for k, p in space.items() if p.stage in stages}
    n = min(MAX_POINTS, max([2, *map(len, options.values())]))
    return [{k: v[i % len(v)] for k, v in options.items()} for i in range(n)]


def _corners(p: ParamSpace) -> list:
    """A range's ends, high first; a choice's values in order; a fixed value."""
    ends = _extremes(p)
    return ends[::-1] if p.kind in ("int", "float") else ends


def _input_shape(data_name: str, data_kw: dict) -> tuple[int, int, int]:
    size = data_kw.get("image_size", datasets.dataset_options(data_name).get("image_size", 32))
    return (3, int(size), int(size))


def check_methods(c: Checker, value: Any) -> tuple[tuple, ...]:
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


def _stage_methods(chains: tuple[tuple, ...]) -> dict[str, Method]:
    out: dict[str, Method] = {}
    for chain in chains:
        for s in parse_chain(list(chain)):
            out.setdefault(s.name, s.method)
    return out


def check_space(c: Checker, value: Any, chains: tuple[tuple, ...]) -> dict[str, ParamSpace]:
    """``space``: every entry names a stage's declared parameter with a range inside its domain."""
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
        ps = check_param_space(c, where, f"{stage}.{pname}", param, spec)
        if ps is not None:
            out[key] = ps
    return out


def check_param_space(c: Checker, where: str, name: str, param: Param, spec: Any
                       ) -> ParamSpace | None:
    """One ``space`` entry: a fixed value, choices, or a range inside the parameter's domain."""
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
        value = spec
        if param.kind in ("float", "int"):
            value = c.numeric(where, spec, domain)
            if value is None:
                return None
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
        return check_choices(c, where, name, param, spec, domain)
    if kind == "float" and param.kind == "int":
        c.error(f"{where}.type", f"float does not fit {name}, which is an integer")
        return None
    bad = False
    bounds = {}
    for end in ("low", "high"):
        v = spec.get(end)
        if v is None:
            c.error(f"{where}.{end}", f"missing; a {kind} range needs low and high")
            bad = True
        elif (v := c.numeric(f"{where}.{end}", v, domain)) is None:
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
    step = spec.get("step")
    allowed = f"{'an integer' if kind == 'int' else 'a number'} > 0"
    if step is not None and (step := c.numeric(f"{where}.step", step, allowed)) is None:
        bad = True
    elif step is not None and (step <= 0 or (kind == "int" and not float(step).is_integer())):
        c.error(f"{where}.step", f"{show(step)} is not valid; allowed: {allowed}")
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


def check_choices(c: Checker, where: str, name: str, param: Param, spec: dict,
                   domain: str) -> ParamSpace | None:
    """``choices`` of one parameter: a non-empty list of values inside its domain."""
    choices = spec.get("choices")
    if choices is None and param.kind == "bool":
        choices = [True, False]
    if not isinstance(choices, list) or not choices:
        c.error(f"{where}.choices", f"{choices!r} is not valid; allowed: a non-empty list of "
                                    f"values from {domain}")
        return None
    out = []
    for i, v in enumerate(choices):
        if param.kind in ("float", "int") and \
                (v := c.numeric(f"{where}.choices[{i}]", v, domain)) is None:
            continue
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


