"""Decoded datasets on disk, decoded once per node and mapped by every trial.

An entry is a directory ``<cache>/data/<dataset>-<size>px-<key>/`` holding

- ``images.u8``: every image as uint8 ``[N, C, H, W]``, the splits one after another
  (train, val, test), so that each split is a slice of one mapping and never a copy;
- ``labels.npy``: int64 ``[N]``;
- ``manifest.json``: the shape, the split bounds, the classes, the training split's
  channel statistics, the images left out, a fingerprint of the source files (names,
  sizes and modification times) and checks of the two data files.

The first process to need an entry takes ``<entry>.lock``, decodes into
``<entry>.tmp-<pid>`` and renames it into place; others wait on the lock and then map
the entry. Every later load re-reads the manifest and the source fingerprint: a changed
source, a truncated or foreign file, or a manifest from another format rebuilds the
entry (and says why) instead of being used. Mapped pages are shared by every process on
the node, so N trials cost about one copy of memory.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prune_core.errors import StudyFilesError

FORMAT = 1
IMAGES, LABELS, MANIFEST = "images.u8", "labels.npy", "manifest.json"
SPLITS = ("train", "val", "test")
_EDGE = 1 << 16  # bytes at each end of images.u8 that the manifest checks on every load


class CacheDamaged(StudyFilesError):
    """An entry that must be rebuilt; the message says why. Loads rebuild such an entry;
    only one that fails its check right after being built reaches the user."""


@dataclass
class Entry:
    """A complete cache entry: its directory and manifest; ``built`` is True when this
    process decoded it just now."""

    path: Path
    manifest: dict
    built: bool = False

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(images, labels), the images mapped copy-on-write: the pages come from the
        shared page cache and a stray in-place write could never reach the file."""
        shape = tuple(self.manifest["shape"])
        images = np.memmap(self.path / IMAGES, dtype=np.uint8, mode="c", shape=shape)
        return images, np.load(self.path / LABELS)

    def split_bounds(self) -> dict[str, tuple[int, int]]:
        """Each split's [start, stop) rows in :meth:`arrays`."""
        return {k: (int(a), int(b)) for k, (a, b) in self.manifest["splits"].items()}

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.manifest["shape"]))


def fingerprint(files: Iterable[str | Path], root: str | Path | None = None) -> str:
    """SHA-256 of each file's name (relative to ``root``), size and modification time,
    in the order given: any added, removed, replaced or touched file changes it. Plain
    strings and one stat per file: a mapped load of 50,000 images spends most of its
    time here."""
    prefix = len(os.path.join(str(root), "")) if root is not None else 0
    parts = []
    for f in files:
        f = str(f)
        st = os.stat(f)
        name = f[prefix:] if prefix and f.startswith(str(root)) else f
        parts.append(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n")
    return hashlib.sha256("".join(parts).encode()).hexdigest()


def entry_dir(cache_dir: Path, dataset: str, size: int | None, key: dict) -> Path:
    """Where the entry for ``key`` lives (the key holds everything that shapes the arrays
    besides the source files' contents, which the fingerprint covers)."""
    digest = hashlib.sha256(
        json.dumps({"format": FORMAT, **key}, sort_keys=True, default=str).encode()
    ).hexdigest()[:16]
    return Path(cache_dir) / f"{dataset}-{size}px-{digest}" if size else \
        Path(cache_dir) / f"{dataset}-{digest}"


def _edges(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(_EDGE))
        f.seek(max(0, size - _EDGE))
        h.update(f.read(_EDGE))
    return h.hexdigest()


def _labels_hash(labels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int64).tobytes()).hexdigest()


