"""What a study's driver shows while it runs, and what ``status --watch`` redraws.

:func:`study_view` turns trial records (the driver's Recorder holds them; ``status --watch``
reads the study's files) into counts, each running trial's stage and epoch, and an ETA;
:func:`base_view` does the same for the base model's epochs. :class:`Progress` draws them
in one of three modes:

- ``live``: on a terminal, a display redrawn once a second (rich's ``Live``) that stays
  below every line printed meanwhile, the driver's log and Ray's included;
- ``lines``: when the output is a pipe or a file, a plain timestamped line at most every
  ``every`` seconds, with no control characters;
- ``quiet``: neither, and no per-trial lines either.

A process shows one study at a time: :func:`show` makes its display the :func:`active`
one, which the Recorder (a Ray Tune callback that Tune pickles with the experiment) and
the base-model training in :mod:`studies.runner` find there rather than hold.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator

__all__ = ["MODES", "Progress", "active", "base_view", "choose_mode", "duration", "line",
           "show", "study_view"]

MODES = ("live", "lines", "quiet")
ENDED = ("ok", "failed", "timeout", "stopped")
# Front size and hypervolume are re-read from the study's files after trials end, at most
# every FRONT_EVERY seconds, or FRONT_COST times what the last reading took.
FRONT_EVERY = 5.0
FRONT_COST = 20.0


# --------------------------------------------------------------------------- views


def duration(seconds: float | None) -> str:
    """``42s``, ``4m10s``, ``2h05m``: a duration as a person reads it; ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _lost(rec: dict) -> bool:
    return bool(rec.get("lost"))


def study_view(records: list[dict], *, name: str, requested: int | None, slots: int = 0,
               now: float | None = None, front: dict | None = None) -> dict:
    """Counts, running trials and an ETA from a study's trial records.

    The ETA spreads the work left over the free slots (``slots``, or the trials running
    now when unknown): each running trial needs the mean duration of the ended trials less
    what it has run, each trial not yet started the whole mean. It is None until a trial
    has ended. ``front`` (``front_size``, ``hypervolume``) is passed through.
    """
    now = time.time() if now is None else now
    counts = dict.fromkeys((*ENDED, "running", "pending"), 0)
    durations, running = [], []
    for rec in records:
        status = rec.get("status")
        if status not in counts or _lost(rec):
            continue
        counts[status] += 1
        started, ended = rec.get("started"), rec.get("ended")
        if status in ENDED and started is not None and ended is not None and ended >= started:
            durations.append(ended - started)
        if status == "running":
            last = rec.get("last") or {}
            running.append({
                "number": rec.get("number"), "trial_id": rec.get("trial_id"),
                "stage": last.get("stage"), "phase": last.get("phase"),
                "epoch": last.get("epoch"), "epochs": last.get("epochs"),
                "val_accuracy": last.get("val_accuracy"),
                "seconds": now - started if started is not None else None,
            })
    running.sort(key=lambda r: (r["number"] is None, r["number"]))
    ended = sum(counts[s] for s in ENDED)
    mean = sum(durations) / len(durations) if durations else None
    eta = None
    if requested is not None and ended >= requested and not counts["running"]:
        eta = 0.0
    elif mean is not None and requested is not None:
        waiting = max(0, requested - ended - counts["running"])
        work = sum(max(0.0, mean - (r["seconds"] or 0.0)) for r in running) + waiting * mean
        eta = work / max(1, slots or counts["running"])
    return {"name": name, "requested": requested, "counts": counts, "ended": ended,
            "running": running, "mean_trial_s": mean, "slots": slots, "eta_s": eta,
            "front_size": (front or {}).get("front_size"),
            "hypervolume": (front or {}).get("hypervolume")}


