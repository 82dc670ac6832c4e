"""The study in the tools users already run: Ray Tune's CSV, JSON, TensorBoard and MLflow
loggers, read back with each tool's own reader; and the driver's Ray version check.

One tiny study (C3 at k=4 on 16x16 digits, two trials of two epochs) writes every logger.
"""

from __future__ import annotations

import csv
import json
import math
import platform
from pathlib import Path

import pytest
import ray
from ray.cloudpickle import loads as cloudpickle_loads

from studies import cluster
from studies.cluster import RayVersionMismatch, check_ray_versions, node_versions
from studies.loggers import PROGRESS_CSV, StudyMLflow, mlflow_metrics, trial_params
from studies.record import trial_records
from studies.runner import run_study
from studies.spec import parse_spec

EPOCHS = 2
TRIALS = 2


@pytest.fixture(scope="module")
def logged(local_ray, tmp_path_factory):
    """A finished study with every logger: (spec, its trial records by id)."""
    storage = tmp_path_factory.mktemp("runs")
    spec = parse_spec({
        "name": "logged", "data": {"name": "digits", "image_size": 16},
        "model": {"name": "c3", "k": 4}, "baseline": {"epochs": 1, "lr": 0.05},
        "methods": "none", "space": {"none.finetune_epochs": EPOCHS,
                                     "none.lr": {"low": 1e-3, "high": 1e-2, "log": True}},
        "objectives": {"accuracy": "max", "params": "min"},
        "sampler": {"name": "random", "seed": 3}, "trials": TRIALS, "storage": str(storage),
        "loggers": ["csv", "json", "tensorboard", "mlflow"],
    })
    summary = run_study(spec, log=lambda _m: None)
    assert summary["finished"] == TRIALS
    recs = {r["trial_id"]: r for r in trial_records(spec.study_dir)}
    return spec, recs


def _history(spec) -> dict[str, list[dict]]:
    """The study's own per-epoch record, by trial."""
    out: dict[str, list[dict]] = {}
    for line in (spec.study_dir / "history.jsonl").read_text().splitlines():
        row = json.loads(line)
        out.setdefault(row["trial_id"], []).append(row)
    return out


def _trial_dir(spec, trial_id: str) -> Path:
    return spec.study_dir / "tune" / trial_id


def test_csv_and_json_hold_one_row_per_report_with_the_metrics(logged):
    spec, recs = logged
    history = _history(spec)
    for tid, rec in recs.items():
        with (_trial_dir(spec, tid) / PROGRESS_CSV).open(newline="") as f:
            rows = list(csv.DictReader(f))
        lines = [json.loads(x) for x in
                 (_trial_dir(spec, tid) / "result.json").read_text().splitlines()]
        # each epoch (its checkpoint in the same report), then the final row
        assert len(rows) == len(lines) == EPOCHS + 1
        assert [int(r["training_iteration"]) for r in rows] == list(range(1, EPOCHS + 2))
        epochs = [x for x in lines if not x.get("final")]
        assert [x["val_accuracy"] for x in epochs] == [h["val_accuracy"] for h in history[tid]]
        assert [float(r["val_accuracy"]) for r in rows[:EPOCHS]] == \
            pytest.approx([h["val_accuracy"] for h in history[tid]])
        # the final row's columns, which the first report lacked, are in the CSV too
        final_csv, final_json = rows[-1], lines[-1]
        for column in ("accuracy", "params", "macs", "compression", "none.lr"):
            assert float(final_csv[column]) == pytest.approx(rec["row"][column]), column
            assert final_json[column] == rec["row"][column], column
        assert final_csv["status"] == "ok" and rows[0]["accuracy"] == ""
        # nested values are flattened into columns (the kept share of each layer's channels)
        assert any(k.startswith("channels/") for k in final_csv)
        params = json.loads((_trial_dir(spec, tid) / "params.json").read_text())
        assert trial_params(params) == rec["params"]


