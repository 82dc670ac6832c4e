"""Epoch time of the tensor-resident loader against torchvision's DataLoader.

Both pipelines serve the same CIFAR-shaped data (random 32x32 uint8 images, no
download) with the same augmentation: random crop with 4 pixels of zero padding,
horizontal flip, normalisation. Only the data pipeline runs, no model.

    python -m benchmarks.bench_data            # 10,000 images, 5 timed epochs
    python -m benchmarks.bench_data --tiny     # seconds; used by the tests
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import CIFAR10

from benchmarks._common import DOCS, Run
from prune_core.data import CIFAR_MEAN, CIFAR_STD, Data, Split


class SyntheticCIFAR(CIFAR10):
    """torchvision's CIFAR10 code reading synthetic files: with md5 None its integrity
    check only asks that the files exist, so loading and __getitem__ are the real ones."""

    base_folder = "synthetic-cifar"
    train_list = [["data_batch_1", None]]
    test_list = [["test_batch", None]]
    meta = {"filename": "batches.meta", "key": "label_names", "md5": None}


def write_synthetic(root: Path, images: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder = root / SyntheticCIFAR.base_folder
    folder.mkdir(parents=True)
    for name, n in (("data_batch_1", images), ("test_batch", 16)):
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, n).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {"label_names": [f"class{i}" for i in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))


def tensor_epochs(ds: CIFAR10, batch_size: int):
    """One callable per epoch over the tensor-resident loader."""
    x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    split = Split(x, torch.as_tensor(ds.targets))
    data = Data("synthetic", 10, split, split, split, CIFAR_MEAN, CIFAR_STD, crop_padding=4)
    seed = iter(range(1_000_000))

    def epoch() -> int:
        g = torch.Generator().manual_seed(next(seed))
        return sum(len(y) for _, y in data.batches("train", batch_size, generator=g))

    return epoch


def torchvision_epochs(root: Path, batch_size: int, workers: int):
    tf = transforms.Compose([
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(CIFAR_MEAN, CIFAR_STD),
    ])
    ds = SyntheticCIFAR(str(root), train=True, transform=tf)
    # Persistent workers: worker start-up is not charged to every epoch.
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0)

    def epoch() -> int:
        return sum(len(y) for _, y in loader)

    return epoch


def timed(epoch) -> float:
    t0 = time.perf_counter()
    epoch()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    started = Run(__file__, argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--epochs", type=int, default=5, help="timed epochs (after one warm-up)")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--workers", type=int, default=2)
    # One intra-op thread by default: the tensor loader then uses one core while the
    # DataLoader gets its worker processes (a comparison that favours the DataLoader).
    p.add_argument("--threads", type=int, default=1, help="torch threads for the tensor loader")
    p.add_argument("--tiny", action="store_true", help="512 images, 2 epochs")
    p.add_argument("--out", type=Path, default=DOCS)
    a = p.parse_args(argv)
    if a.tiny:
        a.images, a.epochs, a.batch_size = 512, 2, 128
    torch.set_num_threads(a.threads)

    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic(Path(tmp), a.images)
        ours = tensor_epochs(SyntheticCIFAR(tmp, train=True), a.batch_size)
        theirs = torchvision_epochs(Path(tmp), a.batch_size, a.workers)
        assert ours() == theirs() == a.images  # warm-up; both must see every image
        t_ours, t_theirs = [], []
        for _ in range(a.epochs):  # interleaved, so load from other processes hits both
            t_ours.append(timed(ours))
            t_theirs.append(timed(theirs))

    med_ours, med_theirs = statistics.median(t_ours), statistics.median(t_theirs)
    result = {
        "images": a.images, "epochs": a.epochs, "batch_size": a.batch_size,
        "workers": a.workers, "threads": a.threads,
        "tensor_epoch_s": med_ours, "torchvision_epoch_s": med_theirs,
        "speedup": med_theirs / med_ours,
        "tensor_epochs_s": t_ours, "torchvision_epochs_s": t_theirs,
    }
    md = f"""# Data pipeline: tensor-resident loader vs torchvision DataLoader

{a.images:,} random CIFAR-shaped images (3x32x32 uint8), batch size {a.batch_size},
augmentation random crop (padding 4) + horizontal flip + normalisation, no model.
Median of {a.epochs} epochs after one warm-up epoch, the two loaders interleaved.
The tensor loader runs with {a.threads} torch thread(s).

| loader | epoch (s), median | fastest, slowest | images/s |
|---|---|---|---|
| `Data.batches` (tensor ops on whole batches) | {med_ours:.4f} | \
{min(t_ours):.4f}, {max(t_ours):.4f} | {a.images / med_ours:,.0f} |
| torchvision `DataLoader`, {a.workers} workers, PIL transforms | {med_theirs:.4f} | \
{min(t_theirs):.4f}, {max(t_theirs):.4f} | {a.images / med_theirs:,.0f} |

speedup: **{med_theirs / med_ours:.1f}x**
"""
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load > cores:
        md += f"""
The machine was shared: load average {load:.1f} on {cores} cores at the end of the run.
Both loaders were slowed, so these are not idle-machine times; compare ratios only
between runs at a similar load.
"""
    doc = started.write("data", result, md, a.out)
    print(f"tensor {med_ours:.4f} s/epoch, torchvision {med_theirs:.4f} s/epoch, "
          f"speedup {med_theirs / med_ours:.1f}x (load {doc['environment']['load_average']})")
    return doc


if __name__ == "__main__":
    main()
