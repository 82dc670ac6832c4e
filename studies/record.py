"""The study directory (docs/study-directory.md): what a study writes as it runs.

A Ray Tune callback in the driver turns each trial event into files: one JSON
file per trial, rewritten atomically, and one line per epoch report appended to
``history.jsonl``. It also prints a short progress line per finished trial.
Nothing here trains. Reading the files back is :mod:`analysis.studydir`'s job, for
``status``, ``report`` and ``resume`` alike; ``trial_records`` and ``summarize`` are its
names for the runner.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from ray import tune

from analysis.constraints import Bounds
from analysis.results import mean_row
from analysis.studydir import trial_records
from studies import progress
from studies.samplers import AUTO, auto_choice
from studies.spec import StudySpec

# Keys Ray Tune adds to every result; they are not part of a trial's row.
TUNE_KEYS = frozenset({
    "training_iteration", "time_total_s", "episodes_total", "timesteps_total", "node_ip",
    "hostname", "pid", "time_this_iter_s", "timestamp", "date", "time_since_restore",
    "timesteps_since_restore", "iterations_since_restore", "config", "checkpoint_dir_name",
    "done", "trial_id", "experiment_tag", "should_checkpoint",
})
# Keys the trainable adds to its reports besides run_trial's metrics.
OWN_KEYS = frozenset({"final", "node_id", "error", "traceback", "checkpoint", "report_seconds",
                      "model_sha256"})
# A finished trial's compressed model: the file in its final checkpoint, and where the study
# keeps it (docs/study-directory.md).
MODEL_FILE = "model.pt"
MODELS_DIR = "models"
# A trial ends ok, failed, timeout (over resources.time_limit_s) or stopped (by the
# scheduler, or lost with a killed driver).
FINAL_STATES = ("ok", "failed", "timeout", "stopped")


def write_json(path: Path, obj) -> None:
    """Write JSON atomically: a temporary file, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=_plain))
    os.replace(tmp, path)


def _plain(v):
    if hasattr(v, "tolist"):
        return v.tolist()
    return str(v)


def environment() -> dict:
    """Versions, machine, commit and load (:func:`prune_core.environment.environment`),
    with Ray's and Optuna's versions: stored beside every study."""
    import optuna
    import ray

    from prune_core.environment import environment as core_environment

    return {**core_environment(), "ray": ray.__version__, "optuna": optuna.__version__}


def write_study_files(spec: StudySpec, study_dir: Path, base_row: dict, base_info: dict) -> None:
    """spec.yaml, study.json and base.json at the start of a study."""
    study_dir.mkdir(parents=True, exist_ok=True)
    (study_dir / "trials").mkdir(exist_ok=True)
    tmp = study_dir / ".spec.yaml.tmp"
    tmp.write_text(spec.to_yaml())
    os.replace(tmp, study_dir / "spec.yaml")
    write_json(study_dir / "study.json", {
        "name": spec.name,
        "objectives": dict(spec.objectives),
        "sampler": spec.sampler,
        **({"sampler_choice": dict(zip(("sampler", "reason"), auto_choice(spec),
                                       strict=True))} if spec.sampler == AUTO else {}),
        "sampler_seed": spec.sampler_seed,
        "trials": spec.trials,
        "repeats": spec.repeats,
        "methods": spec.methods_label,
        "space": {k: p.to_dict() for k, p in spec.space.items()},
        "constraints": dict(spec.constraints),
        "model": {"name": spec.model, **spec.model_kw},
        "data": {"name": spec.data, **spec.data_kw},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "environment": environment(),
        "base": base_info,
    })
    write_json(study_dir / "base.json", base_row)


# --------------------------------------------------------------------------- fronts


def nondominated(points: list[list[float]], modes: list[str]) -> list[bool]:
    """Which points no other point dominates (``modes`` are ``max``/``min`` per column;
    equal points all count): moocore's sort, so a driver of thousands of trials does not
    compare every pair each time one ends."""
    from analysis.pareto import nondominated as front

    if not points:
        return []
    return front(points, [m == "max" for m in modes]).tolist()


