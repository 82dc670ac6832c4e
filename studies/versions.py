"""Whether the installed packages the project reaches into are the versions it was tested
with.

prune-study subclasses Ray Tune's OptunaSearch and reads its private state, hands Optuna's
samplers to Ray (which pickles them), walks torch-pruning's dependency graph and uses
torchao's PT2E quantizer. pyproject.toml bounds each of them to the tested minor; a user who
upgrades one past its bound hears so before a study starts, not from a traceback in one.
"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import InvalidVersion, Version

__all__ = ["REACHED_INTO", "declared_ranges", "untested_versions", "version_warning"]

# The distributions whose internals the code depends on.
REACHED_INTO = ("ray", "optuna", "torch-pruning", "torchao")
_PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def declared_ranges() -> dict[str, Requirement]:
    """The project's own requirements by distribution name: from the installed package's
    metadata, or from pyproject.toml when run from a checkout that was never installed."""
    try:
        lines = [r for r in metadata.requires("prune-study") or [] if "extra ==" not in r]
    except metadata.PackageNotFoundError:
        lines = tomllib.loads(_PYPROJECT.read_text())["project"]["dependencies"]
    return {r.name.lower(): r for r in map(Requirement, lines)}


def untested_versions(names=REACHED_INTO, installed=None) -> list[tuple[str, str, str]]:
    """``(name, installed version, declared range)`` for each package in ``names`` whose
    installed version lies outside the range pyproject.toml declares. ``installed`` maps
    names to versions (default: what this Python has)."""
    ranges = declared_ranges()
    out = []
    for name in names:
        req = ranges.get(name)
        if req is None:
            continue
        try:
            have = (installed or {}).get(name) or metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # a missing package fails at its import with its own message
        try:
            ok = req.specifier.contains(Version(have), prereleases=True)
        except InvalidVersion:
            ok = False
        if not ok:
            out.append((name, have, str(req.specifier)))
    return out


def version_warning(installed=None) -> str | None:
    """One line naming every reached-into package outside its tested range, or None."""
    bad = untested_versions(installed=installed)
    if not bad:
        return None
    have = ", ".join(f"{n} {v} (tested: {r})" for n, v, r in bad)
    pins = " ".join(f"'{n}{r}'" for n, _, r in bad)
    return (f"warning: untested versions installed: {have}; prune-study reaches into their "
            f"internals, so a study may fail. To get the tested ones: pip install {pins}")