def base_view(rows: list[dict], *, model: str, epochs: int) -> dict:
    """The base model's training so far: the last epoch's row, seconds per epoch and an ETA
    over every phase's epochs (the rows' ``total_epochs``; ``epochs`` before the first)."""
    last = rows[-1] if rows else {}
    epochs = last.get("total_epochs") or epochs  # a transfer dataset trains twice
    per = [r["epoch_seconds"] for r in rows if isinstance(r.get("epoch_seconds"), float)]
    mean = sum(per) / len(per) if per else None
    return {"model": model, "done": len(rows), "epochs": epochs, "phase": last.get("phase"),
            "epoch": last.get("epoch"), "phase_epochs": last.get("epochs"),
            "train_loss": last.get("train_loss"), "val_accuracy": last.get("val_accuracy"),
            "epoch_seconds": mean,
            "eta_s": mean * max(0, epochs - len(rows)) if mean is not None else None}


def _of(value, total) -> str:
    return f"{value}/{total}" if total else f"{value}"


def _trial_text(r: dict) -> str:
    where = "/".join(str(x) for x in (r["stage"], r["phase"]) if x) or "starting"
    epoch = f" epoch {_of(r['epoch'], r['epochs'])}" if r["epoch"] is not None else ""
    return f"#{r['number']} {where}{epoch}"


def line(view: dict, *, max_running: int = 4) -> str:
    """One plain line (no timestamp) of a :func:`study_view` or :func:`base_view`."""
    if "model" in view:
        if not view["done"]:
            return f"base {view['model']}: training, {view['epochs']} epochs | ETA after one"
        parts = [f"base {view['model']}: epoch {view['done']}/{view['epochs']}"]
        if view["phase"] not in (None, "base"):
            parts[0] += f" ({view['phase']} {_of(view['epoch'], view['phase_epochs'])})"
        if view["train_loss"] is not None:
            parts.append(f"loss {view['train_loss']:.4g}")
        if view["val_accuracy"] is not None:
            parts.append(f"val accuracy {view['val_accuracy']:.4f}")
        if view["epoch_seconds"] is not None:
            parts.append(f"{view['epoch_seconds']:.1f} s/epoch")
        return ", ".join(parts) + f" | ETA {duration(view['eta_s'])}"
    c = view["counts"]
    text = f"[{view['name']}] {view['ended']}/{view['requested'] or '?'} ended ({c['ok']} ok"
    text += "".join(f", {c[k]} {k}" for k in ("failed", "timeout", "stopped") if c[k]) + ")"
    run = view["running"]
    if run:
        shown = ", ".join(_trial_text(r) for r in run[:max_running])
        more = f", +{len(run) - max_running} more" if len(run) > max_running else ""
        text += f", {len(run)} running: {shown}{more}"
    if view["front_size"] is not None:
        text += f" | front {view['front_size']}"
        if view["hypervolume"] is not None:
            text += f", hypervolume {view['hypervolume']:.4g}"
    eta = view["eta_s"]
    text += f" | ETA {duration(eta)}" if eta is not None else " | ETA after the first trial"
    return text


def _stamp(now: float | None = None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))