def test_tensorboard_holds_per_epoch_and_final_scalars(logged):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    spec, recs = logged
    history = _history(spec)
    for tid, rec in recs.items():
        (events,) = _trial_dir(spec, tid).glob("events.out.tfevents.*")
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags = acc.Tags()["scalars"]
        val = acc.Scalars("ray/tune/val_accuracy")
        # per epoch at steps 1..EPOCHS, then the final row's validation accuracy
        assert [e.step for e in val] == list(range(1, EPOCHS + 2))
        assert [e.value for e in val[:EPOCHS]] == \
            pytest.approx([h["val_accuracy"] for h in history[tid]])
        assert val[-1].value == pytest.approx(rec["row"]["val_accuracy"])
        (final,) = acc.Scalars("ray/tune/accuracy")
        assert final.step == EPOCHS + 1 and final.value == pytest.approx(rec["row"]["accuracy"])
        assert "ray/tune/params" in tags and "ray/tune/none.lr" in tags
        assert not any(t.endswith(("/status", "/method", "/hostname")) for t in tags)
        # the trial's parameters as HParams (with the searcher's Optuna trial number)
        hparams = _hparams(events)
        assert hparams.pop("_number") == rec["number"]
        assert hparams == pytest.approx(rec["params"])


def _hparams(events: Path) -> dict:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2

    for event in EventFileLoader(str(events)).Load():
        for value in event.summary.value:
            if value.tag == "_hparams_/session_start_info":
                data = plugin_data_pb2.HParamsPluginData.FromString(
                    value.metadata.plugin_data.content)
                return {k: v.number_value for k, v in data.session_start_info.hparams.items()}
    raise AssertionError(f"no HParams in {events}")


