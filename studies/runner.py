"""Running a study: Ray Tune schedules the trials, an Optuna sampler chooses them.

The driver trains (or finds) the base model once, puts it in Ray's object
store, and starts a ``Tuner`` whose trainable wraps ``prune_core.trial.run_trial``.
The searcher is Ray's ``OptunaSearch`` on the spec's seeded sampler and an Optuna
storage in the study directory; ``resume_study`` restores the whole experiment
(trials, checkpoints, searcher) with ``Tuner.restore``.

One driver at a time: ``run`` and ``resume`` hold ``<study>/driver.lock``
(``studies.lock``). A study is *complete* when its ``trials`` have ended, each ok,
failed, timed out or stopped by the scheduler; a trial lost with a killed driver is
replaced and does not count. Ctrl-C stops Tune, which saves its state:
``run_study``/``resume_study`` then raise :class:`StudyInterrupted`.

This is the driver's side; ``studies.cluster`` joins or starts Ray, and
``studies.trainable`` is what runs on the workers.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import warnings
from pathlib import Path

import optuna
import ray
from ray import tune

from analysis.studydir import read_study
from prune_core.baseline import (
    BaseModel,
    cache_path,
    load_cached,
)
from prune_core.measure import channel_counts
from studies.base import ensure_base
from studies.cluster import Log, check_resources, connect, log_stderr
from studies.lock import DriverLock
from studies.loggers import check_loggers, make_loggers
from studies.progress import active
from studies.record import (
    FINAL_STATES,
    Recorder,
    summarize,
    trial_records,
    write_json,
    write_study_files,
)
from studies.samplers import constraints_text, sampler_text
from studies.schedulers import make_scheduler
from studies.search import check_storage_secret, make_searcher
from studies.spec import StudyError, StudySpec, load_spec
from studies.trainable import base_latency_task, make_trainable

__all__ = ["base_row", "check_base", "ensure_base", "finish_study", "progress",
           "resume_study", "run_study", "study_summary", "StudyInterrupted", "trial_slots",
           "tune_state_problem", "tune_storage"]

logger = logging.getLogger(__name__)


class StudyInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the study; Tune saved its state, so ``resume`` continues it."""

    def __init__(self, summary: dict, study_dir: Path):
        super().__init__(f"{study_dir} interrupted")
        self.summary = summary
        self.study_dir = study_dir


# --------------------------------------------------------------------------- base model


def check_base(study_dir: Path, base: BaseModel, path: Path) -> None:
    """Refuse a base model whose weights differ from those the study was run with."""
    recorded = (read_study(study_dir).get("base") or {}).get("weights_sha256")
    if recorded is None:
        return  # a study from before the hash was recorded: nothing to compare with
    now = base.weights_hash()
    if now != recorded:
        raise StudyError(
            f"the base model {path} is not the one {study_dir.name} was run with (weights "
            f"SHA-256 {now[:16]}, study.json records {recorded[:16]}): resumed trials would "
            "start from other weights than the finished ones. Put the original file back "
            "(from a backup of the cache), or start a new study from this base with "
            f"`prune-study run {study_dir / 'spec.yaml'} --name NEW_NAME`.")


def base_row(base: BaseModel, spec: StudySpec | None = None, log: Log = log_stderr) -> dict:
    """The base model's row for study.json; with the spec's ``latency``, timed as trials are
    (a Ray task with a trial's resources), so trials compare with it."""
    row = {**base.row, "channels": channel_counts(base.build("cpu"))}
    if spec is not None and spec.latency:
        log(f"timing the base model's latency ({spec.latency})")
        threads = max(1, int(spec.resources["cpu"]))
        task = ray.remote(base_latency_task).options(num_cpus=spec.resources["cpu"],
                                                      max_retries=0)
        row.update(ray.get(task.remote(spec.trial_spec().to_dict(), base, threads)))
    return row


# --------------------------------------------------------------------------- studies


def _trial_dirname(trial) -> str:
    return trial.trial_id


