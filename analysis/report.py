"""The report of one or several studies: report.html (one self-contained file), report.md
with its figures as PNG files beside it, and trials.csv.

Several studies are compared in one report: figures use the study as hue, tables carry a
study column. Trials that did not finish appear in the tables with their status and are
never on a front.

Everything is written inside the output folder: file names that come from the data
(figures per method) are cleaned to letters, digits, ``-`` and ``_``, and each file is
written to a fresh temporary name and renamed into place, so a symbolic link already
in the folder is replaced, never followed.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import math
import multiprocessing as mp
import os
import re
import secrets
import struct
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import pareto
from analysis.figures import FigureJob, figure_jobs, human_bytes, human_count, png_of
from analysis.results import (
    Study,
    export_command,
    objective_values,
    open_studies,
    study_reference,
    within_one_point,
)
from prune_core import columns
from prune_core.errors import InputError

__all__ = ["ReportError", "comparison_table", "file_stems", "fmt", "html_table",
           "markdown_table", "summary_table", "trials_csv", "trials_table", "write_csv",
           "write_report"]

STATUS_ORDER = {"ok": 0, "running": 1, "pending": 2, "stopped": 3, "timeout": 4, "failed": 5}


class ReportError(InputError):
    """The report cannot be written where it was asked to go."""


# --------------------------------------------------------------------------- tables


TRADE_OFF_COLUMNS = ("params", "size_bytes", "ops", "macs", "accuracy", "accuracy_drop",
                     "compression", "speedup")
WITHIN_ONE_POINT = "cheapest within 1 pt of base"


def comparison_table(studies: list[Study]) -> pd.DataFrame:
    """Seed 002's table: the base model first, then each method's knee point per study,
    then the study's cheapest trial within one point of the base.

    A method's knee is taken on the front of that method's own finished trials, over the
    study's objectives (see :func:`analysis.pareto.knee`). The cheapest trial within one
    point is :func:`analysis.results.within_one_point`; a study whose base model has no
    accuracy has no such row, and one where no trial qualifies has a row that says so.
    """
    rows, bases = [], []
    for s in studies:
        b = s.info.base
        if b and not any(_same_base(b, o) for o in bases):
            bases.append(b)
            rows.append({"study": s.label, "model": "base model", "trial_id": None,
                         **{k: b.get(k) for k in ("params", "size_bytes", "ops", "macs",
                                                  "accuracy")},
                         "accuracy_drop": None, **{k: v for k, v in columns.implied_base()
                                                   .items() if k in TRADE_OFF_COLUMNS}})
    for s in studies:
        ok = s.trials[s.trials["status"] == "ok"]
        flags = pareto.maximise_flags(s.info.objectives)
        for method, d in ok.groupby("method", sort=True):
            k = pareto.knee(objective_values(d, s.info.objectives), flags)
            if k is None:
                continue
            t = d.iloc[k]
            rows.append({"study": s.label, "model": method, "trial_id": t["trial_id"],
                         **{c: t.get(c) for c in TRADE_OFF_COLUMNS}})
        if s.info.base.get("accuracy") is not None:
            rows.append(_within_one_point_row(s))
    return pd.DataFrame(rows, columns=["study", "model", "trial_id", *TRADE_OFF_COLUMNS])


def _within_one_point_row(s: Study) -> dict:
    best = within_one_point(s.trials, s.info)
    if best is None:
        return {"study": s.label, "model": f"{WITHIN_ONE_POINT}: no trial qualifies"}
    t = s.trials.loc[s.trials["trial_id"] == best["trial_id"]].iloc[0]
    return {"study": s.label, "model": f"{best['method']}, {WITHIN_ONE_POINT}",
            "trial_id": best["trial_id"], **{c: t.get(c) for c in TRADE_OFF_COLUMNS}}


def _same_base(a: dict, b: dict) -> bool:
    return all(a.get(k) == b.get(k) for k in ("params", "macs", "accuracy", "size_bytes"))


def summary_table(studies: list[Study]) -> pd.DataFrame:
    """One row per study: objectives, sampler, trial counts by status, front, hypervolume."""
    rows = []
    for s in studies:
        df = s.trials
        counts = df["status"].value_counts()
        values = objective_values(df, s.info.objectives)
        rows.append({
            "study": s.label,
            "objectives": ", ".join(f"{k} {v}" for k, v in s.info.objectives.items()),
            "sampler": f"{s.info.sampler} (seed {s.info.sampler_seed})",
            "trials": f"{len(df)} of {s.info.trials}" if s.info.trials else str(len(df)),
            "ok": int(counts.get("ok", 0)), "running": int(counts.get("running", 0)),
            "pending": int(counts.get("pending", 0)), "failed": int(counts.get("failed", 0)),
            "stopped": int(counts.get("stopped", 0)), "front": int(df["on_front"].sum()),
            "hypervolume": pareto.hypervolume(values, study_reference(s.info, df)),
        })
    return pd.DataFrame(rows)


def _objective_columns(studies: list[Study]) -> list[str]:
    cols = list(dict.fromkeys(o for s in studies for o in s.info.objectives))
    return cols + [c for c in ("accuracy", "params", "macs", "size_bytes") if c not in cols]


def _param_columns(studies: list[Study]) -> list[str]:
    return list(dict.fromkeys(p for s in studies for p in s.trials.attrs.get("params", [])))


def trials_table(studies: list[Study], front_only: bool = False) -> pd.DataFrame:
    """Every trial (or the front's), its status, parameters, objectives and on_front."""
    frames = [s.trials for s in studies if len(s.trials)]
    if not frames:
        return pd.DataFrame(columns=["study", "trial_id", "number", "status", "method"])
    df = pd.concat(frames, ignore_index=True)
    if front_only:
        df = df[df["on_front"]]
    objectives = _objective_columns(studies)
    cols = ["study", "trial_id", "number", "status", "method", *objectives,
            *[f"{c}_sd" for c in objectives], "repeats", "accuracy_low", "accuracy_high",
            *_param_columns(studies), "on_front", "near_front", "violated", "progress", "error"]
    out = df.reindex(columns=cols)
    # A failed trial's error may carry a whole traceback: its first line names the error.
    out["error"] = out["error"].map(
        lambda e: _shorten(str(e).strip().splitlines()[0]) if isinstance(e, str) and e.strip()
        else None)
    out = out.loc[:, [c for c in cols if c in ("on_front", "status") or out[c].notna().any()]]
    return out.reset_index(drop=True)


def write_csv(studies: list[Study], path: Path) -> None:
    """trials.csv: one row per trial with every column; dicts and lists as JSON."""
    Path(path).write_text(trials_csv(studies), encoding="utf-8")


def trials_csv(studies: list[Study]) -> str:
    """The text of trials.csv (see :func:`write_csv`)."""
    frames = [s.trials for s in studies if len(s.trials)]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["study", "trial_id", "number", "status", "method", "on_front"])
    for c in df.columns:
        # Only a column of Python objects can hold a dict or a list.
        if df[c].dtype == object and df[c].map(lambda v: isinstance(v, dict | list)).any():
            df[c] = df[c].map(lambda v: json.dumps(v) if isinstance(v, dict | list) else v)
    return df.to_csv(index=False)


