"""Damaged study directories: a catalogue of damage kinds, and what the commands do on each.

``DAMAGES`` maps a name to a :class:`Damage`: a function that damages a valid study
directory in place (one made by :func:`make_valid`), with what ``prune-study status`` and
``report`` should do about it. ``run_all(workdir)`` applies each kind to a fresh study and
runs ``status``, ``status --json`` and ``report -o`` as subprocesses; ``main()`` prints the
results as a Markdown table::

    python benchmarks/reliability_dirs.py [--kinds trial-empty,base-json-list] [--jobs 4]

Each command is a fresh process that imports torch (about 5 s), so all kinds take
79 x 3 such starts: some 20 minutes on 4 free cores with ``--jobs 4``.

The rule every kind must meet: no traceback. A damaged trial file or history line is
skipped with a warning that names it (exit 0); a damaged study.json or base.json, or a
path that is no study directory, is one error message with exit 2.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = {"status": ["status"], "status --json": ["status", "--json"], "report": ["report"]}


@dataclass(frozen=True)
class Damage:
    """One kind of damage, and what the commands should do about it.

    ``names`` is text the first warning or error must contain (``{trial}`` stands for the
    damaged trial file's name), or None when the damage is harmless and needs no word;
    ``lost`` how many finished trials it takes away (None: all of them); ``history`` says
    that only ``report`` reads the damaged file (``status`` reads no history);
    ``permissions`` that the damage is a file mode, which root reads through.
    """

    damage: Callable[[Path], None]
    doc: str
    exit: int = 0
    names: str | None = None
    lost: int | None = 0
    history: bool = False
    permissions: bool = False

    def __call__(self, study: Path) -> None:
        self.damage(study)

    def expected_text(self, study: Path) -> str | None:
        """``names`` for this study; call it before the damage (it reads the trial files)."""
        if self.names is None:
            return None
        return self.names.format(trial=target_trial(study).name if "{trial}" in self.names
                                 else "")


# --------------------------------------------------------------------------- the study


@functools.cache
def _factory():
    """tests/study_factory.py, loaded by path: benchmarks need no tests package on sys.path."""
    spec = importlib.util.spec_from_file_location("_study_factory",
                                                  ROOT / "tests" / "study_factory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_valid(root: str | Path, name: str = "study") -> Path:
    """A small valid study: 4 finished trials of two methods, 1 failed, 1 running."""
    return _factory().make_study(root, name, methods=("slimming", "magnitude"), ok=4,
                                 failed=1, running=1, seed=5)


def target_trial(study: Path) -> Path:
    """The trial file a trial damage hits: the intact finished trial with the lowest number
    (so damages compose: a second one hits another trial)."""
    found = []
    for p in (study / "trials").glob("*.json"):
        try:
            doc = json.loads(p.read_text())
            if doc["status"] == "ok" and isinstance(doc["number"], int) and doc["row"]["macs"] > 0:
                found.append((doc["number"], p))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return min(found)[1]


# --------------------------------------------------------------------------- damages


def _trial_bytes(make: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def damage(study: Path) -> None:
        file = target_trial(study)
        file.write_bytes(make(file.read_bytes()))
    return damage


def _trial_edit(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(study: Path) -> None:
        file = target_trial(study)
        doc = json.loads(file.read_text())
        change(doc)
        file.write_text(json.dumps(doc))  # NaN and Infinity as Python's json writes them
    return damage


def _set(*keys_value) -> Callable[[dict], None]:
    *keys, value = keys_value

    def change(doc: dict) -> None:
        for k in keys[:-1]:
            doc = doc[k]
        doc[keys[-1]] = value
    return change


def _drop(key: str) -> Callable[[dict], None]:
    return lambda doc: doc.pop(key)


def _param_as_text(doc: dict) -> None:
    key = next(k for k, v in doc["params"].items() if isinstance(v, float))
    doc["params"][key] = doc["row"][key] = str(doc["params"][key])


def _json_file(name: str, change: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(study: Path) -> None:
        doc = json.loads((study / name).read_text())
        change(doc)
        (study / name).write_text(json.dumps(doc))
    return damage


def _write(name: str, data: bytes | Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def damage(study: Path) -> None:
        file = study / name
        file.write_bytes(data(file.read_bytes()) if callable(data) else data)
    return damage


def _history_insert(line: bytes, at: int | None = 3, newline: bool = True
                    ) -> Callable[[Path], None]:
    """Put ``line`` into history.jsonl as line ``at`` (1-based), or at the end."""
    def damage(study: Path) -> None:
        file = study / "history.jsonl"
        lines = file.read_bytes().splitlines(keepends=True)
        new = line + (b"\n" if newline else b"")
        lines.insert(len(lines) if at is None else at - 1, new)
        file.write_bytes(b"".join(lines))
    return damage


def _history_line(**doc) -> bytes:
    return json.dumps({"trial_id": "005ab1f_00001", "step": 99, **doc}).encode()


def _replace_with_dir(name: str) -> Callable[[Path], None]:
    def damage(study: Path) -> None:
        file = target_trial(study) if name == "{trial}" else study / name
        file.unlink()
        file.mkdir()
    return damage


def _replace_with_loop(name: str) -> Callable[[Path], None]:
    def damage(study: Path) -> None:
        file = target_trial(study) if name == "{trial}" else study / name
        file.unlink()
        file.symlink_to(file.name)  # a link to itself: reading it loops
    return damage


def _unreadable(name: str) -> Callable[[Path], None]:
    def damage(study: Path) -> None:
        (target_trial(study) if name == "{trial}" else study / name).chmod(0)
    return damage


def _remove(name: str) -> Callable[[Path], None]:
    def damage(study: Path) -> None:
        path = study / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return damage


def _empty_trials(study: Path) -> None:
    for p in (study / "trials").iterdir():
        p.unlink()


def _trials_file(study: Path) -> None:
    shutil.rmtree(study / "trials")
    (study / "trials").write_text("not a folder\n")


def _dir_is_file(study: Path) -> None:
    shutil.rmtree(study)
    study.write_text("{}\n")


def _dir_loop(study: Path) -> None:
    shutil.rmtree(study)
    study.symlink_to(study.name)


def _extra_files(study: Path) -> None:
    (study / "trials" / ".005ab0f_00000.json.4242.tmp").write_text('{"trial_id": "005ab')
    (study / "trials" / "notes.txt").write_text("trial 3 looked odd\n")


def _utf16(b: bytes) -> bytes:
    return b.decode("utf-8").encode("utf-16")  # re-saved by an editor as UTF-16


TRIAL = "trials/{trial}"
HIST = "history.jsonl line"


def _trial(fn, doc: str) -> Damage:
    return Damage(fn, doc, names=TRIAL, lost=1)


def _study(fn, doc: str, names: str = "study.json", **kw) -> Damage:
    return Damage(fn, doc, exit=2, names=names, lost=None, **kw)


DAMAGES: dict[str, Damage] = {
    # ---- a trial file: skipped with a warning naming it; the other trials are read
    "trial-not-json": _trial(_trial_bytes(lambda b: b"{ this is not json"), "garbage"),
    "trial-empty": _trial(_trial_bytes(lambda b: b""), "empty file"),
    "trial-truncated": _trial(_trial_bytes(lambda b: b[: len(b) // 2]), "cut off half way"),
    "trial-zero-filled": _trial(_trial_bytes(lambda b: b"\0" * len(b)),
                                "NUL bytes, as a crash may leave a file"),
    "trial-utf16": _trial(_trial_bytes(_utf16), "re-saved as UTF-16 (not UTF-8)"),
    "trial-nested-too-deep": _trial(_trial_bytes(lambda b: b"[" * 100_000),
                                    "100,000 nested brackets"),
    "trial-list": _trial(_trial_bytes(lambda b: b"[1, 2]"), "a JSON list"),
    "trial-number": _trial(_trial_bytes(lambda b: b"42"), "a JSON number"),
    "trial-null": _trial(_trial_bytes(lambda b: b"null"), "JSON null"),
    "trial-no-trial-id": _trial(_trial_edit(_drop("trial_id")), "no trial_id"),
    "trial-no-status": _trial(_trial_edit(_drop("status")), "no status"),
    "trial-unknown-status": _trial(_trial_edit(_set("status", "finished")),
                                   "status 'finished'"),
    "trial-id-mismatch": _trial(_trial_edit(_set("trial_id", "../../elsewhere")),
                                "trial_id not the file's name (a path)"),
    "trial-id-number": _trial(_trial_edit(_set("trial_id", 7)), "trial_id a number"),
    "trial-number-string": _trial(_trial_edit(_set("number", "three")), "number a string"),
    "trial-params-string": _trial(_trial_edit(_set("params", "slimming.lambda=0.01")),
                                  "params a string"),
    "trial-param-object": _trial(_trial_edit(_set("params", "slimming.lambda", {"v": 1})),
                                 "a parameter value an object"),
    "trial-param-text": _trial(_trial_edit(_param_as_text),
                               "a float parameter written as text"),
    "trial-ok-without-row": _trial(_trial_edit(_drop("row")), "status ok but no row"),
    "trial-row-list": _trial(_trial_edit(_set("row", [0.9, 1000])), "row a list"),
    "trial-accuracy-string": _trial(_trial_edit(_set("row", "accuracy", "98 %")),
                                    "accuracy a string"),
    "trial-accuracy-percent": _trial(_trial_edit(_set("row", "accuracy", 98.3)),
                                     "accuracy in percent (above 1)"),
    "trial-accuracy-nan": _trial(_trial_edit(_set("row", "accuracy", float("nan"))),
                                 "accuracy NaN"),
    "trial-macs-infinite": _trial(_trial_edit(_set("row", "macs", float("inf"))),
                                  "MACs Infinity"),
    "trial-macs-negative": _trial(_trial_edit(_set("row", "macs", -1)), "negative MACs"),
    "trial-params-bool": _trial(_trial_edit(_set("row", "params", True)),
                                "params count a boolean"),
    "trial-channels-list": _trial(_trial_edit(_set("row", "channels", [16, 32])),
                                  "channels a list"),
    "trial-method-number": _trial(_trial_edit(_set("row", "method", 5)), "method a number"),
    "trial-started-string": _trial(_trial_edit(_set("started", "yesterday")),
                                   "started not a time"),
    "trial-is-directory": _trial(_replace_with_dir("{trial}"), "a directory in its place"),
    "trial-symlink-loop": _trial(_replace_with_loop("{trial}"), "a symlink to itself"),
    "trial-unreadable": Damage(_unreadable("{trial}"), "mode 000", names=TRIAL, lost=1,
                               permissions=True),
    "trial-leftovers": Damage(_extra_files, "a temporary file of a write, a notes.txt",
                              lost=0),
    # ---- history.jsonl: a bad line is skipped with a warning naming the line (report)
    "history-cut-last-line": Damage(_history_insert(b'{"trial_id": "005ab1f_000', None, False),
                                    "last line cut off", names=HIST, history=True),
    "history-garbage-line": Damage(_history_insert(b"garbage"), "a line of garbage",
                                   names=HIST, history=True),
    "history-zero-line": Damage(_history_insert(b"\0" * 64), "a line of NUL bytes",
                                names=HIST, history=True),
    "history-latin1-line": Damage(_history_insert(b'{"trial_id": "005ab1f_00001", "step": 99, '
                                                  b'"stage": "\xe9t\xe9"}'),
                                  "a line in Latin-1", names=HIST, history=True),
    "history-list-line": Damage(_history_insert(b"[1, 2, 3]"), "a JSON list", names=HIST,
                                history=True),
    "history-step-string": Damage(_history_insert(_history_line(step="five")),
                                  "step a string", names=HIST, history=True),
    "history-no-trial-id": Damage(_history_insert(b'{"step": 3, "epoch": 1}'), "no trial_id",
                                  names=HIST, history=True),
    "history-metric-string": Damage(_history_insert(_history_line(val_accuracy="high")),
                                    "val_accuracy a string", names=HIST, history=True),
    "history-is-directory": Damage(_replace_with_dir("history.jsonl"), "a directory",
                                   names="history.jsonl", history=True),
    "history-unreadable": Damage(_unreadable("history.jsonl"), "mode 000",
                                 names="history.jsonl", history=True, permissions=True),
    "history-empty": Damage(_write("history.jsonl", b""), "empty (no epoch reported yet)",
                            history=True),
    "history-missing": Damage(_remove("history.jsonl"), "missing", history=True),
    # ---- missing optional pieces
    "no-trials-dir": Damage(_remove("trials"), "no trials/ folder yet", lost=None),
    "no-trials": Damage(_empty_trials, "an empty trials/ folder", lost=None),
    "trials-is-file": Damage(_trials_file, "trials is a file", names="trials", lost=None),
    "trials-unreadable": Damage(_unreadable("trials"), "trials/ mode 000", names="trials",
                                lost=None, permissions=True),
    "base-json-missing": Damage(_remove("base.json"), "no base.json", names="base.json"),
    # ---- study.json and base.json: one error naming the file, exit 2
    "study-json-missing": _study(_remove("study.json"), "missing"),
    "study-json-empty": _study(_write("study.json", b""), "empty"),
    "study-json-not-json": _study(_write("study.json", b"name: fake\n"), "YAML, not JSON"),
    "study-json-truncated": _study(_write("study.json", lambda b: b[: len(b) // 2]), "cut off"),
    "study-json-utf16": _study(_write("study.json", _utf16), "UTF-16"),
    "study-json-list": _study(_write("study.json", b'["accuracy", "macs"]'), "a JSON list"),
    "study-json-null": _study(_write("study.json", b"null"), "JSON null"),
    "study-json-directory": _study(_replace_with_dir("study.json"), "a directory"),
    "study-json-symlink-loop": _study(_replace_with_loop("study.json"), "a symlink to itself"),
    "study-json-unreadable": _study(_unreadable("study.json"), "mode 000", permissions=True),
    "study-objectives-missing": _study(_json_file("study.json", _drop("objectives")),
                                       "no objectives"),
    "study-objectives-list": _study(_json_file("study.json", _set("objectives",
                                                                  ["accuracy", "macs"])),
                                    "objectives a list"),
    "study-objectives-direction": _study(_json_file("study.json", _set(
        "objectives", {"accuracy": "up"})), "an objective direction 'up'"),
    "study-objectives-empty": _study(_json_file("study.json", _set("objectives", {})),
                                     "no objective"),
    "study-trials-string": _study(_json_file("study.json", _set("trials", "twenty")),
                                  "trials a string"),
    "study-name-number": _study(_json_file("study.json", _set("name", 5)), "name a number"),
    "study-methods-number": _study(_json_file("study.json", _set("methods", 5)),
                                   "methods a number"),
    "study-space-list": _study(_json_file("study.json", _set("space", [1])), "space a list"),
    "base-json-empty": _study(_write("base.json", b""), "empty", names="base.json"),
    "base-json-not-json": _study(_write("base.json", b"accuracy=0.98"), "not JSON",
                                 names="base.json"),
    "base-json-list": _study(_write("base.json", b"[0.98, 9880832]"), "a JSON list",
                             names="base.json"),
    "base-accuracy-string": _study(_json_file("base.json", _set("accuracy", "98 %")),
                                   "accuracy a string", names="base.json"),
    "base-macs-negative": _study(_json_file("base.json", _set("macs", -9880832)),
                                 "negative MACs", names="base.json"),
    "base-channels-list": _study(_json_file("base.json", _set("channels", [16, 32])),
                                 "channels a list", names="base.json"),
    "base-json-directory": _study(_replace_with_dir("base.json"), "a directory",
                                  names="base.json"),
    "base-json-unreadable": _study(_unreadable("base.json"), "mode 000", names="base.json",
                                   permissions=True),
    "dir-is-file": _study(_dir_is_file, "the study path is a file",
                          names="is not a study directory"),
    "dir-symlink-loop": _study(_dir_loop, "the study path is a symlink to itself",
                               names="is not a study directory"),
    "dir-unreadable": _study(_unreadable("."), "the study folder mode 000",
                             names="is not a study directory", permissions=True),
}


# --------------------------------------------------------------------------- running


def _command(argv: list[str], permissions: bool) -> list[str]:
    cmd = [sys.executable, "-m", "studies.cli", *argv]
    if permissions and os.geteuid() == 0 and shutil.which("setpriv"):
        # Root reads any file; without these capabilities it meets file modes as users do.
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *cmd]
    return cmd


def _first_message(stderr: str, study: Path) -> str | None:
    """The first ``error:`` or ``warning:`` line, with the study's path as ``<study>``."""
    line = next((line for line in stderr.splitlines()
                 if line.startswith(("error:", "warning:"))), None)
    return line and line.replace(str(study), "<study>")


def _restore_modes(path: Path) -> None:
    for p in [path, *path.rglob("*")] if path.is_dir() and not path.is_symlink() else []:
        if not p.is_symlink():
            p.chmod(0o755 if p.is_dir() else 0o644)


def run_kind(name: str, workdir: Path, timeout: float = 300) -> dict:
    """Damage a fresh study with ``DAMAGES[name]``, run the commands on it, and record
    each one's exit code, whether it printed a traceback, and its first message."""
    damage = DAMAGES[name]
    study = make_valid(workdir / name)
    finished = sum(json.loads(p.read_text())["status"] == "ok"
                   for p in (study / "trials").glob("*.json"))
    expected_finished = 0 if damage.lost is None else finished - damage.lost
    text = damage.expected_text(study)
    text = text and text.replace(str(study), "<study>")
    damage(study)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    out: dict = {"kind": name, "what": damage.doc, "expected_exit": damage.exit,
                 "expected_text": text}
    try:
        for label, argv in COMMANDS.items():
            argv = [*argv, str(study)] + (["-o", str(workdir / name / "report")]
                                          if label == "report" else [])
            p = subprocess.run(_command(argv, damage.permissions), capture_output=True,
                               text=True, errors="replace", env=env, cwd=workdir,
                               timeout=timeout)
            out[label] = {"exit": p.returncode, "traceback": "Traceback" in p.stderr,
                          "message": _first_message(p.stderr, study)}
            if label == "status --json" and p.returncode == 0:
                try:
                    out["finished"] = json.loads(p.stdout)["finished"]
                except (ValueError, KeyError, TypeError):
                    out["finished"] = "stdout is not one JSON document"
    finally:
        _restore_modes(study)
    out["expected_finished"] = expected_finished if damage.exit == 0 else None
    out["ok"] = _meets(damage, out)
    return out


def _meets(damage: Damage, out: dict) -> bool:
    """No traceback, the expected exit codes, the damage named, the other trials counted."""
    for label in COMMANDS:
        r = out[label]
        if r["traceback"] or r["exit"] != damage.exit:
            return False
        named = damage.names is None or damage.history and label != "report" or (
            r["message"] is not None and out["expected_text"] in r["message"])
        if not named:
            return False
    return damage.exit != 0 or out.get("finished") == out["expected_finished"]


def run_all(workdir: str | Path, kinds: list[str] | None = None, jobs: int = 1) -> list[dict]:
    """:func:`run_kind` for every kind (or the given ones), each on its own fresh study,
    ``jobs`` kinds at a time; results in the order of ``DAMAGES``."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    names = kinds or list(DAMAGES)
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        return list(pool.map(lambda name: run_kind(name, workdir), names))


def markdown(results: list[dict]) -> str:
    """The results as a Markdown table, one row per kind of damage."""
    head = ["damage", "what", *COMMANDS, "trials read", "traceback", "first message",
            "as intended"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        msg = next((r[c]["message"] for c in COMMANDS if r[c]["message"]), "")
        msg = msg.replace("|", "\\|")
        if len(msg) > 110:
            msg = msg[:107] + "..."
        cells = [f"`{r['kind']}`", r["what"], *(str(r[c]["exit"]) for c in COMMANDS),
                 str(r.get("finished", "")) if r["expected_exit"] == 0 else "",
                 "yes" if any(r[c]["traceback"] for c in COMMANDS) else "no",
                 f"`{msg}`" if msg else "", "yes" if r["ok"] else "**no**"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the kinds and print the table; exit 1 when any kind is not handled as intended."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kinds", help="comma-separated names (default: all)")
    p.add_argument("--workdir", help="where to make the studies (default: a temporary folder)")
    p.add_argument("--jobs", type=int, default=1, help="kinds run at a time (default 1)")
    args = p.parse_args(argv)
    kinds = args.kinds.split(",") if args.kinds else None
    unknown = sorted(set(kinds or []) - set(DAMAGES))
    if unknown:
        p.error(f"unknown kinds {', '.join(unknown)}; known: {', '.join(DAMAGES)}")
    if args.workdir:
        results = run_all(args.workdir, kinds, args.jobs)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            results = run_all(tmp, kinds, args.jobs)
    print(markdown(results))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
