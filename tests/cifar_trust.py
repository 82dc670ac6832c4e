"""Ray workers that trust the CIFAR files a test fabricated: torchvision checks every CIFAR
file against the md5 of the official release, and the tests point those checks at the
fabricated files' md5 (``tests.test_data._trust``). A study's trials load their data in
Ray workers, so each worker does the same at start (``worker_process_setup_hook``), for
the folder named in ``PRUNE_STUDY_TEST_CIFAR``."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

ROOT_ENV = "PRUNE_STUDY_TEST_CIFAR"


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def trust() -> None:
    """Point torchvision's CIFAR md5 checks at the files under ``$PRUNE_STUDY_TEST_CIFAR``."""
    from torchvision.datasets import CIFAR10, CIFAR100

    root = Path(os.environ[ROOT_ENV])
    for cls, folder in ((CIFAR10, root / "cifar-10-batches-py"),
                        (CIFAR100, root / "cifar-100-python")):
        cls.train_list = [[f, _md5(folder / f)] for f, _ in cls.train_list]
        cls.test_list = [[f, _md5(folder / f)] for f, _ in cls.test_list]
        cls.meta = {**cls.meta, "md5": _md5(folder / cls.meta["filename"])}
