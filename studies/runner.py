"""Running a study: Ray Tune schedules the trials, an Optuna sampler chooses them.

The driver trains (or finds) the base model once, puts it in Ray's object
store, and starts a ``Tuner`` whose trainable wraps ``prune_core.trial.run_trial``.
The searcher is Ray's ``OptunaSearch`` on the spec's seeded sampler and an Optuna
storage in the study directory; ``resume_study`` restores the whole experiment
(trials, checkpoints, searcher) with ``Tuner.restore``.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
import ray
import torch
from optuna.trial import TrialState
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from prune_core.baseline import (
    BaseModel,
    atomic_save,
    cache_path,
    load_cached,
    safe_load,
    train_base,
)
from prune_core.measure import channel_counts
from prune_core.trial import TrialSpec, load_data, run_trial, save_json_safe
from studies.record import (
    FINAL_STATES,
    Recorder,
    summarize,
    trial_records,
    write_json,
    write_study_files,
)
from studies.space import SearchSpace, make_sampler
from studies.spec import StudyError, StudySpec, load_spec, objective_lists

CHECKPOINT_FILE = "trial.pt"
logger = logging.getLogger(__name__)
Log = Callable[[str], None]


class ClusterError(RuntimeError):
    """Ray could not be started or reached."""


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- Ray


def connect(address: str | None = None, log: Log = _stderr) -> None:
    """Start a local Ray, or join the cluster at ``address``; reuse one already started."""
    if ray.is_initialized():
        if not address:
            return
        # An explicit address must never be served by a Ray this process started earlier.
        ray.shutdown()
    if address:
        _check_reachable(address)
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        except Exception as e:  # Ray raises several types here; all mean "not connected"
            raise ClusterError(
                f"could not join the Ray cluster at {address}: {type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}\nA cluster started with `ray start` "
                "(Ray 2.60) uses token authentication: set RAY_AUTH_MODE=token in the "
                "environment of every node and of this command, with the cluster's token in "
                "~/.ray/auth_token or RAY_AUTH_TOKEN."
            ) from e
        log(f"joined the Ray cluster at {address}: {_resources_text()}")
        return
    try:
        ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    except Exception as e:
        raise ClusterError(f"could not start a local Ray: {type(e).__name__}: {e}") from e
    log(f"started a local Ray: {_resources_text()}")


def _check_reachable(address: str) -> None:
    """Fail in seconds, not minutes, when nothing listens at ``host:port``."""
    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"--address {address!r} is not host:port (for example "
                           "127.0.0.1:6379) or 'auto'")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise ClusterError(f"nothing answers at {address} ({e.strerror or e}); start the head "
                           "with `ray start --head --port=PORT` or `ray up cluster.yaml`") from e


def _resources_text() -> str:
    r = ray.cluster_resources()
    nodes = len([n for n in ray.nodes() if n.get("Alive")])
    return f"{nodes} node(s), {r.get('CPU', 0):g} CPUs, {r.get('GPU', 0):g} GPUs"


def _check_resources(spec: StudySpec, address: str | None, log: Log) -> None:
    have = ray.cluster_resources()
    for key, name in (("cpu", "CPU"), ("gpu", "GPU")):
        need = spec.resources[key]
        if need > have.get(name, 0):
            msg = (f"each trial asks for {need:g} {name}(s) (resources.{key}) but the cluster "
                   f"has {have.get(name, 0):g}")
            if address is None:
                raise ClusterError(msg)
            log(f"warning: {msg}; trials wait until the cluster grows")


# --------------------------------------------------------------------------- base model


def _train_base_task(study: dict, threads: int) -> BaseModel:
    torch.set_num_threads(threads)
    spec = TrialSpec.from_dict(study)
    return train_base(spec.base_spec(), load_data(spec), log=_stderr)


def ensure_base(spec: StudySpec, log: Log = _stderr) -> tuple[BaseModel, dict]:
    """The study's base model from the cache, or trained once as a Ray task and cached."""
    ts = spec.trial_spec()
    bspec = ts.base_spec()
    path = cache_path(spec.cache_dir, bspec)
    base = load_cached(spec.cache_dir, bspec)
    if base is not None:
        log(f"base model {spec.model} found in the cache ({path.name}); not retrained")
        return base, {"key": bspec.key(), "path": str(path), "cached": True}
    log(f"training the base model {spec.model} on {spec.data} "
        f"({bspec.train.epochs} epochs) once for every trial")
    t0 = time.perf_counter()
    # Trained where trials run (a GPU worker on a cluster), with a trial's resources.
    task = ray.remote(_train_base_task).options(
        num_cpus=spec.resources["cpu"], num_gpus=spec.resources["gpu"], max_retries=0)
    base = ray.get(task.remote(ts.to_dict(), max(1, int(spec.resources["cpu"]))))
    atomic_save(base.to_payload(), path)
    log(f"base model: accuracy {base.row['accuracy']:.4f}, {base.row['macs'] / 1e6:.2f} M MACs, "
        f"{base.row['params'] / 1e6:.3f} M params ({time.perf_counter() - t0:.0f} s)")
    return base, {"key": bspec.key(), "path": str(path), "cached": False}


