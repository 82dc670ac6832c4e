"""A study directory (docs/study-directory.md) as tidy DataFrames.

Reads only the files ``prune-study run`` writes, through :mod:`analysis.studydir`, so it
works on a finished study, on one still running (trial files are replaced atomically; a
half-appended last history line is skipped), on a damaged one (damaged trial files and
history lines are skipped with a warning) and on a copy of the directory on a machine
without torch or Ray.
"""

from __future__ import annotations

import hashlib
import json
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import pareto
from analysis.constraints import Bounds
from analysis.studydir import (
    STATUSES,
    StudyDirError,
    StudyDirWarning,
    history_records,
    indexed_trials,
    read_base,
    read_study,
    study_path,
    trial_records,
)

__all__ = ["ID_COLUMNS", "STATUSES", "Study", "StudyDirError", "StudyDirWarning", "StudyInfo",
           "configurations", "front_mask", "history", "load", "mean_row", "objective_values",
           "open_studies", "study_info", "study_reference", "summary", "trial_states"]

# Columns every trial table has, in this order, before the parameters and measurements.
ID_COLUMNS = ["study", "trial_id", "number", "status", "method"]
# Trial-file keys kept as columns besides params and row.
META_COLUMNS = ["progress", "error", "hostname", "node_id", "started", "ended"]
# Keys of a result row that describe the report, not the model.
ROW_BOOKKEEPING = frozenset({"status", "method", "step", "final", "checkpoint"})


@dataclass(frozen=True)
class StudyInfo:
    """What a study is (study.json) and its base model's measurement row (base.json)."""

    path: Path
    name: str
    objectives: dict[str, str]
    sampler: str | None = None
    sampler_seed: int | None = None
    trials: int | None = None
    repeats: int = 1  # runs of each configuration
    methods: str | list | None = None
    space: dict = field(default_factory=dict)
    created: str | None = None
    environment: dict = field(default_factory=dict)
    base: dict = field(default_factory=dict)
    constraints: dict = field(default_factory=dict)  # column -> {"min": x, "max": y}


def study_info(study_dir: str | Path) -> StudyInfo:
    """study.json and base.json of a study directory; StudyDirError when either is damaged."""
    path = study_path(study_dir)
    doc = read_study(path)
    return StudyInfo(
        path=path, name=doc.get("name") or path.name, objectives=dict(doc["objectives"]),
        sampler=doc.get("sampler"), sampler_seed=doc.get("sampler_seed"),
        trials=doc.get("trials"), repeats=int(doc.get("repeats") or 1),
        methods=doc.get("methods"), space=doc.get("space") or {},
        created=doc.get("created"), environment=doc.get("environment") or {},
        base=read_base(path), constraints=doc.get("constraints") or {},
    )


def _chain(value) -> str | None:
    if isinstance(value, list | tuple):
        return "+".join(str(v) for v in value)
    return None if value is None else str(value)


def _progress(last: dict | None) -> str | None:
    if not last:
        return None
    parts = [str(last[k]) for k in ("stage", "phase") if last.get(k)]
    if last.get("epoch") is not None:
        parts.append(f"epoch {last['epoch']}")
    return " ".join(parts) or None


def _trial_record(doc: dict, info: StudyInfo) -> tuple[dict, list[str]]:
    params = doc.get("params") or {}
    row = (doc.get("row") or {}) if doc["status"] == "ok" else {}
    study_chain = info.methods if isinstance(info.methods, str) else None
    rec = {
        "study": info.name, "trial_id": str(doc["trial_id"]), "number": doc.get("number"),
        **({"repeat": doc["repeat"]} if doc.get("repeat") is not None else {}),
        # The trial file's status is the truth; the row's own "status" is always "ok".
        "status": doc["status"],
        "method": _chain(row.get("method") or params.get("pipeline") or study_chain),
    }
    names = [k for k in params if k != "pipeline"]
    rec.update({k: v for k, v in params.items() if k != "pipeline"})
    rec.update({k: v for k, v in row.items() if k not in ROW_BOOKKEEPING})
    rec.update({"progress": _progress(doc.get("last")), "error": doc.get("error"),
                "hostname": doc.get("hostname"), "node_id": doc.get("node_id"),
                "started": doc.get("started"), "ended": doc.get("ended")})
    return rec, names


