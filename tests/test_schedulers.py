"""mo_asha: successive halving on non-dominated rank, its spec checks and the cost columns
of the epoch rows it judges. A real study with it runs in test_runner.py."""

from __future__ import annotations

import json

import pytest
import torch
from ray.tune.schedulers import TrialScheduler

from prune_core import models
from prune_core.measure import count_cost
from prune_core.methods import Context
from prune_core.train import TrainConfig
from studies.schedulers import MOASHA, keeps, make_scheduler, nondominated_levels, stand_ins
from studies.spec import SpecError, parse_spec

STOP, GO = TrialScheduler.STOP, TrialScheduler.CONTINUE


def test_levels_follow_nondominated_sorting():
    # minimised (negated accuracy, MACs)
    pts = {"a": (-0.9, 10), "b": (-0.8, 20), "c": (-0.95, 30), "d": (-0.5, 40),
           "e": (-0.9, 10)}
    assert nondominated_levels(pts) == {"a": 0, "e": 0, "c": 0, "b": 1, "d": 2}


def test_front_trials_always_continue_and_dominated_ones_stop_outside_the_top_share():
    pts = {"a": (-0.9, 10), "c": (-0.95, 30), "b": (-0.8, 20), "d": (-0.5, 40)}
    assert keeps(pts, "a", 3) and keeps(pts, "c", 3)  # the front, whatever the share
    assert not keeps(pts, "b", 3) and not keeps(pts, "d", 3)  # top share is ceil(4/3) = 2
    # a halving share of 1 / 1.5 keeps ceil(4/1.5) = 3: b (level 1) now fits, d does not
    assert keeps(pts, "b", 1.5) and not keeps(pts, "d", 1.5)
    # d is dominated by three points, b by one: min_dominators=2 protects b only
    assert keeps(pts, "b", 3, min_dominators=2) and not keeps(pts, "d", 3, min_dominators=2)
    assert keeps({"x": (0.0, 0.0)}, "x", 3)  # alone on its rung


def test_stand_ins_turn_objectives_into_epoch_columns_with_their_direction():
    assert stand_ins({"accuracy": "max", "nonzero_macs": "min"}) == {
        "val_accuracy": "max", "nonzero_macs": "min"}
    # a drop falls as accuracy rises; a speed-up rises as MACs fall
    assert stand_ins({"accuracy_drop": "min", "speedup": "max", "latency_ms": "min"}) == {
        "val_accuracy": "max", "macs": "min"}
    assert stand_ins({"compression": "max"}) == {"params": "min"}


def test_each_trial_is_judged_once_per_rung_on_its_own_columns():
    s = MOASHA(columns={"val_accuracy": "max", "macs": "min"}, grace_period=2,
               reduction_factor=2, max_t=10)
    assert s.rungs == [2, 4, 8]
    row = {"val_accuracy": 0.9, "macs": 100}
    assert s.judge("a", 1, row) == GO and not any(s.recorded.values())  # below the first rung
    assert s.judge("a", 2, row) == GO and s.recorded[2] == {"a": (-0.9, 100.0)}
    assert s.judge("b", 2, {"val_accuracy": 0.8, "macs": 200}) == STOP
    assert s.judge("c", 2, {"val_accuracy": 0.95, "macs": 200}) == GO  # on the front
    # later epochs before the next rung leave the recorded point alone
    assert s.judge("a", 3, {"val_accuracy": 0.1, "macs": 100}) == GO
    assert s.recorded[2]["a"] == (-0.9, 100.0)
    # a trial jumping several rungs is judged at the highest one it reached
    assert s.judge("d", 9, {"val_accuracy": 0.5, "macs": 50}) == GO and "d" in s.recorded[8]
    assert "d" not in s.recorded[2]
    # rows without the columns (a checkpoint-only report) or final rows are not judged
    assert s.judge("e", 4, {"checkpoint": True}) == GO
    assert s.judge("e", 4, {"val_accuracy": float("nan"), "macs": 1}) == GO
    assert s.judge("e", 4, {"val_accuracy": 0.1, "macs": 10**9, "final": True}) == GO
    assert not s.recorded[4]


def test_a_restored_scheduler_reads_its_rungs_back_from_the_history(tmp_path):
    history = tmp_path / "history.jsonl"
    rows = [{"trial_id": "a", "step": 1, "epoch": 1, "val_accuracy": 0.9, "macs": 10},
            {"trial_id": "b", "step": 1, "epoch": 1, "val_accuracy": 0.95, "macs": 12}]
    history.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"trial_id": "c", "st')
    s = MOASHA(columns={"val_accuracy": "max", "macs": "min"}, history=history)
    s.on_trial_add(None, None)
    assert set(s.recorded[1]) == {"a", "b"}
    # a newcomer dominated by both recorded trials stops; one on the front goes on
    assert s.judge("c", 1, {"val_accuracy": 0.5, "macs": 20}) == STOP
    assert s.judge("d", 1, {"val_accuracy": 0.2, "macs": 2}) == GO


def _spec(**kw) -> dict:
    base = {"name": "s", "data": "digits", "model": {"name": "vgg11", "width": 0.25},
            "methods": "magnitude", "objectives": {"accuracy": "max", "nonzero_macs": "min"},
            "trials": 4}
    return {**base, **kw}


def _errors(raw: dict) -> list[str]:
    with pytest.raises(SpecError) as e:
        parse_spec(raw)
    return e.value.errors


def test_spec_takes_mo_asha_on_a_front_and_refuses_what_it_cannot_judge():
    spec = parse_spec(_spec(scheduler={"name": "mo_asha", "grace_period": 2,
                                       "reduction_factor": 2.5, "min_dominators": 2}))
    assert spec.scheduler == {"name": "mo_asha", "grace_period": 2, "reduction_factor": 2.5,
                              "min_dominators": 2}
    s = make_scheduler(spec.scheduler, spec.objectives)
    assert isinstance(s, MOASHA) and s.columns == {"val_accuracy": "max",
                                                   "nonzero_macs": "min"}
    assert (s.rungs[:3], s.min_dominators) == ([2, 5, 12], 2)
    errs = _errors(_spec(objectives={"accuracy": "max", "train_seconds": "min"},
                         scheduler="mo_asha"))
    assert len(errs) == 1 and errs[0].startswith("scheduler: ") and "'train_seconds'" in errs[0]
    assert "nonzero_macs" in errs[0]  # names what it can judge
    errs = _errors(_spec(scheduler={"name": "mo_asha", "reduction_factor": 1,
                                    "grace_period": 5, "max_t": 3, "brackets": 2}))
    assert {e.split(":")[0] for e in errs} == {
        "scheduler.reduction_factor", "scheduler.max_t", "scheduler.brackets"}
    # asha on two objectives points to mo_asha
    assert "Use mo_asha" in _errors(_spec(scheduler="asha"))[0]


def test_epoch_rows_carry_the_cost_of_the_model_being_trained(digits):
    model = models.build("vgg11", num_classes=10, width=0.25)
    rows: list[dict] = []
    ctx = Context(data=digits, train=TrainConfig(epochs=1, lr=0.01, batch_size=256),
                  report=rows.append)
    w = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d)).weight
    with torch.no_grad():  # half of the first conv's weights zero: non-zero MACs fall
        w.mul_(w.abs() > w.abs().median())
    cost = count_cost(model, digits.input_shape)  # as training starts
    ctx.fit(model, 1)
    assert len(rows) == 1
    assert {k: rows[0][k] for k in cost} == cost
    assert rows[0]["nonzero_macs"] < rows[0]["macs"]