def base_row(base: BaseModel) -> dict:
    return {**base.row, "channels": channel_counts(base.build("cpu"))}


# --------------------------------------------------------------------------- trainable


class _TuneReport:
    """``run_trial``'s report callback: one ``tune.report`` per epoch, with its checkpoint.

    A method reports an epoch's metrics, then saves its checkpoint for the same
    step; the two become one Tune result, so each epoch is one training iteration.
    """

    def __init__(self, extra: dict):
        self.extra = extra
        self.pending: dict | None = None
        self.seconds = 0.0  # spent reporting and checkpointing: Tune's cost inside a trial

    def __call__(self, metrics: dict, checkpoint: dict | None = None) -> None:
        t0 = time.perf_counter()
        metrics = save_json_safe(metrics)
        if checkpoint is None and not metrics.get("final"):
            self.flush()
            self.pending = metrics
        elif checkpoint is None:
            self.flush()
            self.seconds += time.perf_counter() - t0
            tune.report({**metrics, **self.extra, "report_seconds": self.seconds})
            return
        else:
            if self.pending is not None and self.pending.get("step") == metrics.get("step"):
                metrics = {**self.pending, **metrics}
                self.pending = None
            else:
                self.flush()
            with tempfile.TemporaryDirectory(prefix="prune-study-ckpt-") as d:
                torch.save(checkpoint, Path(d) / CHECKPOINT_FILE)
                tune.report({**metrics, **self.extra},
                            checkpoint=tune.Checkpoint.from_directory(d))
        self.seconds += time.perf_counter() - t0

    def flush(self) -> None:
        if self.pending is not None:
            tune.report({**self.pending, **self.extra})
            self.pending = None


def train_trial(config: dict, *, base: BaseModel, study: dict, threads: int = 1,
                done: dict | None = None) -> None:
    """Ray Tune function trainable: one trial of the study.

    A trial that raises (a diverged loss, a method's error) reports a final
    ``failed`` row instead of raising, so Tune does not retry what would fail
    again; a lost worker is retried from the last checkpoint by Tune.
    """
    torch.set_num_threads(threads)
    extra = {"node_id": ray.get_runtime_context().get_node_id(),
             "hostname": socket.gethostname()}
    trial_id = tune.get_context().get_trial_id()
    if done and trial_id in done:
        # Finished before the driver was killed, after its last experiment checkpoint:
        # hand back the recorded row rather than running it again.
        tune.report({**done[trial_id], "final": True, **extra})
        return
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resume = safe_load(Path(d) / CHECKPOINT_FILE)
    params = {k: v for k, v in config.items() if not k.startswith("_")}
    report = _TuneReport(extra)
    try:
        run_trial({"study": study, "params": params}, report, base=base, resume=resume,
                  log=_stderr)
    except Exception as e:
        if type(e).__module__.split(".")[0] == "ray":
            raise  # Tune's own signals (stop, lost session) are not trial failures
        report.flush()
        tune.report({"final": True, "status": "failed", "error": f"{type(e).__name__}: {e}",
                     "traceback": traceback.format_exc()[-4000:], **extra})
        return
    report.flush()


def make_trainable(spec: StudySpec, base: BaseModel, done: dict | None = None):
    threads = max(1, int(spec.resources["cpu"]))
    fn = tune.with_parameters(train_trial, base=base, study=spec.trial_spec().to_dict(),
                              threads=threads, done=done or {})
    return tune.with_resources(fn, {"cpu": spec.resources["cpu"], "gpu": spec.resources["gpu"]})


# --------------------------------------------------------------------------- searcher


