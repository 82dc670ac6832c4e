"""What a storage's cache holds (``<storage>/_cache``): trained base models, decoded
datasets and sensitivity scans; listed by ``prune-study cache list`` and ``status``,
removed by ``cache clear``.

Removing an entry never disturbs a running trial: a trial maps or has loaded its files,
and a later trial rebuilds what it needs (a base model is trained again, a dataset
decoded again).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from prune_core._data_cache import dir_bytes, entries

KINDS = ("base", "data", "sensitivity")


def items(cache_dir: Path) -> list[dict]:
    """One row per cached thing: kind, name, path, bytes, modified (epoch seconds) and
    a detail line; half-built leftovers of killed processes included as ``partial``."""
    cache_dir = Path(cache_dir)
    rows: list[dict] = []
    for f in sorted(cache_dir.glob("base-*.pt")):
        st = f.stat()
        rows.append({"kind": "base", "name": f.stem, "path": str(f), "bytes": st.st_size,
                     "modified": st.st_mtime, "detail": "trained base model"})
    for e in entries(cache_dir / "data"):
        m = e.manifest
        if m.get("shape"):
            n, c, h, w = m["shape"]
            detail = (f"{m.get('dataset', '?')}: {n} images {c}x{h}x{w}"
                      + (f", {len(m['skipped'])} unreadable left out" if m.get("skipped")
                         else ""))
        else:
            detail = "damaged (no readable manifest): rebuilt on its next use"
        rows.append({"kind": "data", "name": e.path.name, "path": str(e.path),
                     "bytes": dir_bytes(e.path), "modified": e.path.stat().st_mtime,
                     "detail": detail})
    for d in sorted((cache_dir / "data").glob("*.tmp-*")) if (cache_dir / "data").is_dir() \
            else []:
        rows.append({"kind": "data", "name": d.name, "path": str(d), "bytes": dir_bytes(d),
                     "modified": d.stat().st_mtime, "partial": True,
                     "detail": "left half-built by a killed process"})
    for f in sorted((cache_dir / "sensitivity").glob("*.json")) \
            if (cache_dir / "sensitivity").is_dir() else []:
        st = f.stat()
        rows.append({"kind": "sensitivity", "name": f.stem, "path": str(f),
                     "bytes": st.st_size, "modified": st.st_mtime,
                     "detail": "sensitivity scan of a base model"})
    return rows


def totals(cache_dir: Path) -> dict[str, dict]:
    """{kind: {"count", "bytes"}} for :func:`items`."""
    out = {k: {"count": 0, "bytes": 0} for k in KINDS}
    for row in items(cache_dir):
        out[row["kind"]]["count"] += 1
        out[row["kind"]]["bytes"] += row["bytes"]
    return out


def clear(cache_dir: Path, kinds: tuple[str, ...] = KINDS,
          older_than: float | None = None) -> list[dict]:
    """Remove the cached things of ``kinds`` (not modified for ``older_than`` seconds,
    when given); returns the rows removed. The empty lock files stay: a process may be
    waiting on one, and a new file under the same name would let two builders in."""
    removed = []
    now = time.time()
    for row in items(cache_dir):
        if row["kind"] not in kinds:
            continue
        if older_than is not None and now - row["modified"] < older_than:
            continue
        path = Path(row["path"])
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(row)
    return removed


__all__ = ["KINDS", "clear", "items", "totals"]
