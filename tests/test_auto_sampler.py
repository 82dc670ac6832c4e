"""``sampler: auto``: which sampler a spec's space gets, and the switch from GP to NSGA-II
past GP_MAX_TRIALS, which keeps each trial with one sampler and pickles as Tune needs."""

from __future__ import annotations

import pickle
from pathlib import Path

import cloudpickle
import optuna
import pytest
from optuna.trial import TrialState

from studies.cli import EXIT_BAD_INPUT, EXIT_OK, main
from studies.samplers import GP_MAX_TRIALS, Switching, auto_choice, make_sampler, picklable
from studies.spec import SpecError, parse_spec
from tests.test_runner import tiny_spec

CONTINUOUS = {"none.finetune_epochs": 1, "none.lr": {"low": 1e-4, "high": 1e-2, "log": True}}


def _spec(**kw):
    return parse_spec(tiny_spec("auto", Path("/nonexistent"), sampler="auto",
                                **{"space": CONTINUOUS, **kw}))


@pytest.mark.parametrize("kw, choice, why", [
    ({}, "gp", "a continuous space"),
    ({"space": {**CONTINUOUS, "none.finetune_epochs": {"choices": [1, 2]}}}, "tpe",
     "categorical parameters (none.finetune_epochs)"),
    ({"methods": {"choice": ["none", "slimming"]}, "space": {}}, "tpe",
     "the space is conditional"),
    ({"objectives": {"accuracy": "max", "params": "min", "macs": "min", "size_bytes": "min"}},
     "tpe", "4 objectives, more than GP's 3"),
    ({"trials": GP_MAX_TRIALS + 100}, "gp+nsga2", f"GP for the first {GP_MAX_TRIALS}"),
])
def test_auto_picks_by_the_space_the_objectives_and_the_budget(kw, choice, why):
    spec = _spec(**kw)
    picked, reason = auto_choice(spec)
    assert picked == choice and why in reason
    sampler = make_sampler(spec)
    expected = {"gp": optuna.samplers.GPSampler, "tpe": optuna.samplers.TPESampler,
                "gp+nsga2": Switching}[choice]
    assert type(sampler) is expected


def test_the_switch_keeps_each_trial_with_one_sampler_and_survives_pickling():
    first = optuna.samplers.GPSampler(seed=0, n_startup_trials=2)
    second = optuna.samplers.NSGAIISampler(seed=0, population_size=4)
    sampler = pickle.loads(cloudpickle.dumps(picklable(Switching(first, second, 5))))
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    study.optimize(lambda t: (t.suggest_float("x", 0, 1), t.suggest_float("y", 0, 1)),
                   n_trials=9)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 9
    bred = [t.number for t in study.trials if "NSGAIISampler:generation" in t.system_attrs]
    assert bred == [5, 6, 7, 8]
    # the long budget's switch is built from the spec, NSGA-II sized by the trials left
    long = make_sampler(_spec(trials=GP_MAX_TRIALS + 90))
    assert long.after == GP_MAX_TRIALS and long.second._population_size == 30
    pickle.loads(cloudpickle.dumps(long))


def test_auto_takes_no_options_and_validate_says_what_it_picked(tmp_path, capsys):
    import yaml

    with pytest.raises(SpecError, match=r"sampler.options: auto takes no options"):
        parse_spec(tiny_spec("auto", tmp_path, space=CONTINUOUS,
                             sampler={"name": "auto", "options": {"n_startup_trials": 2}}))
    path = tmp_path / "auto.yaml"
    path.write_text(yaml.safe_dump(tiny_spec("auto", tmp_path, space=CONTINUOUS,
                                             sampler="auto")))
    assert main(["validate", str(path)]) == EXIT_OK
    assert "auto (gp: a continuous space) sampler" in capsys.readouterr().out
    path.write_text(yaml.safe_dump(tiny_spec("auto", tmp_path, space=CONTINUOUS,
                                             sampler="anneal")))
    assert main(["validate", str(path)]) == EXIT_BAD_INPUT
    assert "allowed: tpe, nsga2, gp, random, auto" in capsys.readouterr().err