# --------------------------------------------------------------------------- formatting


def fmt(column: str, v) -> str:
    """A cell in human units: 1.23 M, 2.21 MiB, 98.3 %, 4.1x."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if column.endswith("_sd"):  # the spread of a configuration's repeats
        return "± " + fmt(column.removesuffix("_sd"), v)
    if isinstance(v, bool | np.bool_):
        return "yes" if v else ""
    kind = columns.unit(column)  # prune_core.columns
    if kind == "count":
        return human_count(v)
    if kind == "bytes":
        return human_bytes(v)
    if kind == "share":
        return f"{100 * v:.2f} %"
    if kind == "drop":  # shown as the change against the base: gains positive
        return f"{0.0 - 100 * v:+.2f} pts".replace("-", "−")
    if kind == "x":
        return f"{v:.2f}x"
    if column == "hypervolume":
        return f"{v:.4f}"
    if isinstance(v, float | np.floating):
        if v == int(v) and abs(v) < 1e6:
            return str(int(v))
        return f"{v:.3g}"
    return str(v)


# Headers of the columns that are not results; a result column's is its ``header``.
HEADERS = {"trial_id": "trial", "number": "#", "on_front": "on front", "model": "model",
           "export": "take it away"}


def header(column: str) -> str:
    col = columns.column(column)
    return col.text() if col else HEADERS.get(column, column)


def _cells(df: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    head = [f"{header(c[:-3])} sd" if c.endswith("_sd") else header(c) for c in df.columns]
    if not len(df.columns):
        return head, [[] for _ in range(len(df))]
    # Column by column: one conversion of each column to Python values (iterating an Arrow
    # string column value by value is slow), the same values as iterating its rows.
    columns = [[fmt(c, v) for v in df.iloc[:, i].to_numpy(dtype=object)]
               for i, c in enumerate(df.columns)]
    return head, [list(r) for r in zip(*columns, strict=True)]


def markdown_table(df: pd.DataFrame) -> str:
    """The table in Markdown, cells in human units, numbers right-aligned."""
    return _markdown(*_cells(df))


def _markdown(head: list[str], body: list[list[str]]) -> str:
    if not body:
        return "_none_\n"

    text = _Memo(lambda c: _md_text(c).replace("|", "\\|"))  # cells repeat: once each

    def line(cells):
        return "| " + " | ".join(map(text, cells)) + " |"

    numeric = [all(_numeric_looking(r[i]) for r in body) for i in range(len(head))]
    rule = "|" + "|".join("---:" if n else "---" for n in numeric) + "|"
    return "\n".join([line(head), rule, *[line(r) for r in body]]) + "\n"


def _md_text(text: str) -> str:
    """Text from the data as one Markdown line that opens no HTML tag."""
    return " ".join(text.split()).replace("<", "&lt;")


def _numeric_looking(cell: str) -> bool:
    return cell == "" or cell[0].isdigit() or cell[0] in "+-−–"


def html_table(df: pd.DataFrame, cls: str = "") -> str:
    """The table as escaped HTML, cells in human units, statuses as badges."""
    return _html(list(df.columns), *_cells(df), cls=cls)


def _html(columns: list[str], head: list[str], body: list[list[str]], cls: str = "") -> str:
    if not body:
        return "<p class=\"none\">none</p>"
    status_col = columns.index("status") if "status" in columns else None
    numeric = [all(_numeric_looking(r[i]) for r in body) for i in range(len(head))]
    num = ' class="num"'
    th = "".join(f"<th{num if n else ''}>{html.escape(h)}</th>"
                 for h, n in zip(head, numeric, strict=True))
    # Cells repeat (statuses, methods, blanks): each distinct one is escaped once per column.
    cell_html = [_Memo(lambda c: f"<td><span class=\"status {html.escape(c)}\">"
                       f"{html.escape(c)}</span></td>") if i == status_col else
                 _Memo(lambda c, td=f"<td{num if numeric[i] else ''}>":
                       f"{td}{html.escape(_shorten(c))}</td>") for i in range(len(head))]
    rows = ["<tr>" + "".join(f(c) for f, c in zip(cell_html, r, strict=True)) + "</tr>"
            for r in body]
    return (f"<div class=\"scroll\"><table class=\"{cls}\"><thead><tr>{th}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>")


class _Memo(dict):
    """``f`` of a string, computed once per distinct string."""

    def __init__(self, f):
        super().__init__()
        self._f = f

    def __call__(self, key: str) -> str:
        return self[key]

    def __missing__(self, key: str) -> str:
        self[key] = value = self._f(key)
        return value


def _shorten(text: str, n: int = 120) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


# --------------------------------------------------------------------------- documents


CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
color:#1d1d1f;background:#fff;margin:0}
main{max-width:1180px;margin:0 auto;padding:24px 28px 64px}
h1{font-size:1.7em;margin:.2em 0}h2{margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta,.none,figcaption,.note{color:#555}nav a{margin-right:1em}
figure{margin:28px 0}figure img{max-width:100%;height:auto;display:block;margin:8px auto}
figcaption{font-size:.92em;max-width:900px;margin:0 auto}
.scroll{overflow-x:auto}table{border-collapse:collapse;font-size:.88em;margin:8px 0}
th,td{padding:4px 10px;border-bottom:1px solid #e5e5e5;text-align:left;white-space:nowrap}
th{border-bottom:2px solid #999;background:#fafafa}td.num,th.num{text-align:right;
font-variant-numeric:tabular-nums}tbody tr:hover{background:#f5f8ff}
.status{padding:1px 7px;border-radius:9px;font-size:.9em;background:#eee}
.status.ok{background:#e3f4e8;color:#17692f}.status.failed{background:#fde5e5;color:#a4161a}
.status.running{background:#e4eefc;color:#1b4f9c}.status.stopped{background:#fff2d6;color:#8a5a00}
details summary{cursor:pointer;color:#1b4f9c}
"""


