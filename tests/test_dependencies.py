"""The declared dependencies hold where the code leans on more than their public API.

``studies.search.StudySearch`` reads private attributes of Ray's ``OptunaSearch``, so
pyproject.toml pins Ray to the tested minor; a Ray that drops them must fail here, not in a
study.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import optuna
import ray
from optuna.trial import TrialState
from packaging.requirements import Requirement

from studies.search import StudySearch
from studies.space import SearchSpace, make_sampler
from studies.spec import objective_lists, parse_spec

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _requirements(group: str | None = None) -> dict[str, Requirement]:
    lines = PROJECT["dependencies"] if group is None else PROJECT["optional-dependencies"][group]
    return {r.name: r for r in map(Requirement, lines)}


def test_installed_ray_is_the_declared_tested_minor():
    tune = _requirements()["ray"]
    assert "tune" in tune.extras
    assert tune.specifier.contains(ray.__version__), (ray.__version__, str(tune.specifier))
    # An upper bound, so a newer Ray is refused at install rather than breaking a study.
    assert any(s.operator == "<" for s in tune.specifier)
    # The cluster's nodes install the same Ray as the driver.
    assert _requirements("cluster")["ray"].specifier == tune.specifier


def test_optuna_search_still_has_the_private_state_study_search_reads(tmp_path):
    spec = parse_spec({
        "name": "private-api", "methods": "none", "storage": str(tmp_path), "trials": 2,
        "space": {"none.lr": {"low": 1e-3, "high": 1e-2}},
        "objectives": {"accuracy": "max", "params": "min"}, "sampler": "random",
    })
    metrics, modes = objective_lists(spec)
    storage = optuna.storages.InMemoryStorage()
    search = StudySearch(space=SearchSpace(spec), metric=metrics, mode=modes,
                         sampler=make_sampler(spec), study_name=spec.name, storage=storage)
    for name in ("_ot_trials", "_ot_study", "_completed_trials"):
        assert hasattr(search, name), f"ray.tune.search.optuna.OptunaSearch lost {name}"
    assert isinstance(search._ot_study, optuna.Study)

    # Through them, each trial reaches Optuna once with its true state.
    first = search.suggest("a")
    second = search.suggest("b")
    assert (first["_number"], second["_number"]) == (0, 1)
    search.on_trial_complete("a", {"status": "ok", "final": True, "accuracy": 0.9,
                                   "params": 1000})
    search.on_trial_complete("a", {"status": "ok", "final": True, "accuracy": 0.1,
                                   "params": 1})
    search.on_trial_complete("b", {"status": "failed", "final": True})
    trials = optuna.load_study(study_name=spec.name, storage=storage).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL]
    assert trials[0].values == [0.9, 1000]


# --------------------------------------------------------------------------- the lock


def _lock_pins() -> dict[str, str]:
    from tools.lock_diff import pins

    return pins(ROOT / "requirements.lock")


def test_the_lock_satisfies_every_declared_range_and_pins_the_tested_torch():
    from importlib import metadata

    pins = _lock_pins()
    for group in (None, "test", "onnx"):
        for name, req in _requirements(group).items():
            key = name.lower().replace("_", "-")
            assert key in pins, f"{name} is declared but requirements.lock has no pin for it"
            assert req.specifier.contains(pins[key], prereleases=True), (name, pins[key])
    # make demo and make test install the lock: this venv is what it pins.
    for name in ("torch", "ray", "optuna", "torch-pruning", "torchao", "onnxruntime"):
        assert metadata.version(name).split("+")[0] == pins[name], name


def test_lock_diff_names_added_removed_and_moved_packages(tmp_path):
    from tools.lock_diff import diff, main, pins

    old = tmp_path / "old.lock"
    new = tmp_path / "new.lock"
    old.write_text("optuna==5.0.0\n    # via prune-study\nray==2.60.0\nsix==1.16.0\n")
    new.write_text("Optuna==5.1.0\nray==2.60.0\nTyping_Extensions==4.15.0  # via x\n")
    assert pins(new) == {"optuna": "5.1.0", "ray": "2.60.0", "typing-extensions": "4.15.0"}
    assert diff(pins(old), pins(new)) == [
        "  optuna 5.0.0 -> 5.1.0  <- minor", "- six 1.16.0", "+ typing-extensions 4.15.0"]
    assert main([str(old), str(old)]) == 0


def test_an_untested_version_is_named_on_one_line_with_the_install_that_fixes_it():
    from studies.versions import untested_versions, version_warning

    assert untested_versions() == []  # this venv is the lock's
    assert version_warning() is None
    line = version_warning({"optuna": "5.2.0", "torchao": "0.17.1"})
    assert line is not None and "\n" not in line and line.startswith("warning:")
    assert "optuna 5.2.0" in line and "torchao 0.17.1" in line and "ray" not in line
    assert "pip install 'optuna<5.2,>=5.0'" in line
    assert untested_versions(installed={"ray": "not-a-version"})[0][0] == "ray"


def test_run_warns_of_an_untested_version_before_anything_starts(tmp_path, monkeypatch, capsys):
    import yaml

    from studies import versions
    from studies.cli import main

    real = versions.metadata.version
    monkeypatch.setattr(versions.metadata, "version",
                        lambda name: "5.2.0" if name == "optuna" else real(name))
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"name": "v", "methods": "none", "trials": 1,
                                    "objectives": {"accuracy": "max", "params": "min"},
                                    "storage": str(tmp_path)}))
    # A cluster address nothing listens on: the run ends at its connect, after the check.
    assert main(["run", str(spec), "--address", "127.0.0.1:9"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("warning: untested versions installed: optuna 5.2.0"), err
    assert sum("untested versions" in line for line in err) == 1
