"""Damaged study directories: a catalogue of damage kinds, and what the commands do on each.

``DAMAGES`` maps a name to a :class:`Damage`: a function that damages a valid study
directory in place (one made by :func:`make_valid`), with what ``prune-study status`` and
``report`` should do about it. ``run_all(workdir)`` applies each kind to a fresh study and
runs ``status``, ``status --json`` and ``report -o`` as subprocesses; ``main()`` prints the
results as a Markdown table::

    python -m benchmarks.reliability_dirs [--kinds trial-empty,base-json-list] [--jobs 4]

Each command is a fresh process that imports torch (about 5 s), so all kinds take
79 x 3 such starts: some 20 minutes on 4 free cores with ``--jobs 4``.

The rule every kind must meet: no traceback. A damaged trial file or history line is
skipped with a warning that names it (exit 0); a damaged study.json or base.json, or a
path that is no study directory, is one error message with exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks._damage import (
    ROOT,
    Damage,
    dir_is_file,
    dir_loop,
    drop_key,
    empty_trials,
    extra_files,
    history_insert,
    history_line,
    json_file,
    make_valid,
    param_as_text,
    remove,
    remove_if_there,
    replace_with_dir,
    replace_with_loop,
    set_key,
    target_trial,
    trial_bytes,
    trial_edit,
    trials_file,
    unreadable,
    utf16,
    write_file,
)

__all__ = ["COMMANDS", "DAMAGES", "Damage", "main", "make_valid", "markdown", "run_all",
           "run_kind", "target_trial"]

COMMANDS = {"status": ["status"], "status --json": ["status", "--json"], "report": ["report"]}

TRIAL = "trials/{trial}"
HIST = "history.jsonl line"


def _trial(fn, doc: str) -> Damage:
    return Damage(fn, doc, names=TRIAL, lost=1)


def _study(fn, doc: str, names: str = "study.json", **kw) -> Damage:
    return Damage(fn, doc, exit=2, names=names, lost=None, **kw)


DAMAGES: dict[str, Damage] = {
    # ---- a trial file: skipped with a warning naming it; the other trials are read
    "trial-not-json": _trial(trial_bytes(lambda b: b"{ this is not json"), "garbage"),
    "trial-empty": _trial(trial_bytes(lambda b: b""), "empty file"),
    "trial-truncated": _trial(trial_bytes(lambda b: b[: len(b) // 2]), "cut off half way"),
    "trial-zero-filled": _trial(trial_bytes(lambda b: b"\0" * len(b)),
                                "NUL bytes, as a crash may leave a file"),
    "trial-utf16": _trial(trial_bytes(utf16), "re-saved as UTF-16 (not UTF-8)"),
    "trial-nested-too-deep": _trial(trial_bytes(lambda b: b"[" * 100_000),
                                    "100,000 nested brackets"),
    "trial-list": _trial(trial_bytes(lambda b: b"[1, 2]"), "a JSON list"),
    "trial-number": _trial(trial_bytes(lambda b: b"42"), "a JSON number"),
    "trial-null": _trial(trial_bytes(lambda b: b"null"), "JSON null"),
    "trial-no-trial-id": _trial(trial_edit(drop_key("trial_id")), "no trial_id"),
    "trial-no-status": _trial(trial_edit(drop_key("status")), "no status"),
    "trial-unknown-status": _trial(trial_edit(set_key("status", "finished")),
                                   "status 'finished'"),
    "trial-id-mismatch": _trial(trial_edit(set_key("trial_id", "../../elsewhere")),
                                "trial_id not the file's name (a path)"),
    "trial-id-number": _trial(trial_edit(set_key("trial_id", 7)), "trial_id a number"),
    "trial-number-string": _trial(trial_edit(set_key("number", "three")), "number a string"),
    "trial-params-string": _trial(trial_edit(set_key("params", "slimming.lambda=0.01")),
                                  "params a string"),
    "trial-param-object": _trial(trial_edit(set_key("params", "slimming.lambda", {"v": 1})),
                                 "a parameter value an object"),
    "trial-param-text": _trial(trial_edit(param_as_text),
                               "a float parameter written as text"),
    "trial-ok-without-row": _trial(trial_edit(drop_key("row")), "status ok but no row"),
    "trial-row-list": _trial(trial_edit(set_key("row", [0.9, 1000])), "row a list"),
    "trial-accuracy-string": _trial(trial_edit(set_key("row", "accuracy", "98 %")),
                                    "accuracy a string"),
    "trial-accuracy-percent": _trial(trial_edit(set_key("row", "accuracy", 98.3)),
                                     "accuracy in percent (above 1)"),
    "trial-accuracy-nan": _trial(trial_edit(set_key("row", "accuracy", float("nan"))),
                                 "accuracy NaN"),
    "trial-macs-infinite": _trial(trial_edit(set_key("row", "macs", float("inf"))),
                                  "MACs Infinity"),
    "trial-macs-negative": _trial(trial_edit(set_key("row", "macs", -1)), "negative MACs"),
    "trial-params-bool": _trial(trial_edit(set_key("row", "params", True)),
                                "params count a boolean"),
    "trial-channels-list": _trial(trial_edit(set_key("row", "channels", [16, 32])),
                                  "channels a list"),
    "trial-method-number": _trial(trial_edit(set_key("row", "method", 5)), "method a number"),
    "trial-started-string": _trial(trial_edit(set_key("started", "yesterday")),
                                   "started not a time"),
    "trial-is-directory": _trial(replace_with_dir("{trial}"), "a directory in its place"),
    "trial-symlink-loop": _trial(replace_with_loop("{trial}"), "a symlink to itself"),
    "trial-unreadable": Damage(unreadable("{trial}"), "mode 000", names=TRIAL, lost=1,
                               permissions=True),
    "trial-leftovers": Damage(extra_files, "a temporary file of a write, a notes.txt",
                              lost=0),
    # ---- history.jsonl: a bad line is skipped with a warning naming the line (report)
    "history-cut-last-line": Damage(history_insert(b'{"trial_id": "005ab1f_000', None, False),
                                    "last line cut off", names=HIST, history=True),
    "history-garbage-line": Damage(history_insert(b"garbage"), "a line of garbage",
                                   names=HIST, history=True),
    "history-zero-line": Damage(history_insert(b"\0" * 64), "a line of NUL bytes",
                                names=HIST, history=True),
    "history-latin1-line": Damage(history_insert(b'{"trial_id": "005ab1f_00001", "step": 99, '
                                                  b'"stage": "\xe9t\xe9"}'),
                                  "a line in Latin-1", names=HIST, history=True),
    "history-list-line": Damage(history_insert(b"[1, 2, 3]"), "a JSON list", names=HIST,
                                history=True),
    "history-step-string": Damage(history_insert(history_line(step="five")),
                                  "step a string", names=HIST, history=True),
    "history-no-trial-id": Damage(history_insert(b'{"step": 3, "epoch": 1}'), "no trial_id",
                                  names=HIST, history=True),
    "history-metric-string": Damage(history_insert(history_line(val_accuracy="high")),
                                    "val_accuracy a string", names=HIST, history=True),
    "history-is-directory": Damage(replace_with_dir("history.jsonl"), "a directory",
                                   names="history.jsonl", history=True),
    "history-unreadable": Damage(unreadable("history.jsonl"), "mode 000",
                                 names="history.jsonl", history=True, permissions=True),
    "history-empty": Damage(write_file("history.jsonl", b""), "empty (no epoch reported yet)",
                            history=True),
    "history-missing": Damage(remove("history.jsonl"), "missing", history=True),
    # ---- missing optional pieces
    "no-trials-dir": Damage(remove("trials"), "no trials/ folder yet", lost=None),
    "no-trials": Damage(empty_trials, "an empty trials/ folder", lost=None),
    "trials-is-file": Damage(trials_file, "trials is a file", names="trials", lost=None),
    "trials-unreadable": Damage(unreadable("trials"), "trials/ mode 000", names="trials",
                                lost=None, permissions=True),
    "base-json-missing": Damage(remove("base.json"), "no base.json", names="base.json"),
    # ---- Ray Tune's state (read by `resume` only; tests/test_sampler_studies.py resumes
    # these: afresh without trials, refused with exit 2 with them): status and report read on
    "tune-state-empty": Damage(write_file("tune/tuner.pkl", b""),
                               "tune/tuner.pkl empty, as a failed start leaves it"),
    "tune-state-garbage": Damage(write_file("tune/tuner.pkl", b"\x80\x05garbage"),
                                 "tune/tuner.pkl not a pickle"),
    "tune-state-missing": Damage(remove_if_there("tune"), "no tune/ folder"),
    # ---- study.json and base.json: one error naming the file, exit 2
    "study-json-missing": _study(remove("study.json"), "missing"),
    "study-json-empty": _study(write_file("study.json", b""), "empty"),
    "study-json-not-json": _study(write_file("study.json", b"name: fake\n"), "YAML, not JSON"),
    "study-json-truncated": _study(write_file("study.json", lambda b: b[: len(b) // 2]), "cut off"),
    "study-json-utf16": _study(write_file("study.json", utf16), "UTF-16"),
    "study-json-list": _study(write_file("study.json", b'["accuracy", "macs"]'), "a JSON list"),
    "study-json-null": _study(write_file("study.json", b"null"), "JSON null"),
    "study-json-directory": _study(replace_with_dir("study.json"), "a directory"),
    "study-json-symlink-loop": _study(replace_with_loop("study.json"), "a symlink to itself"),
    "study-json-unreadable": _study(unreadable("study.json"), "mode 000", permissions=True),
    "study-objectives-missing": _study(json_file("study.json", drop_key("objectives")),
                                       "no objectives"),
    "study-objectives-list": _study(json_file("study.json", set_key("objectives",
                                                                  ["accuracy", "macs"])),
                                    "objectives a list"),
    "study-objectives-direction": _study(json_file("study.json", set_key(
        "objectives", {"accuracy": "up"})), "an objective direction 'up'"),
    "study-objectives-empty": _study(json_file("study.json", set_key("objectives", {})),
                                     "no objective"),
    "study-trials-string": _study(json_file("study.json", set_key("trials", "twenty")),
                                  "trials a string"),
    "study-name-number": _study(json_file("study.json", set_key("name", 5)), "name a number"),
    "study-methods-number": _study(json_file("study.json", set_key("methods", 5)),
                                   "methods a number"),
    "study-space-list": _study(json_file("study.json", set_key("space", [1])), "space a list"),
    "base-json-empty": _study(write_file("base.json", b""), "empty", names="base.json"),
    "base-json-not-json": _study(write_file("base.json", b"accuracy=0.98"), "not JSON",
                                 names="base.json"),
    "base-json-list": _study(write_file("base.json", b"[0.98, 9880832]"), "a JSON list",
                             names="base.json"),
    "base-accuracy-string": _study(json_file("base.json", set_key("accuracy", "98 %")),
                                   "accuracy a string", names="base.json"),
    "base-macs-negative": _study(json_file("base.json", set_key("macs", -9880832)),
                                 "negative MACs", names="base.json"),
    "base-channels-list": _study(json_file("base.json", set_key("channels", [16, 32])),
                                 "channels a list", names="base.json"),
    "base-json-directory": _study(replace_with_dir("base.json"), "a directory",
                                  names="base.json"),
    "base-json-unreadable": _study(unreadable("base.json"), "mode 000", names="base.json",
                                   permissions=True),
    "dir-is-file": _study(dir_is_file, "the study path is a file",
                          names="is not a study directory"),
    "dir-symlink-loop": _study(dir_loop, "the study path is a symlink to itself",
                               names="is not a study directory"),
    "dir-unreadable": _study(unreadable("."), "the study folder mode 000",
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