def _png_size(png: bytes) -> tuple[int, int]:
    return struct.unpack(">II", png[16:24])


def _render(studies: list[Study], drawn: list[FigureJob],
            pngs: Mapping[str, bytes]) -> tuple[str, str]:
    """report.html and report.md; ``pngs`` is read only after every table is formatted, so
    figures drawn elsewhere meanwhile are waited for last."""
    names = ", ".join(s.label for s in studies)
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    summary = summary_table(studies)
    comparison = comparison_table(studies)
    front = trials_table(studies, front_only=True)
    if len(front):
        paths = {s.label: s.info.path for s in studies}
        front["export"] = [export_command(paths[label], tid) for label, tid
                           in zip(front["study"], front["trial_id"], strict=True)]
    trials = trials_table(studies)
    trials = trials.sort_values(["study", "status", "number"], key=lambda c: c.map(
        STATUS_ORDER) if c.name == "status" else c, kind="stable")
    single = len(studies) == 1
    if single:
        for t in (comparison, front, trials):
            t.drop(columns=["study"], inplace=True, errors="ignore")
    knee_note = ("One row per method: the knee of that method's own front (the point "
                 "nearest the ideal after scaling each objective to the front's range), "
                 "after the base model; then, per study, the cheapest feasible trial (in "
                 "the first objective to minimise) whose accuracy is at most one point "
                 "below the base model's.")
    sections = [
        ("summary", "Studies", None, summary),
        ("comparison", "Best trade-off per method", knee_note, comparison),
    ]
    # Each table's cells are formatted once, for both documents.
    cells = {key: (list(t.columns), *_cells(t)) for key, t in
             (("summary", summary), ("comparison", comparison), ("front", front),
              ("trials", trials))}
    # --- Markdown
    md = [f"# Compression study report: {names}", "", f"Generated {now}.", ""]
    for key, title, note, _table in sections:
        md += [f"## {title}", ""] + ([note, ""] if note else []) + [_markdown(*cells[key][1:])]
    md += ["## Figures", ""]
    if not drawn:
        md += ["No finished trials yet: nothing to plot.", ""]
    for d in drawn:
        title = _md_text(d.title)
        alt = re.sub(r"[\[\]\\]", "", title)
        md += [f"### {title}", "", f"![{alt}]({d.key}.png)", "", f"*{_md_text(d.caption)}*", ""]
    md += ["## Trials on the front", "", _markdown(*cells["front"][1:]),
           "## All trials", "", _markdown(*cells["trials"][1:])]
    md += ["Environment: " + "; ".join(f"{s.label}: " + ", ".join(
        f"{k} {v}" for k, v in s.info.environment.items() if v) for s in studies), ""]
    # --- HTML
    h = ["<!doctype html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
         "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">",
         f"<title>Compression study report: {html.escape(names)}</title>",
         f"<style>{CSS}</style></head><body><main>",
         f"<h1>Compression study report</h1><p class=\"meta\">{html.escape(names)} · "
         f"generated {now}</p>",
         "<nav><a href=\"#summary\">studies</a><a href=\"#comparison\">best trade-offs</a>"
         "<a href=\"#figures\">figures</a><a href=\"#front\">front</a>"
         "<a href=\"#trials\">all trials</a></nav>"]
    for key, title, note, _table in sections:
        h.append(f"<section id=\"{key}\"><h2>{html.escape(title)}</h2>")
        if note:
            h.append(f"<p class=\"note\">{html.escape(note)}</p>")
        h.append(_html(*cells[key]) + "</section>")
    front_html, trials_html = _html(*cells["front"]), _html(*cells["trials"])
    h.append("<section id=\"figures\"><h2>Figures</h2>")
    if not drawn:
        h.append("<p class=\"none\">No finished trials yet: nothing to plot.</p>")
    for d in drawn:
        png = pngs[d.key]
        # Drawn at 150 dpi, shown at 100 px per inch: every figure's text at the same size,
        # sharp on high-density screens.
        w, ht = (round(v * 2 / 3) for v in _png_size(png))
        b64 = base64.b64encode(png).decode("ascii")
        h.append(f"<figure id=\"fig-{d.key}\"><h3>{html.escape(d.title)}</h3>"
                 f"<img src=\"data:image/png;base64,{b64}\" width=\"{w}\" height=\"{ht}\" "
                 f"alt=\"{html.escape(d.title)}\"><figcaption>{html.escape(d.caption)}"
                 "</figcaption></figure>")
    h.append("</section>")
    h.append(f"<section id=\"front\"><h2>Trials on the front</h2>{front_html}</section>")
    open_attr = " open" if len(trials) <= 60 else ""
    h.append(f"<section id=\"trials\"><h2>All trials</h2><details{open_attr}><summary>"
             f"{len(trials)} trials, with their status</summary>{trials_html}"
             "</details></section>")
    env = "".join(f"<li>{html.escape(s.label)}: " + html.escape(", ".join(
        f"{k} {v}" for k, v in s.info.environment.items() if v)) + "</li>" for s in studies)
    h.append(f"<footer><h2>Environment</h2><ul class=\"meta\">{env}</ul></footer>")
    h.append("</main></body></html>")
    return "\n".join(h), "\n".join(md)


