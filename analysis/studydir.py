"""The one reader of a study directory (docs/study-directory.md), checked value by value.

Every command that reads a study (``status``, ``report``, ``resume``, the Recorder picking
up a restored experiment) goes through here, so each reads the same trials. What a study
*is* (``study.json``, ``base.json``) must be intact: anything wrong there raises
:class:`StudyDirError` naming the file and the fault. Trial files and history lines are
many and replaceable: a damaged one is skipped with a :class:`StudyDirWarning` naming the
file (and line) and the reason, and the rest is read.

Plain Python only (no pandas, torch or Ray): the driver of a study uses it too.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from prune_core import columns
from prune_core.errors import StudyFilesError

__all__ = ["INDEX", "check_history_line", "check_trial", "history_records", "indexed_trials",
           "read_base", "read_study", "skipped_files", "study_path", "StudyDirError",
           "StudyDirWarning", "trial_records"]

STATUSES = ("ok", "failed", "running", "pending", "stopped", "timeout")
# Per-epoch metrics every history line may carry; a diverged loss may be NaN.
METRICS = ("train_loss", "train_accuracy", "val_accuracy", "lr", "sparsity", "alpha")
# At most this many warnings per file kind and study; then one line says how many more.
MAX_WARNINGS = 10


class StudyDirError(StudyFilesError):
    """A path that is not a readable study directory, or a study.json / base.json that is
    malformed."""


class StudyDirWarning(UserWarning):
    """A trial file or history line that was skipped because it is damaged."""


class Damaged(ValueError):
    """Why one file or line cannot be used (becomes a warning or a StudyDirError)."""


# --------------------------------------------------------------------------- values


def _show(v) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _finite(v) -> bool:
    return _number(v) and math.isfinite(v)


def _scalar(v) -> bool:
    return v is None or isinstance(v, str | bool) or _finite(v)


def _check_measures(row: dict, where: str) -> None:
    """The columns of ``prune_core.columns`` hold numbers in their range (a share, or any
    ``*_accuracy``, may be null); others are free."""
    for key, v in row.items():
        col = columns.column(key)
        if (col and col.unit == "share") or (col is None and key.endswith("_accuracy")):
            if v is not None and not (_finite(v) and 0 <= v <= 1):
                raise Damaged(f"{where}{key} is {_show(v)}; expected a number in [0, 1]")
        elif col is not None and not (_finite(v) and col.low <= v <= col.high):
            what = "a non-negative number" if col.low == 0 and col.high == math.inf else \
                f"a number in [{col.low:g}, {col.high:g}]"
            raise Damaged(f"{where}{key} is {_show(v)}; expected {what}")
    channels = row.get("channels")
    if channels is not None and not (isinstance(channels, dict) and all(
            _finite(c) and c >= 0 for c in channels.values())):
        raise Damaged(f"{where}channels is {_show(channels)}; expected an object of "
                      "conv layer -> non-negative number")


def _expect(doc: dict, key: str, kinds: tuple, what: str) -> None:
    """``doc[key]`` is absent, null or of one of ``kinds`` (a bool is not a number)."""
    v = doc.get(key)
    if v is not None and (not isinstance(v, kinds) or isinstance(v, bool) and bool not in kinds):
        raise Damaged(f"{key} is {_show(v)}; expected {what}")


# --------------------------------------------------------------------------- files


def _read_text(path: Path) -> str:
    """The text of a file; Damaged when it cannot be read or is not UTF-8."""
    try:
        data = path.read_bytes()
    except IsADirectoryError as e:
        raise Damaged("it is a directory, not a file") from e
    except OSError as e:
        raise Damaged(f"it cannot be read ({e.strerror or e})") from e
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Damaged(f"it is not UTF-8 text (byte {e.start})") from e


def _parse(text: str):
    if not text.strip():
        raise Damaged("it is empty")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise Damaged(f"it is not valid JSON ({e.msg}: line {e.lineno}, column {e.colno}; "
                      "cut off or overwritten?)") from e
    except RecursionError as e:
        raise Damaged("it is not valid JSON (nested too deeply)") from e


JSON_TYPES = {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}


def _object(doc, what: str) -> dict:
    if not isinstance(doc, dict):
        name = "null" if doc is None else JSON_TYPES.get(type(doc), type(doc).__name__)
        raise Damaged(f"it holds a JSON {name}, not an object ({what})")
    return doc


def _json_object(path: Path, what: str) -> dict:
    return _object(_parse(_read_text(path)), what)


def study_path(study_dir: str | Path) -> Path:
    """The study directory, checked: it exists, is a directory and has a study.json."""
    path = Path(study_dir)
    try:
        if path.is_dir():
            os.lstat(path / "study.json")
            return path
        if path.exists():
            why = "it is a file"
        elif os.path.lexists(path):
            why = "it is a broken symbolic link (or a symlink loop)"
        else:
            why = "it does not exist"
    except FileNotFoundError:
        why = ("no study.json in it (a directory written by prune-study run has study.json, "
               "base.json, trials/, history.jsonl)")
    except OSError as e:  # a folder we may not enter
        why = f"it cannot be read ({e.strerror or e})"
    raise StudyDirError(f"{str(path)!r} is not a study directory: {why}; give the "
                        "<storage>/<name> directory of a study")


def read_study(study_dir: str | Path) -> dict:
    """study.json, checked: ``objectives`` a non-empty mapping of column -> max|min, and
    every other known key of the type docs/study-directory.md gives."""
    file = study_path(study_dir) / "study.json"
    try:
        doc = _json_object(file, "expected the study description")
        objectives = doc.get("objectives")
        if not isinstance(objectives, dict) or not objectives:
            raise Damaged(f"objectives is {_show(objectives)}; expected a mapping of column -> "
                          "'max' or 'min', such as {'accuracy': 'max', 'macs': 'min'}")
        for col, direction in objectives.items():
            if not col or direction not in ("max", "min"):
                raise Damaged(f"objective {col!r} has direction {_show(direction)}; "
                              "allowed: max, min")
        _expect(doc, "name", (str,), "a string")
        _expect(doc, "sampler", (str,), "a sampler name")
        _expect(doc, "sampler_seed", (int,), "an integer")
        _expect(doc, "trials", (int,), "an integer number of trials")
        if isinstance(doc.get("trials"), int) and doc["trials"] < 0:
            raise Damaged(f"trials is {doc['trials']}; expected a number of trials >= 0")
        _expect(doc, "methods", (str, list), "a chain such as 'slimming+quantize' or a list")
        if isinstance(doc.get("methods"), list) and not all(
                isinstance(m, str | list) for m in doc["methods"]):
            raise Damaged(f"methods is {_show(doc['methods'])}; expected a list of chains")
        for key in ("space", "environment", "model", "data", "base", "constraints"):
            _expect(doc, key, (dict,), "an object")
        for col, bound in (doc.get("constraints") or {}).items():
            if not isinstance(bound, dict) or not bound or set(bound) - {"min", "max"} or \
                    not all(isinstance(v, int | float) and not isinstance(v, bool)
                            and math.isfinite(v) for v in bound.values()):
                raise Damaged(f"constraint {col!r} is {_show(bound)}; expected "
                              "{'min': number} and/or {'max': number}")
        _expect(doc, "created", (str,), "an ISO-8601 time")
    except Damaged as e:
        raise StudyDirError(f"{file}: {e}") from e
    return doc


def read_base(study_dir: str | Path) -> dict:
    """base.json, checked like a result row; {} (with a warning) when the study has none."""
    file = study_path(study_dir) / "base.json"
    if not os.path.lexists(file):
        warnings.warn(f"{file} is missing: the base model is not shown and the hypervolume "
                      "reference comes from the trials", StudyDirWarning, stacklevel=2)
        return {}
    try:
        doc = _json_object(file, "expected the base model's row")
        _check_measures(doc, "")
    except Damaged as e:
        raise StudyDirError(f"{file}: {e}") from e
    return doc


# --------------------------------------------------------------------------- trials


def _check_param(key: str, v, space: dict, where: str) -> None:
    """A parameter value of the type the study's space gives it (a range takes numbers)."""
    spec = space.get(key)
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind in ("float", "int") and not (_finite(v) and (kind == "float" or v == int(v))):
        raise Damaged(f"{where}{key} is {_show(v)}; the study searches it as {kind}")