def dominates(a: list[float], b: list[float], modes: list[str]) -> bool:
    """Whether point ``a`` dominates ``b``: no worse in every objective, better in one."""
    signs = [-1.0 if m == "max" else 1.0 for m in modes]
    pa = [s * v for s, v in zip(signs, a, strict=True)]
    pb = [s * v for s, v in zip(signs, b, strict=True)]
    return all(x <= y for x, y in zip(pa, pb, strict=True)) and pa != pb


def objective_points(rows: list[dict], objectives: dict[str, str]) -> list[list[float]]:
    """The objective values of the rows whose every objective is a finite number."""
    pts = []
    for r in rows:
        vals = [r.get(k) for k in objectives]
        if all(isinstance(v, int | float) and math.isfinite(v) for v in vals):
            pts.append([float(v) for v in vals])
    return pts


# --------------------------------------------------------------------------- callback


class Recorder(tune.Callback):
    """Writes ``trials/<trial_id>.json`` and ``history.jsonl`` as results arrive."""

    def __init__(self, study_dir: Path, objectives: dict[str, str], total: int,
                 name: str = "", log: Callable[[str], None] | None = None,
                 time_limit_s: float | None = None, keep_models: str = "front",
                 constraints: dict | None = None, repeats: int = 1):
        self.study_dir = Path(study_dir)
        self.repeats = repeats
        self.keep_models = keep_models
        self.constraints = dict(constraints or {})
        self.time_limit_s = time_limit_s
        self.objectives = dict(objectives)
        self.total = total
        self.name = name
        self.log = log
        self.records: dict[str, dict] = {}
        self._loaded = False
        self._t0 = time.time()

    # Ray pickles callbacks with the experiment; the log function stays behind.
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["log"] = None
        state["records"] = {}
        state["_loaded"] = False
        return state

    def _say(self, msg: str) -> None:
        display = progress.active()
        if display is not None:
            display.log(msg)
        else:
            (self.log or (lambda m: print(m, file=sys.stderr, flush=True)))(msg)

    def _load(self, trial) -> None:
        """On the first event: find the study directory and the records written so far."""
        if self._loaded:
            return
        self._loaded = True
        # A restored experiment may have moved: Tune's directory is <study_dir>/tune.
        tune_dir = Path(str(getattr(trial.storage, "experiment_fs_path", "")))
        if tune_dir.name == "tune" and tune_dir.parent.joinpath("study.json").exists():
            self.study_dir = tune_dir.parent
        # Damaged files are skipped with a warning; the trial's next event rewrites its file.
        for rec in trial_records(self.study_dir):
            self.records[rec["trial_id"]] = rec

    def _record(self, trial) -> dict:
        self._load(trial)
        rec = self.records.get(trial.trial_id)
        if rec is None:
            config = dict(trial.config)
            number = config.pop("_number", None)
            rec = {
                "trial_id": trial.trial_id, "number": number,
                **({"repeat": config["_repeat"]} if "_repeat" in config else {}),
                "status": "pending",
                "params": {k: v for k, v in config.items() if not k.startswith("_")},
                "row": {}, "last": {}, "error": None, "node_id": None, "hostname": None,
                "pid": None, "started": None, "ended": None, "retries": 0,
                "checkpoint_step": None,
            }
            self.records[trial.trial_id] = rec
        return rec

    def _save(self, rec: dict) -> None:
        write_json(self.study_dir / "trials" / f"{rec['trial_id']}.json", rec)
        display = progress.active()
        if display is not None:
            display.trials(self.records)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        rec = self._record(trial)
        if rec["status"] not in FINAL_STATES:
            rec["status"] = "running"
            rec["started"] = rec["started"] or time.time()
            self._save(rec)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        rec = self._record(trial)
        rec["node_id"] = result.get("node_id", rec["node_id"])
        rec["hostname"] = result.get("hostname", rec["hostname"])
        rec["pid"] = result.get("pid", rec["pid"])
        metrics = {k: v for k, v in result.items() if k not in TUNE_KEYS and k not in OWN_KEYS}
        if result.get("final"):
            replayed = rec["status"] in ("ok", "failed")
            if result.get("status") == "ok":
                metrics.pop("step", None)
                rec.update(status="ok", row=metrics, error=None)
                if "report_seconds" in result:
                    rec["report_seconds"] = result["report_seconds"]
            else:
                rec.update(status="failed", row={}, error=result.get("error"),
                           traceback=result.get("traceback") or rec.get("traceback"))
            rec["ended"] = rec["ended"] if replayed and rec["ended"] else time.time()
            self._save(rec)
            self._progress(rec)
            return
        if rec["status"] in FINAL_STATES:
            return
        rec["status"] = "running"
        if "epoch" in metrics:
            rec["last"] = metrics
            line = {"trial_id": trial.trial_id, **metrics}
            with open(self.study_dir / "history.jsonl", "a") as f:
                f.write(json.dumps(line, default=_plain) + "\n")
        else:
            rec["last"] = {**rec["last"], "step": metrics.get("step", rec["last"].get("step"))}
        self._save(rec)

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info) -> None:
        rec = self._record(trial)
        last = trial.last_result or {}
        if last.get("final") and last.get("model_sha256"):
            self._keep_model(rec, checkpoint, last["model_sha256"])
            self._save(rec)
            self._drop_models()
            return
        # Tune has recorded the checkpoint: a retry would continue after this step.
        rec["checkpoint_step"] = last.get("step")
        self._save(rec)

    # ---------------------------------------------------------------- kept models

    def _keep_model(self, rec: dict, checkpoint, sha256: str) -> None:
        """Copy the model of a finished trial's final checkpoint to models/<trial_id>.pt,
        atomically, and record its SHA-256 (checked against the worker's) in the trial."""
        from prune_core.compressed import file_sha256

        dest = self.study_dir / MODELS_DIR / f"{rec['trial_id']}.pt"
        dest.parent.mkdir(exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        with checkpoint.as_directory() as d:
            shutil.copyfile(Path(d) / MODEL_FILE, tmp)
        got = file_sha256(tmp)
        if got != sha256:
            tmp.unlink()
            rec["model"] = {"error": f"the copy's SHA-256 {got[:16]} differs from the "
                                     f"trial's {sha256[:16]}; not kept"}
            return
        os.replace(tmp, dest)
        rec["model"] = {"file": f"{MODELS_DIR}/{dest.name}", "sha256": got,
                        "bytes": dest.stat().st_size}

    def _drop_models(self) -> None:
        """With ``keep_models: front``, remove the models of trials that can no longer reach
        the front: infeasible, or dominated by a feasible finished trial."""
        if getattr(self, "keep_models", "front") != "front":
            return
        limits = Bounds(getattr(self, "constraints", None))
        modes = list(self.objectives.values())
        units = self._units()
        feasible = [r for r in units.values() if r["status"] == "ok"
                    and not limits.broken(r["row"])]
        points = {r["trial_id"]: objective_points([r["row"]], self.objectives) for r in feasible}
        for run in self.records.values():
            kept = run.get("model") or {}
            if not kept.get("file") or kept.get("removed"):
                continue
            rec = units.get(run.get("number"), run) if getattr(self, "repeats", 1) > 1 else run
            if rec["status"] != "ok":
                continue  # a configuration with runs still to end: judged once they have
            mine = objective_points([rec["row"]], self.objectives)
            why = None
            if limits.broken(rec["row"]):
                why = "infeasible: " + ", ".join(limits.broken(rec["row"]))
            elif not mine:
                why = "an objective is missing or not finite"
            else:
                for other in feasible:
                    theirs = points[other["trial_id"]]
                    if other is not rec and theirs and dominates(theirs[0], mine[0], modes):
                        why = f"dominated by trial {other.get('number')} ({other['trial_id']})"
                        break
            if why:
                (self.study_dir / kept["file"]).unlink(missing_ok=True)
                run["model"] = {**kept, "removed": why}
                self._save(run)

    def _units(self) -> dict:
        """What the front is made of: the trials, or with ``repeats`` the configurations
        (by number; status ok with the mean row once every run finished ok)."""
        repeats = getattr(self, "repeats", 1)  # a Recorder pickled by an older version
        if repeats == 1:
            return {r["trial_id"]: r for r in self.records.values()}
        groups: dict = {}
        for r in self.records.values():
            if r.get("number") is not None and not r.get("lost"):
                groups.setdefault(r["number"], []).append(r)
        units = {}
        for number, runs in groups.items():
            ok = [r for r in runs if r["status"] == "ok"]
            done = len(ok) == repeats
            units[number] = {"trial_id": f"configuration {number}", "number": number,
                             "status": "ok" if done else "incomplete",
                             "row": mean_row([r["row"] for r in ok]) if done else {}}
        return units

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        rec = self._record(trial)
        if rec["status"] not in FINAL_STATES:
            # Ended without a final row: the time limit or a scheduler stopped it early.
            # (A Recorder pickled by an older version has no time limit.)
            limit = getattr(self, "time_limit_s", None)
            took = (trial.last_result or {}).get("time_total_s")
            if limit and isinstance(took, int | float) and took >= limit:
                rec.update(status="timeout", ended=time.time(), row={},
                           error=f"stopped after {took:.0f} s, over resources.time_limit_s "
                                 f"{limit:g} s (checked at the end of each epoch)")
            else:
                rec.update(status="stopped", ended=time.time())
            self._save(rec)
            self._progress(rec)

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        rec = self._record(trial)
        rec["retries"] = rec.get("retries", 0) + 1
        rec["status"] = "running"
        self._save(rec)
        self._say(f"[{self.name}] trial {trial.trial_id} lost its worker; retrying from its "
                  f"last checkpoint (retry {rec['retries']})")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        rec = self._record(trial)
        if rec["status"] in ("ok", "failed"):
            return
        rec.update(status="failed", ended=time.time(), row={}, error=_error_text(trial))
        self._save(rec)
        self._progress(rec)

    # ---------------------------------------------------------------- progress

    def counts(self) -> dict:
        states = [r["status"] for r in self.records.values()]
        return {s: states.count(s)
                for s in ("ok", "failed", "timeout", "stopped", "running", "pending")}

    def _progress(self, rec: dict) -> None:
        c = self.counts()
        # the front and the best values of configurations (means) in a study with repeats
        rows = [r["row"] for r in self._units().values() if r["status"] == "ok"]
        pts = objective_points(rows, self.objectives)
        modes = list(self.objectives.values())
        best = []
        for i, (k, m) in enumerate(self.objectives.items()):
            if pts:
                v = (max if m == "max" else min)(p[i] for p in pts)
                best.append(f"{k} {v:.4g}")
        front = sum(nondominated(pts, modes)) if pts else 0
        what = rec["status"]
        if rec["status"] == "ok":
            what = "ok " + ", ".join(f"{k} {rec['row'].get(k, float('nan')):.4g}"
                                     for k in self.objectives)
        elif rec["status"] == "failed":
            what = f"failed: {(rec.get('error') or '').splitlines()[0][:120]}"
        elif rec["status"] == "timeout":
            what = f"timed out: {rec.get('error')}"
        msg = (
            f"[{self.name}] trial {rec.get('number')} {what} | {c['ok']}/{self.total} done, "
            f"{c['running']} running, {c['failed']} failed"
            + (f", {c['timeout']} timed out" if c["timeout"] else "")
            + (f", {c['stopped']} stopped" if c["stopped"] else "")
            + (f" | best {', '.join(best)} | front {front}" if best else "")
        )
        display = progress.active()
        if display is not None:
            display.trial_line(msg)
        else:
            self._say(msg)


def _error_text(trial) -> str:
    """The error of a trial that Ray gave up on (after its retries)."""
    path = getattr(trial, "error_file", None)
    if path and Path(path).exists():
        text = Path(path).read_text().strip()
        if text:
            return text.splitlines()[-1][:2000] + "\n" + text[-4000:]
    return str(getattr(trial, "error_msg", None) or "the trial's worker failed")


# --------------------------------------------------------------------------- status


def summarize(study_dir: Path) -> dict:
    """Counts, best values, front size and hypervolume, from the files alone
    (:func:`analysis.results.summary`)."""
    from analysis.results import summary

    return summary(study_dir)
