"""Every sampler a spec may name starts, runs, is interrupted and resumes on a real local Ray;
a study whose Ray Tune state is missing, empty or unreadable resumes from its own files where
they allow it, and is refused (exit 2, no traceback) where they do not.

Ray Tune pickles the searcher, and the sampler in it, when a study starts and at every
experiment checkpoint; Optuna 5.1's NSGA-II holds a ``threading.Lock``, which made every
NSGA-II study fail before its first trial.
"""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time
from pathlib import Path

import cloudpickle
import optuna
import pytest
from optuna.trial import TrialState

from analysis import results
from studies.cli import EXIT_BAD_INPUT, main
from studies.record import trial_records
from studies.runner import StudyInterrupted, resume_study, run_study, tune_state_problem
from studies.samplers import SAMPLERS, PicklableLock, make_sampler, picklable
from studies.spec import parse_spec
from studies.trainable import REPEAT_SEED
from tests.test_runner import tiny_spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sampler-runs")


def _spec(name: str, storage: Path, sampler: str, trials: int = 2):
    return parse_spec(tiny_spec(name, storage, trials=trials, finetune={}, max_concurrent=1,
                                sampler={"name": sampler, "seed": 3},
                                space={"none.finetune_epochs": 1,
                                       "none.lr": {"low": 1e-4, "high": 1e-2, "log": True}}))


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_pickles_and_samples_after_a_round_trip(name):
    spec = _spec(f"pickle-{name}", Path("/nonexistent"), name)
    sampler = make_sampler(spec)
    assert type(sampler) is SAMPLERS[name]  # Optuna's own class: GA keys are named after it
    copy = pickle.loads(cloudpickle.dumps(sampler))
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=copy)
    study.optimize(lambda t: (t.suggest_float("x", 0, 1), t.suggest_float("y", 0, 1)),
                   n_trials=6)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 6
    # The copy carries the seeded state: it samples as the original does.
    again = optuna.create_study(directions=["maximize", "minimize"],
                                sampler=make_sampler(spec))
    again.optimize(lambda t: (t.suggest_float("x", 0, 1), t.suggest_float("y", 0, 1)),
                   n_trials=6)
    assert [t.params for t in study.trials] == [t.params for t in again.trials]


def test_a_sampler_lock_survives_pickling_released_and_still_locks():
    class Holder(optuna.samplers.RandomSampler):
        def __init__(self):
            super().__init__(seed=0)
            self.lock = threading.Lock()
            self.rlock = threading.RLock()
            self.inner = optuna.samplers.RandomSampler(seed=1)
            self.inner.lock = threading.Lock()

    held = picklable(Holder())
    assert isinstance(held.lock, PicklableLock) and isinstance(held.inner.lock, PicklableLock)
    assert held.rlock.reentrant and not held.lock.reentrant
    held.lock.acquire()  # pickled while held: the copy starts released
    copy = pickle.loads(pickle.dumps(held.lock))
    assert copy.acquire(blocking=False)
    assert not copy.acquire(blocking=False)  # and it still excludes
    copy.release()
    held.lock.release()
    with held.rlock, held.rlock:  # re-entrant stays re-entrant
        pass


def _interrupt_after_first_trial(study_dir: Path) -> threading.Thread:
    """Ctrl-C this process once a trial has ended ok, as a user would at the terminal."""
    def watch():
        deadline = time.time() + 300
        while time.time() < deadline:
            if (study_dir / "trials").exists() and any(
                    r["status"] == "ok" for r in trial_records(study_dir)):
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.05)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