def check_trial(doc, file: Path, space: dict | None = None) -> dict:
    """A trial file's document, checked (its parameters against the study's ``space``,
    when given); Damaged says what is wrong with it."""
    space = space or {}
    doc = _object(doc, "expected a trial with trial_id, number, status, params, row")
    for key in ("trial_id", "status"):
        if key not in doc:
            raise Damaged(f"it has no {key!r}")
    tid = doc["trial_id"]
    if not isinstance(tid, str) or tid != file.stem:
        # Trial files are named by trial id; resume rewrites the file of that name.
        raise Damaged(f"trial_id is {_show(tid)}, not the file's name {file.stem!r}")
    if doc["status"] not in STATUSES:
        raise Damaged(f"status is {_show(doc['status'])}; expected one of "
                      f"{', '.join(STATUSES)}")
    number = doc.get("number")
    if number is not None and not (isinstance(number, int) and not isinstance(number, bool)
                                   and number >= 0):
        raise Damaged(f"number is {_show(number)}; expected an integer >= 0")
    for key in ("params", "row", "last"):
        _expect(doc, key, (dict,), "an object")
    for key, v in (doc.get("params") or {}).items():
        ok = (isinstance(v, str) or isinstance(v, list) and all(isinstance(s, str) for s in v)
              if key == "pipeline" else _scalar(v))
        if not ok:
            raise Damaged(f"params.{key} is {_show(v)}; expected a number, string or boolean")
        _check_param(key, v, space, "params.")
    for key in ("error", "hostname", "node_id"):
        _expect(doc, key, (str,), "a string")
    for key in ("started", "ended"):
        _expect(doc, key, (int, float), "a UNIX time")
    row = doc.get("row") or {}
    if doc["status"] == "ok":
        if not row:
            raise Damaged("its status is ok but it has no row of results")
        _check_measures(row, "row.")
        for key in space.keys() & row.keys():
            _check_param(key, row[key], space, "row.")
        method = row.get("method")
        if method is not None and not (isinstance(method, str) or isinstance(method, list)
                                       and all(isinstance(m, str) for m in method)):
            raise Damaged(f"row.method is {_show(method)}; expected a chain name")
    return doc