def check(path: Path, source: str) -> Entry:
    """The entry at ``path`` if it is complete and was built from ``source`` (a
    fingerprint); :class:`CacheDamaged` saying what is wrong otherwise."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError as e:
        raise CacheDamaged("it has no manifest") from e
    except (OSError, ValueError) as e:
        raise CacheDamaged(f"its manifest is unreadable ({e})") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CacheDamaged(f"its manifest is not format {FORMAT}")
    if manifest.get("source") != source:
        raise CacheDamaged("the source files changed since it was built")
    try:
        shape = [int(v) for v in manifest["shape"]]
        want = int(np.prod(shape))
        size = (path / IMAGES).stat().st_size
        if size != want:
            raise CacheDamaged(f"{IMAGES} has {size} bytes, its manifest says {want}")
        if _edges(path / IMAGES, size) != manifest["images_edges"]:
            raise CacheDamaged(f"{IMAGES} is not the file its manifest describes")
        labels = np.load(path / LABELS)
        if labels.shape != (shape[0],) or _labels_hash(labels) != manifest["labels_sha256"]:
            raise CacheDamaged(f"{LABELS} is not the file its manifest describes")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CacheDamaged(f"its files are unreadable ({type(e).__name__}: {e})") from e
    return Entry(path, manifest)


class Writer:
    """Builds an entry in a temporary directory: ``images`` is the mapped output array
    the build decodes into; :meth:`finish` writes the labels and returns the manifest
    (:func:`open_entry` writes it last, with the source's fingerprint)."""

    def __init__(self, tmp: Path, shape: tuple[int, ...]):
        self.tmp = tmp
        self.shape = tuple(int(v) for v in shape)
        self.images = np.memmap(tmp / IMAGES, dtype=np.uint8, mode="w+", shape=self.shape)

    def finish(self, labels: np.ndarray, manifest: dict) -> dict:
        """Keep as many images as there are ``labels`` (a build that left images out
        moved the rest down), write the labels; returns the manifest with the files'
        checks."""
        self.images.flush()
        del self.images
        rows = len(labels)
        shape = (rows, *self.shape[1:])
        nbytes = int(np.prod(shape))
        os.truncate(self.tmp / IMAGES, nbytes)
        labels = np.ascontiguousarray(labels, dtype=np.int64)
        np.save(self.tmp / LABELS, labels)
        manifest = {**manifest, "format": FORMAT, "shape": list(shape),
                    "images_edges": _edges(self.tmp / IMAGES, nbytes),
                    "labels_sha256": _labels_hash(labels), "built": time.time()}
        return manifest


def open_entry(
    path: Path,
    source: str,
    build: Callable[[Path], dict],
    log: Callable[[str], None] = print,
) -> Entry:
    """The entry at ``path``, built first by ``build(tmp_dir)`` (which returns the
    manifest's fields and must leave images.u8 and labels.npy in ``tmp_dir``) when it is
    missing or damaged. One process on a node builds; the others wait and map it."""
    try:
        return check(path, source)
    except CacheDamaged:
        pass  # built under the lock below, unless another process does it first
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another process decoding into {path}")
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:  # the process we waited for may have built it
            return check(path, source)
        except CacheDamaged as e:
            why = e
        if path.exists():
            log(f"data cache {path} is rebuilt: {why}")
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            manifest = build(tmp)
            manifest["source"] = source
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
            shutil.rmtree(path, ignore_errors=True)
            os.replace(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    entry = check(path, source)
    entry.built = True
    return entry


def entries(cache_dir: Path) -> list[Entry]:
    """Every entry under ``cache_dir`` whose manifest reads (complete or not checked
    against its source); half-built ``.tmp-`` directories are left out."""
    out = []
    for d in sorted(Path(cache_dir).glob("*")) if Path(cache_dir).is_dir() else []:
        if not d.is_dir() or ".tmp-" in d.name:
            continue
        try:
            out.append(Entry(d, json.loads((d / MANIFEST).read_text())))
        except (OSError, ValueError):
            out.append(Entry(d, {}))
    return out


def dir_bytes(path: Path) -> int:
    """Bytes of the files under ``path``."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


__all__ = ["FORMAT", "CacheDamaged", "Entry", "Writer", "check", "dir_bytes", "entries",
           "entry_dir", "fingerprint", "open_entry"]
