"""The pieces of the damage catalogue in :mod:`benchmarks.reliability_dirs`: what a kind of
damage is, the valid study it damages, and small functions that build damages."""

from __future__ import annotations

import functools
import importlib.util
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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


def trial_bytes(make: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def damage(study: Path) -> None:
        file = target_trial(study)
        file.write_bytes(make(file.read_bytes()))
    return damage


def trial_edit(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(study: Path) -> None:
        file = target_trial(study)
        doc = json.loads(file.read_text())
        change(doc)
        file.write_text(json.dumps(doc))  # NaN and Infinity as Python's json writes them
    return damage


def set_key(*keys_value) -> Callable[[dict], None]:
    *keys, value = keys_value

    def change(doc: dict) -> None:
        for k in keys[:-1]:
            doc = doc[k]
        doc[keys[-1]] = value
    return change


def drop_key(key: str) -> Callable[[dict], None]:
    return lambda doc: doc.pop(key)


def param_as_text(doc: dict) -> None:
    key = next(k for k, v in doc["params"].items() if isinstance(v, float))
    doc["params"][key] = doc["row"][key] = str(doc["params"][key])


def json_file(name: str, change: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(study: Path) -> None:
        doc = json.loads((study / name).read_text())
        change(doc)
        (study / name).write_text(json.dumps(doc))
    return damage


def write_file(name: str, data: bytes | Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def damage(study: Path) -> None:
        file = study / name
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(data(file.read_bytes()) if callable(data) else data)
    return damage


def history_insert(line: bytes, at: int | None = 3, newline: bool = True
                    ) -> Callable[[Path], None]:
    """Put ``line`` into history.jsonl as line ``at`` (1-based), or at the end."""
    def damage(study: Path) -> None:
        file = study / "history.jsonl"
        lines = file.read_bytes().splitlines(keepends=True)
        new = line + (b"\n" if newline else b"")
        lines.insert(len(lines) if at is None else at - 1, new)
        file.write_bytes(b"".join(lines))
    return damage


def history_line(**doc) -> bytes:
    return json.dumps({"trial_id": "005ab1f_00001", "step": 99, **doc}).encode()


def replace_with_dir(name: str) -> Callable[[Path], None]:
    def damage(study: Path) -> None:
        file = target_trial(study) if name == "{trial}" else study / name
        file.unlink()
        file.mkdir()
    return damage


def replace_with_loop(name: str) -> Callable[[Path], None]:
    def damage(study: Path) -> None:
        file = target_trial(study) if name == "{trial}" else study / name
        file.unlink()
        file.symlink_to(file.name)  # a link to itself: reading it loops
    return damage


def unreadable(name: str) -> Callable[[Path], None]:
    def damage(study: Path) -> None:
        (target_trial(study) if name == "{trial}" else study / name).chmod(0)
    return damage


def remove(name: str) -> Callable[[Path], None]:
    def damage(study: Path) -> None:
        path = study / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return damage


def remove_if_there(name: str) -> Callable[[Path], None]:
    def damage(study: Path) -> None:
        path = study / name
        if path.exists():
            remove(name)(study)
    return damage


def empty_trials(study: Path) -> None:
    for p in (study / "trials").iterdir():
        p.unlink()


def trials_file(study: Path) -> None:
    shutil.rmtree(study / "trials")
    (study / "trials").write_text("not a folder\n")


def dir_is_file(study: Path) -> None:
    shutil.rmtree(study)
    study.write_text("{}\n")


def dir_loop(study: Path) -> None:
    shutil.rmtree(study)
    study.symlink_to(study.name)


def extra_files(study: Path) -> None:
    (study / "trials" / ".005ab0f_00000.json.4242.tmp").write_text('{"trial_id": "005ab')
    (study / "trials" / "notes.txt").write_text("trial 3 looked odd\n")


def utf16(b: bytes) -> bytes:
    return b.decode("utf-8").encode("utf-16")  # re-saved by an editor as UTF-16