def file_stems(keys: list[str]) -> list[str]:
    """File names (without suffix) for figure keys that may carry names from the data:
    only letters, digits, ``-`` and ``_``, at most 80 characters, all different."""
    out: list[str] = []
    for key in keys:
        stem = re.sub(r"[^A-Za-z0-9_]+", "-", key).strip("-_")[:80] or "figure"
        base, n = stem, 2
        while stem.lower() in {s.lower() for s in out}:  # also on case-blind file systems
            stem, n = f"{base}-{n}", n + 1
        out.append(stem)
    return out


def _output_folder(out: Path) -> Path:
    try:
        if out.exists() and not out.is_dir():
            raise ReportError(f"{out} is a file, not a folder: the report is a folder of files")
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReportError(f"cannot create the report folder {out}: {e.strerror or e}") from e
    return out


def _write(folder: Path, name: str, data: bytes) -> None:
    """``folder/name`` atomically: a new temporary file (created, never opened through a
    link), then a rename over whatever had that name."""
    if "/" in name or "\\" in name or name.startswith("."):
        raise ReportError(f"refusing to write {name!r}: not a plain file name")
    tmp = folder / f".{name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, folder / name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_report(study_dirs: list[Path], out: Path, *, workers: int | None = None) -> Path:
    """Write report.html, report.md with PNG figures, and trials.csv to ``out``; returns
    the path of report.html. Nothing is written outside ``out``; ReportError when ``out``
    is a file or cannot be written.

    The figures are drawn by ``workers`` other processes while this one formats the tables
    (default: one per CPU, none on one CPU; 0 draws them here); the files are the same.
    """
    if workers is not None and workers < 0:
        raise ValueError(f"workers={workers}: expected 0 (draw here) or more")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if workers is None:
        workers = cpus if cpus and cpus > 1 else 0
    studies = open_studies(list(study_dirs))
    out = _output_folder(Path(out))
    jobs = figure_jobs(studies)
    jobs = [replace(j, key=stem) for j, stem in zip(jobs, file_stems([j.key for j in jobs]),
                                                     strict=True)]
    with _drawing(jobs, workers) as pngs:
        csv = trials_csv(studies)
        page, md = _render(studies, jobs, pngs)
        files = {**{f"{j.key}.png": pngs[j.key] for j in jobs},
                 "report.html": page.encode("utf-8"), "report.md": md.encode("utf-8"),
                 "trials.csv": csv.encode("utf-8")}
    try:
        for name, data in files.items():
            _write(out, name, data)
    except OSError as e:
        raise ReportError(f"cannot write the report into {out}: {e.strerror or e}") from e
    return out / "report.html"


