"""``sampler: auto``: which sampler a spec's space gets, and the switch from GP to NSGA-II
past GP_MAX_TRIALS, which keeps each trial with one sampler and pickles as Tune needs;
``sampler: grid`` and ``enqueue``, checked at validate (their studies run in
tests/test_sampler_studies.py)."""

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
    return parse_spec(tiny_spec("auto", Path("/nonexistent"),
                                **{"sampler": "auto", "space": CONTINUOUS, **kw}))


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


GRID = {"none.finetune_epochs": {"choices": [0, 1]}, "none.lr": {"choices": [1e-3, 1e-2, 0.1]}}


@pytest.mark.parametrize("kw, errors", [
    ({"trials": 4}, ["trials: 4, but the grid over none.finetune_epochs (2) x none.lr (3) has "
                     "6 points; set trials: 6"]),
    ({"space": {"none.finetune_epochs": 1, "none.lr": {"low": 1e-3, "high": 0.1}}},
     ["space.none.lr: a grid needs listed values"]),
    ({"methods": {"choice": ["none", "slimming"]}, "space": {}}, ["methods: a grid runs one "
                                                                   "chain"]),
    ({"enqueue": [{"none.lr": 0.1}]}, ["enqueue: the grid runs every combination already"]),
])
def test_a_grid_is_listed_values_of_one_chain_run_once_each(kw, errors):
    raw = tiny_spec("grid", Path("/nonexistent"), sampler="grid", space=GRID)
    raw.pop("trials")
    spec = parse_spec(raw)  # trials left out: one per combination
    assert spec.trials == 6 and make_sampler(spec)._search_space == {
        "none.finetune_epochs": [0, 1], "none.lr": [1e-3, 1e-2, 0.1]}
    with pytest.raises(SpecError) as e:
        parse_spec({**raw, **kw})
    assert [m for m in e.value.errors if any(m.startswith(x) for x in errors)], e.value.errors


def test_enqueued_points_are_checked_against_the_space():
    space = {"none.finetune_epochs": 1, "none.lr": {"low": 1e-3, "high": 0.1}}
    spec = _spec(space=space, sampler="tpe", enqueue=[{"none.lr": 0.01}, {}])
    assert spec.enqueue == [{"none.lr": 0.01}, {}]
    with pytest.raises(SpecError) as e:
        _spec(space=space, sampler="tpe", enqueue=[
            {"none.lr": 5.0}, {"none.finetune_epochs": 2}, {"x.y": 1}, {"none.lr": True}])
    assert e.value.errors == [
        "enqueue[0].none.lr: 5.0 is outside the space; allowed: float in [0.001, 0.1]",
        "enqueue[1].none.finetune_epochs: is fixed in the space; leave it out",
        "enqueue[2].x.y: not a searched parameter; searched: none.lr",
        "enqueue[3].none.lr: True is outside the space; allowed: float in [0.001, 0.1]"]
    with pytest.raises(SpecError, match=r"enqueue: 'abc' is not a list of points"):
        _spec(enqueue="abc")