def _names(folder: Path, problems: list[str]) -> list[str]:
    """The names of the trial files in ``trials/``, sorted; hidden names are temporary files
    of a write."""
    try:
        if not os.path.lexists(folder):
            return []
        names = os.listdir(folder)
    except NotADirectoryError:
        problems.append(f"{folder} is not a directory: no trials read")
        return []
    except OSError as e:
        problems.append(f"{folder} cannot be read ({e.strerror or e}): no trials read")
        return []
    return sorted(n for n in names if n.endswith(".json") and not n.startswith("."))


def _listing(folder: Path, problems: list[str]) -> list[Path]:
    """The trial files of ``trials/`` (see :func:`_names`)."""
    return [folder / n for n in _names(folder, problems)]


def _trial_space(path: Path, space: dict | None) -> dict:
    if space is not None:
        return space
    try:
        return read_study(path).get("space") or {}
    except StudyDirError:
        return {}


def _in_order(records: list[dict]) -> list[dict]:
    return sorted(records, key=lambda r: (r.get("number") is None, r.get("number") or 0,
                                          str(r["trial_id"])))


def trial_records(study_dir: str | Path, space: dict | None = None) -> list[dict]:
    """Every intact trial file's document, in trial-number order (unnumbered last).

    Each damaged file is skipped with a :class:`StudyDirWarning` that names it and says why.
    Parameters are checked against ``space``, by default study.json's (none when study.json
    cannot be read: that is the caller's error to report).
    """
    path = Path(study_dir)
    space = _trial_space(path, space)
    problems: list[str] = []
    records = []
    for file in _listing(path / "trials", problems):
        try:
            records.append(check_trial(_parse(_read_text(file)), file, space))
        except Damaged as e:
            problems.append(f"{file} skipped: {e}")
    _warn(problems, "trial files")
    return _in_order(records)


