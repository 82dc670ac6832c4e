"""One driver per study: ``<study>/driver.lock`` names the process running it.

``run`` and ``resume`` hold the lock for as long as they drive the study. It is a
small JSON file (host, pid, start time), created complete in one step: written to a
temporary file, then hard-linked to its name, which fails if the name exists (on a
filesystem without hard links, ``O_CREAT | O_EXCL``). A second driver is refused with
the holder's name. A lock whose holder is gone (same host, process not alive, or its
pid now belongs to a younger process) is taken over with a warning; a lock held on
another host is respected, since this host cannot tell whether that process lives.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from studies.spec import StudyError

LOCK_NAME = "driver.lock"
# A takeover is guarded by a second file; one left by a driver that died mid-takeover
# (a few milliseconds of work) is cleared after this long.
GUARD_STALE_S = 30.0


class LockHeld(StudyError):
    """Another driver holds the study (exit code 2)."""

    def __init__(self, message: str, holder: dict):
        super().__init__(message)
        self.holder = holder


def _proc_stat(pid: int) -> list[str] | None:
    """Fields 3 onwards of ``/proc/<pid>/stat`` (Linux), or None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses; fields after its ")" are
    # plain: state is field 3 and starttime field 22.
    return stat.rsplit(")", 1)[1].split()


def _process_start(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (Linux), to tell a reused pid."""
    fields = _proc_stat(pid)
    try:
        return int(fields[19]) if fields else None
    except (IndexError, ValueError):
        return None


def pid_alive(pid: int, start: int | None = None) -> bool:
    """Whether process ``pid`` of this host lives (and, given ``start``, is that process)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by another user
    fields = _proc_stat(pid)
    if fields and fields[0] in ("Z", "X"):
        return False  # exited, not yet reaped by its parent
    if start is not None:
        now = _process_start(pid)
        if now is not None and now != start:
            return False  # the pid was reused by a process started later
    return True


def holder_text(holder: dict) -> str:
    """``host H, pid P, since T``: who holds a lock."""
    return (f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, since "
            f"{holder.get('since', '?')}")


def read_lock(study_dir: str | Path) -> dict | None:
    """The holder recorded in the study's lock, ``{}`` if unreadable, ``None`` if unlocked."""
    try:
        text = (Path(study_dir) / LOCK_NAME).read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        doc = json.loads(text)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _create(path: Path, doc: dict) -> bool:
    """Create ``path`` holding ``doc`` if it does not exist; False if it does."""
    text = json.dumps(doc, indent=1)
    tmp = path.with_name(f".{path.name}.{doc['token']}.tmp")
    tmp.write_text(text)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:
        pass  # no hard links here: fall back to O_EXCL (a reader may see it half-written)
    finally:
        tmp.unlink(missing_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return True


class DriverLock:
    """The lock of one study, held by this process; a context manager.

    ``DriverLock(study_dir, command="run").acquire()`` raises :class:`LockHeld` if a
    live driver holds it. ``release`` removes the file only if it is still this
    driver's, and is called on leaving the ``with`` block, whatever the exit.
    """

    def __init__(self, study_dir: str | Path, *, command: str = "run",
                 log: Callable[[str], None] | None = None):
        self.study_dir = Path(study_dir)
        self.path = self.study_dir / LOCK_NAME
        self.command = command
        self.log = log or (lambda m: print(m, file=sys.stderr, flush=True))
        self.doc: dict | None = None

    def __enter__(self) -> DriverLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> DriverLock:
        self.study_dir.mkdir(parents=True, exist_ok=True)
        doc = {"host": socket.gethostname(), "pid": os.getpid(),
               "since": datetime.now(UTC).isoformat(timespec="seconds"), "since_unix": time.time(),
               "process_start": _process_start(os.getpid()), "command": self.command,
               "token": uuid.uuid4().hex}
        for _ in range(3):
            if _create(self.path, doc):
                self.doc = doc
                return self
            holder = read_lock(self.study_dir)
            if holder is None:
                continue  # released between the two calls
            if not self._stale(holder):
                raise LockHeld(self._held_message(holder), holder)
            if self._take_over(holder, doc):
                self.doc = doc
                return self
        holder = read_lock(self.study_dir) or {}
        raise LockHeld(self._held_message(holder), holder)

    def release(self) -> None:
        if self.doc is None:
            return
        current = read_lock(self.study_dir)
        if current and current.get("token") == self.doc["token"]:
            self.path.unlink(missing_ok=True)
        self.doc = None

    # ---------------------------------------------------------------- helpers

    def _stale(self, holder: dict) -> bool:
        """Held by a process of this host that no longer runs."""
        if not holder:
            # Unreadable or being written (only without hard links): give it a moment.
            try:
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return True
            return age > GUARD_STALE_S
        pid = holder.get("pid")
        return (holder.get("host") == socket.gethostname() and isinstance(pid, int)
                and not pid_alive(pid, holder.get("process_start")))

    def _take_over(self, stale: dict, doc: dict) -> bool:
        """Replace a stale lock; two drivers taking over at once go one at a time."""
        guard = self.path.with_name(self.path.name + ".takeover")
        try:
            if time.time() - guard.stat().st_mtime > GUARD_STALE_S:
                guard.unlink(missing_ok=True)
        except FileNotFoundError:
            pass
        if not _create(guard, doc):
            return False
        try:
            if read_lock(self.study_dir) != stale:
                return False  # someone else took it over, or it was released
            self.path.unlink(missing_ok=True)
            if not _create(self.path, doc):
                return False
        finally:
            guard.unlink(missing_ok=True)
        self.log(f"warning: {self.path} was left by a driver that is no longer running "
                 f"({holder_text(stale) if stale else 'unreadable'}); taking it over")
        return True

    def _held_message(self, holder: dict) -> str:
        here = socket.gethostname()
        who = holder_text(holder) if holder else "a driver whose lock file is unreadable"
        if holder and holder.get("host") != here:
            how = (f"If host {holder.get('host')} is gone or that driver has stopped, remove "
                   f"{self.path} and try again.")
        else:
            how = (f"Wait for it to finish, or stop it (Ctrl-C saves its state); then "
                   f"`prune-study resume {self.study_dir}`.")
        return (f"{self.study_dir} is being driven by another prune-study "
                f"{holder.get('command', 'driver')} ({who}); one driver per study. {how}")


__all__ = ["LOCK_NAME", "DriverLock", "LockHeld", "holder_text", "pid_alive", "read_lock"]
