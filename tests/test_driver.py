"""The driver of a study: one at a time, Ctrl-C then resume, trial time limits, the base
model's hash, exit codes, and storage passwords kept out of the study directory.

The lock, spec and storage checks are unit tests. One tiny study is driven through the
command line for the rest: `run` is interrupted with SIGINT, then `resume`d (after the
refusals that must happen while it is unfinished) to its end, and resumed once more.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import ray
import torch
import yaml
from optuna.trial import TrialState

from prune_core.baseline import atomic_save, safe_load, weights_hash
from studies import cluster, runner, search
from studies.cli import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_OK, main
from studies.lock import LOCK_NAME, DriverLock, LockHeld, pid_alive, read_lock
from studies.record import Recorder, trial_records
from studies.spec import SpecError, StudyError, parse_spec
from tests.conftest import BASE_VGG

ROOT = Path(__file__).resolve().parent.parent
HOST = socket.gethostname()


def _env() -> dict:
    # This checkout first, whatever the installed package points to; Ray workers inherit it.
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "studies.cli", *args]


@pytest.fixture
def other_process():
    """A live process of this host that is not this one."""
    p = subprocess.Popen(["sleep", "300"])
    yield p
    p.kill()
    p.wait()


def _write_lock(study_dir: Path, **holder) -> None:
    study_dir.mkdir(parents=True, exist_ok=True)
    (study_dir / LOCK_NAME).write_text(json.dumps(
        {"host": HOST, "since": "2026-01-01T00:00:00+00:00", "command": "run", **holder}))


# --------------------------------------------------------------------------- the lock


def test_a_second_driver_is_refused_with_the_holder_named(tmp_path):
    with DriverLock(tmp_path, command="run") as first:
        holder = read_lock(tmp_path)
        assert holder["host"] == HOST and holder["pid"] == os.getpid()
        with pytest.raises(LockHeld) as e:
            DriverLock(tmp_path, command="resume").acquire()
        msg = str(e.value)
        assert f"host {HOST}, pid {os.getpid()}, since {holder['since']}" in msg
        assert isinstance(e.value, StudyError)  # the command line exits 2
        assert first.doc is not None
    assert not (tmp_path / LOCK_NAME).exists()  # released on leaving the block
    DriverLock(tmp_path).acquire().release()  # and free again


def test_a_lock_is_released_on_errors_and_ctrl_c(tmp_path):
    for exc in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(exc)), DriverLock(tmp_path):
            raise exc
        assert not (tmp_path / LOCK_NAME).exists()


def test_release_leaves_a_lock_that_is_no_longer_ours(tmp_path, other_process):
    lock = DriverLock(tmp_path).acquire()
    _write_lock(tmp_path, pid=other_process.pid)  # replaced behind its back
    lock.release()
    assert read_lock(tmp_path)["pid"] == other_process.pid


def test_a_live_process_of_this_host_is_respected(tmp_path, other_process):
    _write_lock(tmp_path, pid=other_process.pid)
    with pytest.raises(LockHeld, match=f"pid {other_process.pid}, since 2026-01-01"):
        DriverLock(tmp_path).acquire()
    assert read_lock(tmp_path)["pid"] == other_process.pid


def test_a_stale_lock_of_this_host_is_taken_over_with_a_warning(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    assert not pid_alive(dead.pid)
    _write_lock(tmp_path, pid=dead.pid)
    logs: list[str] = []
    with DriverLock(tmp_path, log=logs.append):
        assert read_lock(tmp_path)["pid"] == os.getpid()
    assert len(logs) == 1 and "no longer running" in logs[0] and f"pid {dead.pid}" in logs[0]
    # A pid now used by a younger process (its start time differs) is stale as well.
    _write_lock(tmp_path, pid=os.getpid(), process_start=1)
    with DriverLock(tmp_path, log=logs.append):
        assert read_lock(tmp_path)["process_start"] != 1
    assert len(logs) == 2


def test_a_zombie_holds_no_lock():
    child = subprocess.Popen(["true"])
    deadline = time.time() + 10
    while time.time() < deadline and Path(f"/proc/{child.pid}/stat").read_text().split(
            ")")[-1].split()[0] != "Z":
        time.sleep(0.01)
    assert not pid_alive(child.pid)  # exited, not yet reaped
    child.wait()


def test_a_lock_of_another_host_is_respected_and_says_how_to_remove_it(tmp_path):
    _write_lock(tmp_path, host="elsewhere", pid=1)
    with pytest.raises(LockHeld) as e:
        DriverLock(tmp_path).acquire()
    assert "host elsewhere, pid 1" in str(e.value)
    assert f"If host elsewhere is gone or that driver has stopped, remove " \
           f"{tmp_path / LOCK_NAME}" in str(e.value)


def test_run_is_refused_while_another_driver_holds_the_study(tmp_path, capsys, other_process):
    spec = tmp_path / "held.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "held", "methods": "none", "objectives": {"accuracy": "max"},
        "storage": str(tmp_path / "runs")}))
    _write_lock(tmp_path / "runs" / "held", pid=other_process.pid)
    assert main(["run", str(spec)]) == EXIT_BAD_INPUT
    assert f"pid {other_process.pid}" in capsys.readouterr().err
    assert not ray.is_initialized()  # refused before Ray starts


# --------------------------------------------------------------------------- inputs


def _spec(**kw):
    return parse_spec({"name": "x", "methods": "none", "objectives": {"accuracy": "max"},
                       **kw})


@pytest.mark.parametrize("value", [0, -5, float("nan"), float("inf"), True, "soon"])
def test_time_limit_must_be_a_positive_finite_number(value):
    with pytest.raises(SpecError, match="resources.time_limit_s"):
        _spec(resources={"time_limit_s": value})


def test_time_limit_is_read_as_seconds():
    assert _spec(resources={"time_limit_s": "1e3"}).resources["time_limit_s"] == 1000.0
    assert "time_limit_s" not in _spec().resources


def test_a_storage_password_never_lands_in_the_study_directory(tmp_path, capsys):
    spec = tmp_path / "pw.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "pw", "methods": "none", "objectives": {"accuracy": "max"},
        "storage": str(tmp_path / "runs"),
        "optuna_storage": "postgresql://alice:hunter2@db.example/studies"}))
    assert main(["run", str(spec)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "holds a password" in err and "PGPASSWORD" in err and "hunter2" not in err
    assert not (tmp_path / "runs").exists()
    # Without the password, or with it from the environment, the spec is taken.
    for url in ("postgresql://alice@db.example/studies",
                "postgresql://alice:${DB_PASSWORD}@db.example/studies"):
        search.check_storage_secret(_spec(optuna_storage=url))


def test_storage_urls_expand_environment_variables(monkeypatch):
    monkeypatch.setenv("DB_PASSWORD", "p@ss/word")
    monkeypatch.setenv("DB_HOST", "db.example:5432")
    url = search.storage_url("postgresql://alice:${DB_PASSWORD}@${DB_HOST}/s")
    # quoted where it is part of the user info, as it is elsewhere
    assert url == "postgresql://alice:p%40ss%2Fword@db.example:5432/s"
    assert search.mask_url(url) == "postgresql://alice:***@db.example:5432/s"
    monkeypatch.delenv("DB_PASSWORD")
    with pytest.raises(StudyError, match=r"\$\{DB_PASSWORD\}, which is not set"):
        search.storage_url("postgresql://alice:${DB_PASSWORD}@h/s")


def test_an_unreachable_storage_error_shows_no_password(tmp_path, monkeypatch):
    monkeypatch.setenv("DB_PASSWORD", "hunter2")
    # a driver that loads, a server that is not there (nothing listens on port 1)
    spec = _spec(optuna_storage="postgresql+psycopg://alice:${DB_PASSWORD}@127.0.0.1:1/s")
    with pytest.raises(StudyError) as e:
        search.optuna_storage(spec, tmp_path)
    assert "could not open the Optuna storage" in str(e.value)
    assert "hunter2" not in str(e.value) and "alice:***@127.0.0.1:1" in str(e.value)


def test_joining_a_cluster_without_token_auth_warns(monkeypatch):
    logs: list[str] = []
    monkeypatch.setattr(cluster.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(cluster, "_check_reachable", lambda a: None)
    monkeypatch.setattr(cluster.ray, "init", lambda **kw: None)
    monkeypatch.setattr(cluster, "_resources_text", lambda: "1 node(s)")
    # no cluster here: every node reports the driver's own Ray version
    monkeypatch.setattr(cluster, "node_versions",
                        lambda log=None: {"head": cluster.ray.__version__})
    for auth, warned in ((False, True), (True, False)):
        logs.clear()
        monkeypatch.setattr(cluster, "_token_auth", lambda a=auth: a)
        cluster.connect("10.0.0.1:6379", log=logs.append)
        assert any("without token authentication" in m for m in logs) is warned


def test_weights_hash_tells_weights_apart():
    sd = {"a.weight": torch.randn(3, 4), "a.bias": torch.zeros(3),
          "n": torch.tensor(7), "h": torch.ones(2, dtype=torch.bfloat16)}
    same = {k: v.clone() for k, v in reversed(sd.items())}
    assert weights_hash(sd) == weights_hash(same)
    same["a.weight"][1, 2] += 1e-6
    assert weights_hash(sd) != weights_hash(same)
    assert weights_hash(sd) != weights_hash({**sd, "a.bias": torch.zeros(3, dtype=torch.float64)})


def test_recorder_calls_a_trial_stopped_past_the_time_limit_timeout(tmp_path):
    (tmp_path / "trials").mkdir()
    rec = Recorder(tmp_path, {"accuracy": "max"}, 2, "t", log=lambda _m: None,
                   time_limit_s=10.0)
    for tid, took in (("slow", 12.5), ("asha", 4.0)):
        trial = SimpleNamespace(trial_id=tid, config={"_number": 0, "none.lr": 0.1},
                                last_result={"time_total_s": took, "epoch": 3},
                                storage=None)
        rec.on_trial_start(0, [], trial)
        rec.on_trial_complete(0, [], trial)
    status = {r["trial_id"]: r for r in trial_records(tmp_path)}
    assert status["slow"]["status"] == "timeout" and status["slow"]["row"] == {}
    assert "time_limit_s 10 s" in status["slow"]["error"]
    assert status["asha"]["status"] == "stopped"  # under the limit: the scheduler's stop


def test_progress_counts_what_ended_and_leaves_lost_trials_out(tmp_path):
    (tmp_path / "trials").mkdir()
    (tmp_path / "study.json").write_text(json.dumps({"name": "p", "trials": 4,
                                                     "objectives": {"accuracy": "max"}}))
    for n, (status, extra) in enumerate((("ok", {"row": {"accuracy": 0.9}}), ("failed", {}),
                                         ("timeout", {}), ("stopped", {"lost": True}),
                                         ("stopped", {}))):
        (tmp_path / "trials" / f"t{n}.json").write_text(json.dumps(
            {"trial_id": f"t{n}", "number": n, "status": status, "params": {}, "row": {},
             **extra}))
    assert runner.progress(tmp_path, 4) == {"ended": 4, "timeout": 1, "lost": 1,
                                            "complete": True}
    assert runner.progress(tmp_path, 5)["complete"] is False


# --------------------------------------------------------------------------- a study


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, base_vgg, test_cache):
    """`prune-study run` of three trials, two at a time, stopped by Ctrl-C (SIGINT to its
    process group, as a terminal sends it) once a trial has finished.

    The seeded sampler draws 0, 1000, 0 fine-tuning epochs: the second trial runs past the
    10 s time limit (an epoch takes 2 s or more here); the others report only their final
    row, which a time limit never discards, so load on the machine changes no outcome.
    """
    storage = tmp_path_factory.mktemp("driver")
    # The conftest's base model, copied (this test alters it): no training here.
    (storage / "_cache").mkdir()
    for f in test_cache.glob(f"base-vgg11-digits-{BASE_VGG.key()}.pt"):
        shutil.copy2(f, storage / "_cache" / f.name)
    spec = {
        "name": "driven", "data": "digits", "model": {"name": "vgg11", "width": 0.25},
        "baseline": {"epochs": BASE_VGG.train.epochs, "lr": BASE_VGG.train.lr},
        "methods": "none", "objectives": {"accuracy": "max", "params": "min"},
        "sampler": {"name": "random", "seed": 10}, "trials": 3, "max_concurrent": 2,
        "resources": {"cpu": 1, "time_limit_s": 10}, "storage": str(storage),
        "space": {"none.finetune_epochs": {"choices": [0, 1000]}},
    }
    path = storage / "driven.yaml"
    path.write_text(yaml.safe_dump(spec))
    study_dir = storage / "driven"
    driver = subprocess.Popen(_cli("run", str(path)), env=_env(), cwd=ROOT,
                              start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 400
        while time.time() < deadline and driver.poll() is None:
            if (study_dir / "trials").exists() and any(
                    r["status"] == "ok" for r in trial_records(study_dir)):
                break
            time.sleep(0.1)
        assert driver.poll() is None, driver.stderr.read()[-3000:]
        holder = read_lock(study_dir)
        os.killpg(driver.pid, signal.SIGINT)
        _, err = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    return SimpleNamespace(study_dir=study_dir, rc=driver.returncode, err=err, holder=holder,
                           before={r["trial_id"]: r for r in trial_records(study_dir)})


@pytest.fixture(scope="module")
def resumed(interrupted, other_process_module):
    """Refusals while the study is unfinished, then `resume` to its end, then again."""
    d = interrupted.study_dir
    out = SimpleNamespace()
    # Another live driver of this host holds the study.
    _write_lock(d, pid=other_process_module.pid)
    out.held = _main_in_process(["resume", str(d)])
    (d / LOCK_NAME).unlink()
    # The cached base model's weights changed since the study ran.
    study = json.loads((d / "study.json").read_text())
    cache = Path(study["base"]["path"])
    saved = cache.with_name("original.pt")
    shutil.copy2(cache, saved)
    payload = safe_load(cache)
    name = next(iter(payload["state_dict"]))
    payload["state_dict"][name] = payload["state_dict"][name] + 1e-3
    atomic_save(payload, cache)
    out.changed_base = _main_in_process(["resume", str(d)])
    os.replace(saved, cache)
    out.ray_after_refusals = ray.is_initialized()
    # A lock left by a driver that died: taken over.
    dead = subprocess.Popen(["true"])
    dead.wait()
    _write_lock(d, pid=dead.pid)
    proc = subprocess.run(_cli("resume", str(d), "--json"), env=_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    out.resume = proc
    out.lock_after = (d / LOCK_NAME).exists()
    # Once more: complete, so nothing starts (starting Ray or training would raise here).
    out.again_logs = []

    def started(*_a, **_k):
        raise AssertionError("resume of a complete study started Ray or training")

    with pytest.MonkeyPatch.context() as mp:
        for name in ("connect", "ensure_base", "load_cached"):
            mp.setattr(runner, name, started)
        t0 = time.time()
        out.again = runner.resume_study(d, log=out.again_logs.append)
        out.again_seconds = time.time() - t0
    out.ray_after_again = ray.is_initialized()
    return out


@pytest.fixture(scope="module")
def other_process_module():
    p = subprocess.Popen(["sleep", "900"])
    yield p
    p.kill()
    p.wait()


def _main_in_process(argv: list[str]) -> tuple[int, str]:
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, err.getvalue()


@pytest.mark.slow
def test_ctrl_c_exits_130_releases_the_lock_and_says_how_to_resume(interrupted):
    assert interrupted.rc == EXIT_INTERRUPTED, interrupted.err[-3000:]
    assert interrupted.holder["pid"] > 0 and interrupted.holder["host"] == HOST
    assert not (interrupted.study_dir / LOCK_NAME).exists()
    assert f"prune-study resume {interrupted.study_dir}" in interrupted.err
    statuses = [r["status"] for r in interrupted.before.values()]
    assert 1 <= statuses.count("ok") < 3 and "failed" not in statuses


@pytest.mark.slow
def test_resume_is_refused_while_held_or_with_another_base_model(resumed,
                                                                 other_process_module):
    rc, err = resumed.held
    assert rc == EXIT_BAD_INPUT and "one driver per study" in err
    assert f"host {HOST}, pid {other_process_module.pid}, since 2026-01-01" in err
    rc, err = resumed.changed_base
    assert rc == EXIT_BAD_INPUT and "is not the one driven was run with" in err
    assert "Put the original file back" in err
    assert resumed.ray_after_refusals is False  # both refused before Ray starts


@pytest.mark.slow
def test_resume_ends_exactly_the_requested_trials_with_the_slow_one_timed_out(
        resumed, interrupted):
    proc = resumed.resume
    assert proc.returncode == EXIT_OK, proc.stderr[-3000:]
    assert "taking it over" in proc.stderr and not resumed.lock_after
    d = interrupted.study_dir
    recs = trial_records(d)
    assert len(recs) == 3  # none lost, none repeated
    by_epochs = {e: [r for r in recs if r["params"]["none.finetune_epochs"] == e]
                 for e in (0, 1000)}
    assert len(by_epochs[0]) == 2 and len(by_epochs[1000]) == 1
    assert all(r["status"] == "ok" for r in by_epochs[0])
    (slow,) = by_epochs[1000]
    assert slow["status"] == "timeout" and slow["row"] == {}
    assert "time_limit_s 10 s" in slow["error"] and slow["last"]["epoch"] >= 1
    # Ended before the interrupt: kept, not run again.
    for tid, before in interrupted.before.items():
        if before["status"] == "ok":
            now = next(r for r in recs if r["trial_id"] == tid)
            assert now["row"] == before["row"] and now["ended"] == before["ended"]
    summary = json.loads(proc.stdout)
    assert summary["complete"] is True and summary["ended"] == 3
    assert (summary["finished"], summary["timeout"], summary["failed"]) == (2, 1, 0)
    assert summary["front_size"] <= 2  # a timed-out trial is never on a front
    study = optuna.load_study(study_name="driven", storage=f"sqlite:///{d / 'optuna.db'}")
    states = {t.number: t.state for t in study.trials}
    assert states[slow["number"]] == TrialState.PRUNED
    assert sorted(n for n, s in states.items() if s == TrialState.COMPLETE) == sorted(
        r["number"] for r in by_epochs[0])


@pytest.mark.slow
def test_resume_of_a_complete_study_starts_neither_ray_nor_training(resumed):
    assert resumed.again["complete"] is True and resumed.again["finished"] == 2
    assert any("already complete: 3 of 3 trials ended" in m for m in resumed.again_logs)
    assert resumed.ray_after_again is False
    assert resumed.again_seconds < 30  # reads files; Ray alone takes longer to start