def load(study_dir: str | Path, runs: bool = False) -> pd.DataFrame:
    """One row per trial: ids, status, method, every parameter and measurement, on_front.

    Rows are in trial-number order. Trials that did not finish have NaN measurements and
    ``on_front`` False. ``df.attrs`` holds ``params`` (the searched parameter columns),
    ``objectives`` and ``study``.

    In a study with ``repeats``, a row is one configuration (see :func:`configurations`);
    ``runs`` gives one row per run instead, with its ``repeat``.
    """
    return _load(study_info(study_dir), runs=runs)


def _load(info: StudyInfo, runs: bool = False) -> pd.DataFrame:
    records, params = [], []
    for doc in trial_records(info.path, info.space):
        rec, names = _trial_record(doc, info)
        records.append(rec)
        params += [n for n in names if n not in params]
    if info.repeats > 1 and not runs:
        records = configurations(records, info)
    df = _table(records, info)
    flags = ["on_front", "near_front", "feasible", "violated"]
    rest = [c for c in df.columns if c not in ID_COLUMNS + params + META_COLUMNS + flags]
    df = df[ID_COLUMNS + params + rest + flags + META_COLUMNS]
    df.attrs.update({"params": params, "objectives": dict(info.objectives),
                     "study": info.name})
    return df


# Two-sided 95 % quantiles of Student's t by degrees of freedom (1 to 30); past 30, 2.0.
T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
       2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
       2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
# Columns of a run that are not measurements, whatever their type.
RUN_KEYS = frozenset({*ID_COLUMNS, *META_COLUMNS, "repeat", "seed", "lost"})


def mean_row(rows: list[dict], spread: dict | None = None) -> dict:
    """The runs of one configuration as one row: the mean of each number that all of them
    have and that differs between them; the rest the first run's. ``spread``, where given,
    receives each averaged key's values."""
    out = dict(rows[0])
    for key in rows[0]:
        values = [r.get(key) for r in rows]
        if all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
               for v in values) and len(set(values)) > 1:
            out[key] = sum(values) / len(values)
            if spread is not None:
                spread[key] = values
    return out


def configurations(records: list[dict], info: StudyInfo) -> list[dict]:
    """The runs of a study with ``repeats`` as one record per configuration (Optuna trial
    ``number``), in order.

    ``status`` is ok once every repeat finished ok; running or pending while one has not
    ended; failed if one failed; else the first other ending (timeout, stopped). An ok
    configuration's numbers are the means over its runs, ``<objective>_sd`` (and
    ``accuracy_sd``) their sample standard deviations; ``trial_id`` is the run nearest the
    mean in the objectives (scaled by their spread: the model ``export`` takes),
    ``trial_ids`` every run, ``repeats`` how many finished ok."""
    groups: dict = {}
    loose = []
    for rec in records:
        if rec.get("lost"):
            continue  # lost with a killed driver: its replacement is the repeat
        if rec.get("number") is None:
            loose.append(rec)
        else:
            groups.setdefault(rec["number"], []).append(rec)
    spread = list(dict.fromkeys([*info.objectives, "accuracy"]))
    out = []
    for number in sorted(groups):
        runs = sorted(groups[number], key=lambda r: r.get("repeat") or 0)
        ok = [r for r in runs if r["status"] == "ok"]
        states = [r["status"] for r in runs]
        rec = {k: v for k, v in runs[0].items() if k != "repeat"}
        rec.update(trial_ids=[r["trial_id"] for r in runs], repeats=len(ok),
                   started=min((r["started"] for r in runs if r.get("started")), default=None),
                   ended=max((r["ended"] for r in runs if r.get("ended")), default=None))
        if len(ok) == info.repeats:
            rec["status"] = "ok"
            rec.update(mean_row([{k: v for k, v in r.items() if k not in RUN_KEYS}
                                 for r in ok]))
            for key in spread:
                values = [r.get(key) for r in ok]
                if all(isinstance(v, int | float) for v in values):
                    rec[f"{key}_sd"] = float(np.std(values, ddof=1))
            rec["trial_id"] = _typical(ok, rec, info.objectives)
        elif "running" in states or "pending" in states or len(runs) < info.repeats:
            rec["status"] = "running" if "running" in states or ok else "pending"
        elif "failed" in states:
            rec["status"] = "failed"
            rec["error"] = next(r.get("error") for r in runs if r["status"] == "failed")
        else:
            rec["status"] = next(s for s in states if s != "ok")
        if rec["status"] != "ok":
            for key in list(rec):
                if key not in RUN_KEYS and key not in ("trial_ids", "repeats") and \
                        key not in (info.space or {}) and "." not in key:
                    rec.pop(key)
        out.append(rec)
    return out + loose


