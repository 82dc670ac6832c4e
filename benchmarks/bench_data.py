"""The data pipeline: the tensor loader against torchvision's DataLoader, and the node's
decoded-data cache against decoding in every trial.

Part 1 serves CIFAR-shaped data (random 32x32 uint8 images, no download) through both
pipelines with the same augmentation: random crop with 4 pixels of zero padding,
horizontal flip, normalisation. Only the data pipeline runs, no model.

Part 2 fabricates an ImageFolder of JPEGs (50,000 at 64 px by default) and measures a
trial's data load: the first (decoding into the cache) and later ones (mapping it, in
fresh processes), against torchvision's ImageFolder + DataLoader reading the folder once;
the resident and proportional set sizes (RSS, PSS from /proc) of 4 concurrent trial
processes against one; and training throughput when the data is larger than the memory
budget and streamed from the mapped file, against the resident path.

    python -m benchmarks.bench_data            # both parts, a few minutes
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


# --------------------------------------------------------------------------- part 2: cache


def write_folder(root: Path, images: int, size: int, classes: int = 10, seed: int = 0) -> None:
    """An ImageFolder of ``images`` JPEGs of ``size`` px: smooth random colour fields with
    noise (so the files compress like photos, not like flat colour), threads encoding."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    for c in range(classes):
        (root / f"class{c:03d}").mkdir(parents=True)

    def write(i: int) -> None:
        rng = np.random.default_rng(seed + i)
        coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        img = np.kron(coarse, np.ones((size // 4, size // 4, 1), dtype=np.uint8))
        img = np.clip(img.astype(np.int16) + rng.integers(-24, 24, img.shape), 0, 255)
        Image.fromarray(img.astype(np.uint8)).save(
            root / f"class{i % classes:03d}" / f"{i:06d}.jpg", quality=90)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(write, range(images)))


def _memory() -> dict[str, int]:
    """This process's resident and proportional set sizes in bytes (smaps_rollup)."""
    out = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Rss", "Pss"):
            out[key.lower()] = int(value.split()[0]) * 1024
    return out


def _trial_process(root: str, cache: str, size: int, barrier, results) -> None:
    """What a trial does with its data: load it (map the cache), read every image once;
    memory read at moments when every process of the group is at the same point."""
    import PIL.Image  # noqa: F401  (imported before the first reading: not data)
    import torchvision.datasets  # noqa: F401

    from prune_core import data as datasets

    barrier.wait()  # all imported: shared libraries are shared by all when measured
    before = _memory()
    barrier.wait()
    t0 = time.perf_counter()
    d = datasets.load("imagefolder", root=root, image_size=size, cache_dir=cache)
    seconds = time.perf_counter() - t0
    checksum = sum(int(d.split(s).x.sum()) for s in ("train", "val", "test"))
    barrier.wait()  # every process has mapped and read it all
    after = _memory()
    barrier.wait()
    results.put({"load_s": seconds, "built": d.info["cache_built"], "checksum": checksum,
                 "rss_before": before["rss"], "pss_before": before["pss"],
                 "rss_after": after["rss"], "pss_after": after["pss"]})


def trial_processes(root: Path, cache: Path, size: int, n: int) -> list[dict]:
    """``n`` concurrent trial processes (spawned, as Ray's workers are separate
    processes) loading the cached data; each one's load time and memory."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_trial_process,
                         args=(str(root), str(cache), size, barrier, results))
             for _ in range(n)]
    for p in procs:
        p.start()
    out = [results.get(timeout=1800) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    return out


def torchvision_pass(root: Path, size: int, workers: int, batch_size: int) -> float:
    """Seconds for torchvision's ImageFolder + DataLoader to read every image once (what
    a trial using it pays every epoch): decode, resize, crop, to tensor, normalise."""
    from torchvision.datasets import ImageFolder

    tf = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size),
                             transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD)])
    t0 = time.perf_counter()
    loader = DataLoader(ImageFolder(str(root), transform=tf), batch_size=batch_size,
                        num_workers=workers)
    seen = sum(len(y) for _, y in loader)
    assert seen > 0
    return time.perf_counter() - t0


def train_throughput(data, batches: int, batch_size: int) -> float:
    """Images per second of a small conv net's training steps on ``data``."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, data.num_classes))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(0)
    seen, t0 = 0, time.perf_counter()
    for i, (x, y) in enumerate(data.batches("train", batch_size, generator=g)):
        if i == batches:
            break
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        seen += len(y)
    return seen / (time.perf_counter() - t0)


def cache_part(a, tmp: Path) -> dict:
    """Part 2's measurements (see the module docstring)."""
    from prune_core import data as datasets

    root, cache = tmp / "folder", tmp / "cache"
    t0 = time.perf_counter()
    write_folder(root, a.folder_images, a.size)
    fabricate_s = time.perf_counter() - t0
    print(f"fabricated {a.folder_images} JPEGs at {a.size} px in {fabricate_s:.0f} s")

    t0 = time.perf_counter()
    first = datasets.load("imagefolder", root=root, image_size=a.size, cache_dir=cache)
    decode_s = time.perf_counter() - t0
    assert first.info["cache_built"]
    nbytes = first.nbytes
    del first
    print(f"first load (decode into the cache): {decode_s:.1f} s")

    # A trial's load alone on the machine (fresh processes one after another), then
    # several trials starting at once (on 2 cores, 4 processes share the CPU).
    solo = [trial_processes(root, cache, a.size, 1)[0] for _ in range(a.repeats)]
    group = trial_processes(root, cache, a.size, a.concurrent)
    assert not any(r["built"] for r in solo + group)
    assert len({r["checksum"] for r in solo + group}) == 1
    mapped = [r["load_s"] for r in solo]
    print(f"later loads (map): median {statistics.median(mapped):.3f} s alone, "
          f"{statistics.median(r['load_s'] for r in group):.3f} s with {a.concurrent} at once")
    one = solo[:1]

    tv_s = torchvision_pass(root, a.size, a.workers, 256)
    print(f"torchvision ImageFolder + DataLoader, one pass: {tv_s:.1f} s")

    resident = datasets.load("imagefolder", root=root, image_size=a.size, cache_dir=cache)
    streamed = datasets.load("imagefolder", root=root, image_size=a.size, cache_dir=cache,
                             max_memory_bytes=nbytes // 4)
    assert streamed.streaming and not resident.streaming
    arms = {"resident": [], "streamed": []}
    for _ in range(a.repeats):  # interleaved
        arms["resident"].append(train_throughput(resident, a.train_batches, 128))
        arms["streamed"].append(train_throughput(streamed, a.train_batches, 128))
    res_ips, str_ips = (statistics.median(v) for v in arms.values())
    print(f"training: resident {res_ips:.0f} images/s, streamed {str_ips:.0f} images/s")

    def delta(rows: list[dict], key: str) -> int:
        return sum(r[f"{key}_after"] - r[f"{key}_before"] for r in rows)

    return {
        "folder_images": a.folder_images, "image_size": a.size, "data_bytes": nbytes,
        "fabricate_s": fabricate_s, "decode_s": decode_s, "mapped_load_s": mapped,
        "mapped_load_median_s": statistics.median(mapped),
        "decode_over_mapped": decode_s / statistics.median(mapped),
        "torchvision_pass_s": tv_s, "concurrent": a.concurrent,
        "concurrent_load_s": [r["load_s"] for r in group],
        "one_pss_delta": delta(one, "pss"), "one_rss_delta": delta(one, "rss"),
        "group_pss_delta": delta(group, "pss"), "group_rss_delta": delta(group, "rss"),
        "group_pss_over_one_copy": delta(group, "pss") / nbytes,
        "train_batches": a.train_batches, "train_images_per_s": arms,
        "resident_images_per_s": res_ips, "streamed_images_per_s": str_ips,
        "streamed_over_resident": str_ips / res_ips, "memory_budget_bytes": nbytes // 4,
    }


def cache_markdown(c: dict) -> str:
    mib = 2**20
    return f"""
## The decoded-data cache: a trial's data load and memory

An ImageFolder of {c['folder_images']:,} JPEGs at {c['image_size']} px (fabricated by the
benchmark, 10 classes), {c['data_bytes'] / mib:,.0f} MiB once decoded as uint8.

| a trial's data | seconds |
|---|---|
| first load: list, decode, write the cache (threads) | {c['decode_s']:.2f} |
| later load: map the cache, in a fresh process (median of {len(c['mapped_load_s'])}, one \
at a time) | {c['mapped_load_median_s']:.3f} |
| later load, {c['concurrent']} processes starting at once (median; they share the cores) | \
{statistics.median(c['concurrent_load_s']):.3f} |
| torchvision `ImageFolder` + `DataLoader`, {c.get('workers', 2)} workers: one pass over \
the folder (paid every epoch) | {c['torchvision_pass_s']:.2f} |

first decode / mapped load: **{c['decode_over_mapped']:.0f}x** (floor 50x)

Memory growth from loading the data and reading every image once, summed over the
processes (PSS divides each shared page between the processes that map it):

| trial processes | RSS growth (MiB) | PSS growth (MiB) | PSS / one copy |
|---|---|---|---|
| 1 | {c['one_rss_delta'] / mib:,.0f} | {c['one_pss_delta'] / mib:,.0f} | \
{c['one_pss_delta'] / c['data_bytes']:.2f} |
| {c['concurrent']} at once | {c['group_rss_delta'] / mib:,.0f} | \
{c['group_pss_delta'] / mib:,.0f} | **{c['group_pss_over_one_copy']:.2f}** (floor < 1.5) |

Training a small conv net ({c['train_batches']} batches of 128) on the data held within the
memory budget and on the data streamed from the mapped file under a budget of a quarter of
its size:

| path | images/s (median) |
|---|---|
| resident (mapped, within budget) | {c['resident_images_per_s']:,.0f} |
| streamed (budget {c['memory_budget_bytes'] / mib:,.0f} MiB, background reads) | \
{c['streamed_images_per_s']:,.0f} |

streamed / resident: **{c['streamed_over_resident']:.2f}** (floor 0.5)
"""


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
    p.add_argument("--folder-images", type=int, default=50_000,
                   help="part 2: JPEGs in the fabricated ImageFolder")
    p.add_argument("--size", type=int, default=64, help="part 2: image size in pixels")
    p.add_argument("--concurrent", type=int, default=4,
                   help="part 2: trial processes loading the cached data at once")
    p.add_argument("--train-batches", type=int, default=100,
                   help="part 2: training steps timed per path and repeat")
    p.add_argument("--repeats", type=int, default=3, help="part 2: timed repeats per path")
    p.add_argument("--tiny", action="store_true",
                   help="512 images, 2 epochs; part 2 with 600 images at 32 px")
    p.add_argument("--out", type=Path, default=DOCS)
    a = p.parse_args(argv)
    if a.tiny:
        a.images, a.epochs, a.batch_size = 512, 2, 128
        a.folder_images, a.size, a.train_batches, a.repeats = 600, 32, 4, 1
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

        cache = cache_part(a, Path(tmp))

    med_ours, med_theirs = statistics.median(t_ours), statistics.median(t_theirs)
    result = {
        "images": a.images, "epochs": a.epochs, "batch_size": a.batch_size,
        "workers": a.workers, "threads": a.threads,
        "tensor_epoch_s": med_ours, "torchvision_epoch_s": med_theirs,
        "speedup": med_theirs / med_ours,
        "tensor_epochs_s": t_ours, "torchvision_epochs_s": t_theirs,
        "cache": {**cache, "workers": a.workers},
    }
    md = f"""# Data pipeline: the tensor loader and the decoded-data cache

## Tensor-resident loader vs torchvision DataLoader

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
""" + cache_markdown(result["cache"])
    # The run's own threads and processes load the machine; write() notes a busy machine
    # from the other processes' work, which is what slows the timings.
    doc = started.write("data", result, md, a.out)
    print(f"tensor {med_ours:.4f} s/epoch, torchvision {med_theirs:.4f} s/epoch, "
          f"speedup {med_theirs / med_ours:.1f}x (load {doc['environment']['load_average']})")
    return doc


if __name__ == "__main__":
    main()
