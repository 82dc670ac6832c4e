"""Every registered method: a well-formed parameter table, clear errors for bad values, and
one cheap end-to-end trial. New methods are picked up through ``list_methods()``."""

from __future__ import annotations

import math

import pytest

from prune_core.baseline import get_base
from prune_core.methods import (
    KINDS,
    Param,
    ParamError,
    get_method,
    list_methods,
    parse_chain,
    split_params,
)
from prune_core.trial import TrialSpec, load_data, run_trial

METHODS = list_methods()
# A small model trained briefly: each method runs once on it, so keep it cheap.
TINY = TrialSpec(model="vgg11", model_kw={"width": 0.125}, data="digits",
                 baseline={"epochs": 2, "lr": 0.05}, finetune={"epochs": 1})


def _params(name: str) -> list[tuple[str, Param]]:
    return [(name, p) for p in get_method(name).params]


ALL_PARAMS = [pair for name in METHODS for pair in _params(name)]


def _bad_value(p: Param):
    """A value just outside the declared domain."""
    if p.kind == "bool":
        return "yes"
    if p.kind == "categorical":
        return "__not_a_choice__"
    if p.low is not None:
        return p.low if p.low_open else p.low - 1
    if p.high is not None:
        return p.high if p.high_open else p.high + 1
    return "not a number"


def test_methods_are_registered():
    assert {"none", "slimming", "magnitude", "factorize", "quantize"} <= set(METHODS)


@pytest.mark.parametrize("name", METHODS)
def test_method_has_doc_and_unique_params(name):
    method = get_method(name)
    assert method.doc.strip()
    names = [p.name for p in method.params]
    assert len(names) == len(set(names))


@pytest.mark.parametrize(("name", "p"), ALL_PARAMS,
                         ids=[f"{n}.{p.name}" for n, p in ALL_PARAMS])
def test_param_is_well_formed(name, p):
    assert p.kind in KINDS and p.doc.strip()
    assert p.contains(p.default), f"{name}.{p.name} default {p.default!r} outside {p.domain()}"
    assert p.search, f"{name}.{p.name} declares no search range"
    if p.kind in ("categorical", "bool"):
        assert p.search.get("choices"), p.search
        for c in p.search["choices"]:
            assert p.contains(c), f"{name}.{p.name} search choice {c!r} outside {p.domain()}"
    else:
        lo, hi = p.search["low"], p.search["high"]
        assert lo <= hi and p.contains(lo) and p.contains(hi), (p.search, p.domain())
        if p.search.get("log"):
            assert lo > 0
        if p.kind == "int":
            assert float(lo).is_integer() and float(hi).is_integer()


@pytest.mark.parametrize(("name", "p"), ALL_PARAMS,
                         ids=[f"{n}.{p.name}" for n, p in ALL_PARAMS])
def test_value_outside_domain_is_named(name, p):
    stages = parse_chain(name)
    bad = _bad_value(p)
    with pytest.raises(ParamError) as err:
        split_params(stages, {f"{name}.{p.name}": bad})
    msg = str(err.value)
    assert f"{name}.{p.name}" in msg and repr(bad) in msg and p.domain() in msg


@pytest.mark.parametrize("name", METHODS)
def test_unknown_parameter_and_stage_are_named(name):
    stages = parse_chain(name)
    with pytest.raises(ParamError, match=rf"{name}\.no_such_param = 1\b") as err:
        split_params(stages, {f"{name}.no_such_param": 1})
    if get_method(name).params:
        assert get_method(name).params[0].name in str(err.value)  # lists the valid ones
    with pytest.raises(ParamError, match=rf"'nostage\.x'.*stages of this chain: {name}"):
        split_params(stages, {"nostage.x": 1})


def test_search_ranges_reach_the_extremes():
    """Fronts on digits need high compression; slimming's lambda must span digits' scale."""
    assert get_method("slimming").param("prune_ratio").search["high"] >= 0.95
    assert get_method("magnitude").param("ratio").search["high"] >= 0.95
    lam = get_method("slimming").param("lambda")
    assert lam.contains(0.0) and not lam.contains(-1e-3)
    assert lam.search["low"] <= 1e-4 and lam.search["high"] >= 5e-2 and lam.search["log"]
    for method, name in [("slimming", "prune_ratio"), ("magnitude", "ratio")]:
        p = get_method(method).param(name)
        assert p.contains(0.0) and not p.contains(1.0) and p.contains(0.95)


# Constraints between parameters that the smallest values would break.
CHEAP_OVERRIDES = {"repr": {"repr.epochs": 2}}  # repr: epochs >= cycles * (s1 + s2)


def _cheap(name: str) -> dict:
    """Every count-like integer parameter at its smallest positive allowed value."""
    out = {}
    for p in get_method(name).params:
        if p.kind == "int":
            floor = max(1, math.ceil(p.low)) if p.low is not None else 1
            out[f"{name}.{p.name}"] = min(p.default, floor)
    return {**out, **CHEAP_OVERRIDES.get(name, {})}


@pytest.fixture(scope="module")
def tiny_base(test_cache):
    base, _ = get_base(TINY.base_spec(), load_data(TINY), test_cache, log=lambda _m: None)
    return base


@pytest.mark.parametrize("name", METHODS)
def test_method_runs_end_to_end(name, tiny_base):
    rows: list[dict] = []
    spec = TrialSpec(**{**TINY.to_dict(), "methods": name})
    row = run_trial({"study": spec, "params": _cheap(name)},
                    lambda m, _c=None: rows.append(m), base=tiny_base)
    assert row["status"] == "ok" and row["method"] == name
    assert 0.0 <= row["accuracy"] <= 1.0
    assert 0 < row["params"] and 0 < row["macs"] and 0 < row["size_bytes"]
    assert rows[-1].get("final") is True
