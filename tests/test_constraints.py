"""A study's constraints: one rule for the sampler, the recorder and the results."""

from __future__ import annotations

import json
import math

import optuna
import pandas as pd
import pytest
import yaml

from analysis import results
from analysis.constraints import Bounds
from studies.cli import EXIT_OK, main

optuna.logging.set_verbosity(optuna.logging.WARNING)

BOUNDS = {"accuracy_drop": {"max": 0.02}, "macs": {"min": 10.0, "max": 100.0}}


def test_constraints_give_one_violation_per_bound_and_name_the_broken_ones():
    c = Bounds(BOUNDS)
    assert c.names() == ["accuracy_drop.max", "macs.min", "macs.max"]
    assert c.violations({"accuracy_drop": 0.05, "macs": 5}) == pytest.approx([0.03, 5.0, -95.0])
    assert c.broken({"accuracy_drop": 0.01, "macs": 50}) == []
    assert c.broken({"accuracy_drop": 0.02, "macs": 100}) == []  # a bound is inclusive
    assert c.broken({"accuracy_drop": 0.05, "macs": 5}) == ["accuracy_drop <= 0.02",
                                                          "macs >= 10"]
    assert c.violations(None) == [1.0, 1.0, 1.0]  # a trial without a row is infeasible
    assert c.broken({"accuracy_drop": float("nan"), "macs": True}) == [
        "accuracy_drop missing", "macs missing"]


def test_told_constraints_steer_the_sampler_into_the_feasible_region():
    c = Bounds({"speedup": {"max": 0.3}})
    late = {}
    for constrained in (False, True):
        study = optuna.create_study(
            direction="maximize", sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=8))
        for _ in range(40):
            trial = study.ask()
            x = trial.suggest_float("x", 0.0, 1.0)
            if constrained:
                c.tell(trial, {"speedup": x})
            study.tell(trial, x)
        late[constrained] = [t.params["x"] for t in study.trials[20:]]
    assert sum(x <= 0.35 for x in late[True]) >= 10
    assert sum(x <= 0.35 for x in late[False]) <= 5


ROWS = [  # (status, accuracy_drop, macs)
    ("ok", 0.01, 50), ("ok", 0.02, 100), ("ok", 0.03, 50), ("ok", 0.01, 5), ("ok", 0.5, 500),
    ("ok", None, 50), ("ok", math.nan, 50), ("ok", 0.01, math.inf), ("failed", None, None),
    ("stopped", 0.9, 1),
]


def test_the_results_judge_each_finished_trial_as_the_sampler_and_the_recorder_do():
    df = pd.DataFrame([{"status": s, "accuracy_drop": a, "macs": m} for s, a, m in ROWS])
    feasible, violated = results._feasibility(df, BOUNDS)
    rule = Bounds(BOUNDS)
    for (status, a, m), ok, text in zip(ROWS, feasible, violated, strict=True):
        row = {"accuracy_drop": a, "macs": m}
        if status != "ok":  # judged only once finished
            assert ok and text is None
            continue
        assert ok == (not rule.broken(row)) == all(v <= 0 for v in rule.violations(row))
        assert text == (", ".join(rule.broken(row)) or None)
    assert violated[4] == "accuracy_drop <= 0.02, macs <= 100"
    assert violated[5] == violated[6] == "accuracy_drop missing"


def _spec(tmp_path, sampler: str):
    path = tmp_path / f"{sampler}.yaml"
    path.write_text(yaml.safe_dump({
        "name": "c", "data": "digits", "model": {"name": "vgg11", "width": 0.25},
        "methods": "none", "space": {"none.finetune_epochs": {"low": 0, "high": 2}},
        "objectives": {"accuracy": "max", "macs": "min"}, "trials": 3, "sampler": sampler,
        "constraints": {"accuracy_drop": {"max": 0.02}}}))
    return path


@pytest.mark.parametrize("sampler, steers", [("tpe", True), ("auto", True),
                                             ("random", False)])
def test_validate_says_whether_the_sampler_steers_by_the_constraints(tmp_path, capsys,
                                                                    sampler, steers):
    assert main(["validate", str(_spec(tmp_path, sampler))]) == EXIT_OK
    line = next(x for x in capsys.readouterr().out.splitlines() if "constraints:" in x)
    assert "accuracy_drop <= 0.02" in line and "the front counts only trials within" in line
    assert ("steers toward them" in line) == steers
    assert ("does not steer by them" in line) == (not steers)
    assert main(["validate", str(_spec(tmp_path, sampler)), "--json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["constraints"] == line.split(": ", 1)[1]