# The random sampler's studies are interrupted and resumed in test_runner and test_driver;
# GP's state round-trips through pickle above, as every sampler's does.
@pytest.mark.parametrize("name", ["tpe", "nsga2"])
def test_a_study_with_each_sampler_runs_is_interrupted_and_resumes(local_ray, storage, name):
    spec = _spec(f"study-{name}", storage, name)
    watcher = _interrupt_after_first_trial(spec.study_dir)
    with pytest.raises(StudyInterrupted):
        run_study(spec, log=lambda _m: None)
    watcher.join(timeout=5)
    before = {r["trial_id"]: r for r in trial_records(spec.study_dir) if r["status"] == "ok"}
    assert len(before) == 1

    summary = resume_study(spec.study_dir, log=lambda _m: None)
    assert summary["complete"] and summary["finished"] == 2, summary
    ok = [r for r in trial_records(spec.study_dir) if r["status"] == "ok"]
    for tid, rec in before.items():  # kept, not run again
        assert next(r for r in ok if r["trial_id"] == tid)["row"] == rec["row"]
    study = optuna.load_study(study_name=spec.name,
                              storage=f"sqlite:///{spec.study_dir / 'optuna.db'}")
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert sorted(t.number for t in complete) == sorted(r["number"] for r in ok)
    assert len({t.params["none.lr"] for t in complete}) == 2
    # The searcher Tune saved holds the spec's sampler, Optuna's class, and unpickles.
    state = max((spec.study_dir / "tune").glob("searcher-state-*.pkl"),
                key=lambda p: p.stat().st_mtime)
    assert type(pickle.loads(state.read_bytes())["_sampler"]) is SAMPLERS[name]


class _Unpicklable(optuna.samplers.RandomSampler):
    """A sampler holding a plain lock, as Optuna 5.1's NSGA-II does, not made picklable."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.lock = threading.Lock()


@pytest.mark.parametrize("damage", ["empty", "garbage"])
def test_resume_starts_afresh_a_study_whose_start_failed_before_any_trial(
        local_ray, storage, monkeypatch, damage):
    lr = 3e-3  # an enqueued point: asked before the loss, it still runs after it
    spec = parse_spec(tiny_spec(f"lost-{damage}", storage, trials=1, finetune={},
                                max_concurrent=1, sampler={"name": "random", "seed": 3},
                                space=_spec("x", storage, "random").source["space"],
                                enqueue=[{"none.lr": lr}]))
    # The start fails as NSGA-II's did on Optuna 5.1: Tune cannot pickle the searcher and
    # leaves tune/tuner.pkl empty, after the study's files and Optuna study were written.
    with monkeypatch.context() as m:
        m.setattr("studies.search.make_sampler", lambda spec: _Unpicklable(seed=0))
        with pytest.raises(TypeError, match="pickle"):
            run_study(spec, log=lambda _m: None)
    pkl = spec.study_dir / "tune" / "tuner.pkl"
    assert pkl.stat().st_size == 0 and not trial_records(spec.study_dir)
    if damage == "garbage":  # unreadable: found by Tune's restore, not by the file's size
        pkl.write_bytes(b"\x80\x05not a pickle")
    db = f"sqlite:///{spec.study_dir / 'optuna.db'}"
    optuna.load_study(study_name=spec.name, storage=db).ask()  # asked, never run

    logs: list[str] = []
    summary = resume_study(spec.study_dir, log=logs.append)
    assert summary["complete"] and summary["finished"] == 1, summary
    assert any("no trial had started, so the study starts afresh" in m for m in logs), logs
    assert list(spec.study_dir.glob("tune.damaged-*"))  # kept, not deleted
    # The trial asked before the loss never ran: told FAIL; the new one completed.
    study = optuna.load_study(study_name=spec.name, storage=db)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert study.trials[0].system_attrs["fixed_params"] == {"none.lr": lr}
    assert study.trials[1].params["none.lr"] == lr


def test_the_tune_state_problems_resume_sees_before_unpickling(tmp_path):
    tune_dir = tmp_path / "tune"
    assert "is missing" in tune_state_problem(tune_dir)
    tune_dir.mkdir()
    assert "tuner.pkl is missing" in tune_state_problem(tune_dir)
    (tune_dir / "tuner.pkl").write_bytes(b"")
    assert "is empty (the study's start failed" in tune_state_problem(tune_dir)
    (tune_dir / "tuner.pkl").write_bytes(b"\x80\x05")
    assert tune_state_problem(tune_dir) is None  # readable or not: Tune's restore decides


def test_resume_refuses_a_study_with_trials_whose_tune_state_is_empty(local_ray, storage,
                                                                      capsys):
    spec = _spec("lost-with-trials", storage, "tpe", trials=2)
    run_study(spec, log=lambda _m: None)
    recs = trial_records(spec.study_dir)
    # One trial still running when the state was lost: the study is not complete.
    recs[0]["status"] = "running"
    from studies.record import write_json
    write_json(spec.study_dir / "trials" / f"{recs[0]['trial_id']}.json", recs[0])
    (spec.study_dir / "tune" / "tuner.pkl").write_bytes(b"")

    assert main(["resume", str(spec.study_dir)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "tuner.pkl is empty" in err and "2 trial(s) had started" in err
    assert "prune-study run" in err and "--name NEW_NAME" in err
    assert (spec.study_dir / "tune" / "tuner.pkl").exists()  # nothing moved or removed



def test_mo_asha_judges_each_run_and_a_stopped_run_prunes_its_configuration(local_ray,
                                                                            storage):
    """``repeats: 2`` under mo_asha: every run is judged on its own epochs; a
    configuration with a stopped run is told PRUNED, one whose runs all finished is told
    the mean; the configurations' table counts only the complete ones."""
    spec = parse_spec(tiny_spec(
        "moasha-repeats", storage, methods="magnitude", finetune={}, max_concurrent=1,
        trials=2, repeats=2, sampler={"name": "random", "seed": 5},
        objectives={"accuracy": "max", "nonzero_macs": "min"},
        space={"magnitude.ratio": {"low": 0.3, "high": 0.95}, "magnitude.finetune_epochs": 2},
        scheduler={"name": "mo_asha", "grace_period": 1, "reduction_factor": 2}))
    summary = run_study(spec, log=lambda _m: None)
    assert summary["complete"]
    runs: dict = {}
    for r in trial_records(spec.study_dir):
        runs.setdefault(r["number"], []).append(r)
    assert sorted(runs) == [0, 1]
    assert all(sorted(x["repeat"] for x in group) == [0, 1] for group in runs.values())
    study = optuna.load_study(study_name=spec.name,
                              storage=f"sqlite:///{spec.study_dir / 'optuna.db'}")
    states = {}
    for t in study.trials:
        group = runs[t.number]
        statuses = {x["status"] for x in group}
        assert statuses <= {"ok", "stopped"}
        if "stopped" in statuses:
            assert t.state == TrialState.PRUNED
        else:
            assert t.state == TrialState.COMPLETE
            for name, value in zip(spec.objectives, t.values, strict=True):
                assert value == pytest.approx(sum(x["row"][name] for x in group) / 2)
        states[t.number] = t.state
    assert TrialState.PRUNED in states.values()  # the scheduler stopped at least one run
    complete = {n for n, s in states.items() if s == TrialState.COMPLETE}
    assert summary["configurations_ok"] == len(complete)
    configs = results.load(spec.study_dir)
    assert {int(n): s for n, s in zip(configs["number"], configs["status"], strict=True)} == {
        n: "ok" if s == TrialState.COMPLETE else "stopped" for n, s in states.items()}

