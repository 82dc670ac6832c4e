"""Studies on a real local Ray: failures, checkpoint retries, base reuse, driver kill + resume.

Trials use the `none` method on a tiny base model so each takes seconds. A loss is made to
turn NaN with a huge learning rate plus a large weight decay (each step multiplies the
weights by 1 - lr * weight_decay).
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from studies.record import trial_records
from studies.runner import run_study
from studies.spec import StudyError, parse_spec

ROOT = Path(__file__).resolve().parent.parent
PRUNE_STUDY = str(ROOT / ".venv" / "bin" / "prune-study")
pytestmark = pytest.mark.slow

# Two epochs of VGG-11/0.25 on digits: a poor model, but a real one, trained in seconds.
TINY_BASE = {"epochs": 2, "lr": 0.05}


def tiny_spec(name: str, storage: Path, **kw) -> dict:
    spec = {
        "name": name, "data": "digits", "model": {"name": "vgg11", "width": 0.25},
        "baseline": TINY_BASE, "methods": "none", "finetune": {"weight_decay": 5.0},
        "objectives": {"accuracy": "max", "params": "min"},
        "sampler": {"name": "random", "seed": 1}, "trials": 4, "storage": str(storage),
        "max_failures": 2,
    }
    spec.update(kw)
    return spec


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def failing_study(local_ray, storage):
    """Four trials, of which those with lr 10 diverge; trains the base model."""
    spec = parse_spec(tiny_spec("failing", storage, space={
        "none.finetune_epochs": 1, "none.lr": {"choices": [1e-4, 10.0]}},
        constraints={"accuracy": {"min": 0.0}}))
    summary = run_study(spec, log=lambda _m: None)
    return spec, summary


def test_failed_trials_are_recorded_and_never_on_a_front(failing_study):
    spec, summary = failing_study
    recs = trial_records(spec.study_dir)
    assert len(recs) == 4 and summary["finished"] + summary["failed"] == 4
    by_lr = {lr: [r for r in recs if r["params"]["none.lr"] == lr] for lr in (1e-4, 10.0)}
    assert by_lr[1e-4] and by_lr[10.0], "the seed must draw both learning rates"
    for r in by_lr[10.0]:
        assert r["status"] == "failed" and r["row"] == {}
        assert r["error"].startswith("TrainingDiverged") and "nan" in r["error"]
    for r in by_lr[1e-4]:
        assert r["status"] == "ok" and 0 <= r["row"]["accuracy"] <= 1
        assert r["row"]["none.lr"] == 1e-4 and r["row"]["params"] > 0
    # Optuna saw the failures as FAIL, so its Pareto front holds only complete trials.
    study = optuna.load_study(study_name="failing",
                              storage=f"sqlite:///{spec.study_dir / 'optuna.db'}")
    states = {t.number: t.state for t in study.trials}
    assert {r["number"]: states[r["number"]] for r in recs} == {
        r["number"]: TrialState.COMPLETE if r["status"] == "ok" else TrialState.FAIL
        for r in recs}
    ok_numbers = {r["number"] for r in by_lr[1e-4]}
    assert {t.number for t in study.best_trials} <= ok_numbers
    assert 1 <= summary["front_size"] <= len(ok_numbers)
    # The epoch history holds only what trials reported: the diverged ones reported nothing.
    lines = [json.loads(x) for x in (spec.study_dir / "history.jsonl").read_text().splitlines()]
    assert {x["trial_id"] for x in lines} == {r["trial_id"] for r in by_lr[1e-4]}


def test_optuna_storage_is_a_complete_record(failing_study):
    spec, _ = failing_study
    study = optuna.load_study(study_name="failing",
                              storage=f"sqlite:///{spec.study_dir / 'optuna.db'}")
    assert study.metric_names == ["accuracy", "params"]
    assert "accuracy: max" in study.user_attrs["spec"]
    assert study.user_attrs["environment"]["torch"]
    by_number = {t.number: t for t in study.trials}
    for rec in trial_records(spec.study_dir):
        attrs = by_number[rec["number"]].user_attrs
        assert attrs["status"] == rec["status"]
        if rec["status"] == "ok":
            for column in ("accuracy", "params", "macs", "none.lr", "train_seconds"):
                assert attrs[column] == pytest.approx(rec["row"][column]), column
            # the spec's constraint, told as Optuna's constraint value (feasible: <= 0)
            assert by_number[rec["number"]].constraints == {
                "accuracy.min": pytest.approx(-rec["row"]["accuracy"])}
            # two objectives: Optuna keeps no intermediate values, the attribute does
            steps = attrs["val_accuracy_by_step"]
            assert steps and all(0.0 <= v <= 1.0 for _, v in steps)
        else:
            assert attrs["error"].startswith("TrainingDiverged")


def test_optuna_dashboard_serves_the_study(failing_study):
    """optuna-dashboard's own server, on localhost, reads the record back over HTTP."""
    import socket
    import urllib.request

    spec, _ = failing_study
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exe = Path(sys.executable).parent / "optuna-dashboard"
    proc = subprocess.Popen([str(exe), f"sqlite:///{spec.study_dir / 'optuna.db'}",
                             "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def get(path: str) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return json.loads(r.read())

    try:
        deadline = time.time() + 60
        while True:
            try:
                studies = get("/api/studies")["study_summaries"]
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.5)
        (entry,) = [x for x in studies if x["study_name"] == "failing"]
        detail = get(f"/api/studies/{entry['study_id']}")
        assert detail["objective_names"] == ["accuracy", "params"]
        assert detail["directions"] == ["maximize", "minimize"]
        ok = [t for t in detail["trials"] if t["state"].lower() == "complete"]
        assert ok and len(detail["trials"]) == 4
        attrs = {a["key"]: a["value"] for a in ok[0]["user_attrs"]}
        assert attrs["status"] == "ok" and 0.0 <= float(attrs["accuracy"]) <= 1.0
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_killed_trial_process_resumes_from_its_last_checkpoint(failing_study, storage):
    """Also: the second study with the same base settings reuses the base model."""
    first, _ = failing_study
    spec = parse_spec(tiny_spec("retry", storage, trials=1, space={
        "none.finetune_epochs": 3, "none.lr": 1e-3}, finetune={}))
    trials_dir = spec.study_dir / "trials"
    killed: dict = {}

    def kill_after_first_epoch() -> None:
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            for rec in trial_records(spec.study_dir) if trials_dir.exists() else []:
                # Killed once Tune has recorded the checkpoint of epoch 1 or later.
                if rec.get("pid") and (rec.get("checkpoint_step") or 0) >= 1:
                    killed.update(pid=rec["pid"], step=rec["checkpoint_step"])
                    os.kill(rec["pid"], signal.SIGKILL)
                    return
            time.sleep(0.05)

    study1 = json.loads((first.study_dir / "study.json").read_text())
    cache_file = Path(study1["base"]["path"])
    mtime = cache_file.stat().st_mtime_ns
    logs: list[str] = []
    killer = threading.Thread(target=kill_after_first_epoch, daemon=True)
    killer.start()
    run_study(spec, log=logs.append)
    killer.join(timeout=1)
    assert killed, "the trial never finished its first epoch"
    (rec,) = trial_records(spec.study_dir)
    assert rec["status"] == "ok" and rec["retries"] == 1 and rec["pid"] != killed["pid"]
    steps = [json.loads(x)["step"] for x in
             (spec.study_dir / "history.jsonl").read_text().splitlines()]
    # Retried from the checkpoint of epoch >= 1: epoch 1 ran once, and all three ran.
    assert steps.count(1) == 1 and sorted(set(steps)) == [1, 2, 3]
    assert len(steps) <= 3 + 1  # at most the epoch in flight at the kill ran again

    # The base model of the first study was found in the cache, not trained again.
    study2 = json.loads((spec.study_dir / "study.json").read_text())
    assert study1["base"]["cached"] is False
    assert study2["base"] == {**study1["base"], "cached": True}
    assert cache_file.stat().st_mtime_ns == mtime
    assert not any("training the base model" in m for m in logs)
    assert list(cache_file.parent.glob("base-*.pt")) == [cache_file]
    base = json.loads((first.study_dir / "base.json").read_text())
    for r in trial_records(first.study_dir) + [rec]:
        if r["status"] == "ok":  # every trial started from that one base model
            assert r["row"]["base_accuracy"] == base["accuracy"]
    # A second run into the same directory is refused, not mixed in.
    with pytest.raises(StudyError, match="already holds a study"):
        run_study(spec, log=logs.append)


def test_killed_driver_resumes_without_losing_or_repeating_trials(failing_study, storage):
    raw = tiny_spec("resumed", storage, trials=4, finetune={}, max_concurrent=2,
                    sampler={"name": "tpe", "seed": 7},
                    space={"none.finetune_epochs": {"low": 1, "high": 2},
                           "none.lr": {"low": 1e-4, "high": 1e-2, "log": True}})
    spec_path = storage / "resumed.yaml"
    spec_path.write_text(yaml.safe_dump(raw))
    study_dir = storage / "resumed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    driver = subprocess.Popen([PRUNE_STUDY, "run", str(spec_path)], start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and driver.poll() is None:
            if sum(r["status"] == "ok" for r in trial_records(study_dir)
                   if (study_dir / "trials").exists()) >= 2:
                break
            time.sleep(0.1)
        assert driver.poll() is None, driver.stderr.read().decode()[-3000:]
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    before = {r["trial_id"]: r for r in trial_records(study_dir) if r["status"] == "ok"}
    lines_before = len((study_dir / "history.jsonl").read_text().splitlines())
    assert len(before) >= 2

    out = subprocess.run([PRUNE_STUDY, "resume", str(study_dir), "--json"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)
    assert summary["finished"] == 4 and summary["failed"] == 0
    recs = trial_records(study_dir)
    ok = [r for r in recs if r["status"] == "ok"]
    assert len(ok) == 4
    # Trials finished before the kill were kept as they were, not run again.
    for tid, rec in before.items():
        now = next(r for r in recs if r["trial_id"] == tid)
        assert now["row"] == rec["row"] and now["ended"] == rec["ended"]
    history = [json.loads(x) for x in (study_dir / "history.jsonl").read_text().splitlines()]
    assert not any(x["trial_id"] in before for x in history[lines_before:])
    # Every finished trial is a distinct configuration, told to Optuna once.
    configs = {(r["params"]["none.finetune_epochs"], r["params"]["none.lr"]) for r in ok}
    assert len(configs) == 4
    study = optuna.load_study(study_name="resumed",
                              storage=f"sqlite:///{study_dir / 'optuna.db'}")
    complete = [t.number for t in study.trials if t.state == TrialState.COMPLETE]
    assert sorted(complete) == sorted(r["number"] for r in ok)
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    for r in ok:
        t = study.trials[r["number"]]
        assert t.params["none.lr"] == r["params"]["none.lr"]
        assert t.values == [r["row"]["accuracy"], r["row"]["params"]]
    # The restored searcher still samples with the spec's seeded TPE.
    state_file = max((study_dir / "tune").glob("searcher-state-*.pkl"),
                     key=lambda p: p.stat().st_mtime)
    searcher = pickle.loads(state_file.read_bytes())
    assert isinstance(searcher["_sampler"], optuna.samplers.TPESampler)
    assert searcher["_ot_study"].sampler is not None
    assert isinstance(searcher["_ot_study"].sampler, optuna.samplers.TPESampler)


def test_bench_tune_tiny_compares_tune_with_a_plain_loop(tmp_path):
    from benchmarks import bench_tune

    doc = bench_tune.main(["--tiny", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "tune.json").read_text())
    assert saved["trials"] == 2 and len(saved["loop"]["accuracy"]) == 2
    assert saved["tune_1_concurrent"]["finished"] == saved["tune_2_concurrent"]["finished"] == 2
    tune1 = saved["tune_1_concurrent"]
    assert 0 < tune1["report_seconds"] < tune1["compute_seconds"] < tune1["trials_seconds"]
    assert saved["overhead_in_run"] == pytest.approx(tune1["trials_seconds"]
                                                     / tune1["compute_seconds"])
    assert saved["overhead_trials"] == pytest.approx(
        saved["tune_1_concurrent"]["trials_seconds"] / saved["loop"]["trials_seconds"])
    assert doc["concurrency_speedup"] == pytest.approx(
        saved["tune_1_concurrent"]["trials_seconds"] / saved["tune_2_concurrent"]
        ["trials_seconds"])
    md = (tmp_path / "tune.md").read_text()
    assert "plain loop" in md and "-m benchmarks.bench_tune --tiny" in md


def test_tune_does_not_warn_that_the_samplers_own_work_is_training():
    # GP fits its model inside the define-by-run space, which Tune times and warns about
    # at every trial; other warnings still show.
    from studies.runner import _tune_environment

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _tune_environment()
        warnings.warn("Define-by-run function passed in the `space` argument took 2.17 "
                      "seconds to run. Ensure ...", UserWarning, stacklevel=2)
        warnings.warn("something else", UserWarning, stacklevel=2)
    assert [str(w.message) for w in caught] == ["something else"]


def test_a_study_without_loggers_writes_no_logger_files(failing_study):
    """Tune's own loggers stay off (TUNE_DISABLE_AUTO_CALLBACK_LOGGERS) unless the spec's
    `loggers` names them (tests/test_loggers.py)."""
    spec, _ = failing_study
    assert spec.loggers == {}
    trial_dirs = [p for p in (spec.study_dir / "tune").iterdir() if p.is_dir()]
    assert len(trial_dirs) == 4
    written = [p.name for d in trial_dirs for p in d.iterdir()
               if p.name in ("progress.csv", "result.json", "params.json", "params.pkl")
               or p.name.startswith("events.out.tfevents")]
    assert written == []
    assert not [p for p in spec.study_dir.iterdir() if p.name in ("mlflow.db", "mlruns")]


def test_a_study_with_mo_asha_stops_dominated_trials_and_tells_optuna(local_ray, storage):
    """One trial at a time, so the rungs fill in a known order: replaying the study's own
    epoch rows through the rule must give exactly the trials Tune stopped."""
    spec = parse_spec(tiny_spec(
        "moasha", storage, methods="magnitude", finetune={}, max_concurrent=1, trials=5,
        objectives={"accuracy": "max", "nonzero_macs": "min"},
        space={"magnitude.ratio": {"low": 0.3, "high": 0.95}, "magnitude.finetune_epochs": 2,
               "magnitude.reinit": {"choices": ["keep", "random"]}},
        scheduler={"name": "mo_asha", "grace_period": 1, "reduction_factor": 2},
        latency={"batch": [1, 4]}))
    summary = run_study(spec, log=lambda _m: None)
    assert summary["complete"]
    study_dir = spec.study_dir
    # the base is timed as the trials are, so the latency figure has its reference
    base = json.loads((study_dir / "base.json").read_text())
    assert base["latency_ms_b1"] > 0 and base["latency_ms_b4"] > 0
    assert base["latency_ms"] == base["latency_ms_b1"]
    history = [json.loads(line) for line in (study_dir / "history.jsonl").open()]
    assert all({"macs", "nonzero_macs", "params", "val_accuracy"} <= set(r) for r in history)

    from ray.tune.schedulers import TrialScheduler

    from studies.schedulers import MOASHA

    replay = MOASHA(columns={"val_accuracy": "max", "nonzero_macs": "min"},
                    grace_period=1, reduction_factor=2)
    expected_stop: dict[str, int] = {}
    for r in history:
        assert r["trial_id"] not in expected_stop, "a stopped trial reported another epoch"
        if replay.judge(r["trial_id"], r["step"], r) == TrialScheduler.STOP:
            expected_stop[r["trial_id"]] = r["step"]
    records = {r["trial_id"]: r for r in trial_records(study_dir)}
    stopped = {t for t, r in records.items() if r["status"] == "stopped"}
    assert stopped == set(expected_stop) and stopped  # at least one, all as the rule says
    assert all(records[t]["status"] == "ok" and records[t]["row"]["latency_ms_b4"] > 0
               for t in records if t not in stopped)
    for t in stopped:  # the last row kept is the epoch it was judged on
        assert records[t]["last"]["step"] == expected_stop[t]
    study = optuna.load_study(study_name=spec.name,
                              storage=f"sqlite:///{study_dir / 'optuna.db'}")
    pruned = {t.number for t in study.trials if t.state == TrialState.PRUNED}
    assert pruned == {records[t]["number"] for t in stopped}
