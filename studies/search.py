"""The Optuna side of a study: its storage, and a Ray Tune searcher that keeps it a
complete record (optuna-dashboard shows a study with its objective names, each trial's
result row, status, error and per-epoch validation accuracy).

Storage URLs never carry a literal password: ``${VAR}`` names an environment variable,
and PostgreSQL reads ``PGPASSWORD``; messages show the URL with ``***``.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import re
import tempfile
import warnings
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import optuna
import ray
from optuna.trial import TrialState
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

from analysis.constraints import Bounds
from analysis.results import mean_row
from studies.record import OWN_KEYS, TUNE_KEYS, environment
from studies.samplers import make_sampler
from studies.space import SearchSpace
from studies.spec import PIPELINE, StudyError, StudySpec, objective_lists

__all__ = ["check_storage_secret", "make_searcher", "mask_url", "mean_result",
           "optuna_storage", "RepeatSearch", "storage_url", "StudySearch", "warm_start_points"]

logger = logging.getLogger(__name__)
# Row columns too large for a user attribute (per-layer lists, histograms).
_BULKY = 2000


def _finite(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _record(ot_trial: optuna.Trial, result: dict | None, error: bool) -> None:
    """The trial's row, status and error as user attributes of its Optuna trial."""
    result = result or {}
    status = "failed" if error else str(result.get("status") or "stopped")
    ot_trial.set_user_attr("status", status)
    if result.get("error"):
        ot_trial.set_user_attr("error", str(result["error"])[:_BULKY])
    for key in ("hostname", "node_ip", "pid"):
        if key in result:
            ot_trial.set_user_attr(key, result[key])
    for key, value in result.items():
        if key in TUNE_KEYS or key in OWN_KEYS or key.startswith("_"):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            value = str(value)  # JSON has no NaN; the storage would refuse it
        if value is None or isinstance(value, bool | int | float | str):
            ot_trial.set_user_attr(key, value)
        elif len(repr(value)) <= _BULKY:
            try:
                ot_trial.set_user_attr(key, value)
            except (TypeError, ValueError):
                ot_trial.set_user_attr(key, repr(value))


