"""Mistaken and mutated specs: `validate` refuses with exit 2 naming the field, never a
traceback; what it accepts runs; every shipped spec's space draws only runnable points."""

from __future__ import annotations

import copy
import math
import warnings
from pathlib import Path

import optuna
import pytest
import yaml
from hypothesis import HealthCheck, given, settings

from benchmarks.reliability_specs import BAD_SPECS, BASE, fuzz_specs, spec_text
from prune_core.methods import parse_chain
from prune_core.trial import run_trial
from studies import cli
from studies.space import SearchSpace
from studies.spec import load_spec, parse_spec
from tests.conftest import ROOT

SPECS = sorted((ROOT / "studies" / "specs").glob("*.yaml"))


def _validate(tmp: Path, text: bytes, capfd) -> tuple[int, str]:
    path = tmp / "spec.yaml"
    path.write_bytes(text)
    rc = cli.main(["validate", str(path)])
    out, err = capfd.readouterr()
    return rc, out + err


def test_base_spec_is_valid(tmp_path, capfd):
    assert _validate(tmp_path, spec_text_of(BASE), capfd)[0] == 0


def spec_text_of(spec: dict) -> bytes:
    return yaml.safe_dump(spec, sort_keys=False, allow_unicode=True).encode()


@pytest.mark.parametrize("kind", list(BAD_SPECS))
def test_mistake_is_refused_naming_the_field(kind, tmp_path, capfd):
    rc, text = _validate(tmp_path, spec_text(kind), capfd)
    assert "Traceback" not in text
    assert rc == 2, text
    assert BAD_SPECS[kind].field in text, text


def test_catalogue_is_broad():
    assert len(BAD_SPECS) >= 80
    assert len({b.field for b in BAD_SPECS.values()}) >= 60


def test_errors_show_long_values_shortly(tmp_path, capfd):
    _, text = _validate(tmp_path, spec_text("trials a 400-digit integer"), capfd)
    assert "an integer of 401 digits" in text and "0" * 100 not in text


def test_password_never_echoed(tmp_path, capfd):
    spec = {**BASE, "optuna_storage": "postgresql+psycopg://me:hunter2@localhost/db"}
    rc, text = _validate(tmp_path, spec_text_of(spec), capfd)
    assert rc == 2 and "hunter2" not in text and "PGPASSWORD" in text


def test_integral_floats_are_integers():
    spec = parse_spec({**BASE, "trials": 1e2, "baseline": {"epochs": 2e0, "lr": "5e-2"}})
    assert spec.trials == 100 and isinstance(spec.trials, int)
    assert spec.baseline == {"epochs": 2, "lr": 0.05} and isinstance(spec.baseline["epochs"], int)


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(spec=fuzz_specs())
def test_mutated_specs_are_accepted_or_refused_never_crash(spec, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    path = tmp / "spec.yaml"
    path.write_bytes(spec_text_of(spec))
    rc = cli.main(["validate", "--json", str(path)])
    assert rc in (0, 2)


def _tiny(spec: dict) -> dict:
    """The mutant with every epoch count at 1, so that a trial of it takes seconds."""
    spec = copy.deepcopy(spec)
    for section in ("baseline", "finetune"):
        if isinstance(spec.get(section), dict):
            spec[section]["epochs"] = 1
    for key in list(spec.get("space") or {}):
        if isinstance(key, str) and key.endswith("epochs"):
            spec["space"][key] = 1
    return spec


def test_accepted_mutants_run_a_tiny_trial(test_cache, tmp_path):
    ran: list[dict] = []

    @settings(max_examples=60, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(spec=fuzz_specs(bases=2))
    def run_one(spec):
        if len(ran) >= 3:
            return
        try:
            parsed = parse_spec({**_tiny(spec), "storage": str(tmp_path)})
        except ValueError:
            return
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=len(ran)))
        trial = study.ask()
        params = {**trial.params, **SearchSpace(parsed)(trial)}
        row = run_trial({"study": parsed.trial_spec().to_dict(), "params": params},
                        lambda _m, _ck=None: None, log=lambda _m: None)
        assert row["status"] == "ok" and math.isfinite(row["accuracy"]), (spec, row)
        ran.append(spec)

    run_one()
    assert ran, "no mutant was accepted: the fuzzing mutates too coarsely to test this"


def _runnable(path: Path, tmp: Path) -> dict:
    """A shipped spec with its placeholder paths pointed at files that exist here."""
    raw = yaml.safe_load(path.read_text())
    if isinstance(raw.get("data"), dict) and "root" in raw["data"]:
        raw["data"]["root"] = str(tmp)
    if isinstance(raw.get("model"), dict) and "weights" in raw["model"]:
        raw["model"] = {k: v for k, v in raw["model"].items() if k != "weights"}
    return raw


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_shipped_space_draws_only_runnable_points(path, tmp_path):
    # The space's points, not the model: test_spec.py rehearses the shipped specs.
    spec = parse_spec(_runnable(path, tmp_path), source=str(path), rehearse=False)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    space = SearchSpace(spec)
    for _ in range(200):
        trial = study.ask()
        params = {**trial.params, **space(trial)}
        chain = params.get("pipeline", spec.chain_names[0])
        for stage in parse_chain(chain):
            mine = {k.partition(".")[2]: v for k, v in params.items()
                    if k.startswith(f"{stage.name}.")}
            stage.method.resolve(mine, stage.name)  # raises ParamError naming the value
        study.tell(trial, 0.0)


def test_shipped_specs_validate_as_shipped_or_name_their_placeholders(tmp_path):
    for path in SPECS:
        text = path.read_text()
        try:
            load_spec(path)
        except ValueError as e:
            # Specs for a GPU machine name data and weights there; only those may fail here.
            assert "PLACEHOLDER" in text, (path, e)
            assert all(line.split(":")[0].strip("- ") in ("data.root", "model.weights")
                       for line in e.errors), e.errors


def test_duplicate_key_names_both_lines(tmp_path, capfd):
    with warnings.catch_warnings():
        rc, text = _validate(tmp_path, spec_text("duplicate top-level key"), capfd)
    assert rc == 2 and "given twice" in text and "lines 1 and" in text
