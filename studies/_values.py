"""What every part of the spec check shares: the spec's constants and errors, the
checker that collects every mistake, value helpers, and reading a YAML file safely."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from prune_core.errors import InputError, StudyFilesError

SCHEDULERS = ("asha", "mo_asha")
SPACE_KEYS = ("type", "low", "high", "log", "step", "choices")
SEARCH_WORD = "search"  # `stage.param: search` takes the method's declared range
PIPELINE = "pipeline"  # the categorical parameter choosing between chains
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
DEVICE_RE = re.compile(r"auto|cpu|mps|cuda(:\d{1,2})?")
MAX_TRIALS = 1_000_000
MAX_REPEATS = 100
MAX_INT = 2**32 - 1  # seeds and counts: what numpy and Optuna take
TOP_KEYS = (
    "name", "data", "model", "baseline", "finetune", "methods", "space", "objectives",
    "sampler", "trials", "repeats", "scheduler", "resources", "max_concurrent", "storage",
    "optuna_storage", "max_failures", "seed", "device", "latency", "constraints", "loggers",
    "warm_start", "enqueue", "keep_models",
)
LOGGERS = ("csv", "json", "tensorboard", "mlflow")
# Which finished trials keep their compressed model in <study>/models (prune-study export).
KEEP_MODELS = ("front", "all", "none")


class SpecError(InputError):
    """Every mistake found in a spec, one line each, naming the field."""

    def __init__(self, errors: list[str], source: str = "spec"):
        self.errors = list(errors)
        self.source = source
        n = len(errors)
        lines = "\n".join(f"  - {e}" for e in errors)
        super().__init__(f"{n} error{'s' if n != 1 else ''} in {source}:\n{lines}")


class StudyError(StudyFilesError):
    """A study directory is missing, foreign, or already used."""


@dataclass(frozen=True)
class ParamSpace:
    """How one ``stage.param`` is searched: a range, choices, or a fixed value."""

    name: str
    kind: str  # float | int | categorical | fixed
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple | None = None
    value: Any = None

    @property
    def stage(self) -> str:
        return self.name.partition(".")[0]

    def to_dict(self) -> dict:
        if self.kind == "fixed":
            return {"type": "fixed", "value": self.value}
        if self.kind == "categorical":
            return {"type": "categorical", "choices": list(self.choices)}
        d = {"type": self.kind, "low": self.low, "high": self.high, "log": self.log}
        if self.step is not None:
            d["step"] = self.step
        return d



MAX_SPEC_BYTES = 1 << 20
# Linux's PATH_MAX and NAME_MAX: a longer path fails every system call with ENAMETOOLONG.
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255


class _UniqueKeyLoader(yaml.SafeLoader):
    """The safe loader, refusing a key given twice in one mapping (YAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: the base loader reports it
                continue
            if first != key_node.start_mark.line + 1:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (lines {first} and "
                    f"{key_node.start_mark.line + 1}); keep one", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> Any:
    """A YAML file's data: UTF-8, at most 1 MiB, safe tags only, no key given twice."""
    try:
        size = path.stat().st_size
        if size > MAX_SPEC_BYTES:
            raise SpecError([f"the file is {size} bytes; a spec is at most {MAX_SPEC_BYTES}"],
                            str(path))
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError([f"not UTF-8 text: byte 0x{e.object[e.start]:02x} at position "
                         f"{e.start}; save the file as UTF-8"], str(path)) from e
    except OSError as e:
        raise SpecError([f"cannot read it: {e.strerror or e}"], str(path)) from e
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as e:
        raise SpecError([f"not valid YAML: {e}"], str(path)) from e
    except RecursionError as e:
        raise SpecError(["not valid YAML: nested too deeply"], str(path)) from e


class Checker:
    """Collects errors instead of stopping at the first."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def error(self, where: str, message: str) -> None:
        self.errors.append(f"{where}: {message}")

    def numeric(self, where: str, value: Any, allowed: str) -> int | float | None:
        """Every number of the spec passes here first: ``value`` as a finite int or float
        that a float can hold (YAML's ``1e-3`` text counts), or None after an error naming
        the field, the value (shortened) and ``allowed``. A bool, NaN, infinity, text and an
        integer too large for a float (10**400) are refused, so no later comparison or
        ``float()`` of it can raise."""
        number = as_number(value)
        if number is None:
            meant = maybe_number(value)
            why = "too large for a float" if isinstance(value, str) and \
                isinstance(meant, float) and math.isinf(meant) and \
                any(ch.isdigit() for ch in value) else number_problem(meant)
            self.error(where, f"{show(value)} is not valid{f' ({why})' if why else ''}; "
                              f"allowed: {allowed}")
        return number

    def integer(self, where: str, value: Any, low: int = 0, high: int = MAX_INT) -> int:
        """An integer in [low, high] (an integral float such as 1e3 counts; a bool not)."""
        allowed = f"an integer in [{low}, {high}]"
        number = self.numeric(where, value, allowed)
        if number is None:
            return low
        if isinstance(number, float) and number.is_integer():
            number = int(number)
        if not isinstance(number, int) or not low <= number <= high:
            self.error(where, f"{show(value)} is not valid; allowed: {allowed}")
            return low
        return number

    def number(self, where: str, value: Any, low: float, high: float, *,
               low_open: bool = False, high_open: bool = False) -> float | None:
        """A finite number in [low, high] (``low_open``, ``high_open``: without that end)."""
        allowed = f"a number in {'(' if low_open else '['}{low:g}, {high:g}" \
            f"{')' if high_open else ']'}"
        number = self.numeric(where, value, allowed)
        if number is None:
            return None
        if not low <= number <= high or (low_open and number == low) \
                or (high_open and number == high):
            self.error(where, f"{show(value)} is not valid; allowed: {allowed}")
            return None
        return float(number)

    def path(self, where: str, value: Any, what: str = "a path") -> Path | None:
        """Every local path of the spec passes here first: ``value`` with ``~`` expanded, or
        None after an error naming the field, the value (shortened) and what to do. Text
        without control characters (NUL, newline), encodable for the file system, whose
        ``~user`` exists, at most PATH_MAX bytes long and NAME_MAX bytes a component, so no
        later ``expanduser()``, ``stat()`` or ``mkdir()`` of it can raise."""
        if not isinstance(value, str) or not value.strip():
            self.error(where, f"{show(value)} is not {what}; give {what} as text")
            return None
        if CONTROL.search(value):
            char = CONTROL.search(value).group()
            self.error(where, f"{show(value)} holds the control character {char!r}; "
                              f"give {what} without it")
            return None
        try:
            os.fsencode(value)
        except UnicodeEncodeError:
            self.error(where, f"{show(value)} holds characters no file name can hold here; "
                              f"give {what} in plain text")
            return None
        try:
            path = Path(value).expanduser()
        except RuntimeError:  # ~user without such a user, or ~ without a home directory
            path = Path(value)
        if value.startswith("~") and str(path).startswith("~"):
            user = value[1:].split("/", 1)[0]
            whose = f"no user {user!r} here" if user else "no home directory here"
            self.error(where, f"{show(value)}: {whose}, so its ~ cannot be expanded; give "
                              "the full path")
            return None
        size = len(os.fsencode(str(path)))
        longest = max((len(os.fsencode(p)) for p in path.parts), default=0)
        if size > MAX_PATH_BYTES or longest > MAX_NAME_BYTES:
            self.error(where, f"{show(value)} is too long ({size} bytes, the longest part "
                              f"{longest}); allowed: at most {MAX_PATH_BYTES} bytes and "
                              f"{MAX_NAME_BYTES} bytes between slashes; give a shorter path")
            return None
        return path

    def text(self, where: str, value: Any, pattern: re.Pattern, allowed: str) -> str | None:
        if not isinstance(value, str) or not pattern.fullmatch(value):
            self.error(where, f"{show(value)} is not valid; allowed: {allowed}")
            return None
        return value


def number_problem(value: Any) -> str | None:
    """Why ``value`` cannot serve as a number (a bool, NaN, infinity, an integer too
    large for a float, not a number at all), or None if it can."""
    if isinstance(value, bool):
        return "true and false are not numbers"
    if not isinstance(value, int | float):
        return "not a number"
    try:
        return None if math.isfinite(value) else "not a finite number"
    except OverflowError:  # an int beyond 1.8e308: float() and math.* of it raise
        return "too large for a float"


def as_number(value: Any) -> int | float | None:
    """``value`` (or the number its text means) if :func:`number_problem` finds nothing."""
    value = maybe_number(value)
    return value if number_problem(value) is None else None


def probe(path: Path) -> str | None:
    """What is at ``path``: ``file``, ``dir``, ``other``, or None if nothing is there or it
    cannot be looked at (no permission)."""
    try:
        return "dir" if path.is_dir() else "file" if path.is_file() else \
            "other" if path.exists() else None
    except (OSError, ValueError):
        return None


def show(value: Any, n: int = 60) -> str:
    """``repr`` shortened for messages (a 400-digit number stays readable)."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**n else \
        f"an integer of {len(str(abs(value)))} digits"
    return text if len(text) <= n else text[: n - 3] + "..."


def maybe_number(value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` as a string; take it as the number it means."""
    if isinstance(value, str) and len(value) < 400:
        if re.fullmatch(r"\s*[+-]?\d+\s*", value):
            return int(value)
        try:
            return float(value)
        except ValueError:
            return value
    return value


def named(c: Checker, where: str, value: Any, default_kw: dict | None = None
           ) -> tuple[str | None, dict]:
    """``name`` or ``{name: ..., **kw}``."""
    if isinstance(value, str):
        return value, dict(default_kw or {})
    if isinstance(value, dict):
        if "name" not in value:
            c.error(f"{where}.name", "missing")
            return None, {}
        kw = {k: maybe_number(v) for k, v in value.items() if k != "name"}
        return value["name"], kw
    c.error(where, f"{value!r} is not valid; allowed: a name, or a mapping with name and "
                   "settings")
    return None, {}



CONTROL = re.compile(r"[\x00-\x1f\x7f]")
URI_RE = re.compile(r"[a-z][a-z0-9+.-]*://[^\s]+")