def _tune_environment() -> None:
    # Tune's knobs are environment variables read when the experiment starts.
    # Results carry objectives only at the end, so intermediate results lack them.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    # The study directory is the record; Tune's CSV/JSON/TensorBoard loggers would copy it
    # into every trial directory. The spec's `loggers` turn them on (studies.loggers).
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # Save the experiment state at most a second after a trial starts or ends, so a killed
    # driver resumes with (almost) every trial accounted for; the rest is reconciled below.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    # That frequent saving is deliberate; Tune would warn about it on a slow disk.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # With those loggers off, Tune's closing summary cannot read per-trial metrics files and
    # says so for every trial; the study's own files hold them.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    # Tune times the define-by-run space, and with it the sampler's own work (GP fits a
    # model there, 1 to 2 s a trial), and warns at every trial as if it were training.
    warnings.filterwarnings("ignore", message="Define-by-run function passed in the `space`",
                            category=UserWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def tune_storage(spec: StudySpec, study_dir: Path) -> str:
    """Where Tune keeps the experiment: the study directory, or the remote storage URL."""
    return f"{spec.storage.rstrip('/')}/{spec.name}" if spec.is_remote_storage else str(study_dir)


def run_study(spec: StudySpec, *, address: str | None = None, log: Log = log_stderr) -> dict:
    """Run a new study; returns its summary, whose ``complete`` says whether every trial
    ended. Raises :class:`StudyInterrupted` on Ctrl-C, ``LockHeld`` if another driver
    holds the study, :class:`StudyError` if the directory already holds one."""
    check_storage_secret(spec)
    study_dir = spec.study_dir
    with DriverLock(study_dir, command="run", log=log):
        if (study_dir / "study.json").exists() or (study_dir / "tune").exists():
            raise StudyError(f"{study_dir} already holds a study; continue it with "
                             f"`prune-study resume {study_dir}`, or choose another --name")
        return _start(spec, study_dir, address, log)


def _start(spec: StudySpec, study_dir: Path, address: str | None, log: Log,
           restart: bool = False) -> dict:
    """Train or find the base model, write the study's files and run every trial.
    ``restart``: the study's Optuna storage may already hold it (see :func:`_restart`)."""
    try:
        check_loggers(spec)
        _tune_environment()
        connect(address, log)
        check_resources(spec, address, log)
        searcher = make_searcher(spec, study_dir, restart=restart, log=log)
        base, info = ensure_base(spec, log)
        write_study_files(spec, study_dir, base_row(base, spec, log), info)
    except KeyboardInterrupt:
        log(f"[{spec.name}] interrupted before its first trial; "
            + (f"`prune-study resume {study_dir}` starts it" if (study_dir / "study.json")
               .exists() else "run the spec again to start it"))
        raise
    limit = spec.resources.get("time_limit_s")
    recorder = Recorder(study_dir, spec.objectives, spec.runs, spec.name, time_limit_s=limit,
                        keep_models=spec.keep_models, constraints=spec.constraints,
                        repeats=spec.repeats)
    tuner = tune.Tuner(
        make_trainable(spec, base),
        tune_config=tune.TuneConfig(
            search_alg=searcher, num_samples=spec.runs,
            reuse_actors=True, trial_dirname_creator=_trial_dirname,
            scheduler=make_scheduler(spec.scheduler, spec.objectives,
                                     history=study_dir / "history.jsonl"),
        ),
        run_config=tune.RunConfig(
            # Tune pickles the callbacks with the experiment and restores them on resume.
            name="tune", storage_path=tune_storage(spec, study_dir),
            callbacks=[recorder, *make_loggers(spec, study_dir)],
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2), verbose=0,
            # Tune checks it on each result, so at the end of an epoch (trials report once
            # an epoch); the Recorder calls a trial stopped past it `timeout`.
            stop={"time_total_s": limit} if limit else None,
        ),
    )
    log(f"[{spec.name}] {_trials_text(spec)} of {spec.methods_label} with the "
        f"{sampler_text(spec)} sampler; objectives "
        f"{', '.join(f'{k} {m}' for k, m in spec.objectives.items())}; "
        + (f"constraints {constraints_text(spec)}; " if spec.constraints else "")
        + f"study directory {study_dir}")
    return _drive(tuner, spec, study_dir, log)


def _trials_text(spec: StudySpec) -> str:
    if spec.repeats == 1:
        return f"{spec.trials} trials"
    return (f"{spec.trials} configurations x {spec.repeats} repeats ({spec.runs} trials, one "
            "seed each)")