def _typical(runs: list[dict], mean: dict, objectives: dict[str, str]) -> str:
    """The trial id of the run nearest ``mean`` in the objectives, each scaled by its sd."""
    def distance(r: dict) -> float:
        return sum(abs(r[k] - mean[k]) / (mean.get(f"{k}_sd") or 1.0)
                   for k in objectives if isinstance(r.get(k), int | float))
    return min(runs, key=distance)["trial_id"]


def _table(records: list[dict], info: StudyInfo) -> pd.DataFrame:
    """The trial records as a frame in trial-number order, with the front and its flags."""
    df = pd.DataFrame.from_records(records)
    for col in ID_COLUMNS + META_COLUMNS:
        if col not in df:
            df[col] = pd.Series(dtype=object)
    if len(df):
        df = df.sort_values(["number", "trial_id"], na_position="last", kind="stable")
    df = df.reset_index(drop=True)
    df["feasible"], df["violated"] = _feasibility(df, info.constraints)
    df["on_front"] = front_mask(df, info.objectives)
    _add_intervals(df)
    df["near_front"] = _near_front(df, info.objectives)
    return df


# What summary() and trial_states() read of each trial besides its objectives and
# constraints.
SUMMARY_COLUMNS = ("trial_id", "number", "status", "method", "accuracy", "test_images",
                   "started", "ended")
# Bump when _trial_record changes: a trial index written for another version is rebuilt.
RECORD_VERSION = 3


def _summary_records(info: StudyInfo) -> list[dict]:
    """Of each trial, the values of :func:`_load`'s frame that summary() uses (and whether
    it was ``lost`` with a killed driver), read through the study's trial index (see
    :func:`analysis.studydir.indexed_trials`)."""
    keep = list(dict.fromkeys([*SUMMARY_COLUMNS, "repeat", *info.objectives,
                               *info.constraints]))

    def reduce(doc: dict) -> dict:
        rec, _ = _trial_record(doc, info)
        return {**{k: rec[k] for k in keep if k in rec}, "lost": bool(doc.get("lost"))}

    key = hashlib.sha256(json.dumps(
        [RECORD_VERSION, keep, info.space, info.methods], sort_keys=True,
        default=repr).encode()).hexdigest()
    return indexed_trials(info.path, info.space, reduce, key)


def _summary_table(info: StudyInfo, records: list[dict] | None = None) -> pd.DataFrame:
    """The columns of :func:`_load`'s frame that summary() uses, the same values, from
    ``records`` (:func:`_summary_records`, read here when not given)."""
    if records is None:
        records = [{"study": info.name, **r} for r in _summary_records(info)]
    if info.repeats > 1:
        records = configurations(records, info)
    return _table(records, info)


def trial_states(study_dir: str | Path) -> list[dict]:
    """Each trial's ``trial_id``, ``number``, ``status``, ``started``, ``ended`` and
    ``lost``, and for a running trial its latest epoch report (``last``): what
    ``status --watch`` shows, read through the trial index and, in full, only the files of
    the running trials."""
    info = study_info(study_dir)
    out = []
    for r in _summary_records(info):
        state = {k: r.get(k) for k in ("trial_id", "number", "status", "started", "ended",
                                       "lost")}
        if state["status"] == "running":
            try:
                doc = json.loads((info.path / "trials" / f"{r['trial_id']}.json").read_text())
                state["last"] = doc.get("last") if isinstance(doc.get("last"), dict) else {}
            except (OSError, ValueError):  # rewritten or damaged since: shown next time
                state["last"] = {}
        out.append(state)
    return out


