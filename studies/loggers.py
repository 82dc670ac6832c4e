"""The study in the tools users already run: Ray Tune's result loggers, opt-in.

The spec's ``loggers`` become Tune callbacks in the driver, beside the study's own
record (``studies.record.Recorder``). Each writes into Tune's trial directory
``<study>/tune/<trial_id>/`` (Tune stages the files on the driver and copies them
there), except MLflow, which writes to its tracking store:

- ``csv``: ``progress.csv``, one row per report (every epoch, the final row);
- ``json``: ``result.json``, one JSON line per report, and ``params.json``;
- ``tensorboard``: ``events.out.tfevents.*``, numeric values as scalars ``ray/tune/<key>``;
- ``mlflow``: one run per trial in the experiment ``loggers.mlflow.experiment`` (default
  the study's name) at ``loggers.mlflow.tracking_uri`` (default the SQLite store
  ``<study>/mlflow.db``); params are the trial's sampled parameters, metrics the
  numeric values of each report, at the step Tune counts (its training iteration).

A logger mirrors the record, it is not the record: an MLflow server that fails warns
once and is skipped for the rest of the run, and the study goes on.
"""

from __future__ import annotations

import csv
import logging
import numbers
import os
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.tune import Callback
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback
from ray.tune.utils import flatten_dict

from studies.record import OWN_KEYS, TUNE_KEYS
from studies.spec import SpecError, StudySpec

__all__ = ["check_loggers", "default_tracking_uri", "make_loggers", "mlflow_metrics",
           "ProgressCSV", "StudyMLflow", "trial_params"]

logger = logging.getLogger(__name__)

# The module each logger needs, and the extra that installs it.
LOGGER_MODULES = {"tensorboard": "tensorboardX", "mlflow": "mlflow"}
PROGRESS_CSV = "progress.csv"
MLFLOW_DB = "mlflow.db"
# MLflow's rule for metric and parameter names (mlflow.utils.validation, 3.x).
_MLFLOW_KEY = re.compile(r"[\w.\- :/]{1,250}")
# MLflow's log_batch takes at most 1000 metrics and 100 params a call.
_BATCH_METRICS, _BATCH_PARAMS = 1000, 100


def check_loggers(spec: StudySpec) -> None:
    """Refuse, before Ray starts, a logger whose package is not installed here."""
    errors = []
    for name in spec.loggers:
        module = LOGGER_MODULES.get(name)
        if module is None:
            continue
        try:
            __import__(module)
        except ImportError as e:
            errors.append(f"loggers.{name}: needs the {module} package, which does not import "
                          f"here ({e}); install it with `pip install 'prune-study[loggers]'`")
    if errors:
        raise SpecError(errors, f"spec {spec.name!r}")


def make_loggers(spec: StudySpec, study_dir: Path) -> list[Callback]:
    """Tune callbacks for the spec's ``loggers``; none when it names none."""
    out: list[Callback] = []
    for name, settings in spec.loggers.items():
        if name == "csv":
            out.append(ProgressCSV())
        elif name == "json":
            out.append(JsonLoggerCallback())
        elif name == "tensorboard":
            out.append(TBXLoggerCallback())
        elif name == "mlflow":
            out.append(StudyMLflow(study_dir, study=spec.name,
                                   tracking_uri=settings.get("tracking_uri"),
                                   experiment=settings.get("experiment") or spec.name))
    return out


def default_tracking_uri(study_dir: Path) -> str:
    """MLflow's store when the spec names none: SQLite in the study directory. (MLflow 3
    refuses a new ``file:`` store unless ``MLFLOW_ALLOW_FILE_STORE`` is set.)"""
    return f"sqlite:///{Path(study_dir).resolve() / MLFLOW_DB}"


def _study_dir_of(trial, fallback: Path) -> Path:
    """A restored experiment may have moved: Tune's directory is ``<study_dir>/tune``."""
    tune_dir = Path(str(getattr(trial.storage, "experiment_fs_path", "")))
    if tune_dir.name == "tune" and (tune_dir.parent / "study.json").exists():
        return tune_dir.parent
    return fallback


# --------------------------------------------------------------------------- CSV


class ProgressCSV(CSVLoggerCallback):
    """Tune's CSV logger with a column for every key any report had.

    Tune's fixes the columns at a trial's first report, an epoch, and drops the
    final row's columns (accuracy, params, macs...). This one rewrites the file with
    the wider header when a report brings new columns (a few times a trial).
    """

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        if trial not in self._trial_files:
            self._setup_trial(trial)
        row = flatten_dict({k: v for k, v in result.items() if k != "config"}, delimiter="/")
        writer = self._trial_csv[trial]
        if writer is None or not set(row) <= set(writer.fieldnames):
            writer = self._widen(trial, row)
        writer.writerow(row)
        self._trial_files[trial].flush()

    def _widen(self, trial, row: dict) -> csv.DictWriter:
        path = Path(trial.local_path, PROGRESS_CSV)
        self._trial_files[trial].close()
        columns: list[str] = []
        rows: list[dict] = []
        if path.exists() and path.stat().st_size:
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                columns = list(reader.fieldnames or [])
                rows = list(reader)
        columns += [k for k in row if k not in columns]
        tmp = path.with_name(f".{PROGRESS_CSV}.tmp")
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, columns)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, path)
        self._trial_files[trial] = path.open("a", newline="")
        self._trial_csv[trial] = csv.DictWriter(self._trial_files[trial], columns)
        return self._trial_csv[trial]


