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