def objective_values(df: pd.DataFrame, objectives: dict[str, str]) -> np.ndarray:
    """The objectives of every row as floats; NaN where missing, where the trial is not ok,
    or where it breaks the study's constraints (a ``feasible`` column that is False): the
    front and the hypervolume count feasible trials only."""
    out = np.full((len(df), len(objectives)), np.nan)
    ok = (df["status"] == "ok").to_numpy() if len(df) else np.zeros(0, dtype=bool)
    if "feasible" in df and len(df):
        ok = ok & df["feasible"].fillna(True).astype(bool).to_numpy()
    for j, name in enumerate(objectives):
        if name in df:
            out[:, j] = pd.to_numeric(df[name], errors="coerce").to_numpy(dtype=float)
    out[~ok] = np.nan
    return out


def front_mask(df: pd.DataFrame, objectives: dict[str, str]) -> np.ndarray:
    """True for the finished (status ok) trials on the Pareto front of ``objectives``."""
    return pareto.nondominated(objective_values(df, objectives),
                               pareto.maximise_flags(objectives))


def _feasibility(df: pd.DataFrame, constraints: dict) -> tuple[list[bool], list[str | None]]:
    """Per trial: whether its row meets every constraint, and which it breaks (text). Only
    finished trials are judged; the others are not on any front either way."""
    bounds = Bounds(constraints)
    if not bounds or not len(df):
        return [True] * len(df), [None] * len(df)
    ok = (df["status"] == "ok").to_numpy()
    columns = {c: pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=float)
               for c in bounds.bounds if c in df}
    _, broken = bounds.judge(columns, len(df))
    return [not (o and b) for o, b in zip(ok, broken, strict=True)], \
        [", ".join(b) if o and b else None for o, b in zip(ok, broken, strict=True)]


WILSON_Z = 1.959964  # two-sided 95 %