# --------------------------------------------------------------------------- MLflow


def mlflow_metrics(result: dict) -> dict[str, float]:
    """The numbers of a report as MLflow metrics: nested values flattened (``channels/conv1``),
    Tune's bookkeeping, flags, text and lists left out."""
    flat = flatten_dict({k: v for k, v in result.items()
                         if k not in TUNE_KEYS and k not in OWN_KEYS}, delimiter="/")
    return {k: float(v) for k, v in flat.items()
            if isinstance(v, numbers.Real) and not isinstance(v, bool) and _mlflow_key(k)}


def trial_params(config: dict) -> dict:
    """The trial's sampled parameters: its config less the searcher's ``_`` keys."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _mlflow_key(key: str) -> bool:
    return bool(_MLFLOW_KEY.fullmatch(key)) and not key.startswith("/") and ".." not in key


def _chunks(items: list, n: int) -> Iterable[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


class StudyMLflow(MLflowLoggerCallback):
    """Ray's MLflow logger, one run per trial also across ``resume``.

    The store is opened at the first trial, where the study directory is known even
    after the study moved. A trial resumed by a new driver continues its run (found by
    the ``trial_id`` tag) instead of opening a second one. Metrics go in one batch a
    report; a trial whose final row says ``failed`` ends its run ``FAILED``.
    """

    def __init__(self, study_dir: Path, *, study: str, experiment: str,
                 tracking_uri: str | None = None):
        super().__init__(tracking_uri=tracking_uri, experiment_name=experiment,
                         tags={"study": study}, save_artifact=False)
        self.study_dir = Path(study_dir)
        self._connected = False
        self._disabled = False
        self._trial_runs: dict[str, str] = {}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.update(_connected=False, _disabled=False, _trial_runs={})
        return state

    def setup(self, *args, **kwargs) -> None:
        pass  # the store opens at the first trial (_connect)

    # ---------------------------------------------------------------- guarded calls

    def _guard(self, what: str, fn: Callable[[], None]) -> None:
        if self._disabled:
            return
        try:
            fn()
        except Exception as e:  # MLflow's and its store's errors: a mirror must not stop a study
            self._disabled = True
            logger.warning("MLflow logging stopped (%s failed: %s: %s); the study goes on and "
                           "its own files keep every result", what, type(e).__name__, e)

    def _connect(self, trial) -> None:
        if self._connected:
            return
        self._connected = True
        study_dir = _study_dir_of(trial, self.study_dir)
        uri = self.tracking_uri or default_tracking_uri(study_dir)
        if uri.startswith("file:") or "://" not in uri:
            # An explicit choice of MLflow's file store, which MLflow 3 keeps in
            # maintenance mode and refuses unless told.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        artifacts = None if self.tracking_uri else (study_dir / "mlartifacts").as_uri()
        # "Creating initial MLflow database tables..." at every new store: not news
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
        self.mlflow_util.setup_mlflow(tracking_uri=uri, experiment_name=self.experiment_name,
                                      artifact_location=artifacts)

    def _client(self):
        return self.mlflow_util._get_client()

    # ---------------------------------------------------------------- Tune's events

    def log_trial_start(self, trial) -> None:
        self._guard("opening the store", lambda: self._connect(trial))
        self._guard("starting a run", lambda: self._start(trial))

    def _start(self, trial) -> None:
        from mlflow.entities import Param, RunStatus

        client = self._client()
        run_id = self._trial_runs.get(trial.trial_id)
        if run_id is None:
            found = client.search_runs(
                [self.mlflow_util.experiment_id],
                filter_string=f"tags.trial_id = '{trial.trial_id}'", max_results=1)
            if found:
                run_id = found[0].info.run_id
                client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
            else:
                tags = {**self.tags, "trial_name": str(trial), "trial_id": trial.trial_id}
                number = trial.config.get("_number")
                if number is not None:
                    tags["optuna_trial_number"] = str(number)
                run_id = self.mlflow_util.start_run(run_name=str(trial), tags=tags).info.run_id
            self._trial_runs[trial.trial_id] = run_id
        params = [Param(k, str(v)) for k, v in
                  flatten_dict(trial_params(trial.config), delimiter="/").items()
                  if _mlflow_key(k)]
        for chunk in _chunks(params, _BATCH_PARAMS):
            client.log_batch(run_id, params=chunk)

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        if trial.trial_id not in self._trial_runs:
            self.log_trial_start(trial)
        self._guard("logging metrics", lambda: self._log(trial, result))

    def _log(self, trial, result: dict) -> None:
        from mlflow.entities import Metric

        run_id = self._trial_runs.get(trial.trial_id)
        if run_id is None:
            return
        step = int(result.get("training_iteration") or 0)
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in mlflow_metrics(result).items()]
        for chunk in _chunks(metrics, _BATCH_METRICS):
            self._client().log_batch(run_id, metrics=chunk)

    def log_trial_end(self, trial, failed: bool = False) -> None:
        run_id = self._trial_runs.pop(trial.trial_id, None)
        if run_id is None:
            return
        last = trial.last_result or {}
        status = "FAILED" if failed or last.get("status") == "failed" else "FINISHED"
        self._guard("ending a run", lambda: self._client().set_terminated(run_id, status))