def test_a_grid_study_runs_each_combination_once_and_enqueued_points_run_first(
        local_ray, storage):
    """Ablations: two learning rates by two fine-tuning lengths, each run once by Optuna's
    GridSampler on Ray; and exact points given in ``enqueue``, run first."""
    spec = parse_spec(tiny_spec(
        "grid", storage, trials=4, finetune={}, max_concurrent=1,
        sampler={"name": "grid", "seed": 3},
        space={"none.finetune_epochs": {"choices": [0, 1]},
               "none.lr": {"choices": [1e-4, 1e-3]}}))
    summary = run_study(spec, log=lambda _m: None)
    assert summary["complete"] and summary["finished"] == 4, summary
    grid = [(1e-4, 0), (1e-4, 1), (1e-3, 0), (1e-3, 1)]
    rows = [r["row"] for r in trial_records(spec.study_dir) if r["status"] == "ok"]
    assert sorted((r["none.lr"], r["none.finetune_epochs"]) for r in rows) == grid

    points = [{"none.lr": 3e-4}, {"none.lr": 2e-3}]
    spec = parse_spec(tiny_spec(
        "enqueued", storage, trials=3, finetune={}, max_concurrent=1,
        sampler={"name": "tpe", "seed": 3}, enqueue=points,
        space={"none.finetune_epochs": 0, "none.lr": {"low": 1e-4, "high": 1e-2, "log": True}}))
    run_study(spec, log=lambda _m: None)
    study = optuna.load_study(study_name=spec.name,
                              storage=f"sqlite:///{spec.study_dir / 'optuna.db'}")
    trials = sorted(study.trials, key=lambda t: t.number)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert [t.params for t in trials[:2]] == points
    assert trials[2].params["none.lr"] not in (3e-4, 2e-3)  # the sampler's own