def resume_study(study_dir: str | Path, *, address: str | None = None,
                 log: Log = log_stderr) -> dict:
    """Continue a study whose driver stopped, until its ``trials`` have ended: unfinished
    trials resume from checkpoints, ended ones are kept, and the sampler continues from its
    saved state. A complete study is left alone: no Ray, no training."""
    study_dir = Path(study_dir).expanduser().resolve()
    if not (study_dir / "spec.yaml").exists() or not (study_dir / "study.json").exists():
        raise StudyError(f"{study_dir} is not a study directory (no spec.yaml / study.json)")
    # The study's own spec was rehearsed when the study began.
    spec = load_spec(study_dir / "spec.yaml", rehearse=False)
    if spec.study_dir != study_dir:
        # The spec names where it was created; a moved study resumes where it is now.
        spec = spec.with_overrides(storage=str(study_dir.parent), name=study_dir.name,
                                   rehearse=False)
    s = study_summary(study_dir)
    if s["complete"]:
        log(f"[{spec.name}] already complete: {s['ended']} of {s['requested']} trials ended "
            f"({s['finished']} ok, {s['failed']} failed, {s['timeout']} timed out, "
            f"{s['stopped'] - s['lost']} stopped); nothing to resume. Report it with "
            f"`prune-study report {study_dir}`")
        return s
    check_storage_secret(spec)
    with DriverLock(study_dir, command="resume", log=log):
        tune_dir = study_dir / "tune"
        problem = None if spec.is_remote_storage else tune_state_problem(tune_dir)
        if problem is not None:
            return _restart(spec, study_dir, problem, address, log)
        # The base model is checked before Ray starts when the cache holds it.
        base_path = cache_path(spec.cache_dir, spec.trial_spec().base_spec())
        base = load_cached(spec.cache_dir, spec.trial_spec().base_spec())
        if base is not None:
            check_base(study_dir, base, base_path)
        check_loggers(spec)  # Tune.restore unpickles the loggers the study started with
        _tune_environment()
        connect(address, log)
        check_resources(spec, address, log)
        if base is None:
            base, _ = ensure_base(spec, log)
            check_base(study_dir, base, base_path)
        done = {}
        for rec in trial_records(study_dir):
            if rec.get("status") == "ok":
                done[rec["trial_id"]] = {**rec["row"], "status": "ok"}
            elif rec.get("status") == "failed":
                done[rec["trial_id"]] = {"status": "failed", "error": rec.get("error")}
        try:
            tuner = tune.Tuner.restore(
                tune_storage(spec, study_dir) + "/tune",
                trainable=make_trainable(spec, base, done),
                resume_unfinished=True, resume_errored=True,
            )
        except Exception as e:  # unpickling raises many types; all mean "unreadable"
            if spec.is_remote_storage:
                raise
            detail = str(e).splitlines()[0] if str(e) else ""
            return _restart(spec, study_dir, f"Ray Tune's state in {tune_dir} cannot be read "
                            f"({type(e).__name__}: {detail})", address, log)
        log(f"[{spec.name}] resuming: {s['ended']} of {spec.runs} trials ended "
            f"({s['finished']} ok, {s['failed']} failed, {s['timeout']} timed out), "
            f"{s['running']} to continue")
        return _drive(tuner, spec, study_dir, log)


def tune_state_problem(tune_dir: Path) -> str | None:
    """What is wrong with the Ray Tune state a resume restores, as far as the files show
    without unpickling them: None when ``tuner.pkl`` is there and not empty."""
    pkl = tune_dir / "tuner.pkl"
    if not tune_dir.is_dir():
        return f"Ray Tune's state {tune_dir} is missing"
    if not pkl.is_file():
        return f"Ray Tune's state file {pkl} is missing"
    if pkl.stat().st_size == 0:
        return (f"Ray Tune's state file {pkl} is empty (the study's start failed while Tune "
                "saved it)")
    return None


def _restart(spec: StudySpec, study_dir: Path, problem: str, address: str | None,
             log: Log) -> dict:
    """Resume a study whose Tune state is missing, empty or unreadable: start it afresh from
    its spec copy when no trial had started, keeping its Optuna storage and moving the
    damaged state aside; otherwise refuse (the trials' checkpoints and the sampler's
    memory went with the state)."""
    records = trial_records(study_dir)
    if records:
        ok = sum(r.get("status") == "ok" for r in records)
        raise StudyError(
            f"{study_dir} cannot be resumed: {problem}, and {len(records)} trial(s) had started "
            f"({ok} finished ok): their checkpoints and the sampler's history went with that "
            f"state. The finished trials stay readable (`prune-study status {study_dir}`, "
            f"`prune-study report {study_dir}`); to continue the search, start a new study "
            f"from its spec: `prune-study run {study_dir / 'spec.yaml'} --name NEW_NAME`")
    tune_dir = study_dir / "tune"
    if tune_dir.exists() or tune_dir.is_symlink():
        aside = study_dir / f"tune.damaged-{time.strftime('%Y%m%d-%H%M%S')}"
        os.replace(tune_dir, aside)
        log(f"[{spec.name}] {problem}; no trial had started, so the study starts afresh "
            f"from its spec copy (the damaged state is kept as {aside.name})")
    else:
        log(f"[{spec.name}] {problem}; no trial had started, so the study starts afresh "
            "from its spec copy")
    return _start(spec, study_dir, address, log, restart=True)


