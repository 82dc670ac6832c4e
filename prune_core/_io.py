"""Reading and writing tensors safely: ``torch.load(weights_only=True)`` with an error
that names the file, and writes that a killed process never leaves half done. Torch
only, so every module can use it without importing the rest of the package."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from prune_core.errors import StudyFilesError


class CheckpointError(StudyFilesError):
    """A checkpoint or cache file is corrupt, foreign or unsafe."""


def safe_load(path: str | Path) -> Any:
    """``torch.load`` with ``weights_only=True`` and an error that names the file."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile,
            ValueError, AttributeError, TypeError) as e:
        raise CheckpointError(
            f"{str(path)!r} is not a readable prune-study checkpoint (corrupt, truncated or "
            f"holding code objects, which are never loaded): {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}. Delete it to rebuild it."
        ) from e


def atomic_save(obj: Any, path: Path) -> None:
    """Write to a temporary file, then rename: a killed process never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


__all__ = ["CheckpointError", "atomic_save", "safe_load"]