class StudySearch(OptunaSearch):
    """OptunaSearch that tells Optuna the truth about every trial.

    A failed trial (its final row has ``status: failed``) is told FAIL, a trial a
    scheduler stopped early is told PRUNED; only complete rows with finite values
    become points. Each suggestion carries its Optuna trial number as ``_number``.
    After a restore, Optuna trials asked after the last saved searcher state (and
    so unknown to Tune) are marked FAIL instead of staying RUNNING forever.
    Relies on OptunaSearch's ``_ot_trials``/``_ot_study``/``_completed_trials``
    (Ray 2.60).
    """

    def suggest(self, trial_id: str) -> dict | None:
        params = super().suggest(trial_id)
        if isinstance(params, dict):
            params["_number"] = self._ot_trials[trial_id].number
        return params

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # Intermediate values are not Optuna objectives (a scheduler does early stopping).
        return

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        values = [result.get(m) for m in metrics] if result else []
        ok = (not error and bool(result) and result.get("status") == "ok"
              and all(isinstance(v, int | float) and math.isfinite(v) for v in values))
        if ok:
            state, told = TrialState.COMPLETE, values if len(values) > 1 else values[0]
        elif not error and result and not result.get("final"):
            state, told = TrialState.PRUNED, None
        else:
            state, told = TrialState.FAIL, None
        try:
            self._ot_study.tell(self._ot_trials[trial_id], told, state=state)
        except (ValueError, RuntimeError) as exc:
            # Told already: a trial that finished just before the driver was killed.
            logger.debug("trial %s already told to Optuna: %s", trial_id, exc)
        self._completed_trials.add(trial_id)

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        live = {t.number for tid, t in self._ot_trials.items()
                if tid not in self._completed_trials}
        for t in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.number not in live:
                self._ot_study.tell(t.number, state=TrialState.FAIL)


def optuna_storage(spec: StudySpec, study_dir: Path) -> optuna.storages.BaseStorage:
    """SQLite in the study directory by default; a SQLAlchemy URL; or a journal file."""
    s = spec.optuna_storage
    if s is None:
        return optuna.storages.RDBStorage(f"sqlite:///{study_dir / 'optuna.db'}")
    if "://" in s:
        return optuna.storages.RDBStorage(s)
    journal = s.startswith("journal:") or s.endswith((".log", ".journal"))
    path = Path(s.removeprefix("journal:")).expanduser()
    path = path if path.is_absolute() else study_dir / path
    if journal:
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    return optuna.storages.RDBStorage(f"sqlite:///{path}")


def make_searcher(spec: StudySpec, study_dir: Path):
    metrics, modes = objective_lists(spec)
    single = len(metrics) == 1
    storage = optuna_storage(spec, study_dir)
    if spec.name in optuna.get_all_study_names(storage):
        n = len(optuna.load_study(study_name=spec.name, storage=storage).trials)
        if n:
            raise StudyError(f"the Optuna storage already holds a study {spec.name!r} with {n} "
                             "trials; resume that study or choose another --name")
    searcher = StudySearch(
        space=SearchSpace(spec), metric=metrics[0] if single else metrics,
        mode=modes[0] if single else modes, sampler=make_sampler(spec),
        study_name=spec.name, storage=storage,
    )
    # Tune keeps only one trial pending for a searcher that has no limiter, so trials would
    # start one after another; the limiter lets as many start as the cluster holds.
    return ConcurrencyLimiter(searcher, max_concurrent=spec.max_concurrent or _capacity(spec))