def trial_slots(spec: StudySpec) -> int:
    """How many of the study's trials the Ray cluster runs at once: its CPUs (and GPUs)
    over a trial's, at most ``max_concurrent``."""
    have = ray.cluster_resources()
    slots = []
    for key, kind in (("cpu", "CPU"), ("gpu", "GPU")):
        if spec.resources[key]:
            slots.append(int(have.get(kind, 0) // spec.resources[key]))
    if spec.max_concurrent:
        slots.append(spec.max_concurrent)
    return max(1, min(slots, default=1))


def _drive(tuner, spec: StudySpec, study_dir: Path, log: Log) -> dict:
    """Fit, reconcile and summarise; raise :class:`StudyInterrupted` after a Ctrl-C."""
    requested = spec.runs
    display = active()
    if display is not None:
        display.study_started(name=spec.name, requested=requested, slots=trial_slots(spec),
                              study_dir=study_dir,
                              records={r["trial_id"]: r for r in trial_records(study_dir)})
    try:
        grid, interrupted = _fit(tuner)
    except KeyboardInterrupt:
        # A second Ctrl-C, while Tune saved its state: what it saved before still resumes.
        log(f"interrupted; continue the study with `prune-study resume {study_dir}`")
        raise
    summary = finish_study(study_dir, _trial_ids(grid), requested, log, interrupted=interrupted)
    if interrupted:
        raise StudyInterrupted(summary, study_dir)
    return summary


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _fit(tuner) -> tuple:
    """``tuner.fit()``, and whether a Ctrl-C (SIGINT) ended it.

    On the first SIGINT Tune stops its trials, saves the experiment and returns normally
    with unfinished trials (``ray.tune.tune.run``, Ray 2.60). Its handler puts back the
    handler it found only then, so finding ours in place afterwards means it caught one.
    """
    if (threading.current_thread() is not threading.main_thread()
            or int(os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0"))):
        return tuner.fit(), False  # Tune installs no handler; Ctrl-C raises as usual
    previous = signal.signal(signal.SIGINT, _raise_interrupt)
    try:
        grid = tuner.fit()
        interrupted = signal.getsignal(signal.SIGINT) is _raise_interrupt
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None
                      else signal.default_int_handler)
    return grid, interrupted


def _trial_ids(grid) -> set[str]:
    # Trial directories are named by trial id (_trial_dirname).
    return {Path(r.path).name for r in grid}


def finish_study(study_dir: Path, known: set[str], requested: int, log: Log = log_stderr,
                 *, interrupted: bool = False) -> dict:
    """Reconcile trial files with the experiment Tune ran, and summarise."""
    for rec in trial_records(study_dir):
        if rec.get("status") not in FINAL_STATES and rec["trial_id"] not in known:
            # Sampled after the last saved experiment state of a killed driver: Tune has
            # no record of it, and the sampler drew a replacement.
            rec.update(status="stopped", lost=True, ended=rec.get("ended") or time.time(),
                       error="lost when the driver stopped before its state was saved; "
                             "a replacement trial was sampled")
            write_json(study_dir / "trials" / f"{rec['trial_id']}.json", rec)
    summary = study_summary(study_dir)
    counts = (f"{summary['ended']} of {requested} trials ended, {summary['finished']} ok, "
              f"{summary['failed']} failed, {summary['timeout']} timed out")
    if interrupted:
        log(f"[{summary['name']}] interrupted ({counts}); Tune saved its state: continue it "
            f"with `prune-study resume {study_dir}`")
    elif not summary["complete"]:
        log(f"[{summary['name']}] stopped before its end ({counts}); continue it with "
            f"`prune-study resume {study_dir}`")
    else:
        log(f"[{summary['name']}] done: {counts}, front of {summary['front_size']}; report "
            f"with `prune-study report {study_dir}`")
    return summary


def _lost(rec: dict) -> bool:
    """A trial lost with a killed driver: replaced, so it does not count as ended."""
    return bool(rec.get("lost")) or (rec.get("status") == "stopped" and str(
        rec.get("error") or "").startswith("lost when the driver stopped"))


def progress(study_dir: Path, requested: int | None) -> dict:
    """``ended`` (ok, failed, timeout, or stopped by the scheduler; lost trials are
    replaced and do not count), ``timeout``, ``lost``, and ``complete``: every requested
    trial ended and none runs."""
    recs = trial_records(study_dir)
    states = [r.get("status") for r in recs]
    ended = sum(1 for r in recs if r.get("status") in FINAL_STATES and not _lost(r))
    running = states.count("running") + states.count("pending")
    return {"ended": ended, "timeout": states.count("timeout"),
            "lost": sum(1 for r in recs if _lost(r)),
            "complete": requested is not None and ended >= requested and running == 0}


def study_summary(study_dir: Path) -> dict:
    """The study's summary (:func:`studies.record.summarize`) with :func:`progress`."""
    summary = summarize(study_dir)
    return {**summary, **progress(Path(study_dir), summary.get("requested"))}