def wilson_interval(p: float, n: int, z: float = WILSON_Z) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``p`` measured on ``n`` samples."""
    if not n or not np.isfinite(p):
        return (float("nan"), float("nan"))
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (float(max(0.0, centre - half)), float(min(1.0, centre + half)))


def wilson_intervals(p: np.ndarray, n: np.ndarray,
                     z: float = WILSON_Z) -> tuple[np.ndarray, np.ndarray]:
    """:func:`wilson_interval` of every ``(p[i], n[i])``, the same floats; NaN where the
    count is missing or truncates to 0, or ``p`` is not finite."""
    p, n = np.asarray(p, dtype=float), np.asarray(n, dtype=float)
    # int() in wilson_interval truncates the count; so does this.
    k = np.trunc(np.where(np.isfinite(n), n, 0.0))
    use = np.isfinite(p) & (k != 0)
    k, q = np.where(use, k, 1.0), np.where(use, p, 0.0)
    with np.errstate(invalid="ignore"):
        centre = (q + z * z / (2 * k)) / (1 + z * z / k)
        half = z * np.sqrt(q * (1 - q) / k + z * z / (4 * k * k)) / (1 + z * z / k)
        low, high = centre - half, centre + half
        # max(0.0, x) and min(1.0, x) as Python has them: a NaN x gives the bound.
        low = np.where(use, np.where(low > 0.0, low, 0.0), np.nan)
        high = np.where(use, np.where(high < 1.0, high, 1.0), np.nan)
    return low, high


def _add_intervals(df: pd.DataFrame) -> None:
    """``accuracy_low``/``accuracy_high``: its 95 % Wilson interval from the test-set size;
    for a configuration run with several seeds, widened to cover the 95 % t interval of
    the mean over its runs as well (the seeds' spread)."""
    acc = pd.to_numeric(df.get("accuracy", pd.Series(np.nan, index=df.index)),
                        errors="coerce").to_numpy(dtype=float)
    n = pd.to_numeric(df.get("test_images", pd.Series(np.nan, index=df.index)),
                      errors="coerce").to_numpy(dtype=float)
    low, high = wilson_intervals(acc, n)
    if "accuracy_sd" in df:
        k = pd.to_numeric(df["repeats"], errors="coerce").to_numpy(dtype=float)
        sd = pd.to_numeric(df["accuracy_sd"], errors="coerce").to_numpy(dtype=float)
        t = np.array([T95[int(x) - 2] if 2 <= x <= 31 else 2.0 for x in np.nan_to_num(k)])
        with np.errstate(invalid="ignore", divide="ignore"):
            half = t * sd / np.sqrt(k)
        use = np.isfinite(half) & np.isfinite(low)
        low = np.where(use, np.minimum(low, np.maximum(0.0, acc - half)), low)
        high = np.where(use, np.maximum(high, np.minimum(1.0, acc + half)), high)
    df["accuracy_low"], df["accuracy_high"] = low, high


# Rows compared with the whole front at once, in blocks: bounds the comparison's memory.
NEAR_FRONT_BLOCK = 4096


def _near_front(df: pd.DataFrame, objectives: dict[str, str]) -> np.ndarray:
    """Trials off the front whose accuracy interval overlaps that of a front trial that
    costs at least as much in every other objective: with this test set, they may be as
    good as the front says the front is."""
    out = np.zeros(len(df), dtype=bool)
    if "accuracy" not in objectives or not len(df) or not df["on_front"].any():
        return out
    costs = [c for c in objectives if c != "accuracy"]
    values = objective_values(df, {c: objectives[c] for c in costs}) if costs else \
        np.zeros((len(df), 0))
    sign = np.array([1.0 if objectives[c] == "min" else -1.0 for c in costs])
    signed = sign * values
    high = df["accuracy_high"].to_numpy(dtype=float)
    low = df["accuracy_low"].to_numpy(dtype=float)
    on = df["on_front"].to_numpy(dtype=bool)
    front = np.flatnonzero(on)
    rows = np.flatnonzero(~on & np.isfinite(high) & np.isfinite(values).all(axis=1))
    for start in range(0, len(rows), NEAR_FRONT_BLOCK):
        i = rows[start:start + NEAR_FRONT_BLOCK]
        # (rows x front): the interval reaches the front trial's, and costs no more.
        overlaps = high[i, None] >= low[None, front]
        cheaper = (signed[i, None, :] <= signed[None, front, :]).all(axis=2)
        out[i] = (overlaps & cheaper).any(axis=1)
    return out


def study_reference(info: StudyInfo, df: pd.DataFrame) -> pareto.Reference:
    """The default hypervolume reference of a study: from base.json, else from the trials."""
    return pareto.reference(info.objectives, info.base, objective_values(df, info.objectives))


def history(study_dir: str | Path) -> pd.DataFrame:
    """Per-epoch reports of every trial, one row per (trial_id, step), the last report winning.

    A trial resumed from a checkpoint repeats steps; its later lines replace the earlier
    ones. Damaged lines are skipped with a warning (see :mod:`analysis.studydir`).
    """
    cols = ["trial_id", "step", "stage", "phase", "epoch"]
    df = pd.DataFrame.from_records(history_records(study_path(study_dir)))
    for col in cols:
        if col not in df:
            df[col] = pd.Series(dtype=object)
    if not len(df):
        return df[cols + [c for c in df.columns if c not in cols]]
    df["trial_id"] = df["trial_id"].astype(str)
    df = df.drop_duplicates(["trial_id", "step"], keep="last")
    df = df.sort_values(["trial_id", "step"], kind="stable").reset_index(drop=True)
    return df[cols + [c for c in df.columns if c not in cols]]


@dataclass(frozen=True)
class Study:
    """Everything read from one study directory; ``label`` tells studies apart in figures."""

    info: StudyInfo
    trials: pd.DataFrame
    history: pd.DataFrame
    label: str


def open_studies(study_dirs: list[str | Path]) -> list[Study]:
    """Read several study directories; studies of the same name get their folder as label."""
    infos = [study_info(d) for d in study_dirs]
    if not infos:
        raise StudyDirError("no study directories given; give at least one <storage>/<name>")
    names = [i.name for i in infos]
    studies = []
    for info in infos:
        label = info.name if names.count(info.name) == 1 else \
            f"{info.name} ({info.path.parent.name}/{info.path.name})"
        trials = _load(info)
        trials["study"] = label
        studies.append(Study(info, trials, history(info.path), label))
    return studies


def summary(study_dir: str | Path) -> dict:
    """Counts, front size, hypervolume and knee of a study, as plain JSON-ready values.

    ``finished`` counts trials with a result (status ok); ``running`` counts running
    trials; ``pending``, ``failed`` and ``stopped`` the others. ``hypervolume`` uses the
    default reference (:func:`analysis.pareto.reference`), 0.0 with no finished trial.
    ``best`` is each objective's best value over the finished trials that have them all.
    ``feasible`` counts finished trials within the study's constraints (the front and the
    hypervolume count only those); ``near_front`` the trials within noise of the front;
    ``within_one_point`` is the cheapest trial at most one point below the base.
    """
    info = study_info(study_dir)
    runs = [{"study": info.name, **r} for r in _summary_records(info)]
    df = _summary_table(info, runs)  # configurations, in a study with repeats
    counts = pd.Series([r["status"] for r in runs], dtype=object).value_counts()
    values = objective_values(df, info.objectives)
    ref = pareto.reference(info.objectives, info.base, values)
    k = pareto.knee(values, ref.maximise)
    knee = None
    if k is not None:
        knee = {"trial_id": df["trial_id"].iloc[k], "number": _plain(df["number"].iloc[k]),
                "method": df["method"].iloc[k],
                **{name: float(values[k, j]) for j, name in enumerate(info.objectives)}}
    return {
        "name": info.name,
        "path": str(info.path),
        "requested": info.trials * info.repeats if info.trials else info.trials,
        "trials": int(len(runs)),
        **({"repeats": info.repeats, "configurations": int(len(df)),
            "configurations_ok": int((df["status"] == "ok").sum())}
           if info.repeats > 1 else {}),
        **{("finished" if s == "ok" else s): int(counts.get(s, 0)) for s in STATUSES},
        "feasible": int(((df["status"] == "ok") & df["feasible"].astype(bool)).sum()),
        "near_front": int(df["near_front"].sum()),
        "front_size": int(df["on_front"].sum()),
        "hypervolume": pareto.hypervolume(values, ref),
        "best": _best(values, info.objectives),
        "objectives": dict(info.objectives),
        "reference": ref.to_dict(),
        "knee": knee,
        "within_one_point": within_one_point(df, info),
        "kept_models": kept_models(info.path),
    }


def export_command(study_dir: str | Path, trial_id: str) -> str:
    """The ``prune-study export`` command that takes a trial's model away."""
    return f"prune-study export {shlex.quote(str(study_dir))} --trial {trial_id} " \
           f"-o {trial_id}-export"


def kept_models(study_dir: str | Path) -> dict:
    """How many compressed models the study keeps in ``models/`` and the bytes they take."""
    files = [p for p in (Path(study_dir) / "models").glob("*.pt") if p.is_file()]
    return {"count": len(files), "bytes": sum(p.stat().st_size for p in files)}


def within_one_point(df: pd.DataFrame, info: StudyInfo, points: float = 0.01) -> dict | None:
    """The cheapest finished, feasible trial whose accuracy is at most ``points`` below the
    base model's: cheapest in the first objective besides accuracy that is minimised."""
    base = info.base.get("accuracy")
    cost = next((c for c, d in info.objectives.items() if c != "accuracy" and d == "min"),
                None)
    if base is None or cost is None or "accuracy" not in df or cost not in df:
        return None
    acc = pd.to_numeric(df["accuracy"], errors="coerce")
    costs = pd.to_numeric(df[cost], errors="coerce")
    ok = (df["status"] == "ok") & df["feasible"].astype(bool) & (acc >= base - points) & \
        costs.notna()
    if not ok.any():
        return None
    i = costs[ok].idxmin()
    return {"trial_id": df.at[i, "trial_id"], "number": _plain(df.at[i, "number"]),
            "method": df.at[i, "method"], "accuracy": float(acc[i]), cost: float(costs[i])}


def _best(values: np.ndarray, objectives: dict[str, str]) -> dict[str, float]:
    complete = values[np.isfinite(values).all(axis=1)] if len(values) else values
    if not len(complete):
        return {}
    return {name: float(complete[:, j].max() if d == "max" else complete[:, j].min())
            for j, (name, d) in enumerate(objectives.items())}


def _plain(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return v.item() if hasattr(v, "item") else v