def _capacity(spec: StudySpec) -> int:
    """How many trials the connected cluster holds at once, given each trial's resources."""
    have = ray.cluster_resources()
    slots = [int(have.get("CPU", 1) // spec.resources["cpu"])]
    if spec.resources["gpu"]:
        slots.append(int(have.get("GPU", 0) // spec.resources["gpu"]))
    return max(1, min(slots))


def make_scheduler(spec: StudySpec):
    if not spec.scheduler:
        return None
    kw = {k: v for k, v in spec.scheduler.items() if k != "name"}
    # The per-epoch validation accuracy stands in for the final objective (spec checks it).
    return ASHAScheduler(time_attr="training_iteration", metric="val_accuracy", mode="max", **kw)


# --------------------------------------------------------------------------- studies


def _trial_dirname(trial) -> str:
    return trial.trial_id


def _tune_environment() -> None:
    # Tune's knobs are environment variables read when the experiment starts.
    # Results carry objectives only at the end, so intermediate results lack them.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    # The study directory is the record; Tune's CSV/JSON/TensorBoard loggers would copy it.
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
    return f"{spec.storage.rstrip('/')}/{spec.name}" if spec.is_remote_storage else str(study_dir)


def run_study(spec: StudySpec, *, address: str | None = None, log: Log = _stderr) -> dict:
    """Run a new study to its end; returns its summary."""
    study_dir = spec.study_dir
    if (study_dir / "study.json").exists() or (study_dir / "tune").exists():
        raise StudyError(f"{study_dir} already holds a study; continue it with "
                         f"`prune-study resume {study_dir}`, or choose another --name")
    _tune_environment()
    study_dir.mkdir(parents=True, exist_ok=True)
    connect(address, log)
    _check_resources(spec, address, log)
    searcher = make_searcher(spec, study_dir)
    base, info = ensure_base(spec, log)
    write_study_files(spec, study_dir, base_row(base), info)
    recorder = Recorder(study_dir, spec.objectives, spec.trials, spec.name)
    tuner = tune.Tuner(
        make_trainable(spec, base),
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=make_scheduler(spec), num_samples=spec.trials,
            reuse_actors=True, trial_dirname_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(
            name="tune", storage_path=tune_storage(spec, study_dir), callbacks=[recorder],
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2), verbose=0,
        ),
    )
    log(f"[{spec.name}] {spec.trials} trials of {spec.methods_label} with the {spec.sampler} "
        f"sampler; objectives {', '.join(f'{k} {m}' for k, m in spec.objectives.items())}; "
        f"study directory {study_dir}")
    grid = tuner.fit()
    return finish_study(study_dir, _trial_ids(grid), spec.trials, log)


def resume_study(study_dir: str | Path, *, address: str | None = None,
                 log: Log = _stderr) -> dict:
    """Continue a study whose driver stopped: unfinished trials resume from checkpoints,
    finished ones are kept, and the sampler continues from its saved state."""
    study_dir = Path(study_dir).expanduser().resolve()
    if not (study_dir / "spec.yaml").exists() or not (study_dir / "study.json").exists():
        raise StudyError(f"{study_dir} is not a study directory (no spec.yaml / study.json)")
    tune_dir = study_dir / "tune"
    spec = load_spec(study_dir / "spec.yaml")
    if spec.study_dir != study_dir:
        # The spec names where it was created; a moved study resumes where it is now.
        spec = spec.with_overrides(storage=str(study_dir.parent), name=study_dir.name)
    if not spec.is_remote_storage and not tune.Tuner.can_restore(str(tune_dir)):
        raise StudyError(f"{study_dir} has no Ray Tune state to resume (tune/ is missing or "
                         "was never saved); start it again with `prune-study run`")
    _tune_environment()
    connect(address, log)
    _check_resources(spec, address, log)
    base, _ = ensure_base(spec, log)
    done = {}
    for rec in trial_records(study_dir):
        if rec.get("status") == "ok":
            done[rec["trial_id"]] = {**rec["row"], "status": "ok"}
        elif rec.get("status") == "failed":
            done[rec["trial_id"]] = {"status": "failed", "error": rec.get("error")}
    s = summarize(study_dir)
    log(f"[{spec.name}] resuming: {s['finished']} of {spec.trials} trials finished, "
        f"{s['failed']} failed, {s['running']} to continue")
    tuner = tune.Tuner.restore(
        tune_storage(spec, study_dir) + "/tune", trainable=make_trainable(spec, base, done),
        resume_unfinished=True, resume_errored=True,
    )
    grid = tuner.fit()
    return finish_study(study_dir, _trial_ids(grid), spec.trials, log)


def _trial_ids(grid) -> set[str]:
    # Trial directories are named by trial id (_trial_dirname).
    return {Path(r.path).name for r in grid}


def finish_study(study_dir: Path, known: set[str], requested: int, log: Log = _stderr) -> dict:
    """Reconcile trial files with the experiment Tune ran, and summarise."""
    for rec in trial_records(study_dir):
        if rec.get("status") not in FINAL_STATES and rec["trial_id"] not in known:
            # Sampled after the last saved experiment state of a killed driver: Tune has
            # no record of it, and the sampler drew a replacement.
            rec.update(status="stopped", ended=rec.get("ended") or time.time(),
                       error="lost when the driver stopped before its state was saved; "
                             "a replacement trial was sampled")
            write_json(study_dir / "trials" / f"{rec['trial_id']}.json", rec)
    summary = study_summary(study_dir)
    ended = summary["finished"] + summary["failed"] + summary.get("stopped", 0)
    if ended < requested or summary["running"]:
        log(f"[{summary['name']}] stopped before its end ({summary['finished']} of "
            f"{requested} finished); continue it with `prune-study resume {study_dir}`")
        return summary
    log(f"[{summary['name']}] done: {summary['finished']} finished, {summary['failed']} "
        f"failed, front of {summary['front_size']}; report with `prune-study report "
        f"{study_dir}`")
    return summary


def study_summary(study_dir: Path) -> dict:
    """``analysis.results.summary`` when the analysis package provides it, else counts."""
    try:
        from analysis.results import summary as analysis_summary
    except ImportError:
        return summarize(study_dir)
    own = summarize(study_dir)
    return {**own, **analysis_summary(Path(study_dir))}