def test_mlflow_has_one_run_per_trial_with_its_params_and_row(logged):
    from mlflow.tracking import MlflowClient

    spec, recs = logged
    client = MlflowClient(f"sqlite:///{spec.study_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("logged")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(recs)
    history = _history(spec)
    for run in runs:
        tid = run.data.tags["trial_id"]
        rec = recs[tid]
        assert run.info.status == "FINISHED"
        assert run.data.tags["study"] == "logged"
        assert run.data.tags["optuna_trial_number"] == str(rec["number"])
        # params: the trial's sampled parameters (MLflow keeps text)
        assert run.data.params == {k: str(v) for k, v in rec["params"].items()}
        # the latest value of each metric is the final row's
        for column in ("accuracy", "params", "macs", "val_accuracy", "none.lr"):
            assert run.data.metrics[column] == pytest.approx(rec["row"][column]), column
        assert not {"status", "final", "pid", "checkpoint"} & set(run.data.metrics)
        steps = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert [m.step for m in steps] == list(range(1, EPOCHS + 2))
        assert [m.value for m in steps[:EPOCHS]] == \
            pytest.approx([h["val_accuracy"] for h in history[tid]])
    # the store lives in the study directory; no artifact was written
    assert not (spec.study_dir / "mlartifacts").exists()


def test_loggers_are_saved_with_the_experiment_for_resume(logged):
    """Tuner.restore takes its callbacks from tuner.pkl: the loggers the study started with."""
    spec, _ = logged
    state = cloudpickle_loads((spec.study_dir / "tune" / "tuner.pkl").read_bytes())
    callbacks = state["_run_config"].callbacks
    names = [type(c).__name__ for c in callbacks]
    assert names == ["Recorder", "ProgressCSV", "JsonLoggerCallback", "TBXLoggerCallback",
                     "StudyMLflow"]
    mlflow_logger = callbacks[-1]
    assert mlflow_logger._trial_runs == {} and not mlflow_logger._connected


def test_mlflow_metrics_are_the_reports_numbers_only():
    result = {"accuracy": 0.9, "params": 1200, "final": True, "status": "ok", "pid": 7,
              "channels": {"features.conv0": 0.5}, "error": None, "gammas": [0.1, 0.2],
              "config": {"none.lr": 0.01}, "training_iteration": 3, "bad key!": 1.0,
              "nan": math.nan}
    metrics = mlflow_metrics(result)
    assert metrics == {"accuracy": 0.9, "params": 1200.0, "channels/features.conv0": 0.5,
                       "nan": pytest.approx(math.nan, nan_ok=True)}


def test_mlflow_logger_warns_and_steps_aside_when_its_store_fails(tmp_path, caplog):
    """A logger mirrors the record: a store that cannot be opened does not stop a study."""

    class Trial:
        trial_id, config, last_result = "t1", {"none.lr": 0.1}, {}
        storage = None

    import mlflow

    logger = StudyMLflow(tmp_path, study="s", experiment="s",
                         tracking_uri="nosuchscheme://nowhere")
    before = mlflow.get_tracking_uri()
    try:
        with caplog.at_level("WARNING", logger="studies.loggers"):
            logger.log_trial_start(Trial())
            logger.log_trial_result(1, Trial(), {"accuracy": 0.5, "training_iteration": 1})
            logger.log_trial_end(Trial())
    finally:
        mlflow.set_tracking_uri(before)  # Ray's MLflow helper sets MLflow's global URI
    assert logger._disabled
    (warning,) = [r for r in caplog.records if "MLflow logging stopped" in r.getMessage()]
    assert "opening the store" in warning.getMessage()


# --------------------------------------------------------------------------- Ray versions


def test_the_local_cluster_runs_the_drivers_ray(local_ray):
    versions = node_versions()
    assert list(versions.values()) == [ray.__version__] * len(ray.nodes())
    check_ray_versions(versions)  # equal: no error


def test_another_ray_on_a_node_is_an_error_naming_both_versions():
    check_ray_versions({"a": "2.60.0", "b": "2.60.0"}, driver="2.60.0")
    with pytest.raises(RayVersionMismatch) as e:
        check_ray_versions({"10.0.0.1 (node ab)": "2.60.0", "10.0.0.2 (node cd)": "2.59.1"},
                           driver="2.60.0", address="10.0.0.1:6379")
    text = str(e.value)
    assert "10.0.0.1:6379" in text and "this driver (Ray 2.60.0)" in text
    assert "10.0.0.2 (node cd): Ray 2.59.1" in text and "node ab" not in text
    assert "pip install 'ray[default]==2.60.0'" in text and "ray up cluster.yaml" in text
    assert isinstance(e.value, cluster.ClusterError)  # the CLI's cluster error: exit 1


@pytest.mark.parametrize("cluster_ray, cluster_python", [
    ("2.59.0", platform.python_version()),  # another Ray
    (ray.__version__, "3.10.1"),  # the same Ray on another Python: Ray refuses that too
])
def test_rays_own_version_refusal_becomes_the_same_error(monkeypatch, cluster_ray,
                                                         cluster_python):
    """Ray refuses a driver of other versions at ray.init, with its own message (made here
    by Ray's own check); the error names both sides' versions and what to do."""
    from ray._private.utils import check_version_info

    def refuse(**kw):
        check_version_info({"ray_version": cluster_ray, "python_version": cluster_python},
                           "node 10.0.0.5")

    monkeypatch.setattr(cluster.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(cluster.ray, "init", refuse)
    monkeypatch.setattr(cluster, "_check_reachable", lambda address: None)
    with pytest.raises(RayVersionMismatch) as e:
        cluster.connect("10.0.0.5:6379", log=lambda _m: None)
    text = str(e.value)
    mine = f"Ray {ray.__version__}, Python {platform.python_version()}"
    assert f"the Ray cluster at 10.0.0.5:6379 runs other versions than this driver ({mine})" \
        in text
    assert f"the cluster: Ray {cluster_ray}, Python {cluster_python}" in text
    assert f"pip install 'ray[default]=={ray.__version__}'" in text