def renderable(view: dict):
    """The live display of a view: a rich renderable, a progress bar with the counts (or the
    base model's epochs) over a table of the running trials."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    head = Table.grid(padding=(0, 2))
    if "model" in view:
        head.add_row(Text.assemble("base model ", (view["model"], "bold cyan")),
                     ProgressBar(total=max(1, view["epochs"]), completed=view["done"],
                                 width=30),
                     Text(line(view).split(": ", 1)[1]))
        return head
    c = view["counts"]
    eta = view["eta_s"]
    head.add_row(
        Text(view["name"], style="bold cyan"),
        ProgressBar(total=view["requested"] or max(1, view["ended"]), completed=view["ended"],
                    width=30),
        Text.assemble(f"{view['ended']}/{view['requested'] or '?'} ended  ",
                      (f"{c['ok']} ok", "green"),
                      *[(f"  {c[k]} {k}", "red" if k == "failed" else "yellow")
                        for k in ("failed", "timeout", "stopped") if c[k]],
                      f"  {c['running']} running  ",
                      (f"ETA {duration(eta)}" if eta is not None
                       else "ETA after the first trial", "bold")))
    info = Text("  ".join(x for x in (
        f"front {view['front_size']}" if view["front_size"] is not None else "",
        f"hypervolume {view['hypervolume']:.4g}" if view["hypervolume"] is not None else "",
        f"mean trial {duration(view['mean_trial_s'])}" if view["mean_trial_s"] else "",
        f"{view['slots']} slots" if view["slots"] else "",
    ) if x), style="dim")
    if not view["running"]:
        return Group(head, info)
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("trial", "stage", "phase", "epoch", "running for", "val acc"):
        table.add_column(col, justify="right" if col in ("epoch", "val acc") else "left")
    for r in view["running"][:20]:
        table.add_row(f"#{r['number']}", r["stage"] or "starting", r["phase"] or "",
                      _of(r["epoch"], r["epochs"]) if r["epoch"] is not None else "",
                      duration(r["seconds"]),
                      f"{r['val_accuracy']:.4f}" if r["val_accuracy"] is not None else "")
    if len(view["running"]) > 20:
        table.add_row(f"+{len(view['running']) - 20}", "more", "", "", "", "")
    return Group(head, info, table)


def choose_mode(*, quiet: bool = False, stream=None) -> str:
    """``quiet`` when asked; ``live`` when ``stream`` (stderr) is a terminal that draws;
    otherwise ``lines``."""
    if quiet:
        return "quiet"
    stream = sys.stderr if stream is None else stream
    tty = getattr(stream, "isatty", lambda: False)()
    return "live" if tty and os.environ.get("TERM", "") not in ("", "dumb") else "lines"


# --------------------------------------------------------------------------- display


class Progress:
    """A study driver's progress display (see the module's text for the modes).

    The driver feeds it: :meth:`base_started` / :meth:`base_epoch` / :meth:`base_done`
    around the base model's training, :meth:`study_started` once Tune is about to run, and
    :meth:`trials` whenever the Recorder changed a trial record; :meth:`log` prints a line
    above the live display, :meth:`trial_line` the line of a trial that ended.
    """

    def __init__(self, mode: str = "lines", *, every: float = 30.0, stream=None,
                 clock: Callable[[], float] = time.time):
        if mode not in MODES:
            raise ValueError(f"progress mode {mode!r}: expected one of {', '.join(MODES)}")
        self.mode = mode
        self.every = every
        self.stream = stream
        self.clock = clock
        self._lock = threading.Lock()
        self._base: dict | None = None
        self._base_rows: list[dict] = []
        self._study: dict | None = None
        self._records: dict = {}
        self._front: dict | None = None
        self._front_at = -math.inf
        self._front_cost = 0.0
        self._front_ended = -1
        self._last_line = -math.inf
        self._live = None
        self._console = None

    # -- output

    @property
    def wants_epochs(self) -> bool:
        """Whether the base model's epochs are worth sending to the driver."""
        return self.mode != "quiet"

    def _out(self):
        return self.stream if self.stream is not None else sys.stderr

    def log(self, msg: str) -> None:
        """A log line: printed above the live display, or as it is."""
        if self._live is not None:
            self._console.print(msg, markup=False, highlight=False, soft_wrap=True)
        else:
            print(msg, file=self._out(), flush=True)

    def trial_line(self, msg: str) -> None:
        """The line of a trial that ended (not shown with ``quiet``)."""
        if self.mode != "quiet":
            self.log(msg)

    def _plain(self, text: Callable[[], str], *, force: bool = False) -> None:
        """Print ``text()`` with a timestamp in ``lines`` mode, at most every ``every``
        seconds unless ``force``."""
        now = self.clock()
        if self.mode != "lines" or (not force and now - self._last_line < self.every):
            return
        self._last_line = now
        print(f"{_stamp(now)} {text()}", file=self._out(), flush=True)

    def __enter__(self) -> Progress:
        if self.mode == "live":
            from rich.console import Console
            from rich.live import Live

            self._console = Console(file=self._out())
            self._live = Live(get_renderable=self._renderable, console=self._console,
                              refresh_per_second=1, redirect_stdout=True,
                              redirect_stderr=True, transient=False)
            self._live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._study is not None:
            self._refresh_front(force=True)
        if self._live is not None:
            try:
                self._live.stop()
            finally:
                self._live = None
        elif self.mode == "lines" and exc[0] is None and self._study is not None:
            self._plain(lambda: line(self.view()), force=True)

    def _renderable(self):
        from rich.text import Text

        try:
            view = self.view()
        except RuntimeError:  # a record changed while it was read: draw it next second
            view = None
        return renderable(view) if view is not None else Text("")

    # -- base model

    def base_started(self, model: str, epochs: int) -> None:
        with self._lock:
            self._base = {"model": model, "epochs": epochs}
            self._base_rows = []

    def base_epoch(self, row: dict) -> None:
        with self._lock:
            self._base_rows.append(row)
        if self._base is not None:
            self._plain(lambda: line(self.view()), force=len(self._base_rows) == 1)

    def base_done(self) -> None:
        with self._lock:
            self._base = None

    # -- study

    def study_started(self, *, name: str, requested: int, slots: int, study_dir,
                      records: dict | None = None) -> None:
        with self._lock:
            self._study = {"name": name, "requested": requested, "slots": slots,
                           "dir": study_dir}
            self._records = dict(records or {})
        self._refresh_front(force=True)

    def trials(self, records: dict) -> None:
        """The Recorder's records changed (one of them, usually)."""
        self._records = records
        if self._study is None:
            return
        self._refresh_front()
        self._plain(lambda: line(self.view()))

    def _refresh_front(self, force: bool = False) -> None:
        """Front size and hypervolume from the study's files (as ``status`` reads them),
        after a trial ended, throttled so that a study of cheap trials is not slowed."""
        if self.mode == "quiet" or self._study is None:
            return
        now = time.perf_counter()
        if not force and now - self._front_at < max(FRONT_EVERY, FRONT_COST * self._front_cost):
            return
        ended = sum(1 for r in list(self._records.values()) if r.get("status") in ENDED)
        if not force and ended == self._front_ended:
            self._front_at = now
            return
        from analysis.results import summary
        from analysis.studydir import skipped_files

        try:
            with skipped_files(lambda _m: None):
                s = summary(self._study["dir"])
            self._front = {"front_size": s["front_size"], "hypervolume": s["hypervolume"]
                           if s["finished"] else None}
        except Exception:  # the display never stops a study; `status` reports the error
            self._front = None
        self._front_cost = time.perf_counter() - now
        self._front_at, self._front_ended = now, ended

    def view(self) -> dict | None:
        """What the display shows now: the base model's view while it trains, else the
        study's."""
        with self._lock:
            if self._base is not None:
                return base_view(list(self._base_rows), **self._base)
            if self._study is None:
                return None
            records = list(self._records.copy().values())
            study = self._study
        return study_view(records, name=study["name"], requested=study["requested"],
                          slots=study["slots"], now=self.clock(), front=self._front)


_ACTIVE: Progress | None = None


def active() -> Progress | None:
    """The display of the study this process drives; None when none is shown (a study run
    from Python rather than from the command line)."""
    return _ACTIVE


@contextlib.contextmanager
def show(display: Progress) -> Iterator[Progress]:
    """Make ``display`` the :func:`active` one, and draw it, for the ``with`` block."""
    global _ACTIVE
    previous = _ACTIVE
    with display:
        _ACTIVE = display
        try:
            yield display
        finally:
            _ACTIVE = previous
