"""run_trial: the full row, method chains, and resuming from checkpoints."""

from __future__ import annotations

import pytest

from prune_core.methods import ParamError
from prune_core.trial import TrialSpec, run_trial
from tests.conftest import TEST_CACHE

ROW_COLUMNS = {
    "status", "method", "accuracy", "balanced_accuracy", "val_accuracy", "base_accuracy",
    "accuracy_drop", "params", "nonzero_params", "macs", "nonzero_macs", "ops", "size_bytes",
    "compression", "speedup", "train_seconds", "channels",
}

TINY = TrialSpec(model="c3", model_kw={"k": 8}, baseline={"epochs": 2},
                 finetune={"epochs": 2, "lr": 0.02}, cache_dir=str(TEST_CACHE))


def _spec(**kw) -> dict:
    d = TINY.to_dict()
    d.update(kw)
    return d


def test_none_returns_the_base_model_row(base_vgg):
    spec = TrialSpec(model="vgg11", model_kw={"width": 0.25},
                     baseline={"epochs": 12, "lr": 0.05}, cache_dir=str(TEST_CACHE))
    row = run_trial({"study": spec.to_dict(), "params": {}})
    assert ROW_COLUMNS <= set(row)
    assert row["accuracy"] == pytest.approx(base_vgg.row["accuracy"])
    assert row["compression"] == row["speedup"] == 1.0
    assert row["accuracy_drop"] == pytest.approx(0.0)
    assert set(row["channels"].values()) == {1.0}


def _run(spec, params, resume=None):
    reports, checkpoints = [], []

    def report(metrics, checkpoint=None):
        reports.append(metrics)
        if checkpoint is not None:
            checkpoints.append(checkpoint)

    row = run_trial({"study": spec, "params": params}, report, resume=resume)
    return row, reports, checkpoints


def test_trial_resumed_mid_training_continues_where_it_stopped():
    params = {"none.finetune_epochs": 3, "none.lr": 0.05}
    row, reports, checkpoints = _run(_spec(), params)
    epochs = [r for r in reports if "epoch" in r]
    assert [r["step"] for r in epochs] == [1, 2, 3]
    # resume from the checkpoint taken after the first epoch
    first = checkpoints[0]
    assert first["inner"]["epoch"] == 1
    row2, reports2, _ = _run(_spec(), params, resume=first)
    epochs2 = [r for r in reports2 if "epoch" in r]
    assert [r["step"] for r in epochs2] == [2, 3]
    assert [r["epoch"] for r in epochs2] == [2, 3]
    assert row2["accuracy"] == pytest.approx(row["accuracy"])
    assert row2["val_accuracy"] == pytest.approx(row["val_accuracy"])


def test_chain_resumed_at_a_stage_boundary_skips_finished_stages():
    params = {"none.finetune_epochs": 1, "none2.finetune_epochs": 2}
    row, reports, checkpoints = _run(_spec(methods=["none", "none"]), params)
    assert [r["stage"] for r in reports if "epoch" in r] == ["none", "none2", "none2"]
    boundary = next(c for c in checkpoints if c["inner"] is None)
    assert boundary["stage"] == 0
    row2, reports2, _ = _run(_spec(methods=["none", "none"]), params, resume=boundary)
    assert [r["stage"] for r in reports2 if "epoch" in r] == ["none2", "none2"]
    assert row2["accuracy"] == pytest.approx(row["accuracy"])
    assert row2["none.finetune_epochs"] == 1 and row2["none2.finetune_epochs"] == 2


@pytest.mark.parametrize("params, message", [
    ({"slimmin.lambda": 0.1}, "unknown stage 'slimmin'"),
    ({"none.epochs": 1}, "has no parameter 'epochs'"),
    ({"none.finetune_epochs": -1}, r"none.finetune_epochs = -1 is invalid; allowed: an integer"),
    ({"finetune_epochs": 1}, "must be named stage.param"),
])
def test_bad_parameters_are_named(params, message):
    with pytest.raises(ParamError, match=message):
        run_trial({"study": _spec(), "params": params})