def test_repeats_run_each_configuration_with_its_own_seeds_and_tell_the_mean(local_ray,
                                                                             storage, capsys):
    """``repeats: 2``: each configuration the sampler chooses runs twice, seeded apart;
    the sampler is told the mean once both ended; the front stands on the means; a study
    interrupted after the first run of a configuration resumes into its second."""
    spec = parse_spec(tiny_spec(
        "repeats", storage, trials=2, repeats=2, finetune={}, max_concurrent=1,
        sampler={"name": "tpe", "seed": 3},
        # Rates large enough that one epoch under another seed moves the predictions (at
        # 1e-4 two seeds' runs could score alike to the last image).
        space={"none.finetune_epochs": 1, "none.lr": {"low": 1e-2, "high": 5e-2, "log": True}}))
    watcher = _interrupt_after_first_trial(spec.study_dir)
    with pytest.raises(StudyInterrupted):
        run_study(spec, log=lambda _m: None)
    watcher.join(timeout=5)
    assert [r["repeat"] for r in trial_records(spec.study_dir) if r["status"] == "ok"] == [0]

    summary = resume_study(spec.study_dir, log=lambda _m: None)
    assert summary["complete"] and summary["finished"] == 4, summary
    assert summary["configurations"] == summary["configurations_ok"] == 2
    runs = [r for r in trial_records(spec.study_dir) if r["status"] == "ok"]
    by_number: dict = {}
    for r in runs:
        by_number.setdefault(r["number"], []).append(r)
    assert sorted(by_number) == [0, 1]
    study = optuna.load_study(study_name=spec.name,
                              storage=f"sqlite:///{spec.study_dir / 'optuna.db'}")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    for t in study.trials:
        pair = sorted(by_number[t.number], key=lambda r: r["repeat"])
        assert [r["repeat"] for r in pair] == [0, 1]
        assert [r["row"]["seed"] for r in pair] == [0, REPEAT_SEED]
        assert pair[0]["params"] == pair[1]["params"] == {"none.lr": t.params["none.lr"],
                                                         "none.finetune_epochs": 1}
        # the seeds differ, so the runs do; the sampler was told their mean
        measured = [tuple(r["row"][k] for k in ("accuracy", "balanced_accuracy",
                                                 "val_accuracy")) for r in pair]
        assert measured[0] != measured[1]
        told = dict(zip(spec.objectives, t.values, strict=True))
        for name, value in told.items():
            assert value == pytest.approx((pair[0]["row"][name] + pair[1]["row"][name]) / 2)

    configs = results.load(spec.study_dir)
    assert len(configs) == 2 and (configs["repeats"] == 2).all()
    assert len(results.load(spec.study_dir, runs=True)) == 4
    for _, c in configs.iterrows():
        pair = by_number[c["number"]]
        accs = [r["row"]["accuracy"] for r in pair]
        assert c["accuracy"] == pytest.approx(sum(accs) / 2)
        assert c["accuracy_sd"] == pytest.approx(abs(accs[0] - accs[1]) / 2 ** 0.5)
        assert c["trial_id"] in {r["trial_id"] for r in pair}
        assert c["accuracy_low"] <= min(accs) and c["accuracy_high"] >= max(accs)
    assert summary["front_size"] == int(configs["on_front"].sum()) >= 1
    # the report shows the means with their spread and draws the error bars; status counts
    out = spec.study_dir / "report"
    assert main(["report", str(spec.study_dir), "-o", str(out)]) == 0
    page = (out / "report.md").read_text()
    assert "± " in page, page[:2000]
    assert main(["status", str(spec.study_dir)]) == 0
    shown = capsys.readouterr().out
    assert "4 of 4 trials finished" in shown, shown
    assert "configurations: 2 of 2 with all 2 repeats ok" in shown, shown
    # keep_models: front judges configurations by their means: the run export takes from a
    # front configuration keeps its model, and --trial NUMBER names that run
    front = configs[configs["on_front"]].iloc[0]
    kept = next(r for r in trial_records(spec.study_dir) if r["trial_id"] == front["trial_id"])
    assert (spec.study_dir / kept["model"]["file"]).is_file(), kept["model"]
    out = spec.study_dir.parent / "repeats-export"
    assert main(["export", str(spec.study_dir), "--trial", str(int(front["number"])),
                 "-o", str(out)]) == 0
    assert front["trial_id"] in capsys.readouterr().err