# --------------------------------------------------------------------------- drawing

# The workers are forked from this process once the studies are read: they start in
# milliseconds with matplotlib already imported and in the state it has here, where a
# spawned or forkserver worker would spend seconds of CPU importing matplotlib and seaborn
# anew, which on a busy machine costs what the parallel drawing gains. Forking is left to a
# process with no other Python thread (the command line's `report`; not, say, a program that
# drives a study beside it): a lock another thread held would stay held in the child. The
# native pools of numpy and Arrow are idle then, and drawing uses neither.
_START = "fork"


class _Drawings(Mapping):
    """PNG bytes by figure key, each waited for when first read; a figure whose worker
    died is drawn here instead."""

    def __init__(self, jobs: list[FigureJob], futures: dict[str, Future] | None):
        self._jobs = {j.key: j for j in jobs}
        self._futures = futures or {}
        self._done: dict[str, bytes] = {}

    def __getitem__(self, key: str) -> bytes:
        if key not in self._done:
            future = self._futures.get(key)
            try:
                self._done[key] = future.result() if future else png_of(self._jobs[key])
            except (BrokenProcessPool, OSError):
                self._done[key] = png_of(self._jobs[key])
        return self._done[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._jobs)

    def __len__(self) -> int:
        return len(self._jobs)


@contextmanager
def _drawing(jobs: list[FigureJob], workers: int) -> Iterator[Mapping[str, bytes]]:
    """The figures' PNGs, drawn by up to ``workers`` processes (none: here, when read)."""
    workers = min(workers, len(jobs))
    if workers < 1 or _START not in mp.get_all_start_methods() \
            or threading.active_count() > 1:
        yield _Drawings(jobs, None)
        return
    pool = None
    try:
        pool = ProcessPoolExecutor(workers, mp_context=mp.get_context(_START))
        futures = {j.key: pool.submit(png_of, j) for j in jobs}
    except (OSError, BrokenProcessPool):  # no processes to be had: draw here
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        yield _Drawings(jobs, None)
        return
    try:
        yield _Drawings(jobs, futures)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