# --------------------------------------------------------------------------- trial index

# The index of trials/ that `status` reads instead of every trial file (docs/study-directory.md).
INDEX = "trials-index.json"
# Bump when check_trial changes what it accepts: an index of another format is rebuilt.
INDEX_FORMAT = 1
# A file changed this recently before the index was written may change again within its
# time stamp's resolution without the stamp moving: it is read again, never trusted.
RACY_NS = 2_000_000_000


def _stamp(st: os.stat_result) -> list[int]:
    # The Recorder replaces a trial file by renaming a new one over it: a new inode and
    # ctime even when the size and mtime come out the same.
    return [st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino]


def _read_index(file: Path, key: str) -> tuple[dict[str, list], int]:
    """The entries of an index written for ``key`` and when it was written; ({}, 0) for a
    missing, damaged or outdated index (it is then rebuilt)."""
    try:
        doc = json.loads(file.read_bytes())
        if not (isinstance(doc, dict) and doc.get("format") == INDEX_FORMAT
                and doc.get("key") == key and isinstance(doc.get("written_ns"), int)
                and isinstance(doc.get("files"), dict)):
            return {}, 0
        return doc["files"], doc["written_ns"]
    except (OSError, ValueError, RecursionError):
        return {}, 0


def _trusted(entry, name: str, stamp: list[int] | None, written_ns: int) -> bool:
    """An index entry that still describes its file: the same stamp, older than the index
    by more than RACY_NS, and well formed (a record of that trial, or a reason)."""
    if stamp is None or not isinstance(entry, list) or len(entry) != 6 or \
            entry[:4] != stamp or max(stamp[0], stamp[1]) >= written_ns - RACY_NS:
        return False
    record, reason = entry[4], entry[5]
    if reason is None:
        return isinstance(record, dict) and record.get("trial_id") == name[:-5] and \
            record.get("status") in STATUSES
    return record is None and isinstance(reason, str)