class StudySearch(OptunaSearch):
    """OptunaSearch that tells Optuna the truth about every trial.

    A failed trial (its final row has ``status: failed``) is told FAIL, a trial a
    scheduler stopped early is told PRUNED; only complete rows with finite values
    become points. Each suggestion carries its Optuna trial number as ``_number``.
    After a restore, Optuna trials asked after the last saved searcher state (and
    so unknown to Tune) are marked FAIL instead of staying RUNNING forever.
    Relies on OptunaSearch's ``_ot_trials``/``_ot_study``/``_completed_trials``
    (Ray 2.60).

    The Optuna storage is a complete record of the study: objective names are set on
    the study, every trial carries its result row, status and error as user
    attributes, per-epoch validation accuracy as intermediate values (single-objective
    studies; Optuna keeps none for several objectives, so there it is the user attribute
    ``val_accuracy_by_step``), and the spec's ``constraints`` as constraint values.
    """

    def __init__(self, *args, constraints: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.constraints = Bounds(constraints) if constraints else None
        self._steps: dict[str, list] = {}
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        if self._ot_study is not None and self._ot_study.metric_names is None:
            with warnings.catch_warnings():  # "experimental" since Optuna 3.2
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self._ot_study.set_metric_names(list(metrics))

    def suggest(self, trial_id: str) -> dict | None:
        params = super().suggest(trial_id)
        if isinstance(params, dict):
            params["_number"] = self._ot_trials[trial_id].number
        return params

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Per-epoch validation accuracy as the trial's intermediate values."""
        ot_trial = self._ot_trials.get(trial_id)
        value = result.get("val_accuracy")
        if ot_trial is None or result.get("final") or not _finite(value):
            return
        step = int(result.get("training_iteration") or 0)
        if len(self._ot_study.directions) == 1:
            if step not in ot_trial.storage.get_trial(ot_trial._trial_id).intermediate_values:
                ot_trial.report(float(value), step)
        else:
            steps = self._steps.setdefault(trial_id, [])
            steps.append([step, float(value)])
            ot_trial.set_user_attr("val_accuracy_by_step", steps)

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
        ot_trial = self._ot_trials[trial_id]
        try:
            _record(ot_trial, result, error)
            if self.constraints is not None and state != TrialState.FAIL:
                self.constraints.tell(ot_trial, result if state == TrialState.COMPLETE else None)
            self._ot_study.tell(ot_trial, told, state=state)
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


def mean_result(results: list[dict]) -> dict:
    """One result for the runs of one configuration (:func:`analysis.results.mean_row`; Tune's
    own keys the first run's), with ``repeat_values``: every run's value of each number
    that differs between them."""
    own = {k: v for k, v in results[0].items() if k in TUNE_KEYS or k in OWN_KEYS}
    spread: dict = {}
    out = mean_row([{k: v for k, v in r.items() if k not in own} for r in results], spread)
    return {**out, **own, "repeat_values": spread}


class RepeatSearch(Searcher):
    """Runs each configuration ``inner`` suggests ``repeats`` times (Ray trials with
    ``_repeat`` 0..repeats-1, the trainable seeds each its own way) and tells ``inner``
    once, when every run has ended: the mean of the runs when all finished ok, else
    failed (a run failed) or pruned (a scheduler stopped one). A configuration's runs
    are handed out before a new configuration is asked for. Its state (which run
    belongs to which configuration) is saved with the inner searcher's."""

    def __init__(self, inner: StudySearch, repeats: int):
        super().__init__(metric=inner.metric, mode=inner.mode)
        self.inner = inner
        self.repeats = repeats
        # configuration (the Ray trial id of its first run, the inner searcher's id) ->
        # {"config": suggested config, "issued": runs handed out, "ended": {repeat: ...}}
        self.groups: dict[str, dict] = {}
        self.member: dict[str, tuple[str, int]] = {}  # run's trial id -> (group, repeat)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.inner.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str) -> dict | None:
        for gid, g in self.groups.items():
            if g["issued"] < self.repeats:
                self.member[trial_id] = (gid, g["issued"])
                g["issued"] += 1
                return {**g["config"], "_repeat": self.member[trial_id][1]}
        config = self.inner.suggest(trial_id)
        if not isinstance(config, dict):
            return config
        self.groups[trial_id] = {"config": dict(config), "issued": 1, "ended": {}}
        self.member[trial_id] = (trial_id, 0)
        return {**config, "_repeat": 0}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        gid, repeat = self.member.get(trial_id, (None, None))
        if repeat == 0:  # the intermediate values of the configuration's first run
            self.inner.on_trial_result(gid, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        gid, repeat = self.member.get(trial_id, (None, None))
        g = self.groups.get(gid)
        if g is None or repeat in g["ended"]:
            return
        g["ended"][repeat] = (result or {}, error)
        if len(g["ended"]) < self.repeats:
            return
        runs = [g["ended"][r] for r in sorted(g["ended"])]
        del self.groups[gid]
        failed = next(((res, err) for res, err in runs
                       if err or res.get("status") == "failed"), None)
        if failed is not None:
            self.inner.on_trial_complete(gid, failed[0], error=failed[1])
        elif all(res.get("status") == "ok" for res, _ in runs):
            self.inner.on_trial_complete(gid, mean_result([res for res, _ in runs]))
        else:  # a run stopped early (scheduler or time limit): the configuration too
            self.inner.on_trial_complete(gid, next(res for res, _ in runs
                                                   if res.get("status") != "ok"))

    def save(self, checkpoint_path: str) -> None:
        with tempfile.TemporaryDirectory(prefix="prune-study-searcher-") as d:
            self.inner.save(os.path.join(d, "inner.pkl"))
            inner = Path(d, "inner.pkl").read_bytes()
        state = {k: v for k, v in self.__dict__.items() if k != "inner"}
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"state": state, "inner": inner}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            saved = pickle.load(f)
        self.__dict__.update({k: v for k, v in saved["state"].items() if k != "inner"})
        with tempfile.TemporaryDirectory(prefix="prune-study-searcher-") as d:
            Path(d, "inner.pkl").write_bytes(saved["inner"])
            self.inner.restore(os.path.join(d, "inner.pkl"))


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# User and password as SQLAlchemy's URL parser reads them (a password may hold "/").
_USERINFO = re.compile(r"^([\w+.-]+://[^:/@]*)(?::([^@]*))?@")


def mask_url(url: str) -> str:
    """``scheme://user:***@host/...``: a URL fit for logs and error messages."""
    m = _USERINFO.match(url)
    return url if not m or m.group(2) is None else f"{m.group(1)}:***@{url[m.end():]}"


def check_storage_secret(spec: StudySpec) -> None:
    """Refuse an Optuna storage URL that spells out its password: the spec is copied into
    the study directory as spec.yaml, so the password would be written there."""
    s = spec.optuna_storage or ""
    m = _USERINFO.match(s)
    if m:
        password = m.group(2)
        if password and _ENV_REF.sub("", password):
            raise StudyError(
                f"optuna_storage {mask_url(s)!r} holds a password, which would be copied into "
                "the study directory (spec.yaml). Give it through the environment instead: "
                "postgresql://USER@HOST/DB with PGPASSWORD set (PostgreSQL reads it), or "
                "${VAR} in the URL (postgresql://USER:${DB_PASSWORD}@HOST/DB).")


def storage_url(url: str) -> str:
    """The URL with every ``${VAR}`` replaced by the environment variable's value
    (URL-quoted where it stands in the user or password)."""
    m = _USERINFO.match(url)
    userinfo_end = m.end() if m else -1
    missing = [n for n in _ENV_REF.findall(url) if n not in os.environ]
    if missing:
        raise StudyError(f"optuna_storage refers to ${{{missing[0]}}}, which is not set in "
                         "this environment; export it before `run` or `resume`")

    def value(m: re.Match) -> str:
        v = os.environ[m.group(1)]
        return quote(v, safe="") if m.start() < userinfo_end else v

    return _ENV_REF.sub(value, url)


def optuna_storage(spec: StudySpec, study_dir: Path) -> optuna.storages.BaseStorage:
    """SQLite in the study directory by default; a SQLAlchemy URL; or a journal file."""
    s = spec.optuna_storage
    if s is None:
        return optuna.storages.RDBStorage(f"sqlite:///{study_dir / 'optuna.db'}")
    if "://" in s:
        try:
            return optuna.storages.RDBStorage(storage_url(s))
        except StudyError:
            raise
        except Exception as e:  # SQLAlchemy and its drivers raise many types
            detail = str(e).splitlines()[0] if str(e) else ""
            password = urlsplit(storage_url(s)).password
            for secret in {password, unquote(password or "")} - {None, ""}:
                detail = detail.replace(secret, "***")
            raise StudyError(f"could not open the Optuna storage {mask_url(s)!r}: "
                             f"{type(e).__name__}: {detail}") from e
    journal = s.startswith("journal:") or s.endswith((".log", ".journal"))
    path = Path(s.removeprefix("journal:")).expanduser()
    path = path if path.is_absolute() else study_dir / path
    if journal:
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    return optuna.storages.RDBStorage(f"sqlite:///{path}")


def warm_start_points(spec: StudySpec) -> list[dict]:
    """The searched values of the ``warm_start`` study's front (its best trials), each cut
    to what this study searches: a value outside this study's range or choices drops the
    point; a parameter this study does not search is left out (this study samples it)."""
    if not spec.warm_start or "sensitivity" in spec.warm_start:
        return []
    ws = spec.warm_start
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            old = optuna.load_study(study_name=ws["study"], storage=storage_url(ws["storage"]))
            front = old.best_trials
    except (KeyError, ValueError) as e:
        raise StudyError(f"warm_start: no study {ws['study']!r} in {mask_url(ws['storage'])!r} "
                         f"({e})") from e
    searched = spec.searched
    chains = set(spec.chain_names)
    points = []
    for t in front:
        point = {}
        for name, value in t.params.items():
            if name == PIPELINE:
                if value not in chains:
                    break
                if len(chains) > 1:
                    point[name] = value
            elif name in searched:
                if not _fits(searched[name], value):
                    break
                point[name] = value
        else:
            if point and point not in points:
                points.append(point)
    return points


def _fits(p, value) -> bool:
    if p.kind == "categorical":
        return value in p.choices
    return _finite(value) and p.low <= value <= p.high and (p.kind != "int" or
                                                             float(value).is_integer())


def make_searcher(spec: StudySpec, study_dir: Path, *, restart: bool = False,
                  log=lambda _m: None):
    """The study's searcher: StudySearch on its seeded sampler and storage, limited to
    ``max_concurrent`` trials. ``restart``: a study whose Tune state was lost before any
    trial started continues in the Optuna study it had; trials asked then never ran, and
    are told FAIL (an enqueued point among them is enqueued again). ``warm_start:
    sensitivity`` enqueues its allocations after the spec's own points (the scan runs
    here, before the first trial, as Ray tasks)."""
    metrics, modes = objective_lists(spec)
    single = len(metrics) == 1
    storage = optuna_storage(spec, study_dir)
    n = 0  # trials the Optuna study already holds (enqueued ones included)
    if spec.name in optuna.get_all_study_names(storage):
        old = optuna.load_study(study_name=spec.name, storage=storage)
        n = len(old.trials)
        if restart:
            for t in old.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                old.tell(t.number, state=TrialState.FAIL)
                if "fixed_params" in t.system_attrs:  # an enqueued point: still to run
                    old.enqueue_trial(t.system_attrs["fixed_params"])
        elif n:
            raise StudyError(f"the Optuna storage already holds a study {spec.name!r} with {n} "
                             "trials; resume that study or choose another --name")
    points = warm_start_points(spec)
    searcher = StudySearch(
        space=SearchSpace(spec), metric=metrics[0] if single else metrics,
        mode=modes[0] if single else modes, sampler=make_sampler(spec),
        study_name=spec.name, storage=storage, constraints=spec.constraints or None,
        points_to_evaluate=points or None,
    )
    study = searcher._ot_study
    # Enqueued in Optuna, not handed to Tune as points to evaluate: a resumed study finds
    # the ones not yet run waiting in its storage (a restarted one too: not again).
    for point in spec.enqueue if not n else ():
        study.enqueue_trial(point)
    if spec.warm_start and "sensitivity" in spec.warm_start and not n:
        from studies.sensitivity import warm_start_points as scanned

        for point in scanned(spec, study_dir, log):
            study.enqueue_trial(point)
    study.set_user_attr("spec", spec.to_yaml())
    study.set_user_attr("environment", environment())
    if spec.constraints:
        study.set_user_attr("constraints", spec.constraints)
    # Tune keeps only one trial pending for a searcher that has no limiter, so trials would
    # start one after another; the limiter lets as many start as the cluster holds.
    outer = RepeatSearch(searcher, spec.repeats) if spec.repeats > 1 else searcher
    return ConcurrencyLimiter(outer, max_concurrent=spec.max_concurrent or _capacity(spec))


def _capacity(spec: StudySpec) -> int:
    """How many trials the connected cluster holds at once, given each trial's resources."""
    have = ray.cluster_resources()
    slots = [int(have.get("CPU", 1) // spec.resources["cpu"])]
    if spec.resources["gpu"]:
        slots.append(int(have.get("GPU", 0) // spec.resources["gpu"]))
    return max(1, min(slots))
