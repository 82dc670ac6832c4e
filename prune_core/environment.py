"""What produced a number: versions, device, machine, load and the code's git commit.

One flat dictionary, stored beside every study (study.json, the Optuna study) and every
benchmark result, so a number can be judged by the code and the machine that made it.
It needs torch and the standard library only; the git call is bounded and never raises.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GIT_TIMEOUT_S = 5.0


def _git(*args: str) -> str | None:
    """``git -C ROOT args`` stripped, or None where there is no git, no checkout or no answer
    within GIT_TIMEOUT_S."""
    try:
        out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                             timeout=GIT_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state() -> tuple[str | None, bool | None]:
    """The commit of the checkout this package runs from, and whether its tracked files
    differ from that commit (as ``git describe --dirty`` says; untracked files do not
    count). (None, None) outside a git checkout, as for an installed wheel."""
    found = _git("rev-parse", "--show-toplevel", "HEAD")
    lines = found.splitlines() if found else []
    # A repository that merely contains the installed package (site-packages inside some
    # checkout) is not this package's: its top must be the folder above this file's.
    if len(lines) != 2 or Path(lines[0]).resolve() != ROOT:
        return None, None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return lines[1], None if status is None else bool(status)


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def load_average() -> list[float] | None:
    """The 1-, 5- and 15-minute load averages (None where the system has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def environment() -> dict:
    """Versions (prune_study, torch, python, cuda), device, machine, torch threads, git
    commit and dirty flag, and the load average: a flat dict of JSON values."""
    import torch

    from prune_core import __version__

    cuda = torch.cuda.is_available()
    commit, dirty = git_state()
    return {
        "prune_study": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.version.cuda if cuda else None,
        "device": torch.cuda.get_device_name(0) if cuda
        else platform.processor() or platform.machine(),
        "machine": f"{cpu_model()}, {os.cpu_count()} logical CPUs",
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "git_commit": commit,
        "dirty": dirty,
        "load_average": load_average(),
    }


__all__ = ["cpu_model", "environment", "git_state", "load_average"]