def _write_index(file: Path, doc: dict) -> None:
    """Write the index atomically; a study directory we may not write is read without one."""
    tmp = file.with_name(f".{file.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        tmp.write_text(json.dumps(doc, separators=(",", ":")), encoding="utf-8")
        os.replace(tmp, file)
    except OSError:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def indexed_trials(study_dir: str | Path, space: dict, reduce: Callable[[dict], dict],
                   key: str) -> list[dict]:
    """``reduce(doc)`` of every intact trial file, in trial-number order, as
    ``[reduce(d) for d in trial_records(study_dir, space)]`` gives them, with the same
    warnings; but read through the study's index (:data:`INDEX`), so that only trial files
    changed since it was written are parsed.

    ``reduce`` keeps what the caller needs of a checked trial document (JSON values, with
    the document's ``trial_id``, ``number`` and ``status``); ``key`` names what it keeps
    and the ``space`` it was checked against: an index written for another key is rebuilt.
    The index is rewritten (atomically) when a trial file was read; when the directory
    cannot be written, every call reads the files it cannot trust.
    """
    path = Path(study_dir)
    folder = path / "trials"
    problems: list[str] = []
    names = _names(folder, problems)
    if problems:  # trials/ unreadable: nothing to index
        _warn(problems, "trial files")
        return []
    old, written_ns = _read_index(path / INDEX, key)
    now = time.time_ns()
    entries: dict[str, list] = {}
    records = []
    dirty = len(old) != len(names)
    prefix = os.path.join(folder, "")
    for name in names:
        try:
            stamp = _stamp(os.stat(prefix + name))
        except OSError:
            stamp = None
        entry = old.get(name)
        if not _trusted(entry, name, stamp, written_ns):
            dirty = True
            file = folder / name
            try:
                entry = [*(stamp or [0] * 4), reduce(check_trial(_parse(_read_text(file)),
                                                                 file, space)), None]
            except Damaged as e:
                entry = [*(stamp or [0] * 4), None, str(e)]
        if stamp is not None:
            entries[name] = entry
        if entry[5] is None:
            records.append(entry[4])
        else:
            problems.append(f"{folder / name} skipped: {entry[5]}")
    _warn(problems, "trial files")
    if dirty:
        _write_index(path / INDEX, {"format": INDEX_FORMAT, "key": key, "written_ns": now,
                                    "files": entries})
    return _in_order(records)


# --------------------------------------------------------------------------- history


def check_history_line(doc) -> dict:
    """One epoch report of history.jsonl, checked."""
    doc = _object(doc, "expected an epoch report")
    for key in ("trial_id", "step"):
        if key not in doc:
            raise Damaged(f"it has no {key!r}")
    tid, step = doc["trial_id"], doc["step"]
    if not isinstance(tid, str) or not tid:
        raise Damaged(f"trial_id is {_show(tid)}; expected a trial id")
    if not (isinstance(step, int) and not isinstance(step, bool) and step >= 0):
        raise Damaged(f"step is {_show(step)}; expected an integer >= 0")
    for key in ("stage", "phase"):
        _expect(doc, key, (str,), "a string")
    _expect(doc, "epoch", (int,), "an integer")
    for key in METRICS:
        if doc.get(key) is not None and not _number(doc[key]):
            raise Damaged(f"{key} is {_show(doc[key])}; expected a number")
    return doc


def history_records(study_dir: str | Path) -> list[dict]:
    """The intact lines of history.jsonl in file order; [] when the study has none.

    A damaged line (cut off, garbage, wrong types) is skipped with a warning naming the
    line; an unterminated last line may be one being appended right now, and is skipped.
    """
    file = Path(study_dir) / "history.jsonl"
    problems: list[str] = []
    if not os.path.lexists(file):
        return []
    try:
        data = file.read_bytes()
    except OSError as e:
        reason = "it is a directory" if isinstance(e, IsADirectoryError) else \
            f"it cannot be read ({e.strerror or e})"
        _warn([f"{file} skipped: {reason}; no training curves"], "history")
        return []
    lines = data.split(b"\n")
    out = []
    for i, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise Damaged(f"not UTF-8 text (byte {e.start})") from e
            try:
                doc = json.loads(text)
            except (json.JSONDecodeError, RecursionError) as e:
                last = i == len(lines)
                raise Damaged("not valid JSON" + (" (unterminated last line: cut off, or "
                                                  "being written)" if last else "")) from e
            out.append(check_history_line(doc))
        except Damaged as e:
            problems.append(f"{file} line {i} skipped: {e}".replace(": it ", ": "))
    _warn(problems, "history lines")
    return out


def _warn(problems: list[str], what: str) -> None:
    for p in problems[:MAX_WARNINGS]:
        warnings.warn(p, StudyDirWarning, stacklevel=3)
    if len(problems) > MAX_WARNINGS:
        warnings.warn(f"... and {len(problems) - MAX_WARNINGS} more damaged {what} skipped",
                      StudyDirWarning, stacklevel=3)


@contextmanager
def skipped_files(say: Callable[[str], None]) -> Iterator[list[str]]:
    """Pass each :class:`StudyDirWarning` raised inside the block to ``say`` once, when it is
    raised, instead of Python's warning display; yields the list of their texts. Other
    warnings are shown as usual."""
    seen: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("always", StudyDirWarning)
        show_others = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if not issubclass(category, StudyDirWarning):
                show_others(message, category, filename, lineno, file, line)
            elif str(message) not in seen:
                seen.append(str(message))
                say(str(message))

        warnings.showwarning = show
        yield seen
