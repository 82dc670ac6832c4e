"""Training throughput of VGG-16 on CIFAR-shaped data, and study throughput on one GPU.

Part 1, side by side in one run: images per second of training with the
tensor-resident loader, bf16 autocast and channels_last (what prune-study's
``fit`` does) against a plain PyTorch loop fed by a DataLoader with PIL
transforms and worker processes, fp32, default memory format.

Part 2: trials per hour of a small study when 4 trials share one GPU
(``resources: {gpu: 0.25}``, 4 concurrent) against one trial at a time.

Runs on the CPU with ``--tiny`` (the test does that); the figures in
docs/benchmarks/gpu.md come from a GPU machine when one was available.

    python -m benchmarks.bench_gpu            # 10,000 images, 3 epochs (CPU: 2,000, width 0.25)
    python -m benchmarks.bench_gpu --tiny     # seconds, on any machine
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks._common import DOCS, Run
from prune_core import models
from prune_core.data import CIFAR_MEAN, CIFAR_STD, Data, Split


def synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-shaped uint8 images (N, 32, 32, 3) and labels, as torchvision stores them."""
    g = np.random.default_rng(seed)
    return g.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), g.integers(0, 10, n)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def resident_throughput(x: np.ndarray, y: np.ndarray, device: torch.device, *, width: float,
                        batch: int, epochs: int) -> list[float]:
    """Images/s per epoch: uint8 tensors on the device, batched augmentation, bf16, NHWC."""
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    split = Split(xt, torch.from_numpy(y).long())
    data = Data("synthetic", 10, split, split, split, CIFAR_MEAN, CIFAR_STD).to(device)
    model = models.build("vgg16", width=width).to(device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    amp = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
           else torch.autocast("cpu", enabled=False))

    def batches(epoch: int):
        gen = torch.Generator().manual_seed(epoch)
        for xb, yb in data.batches("train", batch, generator=gen):
            yield xb.contiguous(memory_format=torch.channels_last), yb

    def step(xb, yb):
        with amp:
            return F.cross_entropy(model(xb).float(), yb)

    return _timed_epochs(batches, step, opt, device, epochs, len(y))


def _timed_epochs(batches, loss_of, opt, device: torch.device, epochs: int, n: int
                  ) -> list[float]:
    """Images/s of each epoch after the first, which warms up kernels and is not counted."""
    rates = []
    for epoch in range(epochs + 1):
        _sync(device)
        t0 = time.perf_counter()
        for xb, yb in batches(epoch):
            loss = loss_of(xb, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        _sync(device)
        if epoch:
            rates.append(n / (time.perf_counter() - t0))
    return rates


def dataloader_throughput(x: np.ndarray, y: np.ndarray, device: torch.device, *, width: float,
                          batch: int, epochs: int, workers: int) -> list[float]:
    """Images/s per epoch: the textbook loop, PIL transforms in DataLoader workers, fp32."""
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms as T

    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize(CIFAR_MEAN, CIFAR_STD)])

    class Images(Dataset):
        def __len__(self) -> int:
            return len(y)

        def __getitem__(self, i: int):
            return tf(Image.fromarray(x[i])), int(y[i])

    loader = DataLoader(Images(), batch_size=batch, shuffle=True, num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    model = models.build("vgg16", width=width).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

    def batches(_epoch: int):
        for xb, yb in loader:
            yield xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)

    return _timed_epochs(batches, lambda xb, yb: F.cross_entropy(model(xb), yb), opt, device,
                         epochs, len(y))


def study_spec(name: str, storage: Path, *, shared: bool, tiny: bool, gpu: bool):
    """A short study of the base model trained further (method ``none``), so its trials
    are pure training: 4 sharing one device (``shared``; 2 with ``tiny``) or one at a
    time."""
    from studies.spec import parse_spec

    at_once = 2 if tiny else 4  # trials sharing the device
    if gpu:
        resources = {"cpu": 1, "gpu": 1 / at_once} if shared else {"cpu": 1, "gpu": 1}
    else:  # the same experiment on the CPU: a share of the cores per trial, or all of them
        cores = max(1, os.cpu_count() or 1)
        resources = {"cpu": cores / at_once} if shared else {"cpu": cores}
    return parse_spec({
        "name": name, "storage": str(storage), "data": "digits",
        "model": {"name": "vgg11", "width": 0.25},
        "baseline": {"epochs": 2 if tiny else 15},
        "methods": "none",
        "space": {"none.finetune_epochs": 1 if tiny else 5,
                  "none.lr": {"low": 0.001, "high": 0.05, "log": True}},
        "objectives": {"accuracy": "max"},
        "sampler": {"name": "random", "seed": 0},
        "trials": 2 if tiny else 8,
        "resources": resources,
        "max_concurrent": at_once if shared else 1,
    })


def study_throughput(tiny: bool, gpu: bool) -> dict:
    """Trials per hour with several trials sharing one device against one at a time."""
    from studies.runner import connect, ensure_base, run_study

    def log(m: str) -> None:
        print(f"    {m}", file=sys.stderr)

    storage = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    out = {}
    for shared in (False, True):
        spec = study_spec("shared" if shared else "exclusive", storage, shared=shared,
                          tiny=tiny, gpu=gpu)
        connect(None, log)  # Ray's start and the base model are not part of the timing
        ensure_base(spec, log)
        t0 = time.perf_counter()
        summary = run_study(spec, log=log)
        seconds = time.perf_counter() - t0
        out["shared" if shared else "exclusive"] = {
            "trials": summary["finished"], "seconds": seconds,
            "trials_per_hour": 3600 * summary["finished"] / seconds,
            "resources": spec.resources, "max_concurrent": spec.max_concurrent,
        }
    ratio = out["shared"]["trials_per_hour"] / out["exclusive"]["trials_per_hour"]
    out["ratio"] = ratio
    out["markdown"] = "\n".join([
        "| trials at once | resources per trial | trials/hour |",
        "|---|---|---|",
        f"| 1 | {out['exclusive']['resources']} | {out['exclusive']['trials_per_hour']:.0f} |",
        f"| {out['shared']['max_concurrent']} | {out['shared']['resources']} | "
        f"{out['shared']['trials_per_hour']:.0f} |",
        f"| ratio | | {ratio:.2f}x |",
    ])
    return out


def main(argv: list[str] | None = None) -> dict:
    started = Run(__file__, argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=None,
                   help="synthetic training images (default 10,000 on a GPU, 2,000 on a CPU)")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs (after one warm-up)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--width", type=float, default=None,
                   help="VGG-16 width multiplier (default 1 on a GPU, 0.25 on a CPU)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the baseline")
    p.add_argument("--tiny", action="store_true", help="a few seconds on any machine")
    p.add_argument("--no-study", action="store_true", help="skip the trials-per-hour part")
    p.add_argument("--out", type=Path, default=DOCS, help="where gpu.json / gpu.md go")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.tiny:
        args.images, args.epochs, args.batch, args.width = 256, 1, 64, 0.125
    # A full VGG-16 over 10,000 images takes most of an hour on 2 CPU cores: a CPU run
    # defaults to a quarter-width model on 2,000 images, which keeps it in minutes.
    gpu = device.type == "cuda"
    args.images = args.images or (10_000 if gpu else 2_000)
    args.width = args.width or (1.0 if gpu else 0.25)
    x, y = synthetic(args.images)
    kw = {"width": args.width, "batch": args.batch, "epochs": args.epochs}
    print(f"device {device}; {args.images} images, VGG-16 width {args.width}", file=sys.stderr)
    fast = resident_throughput(x, y, device, **kw)
    print(f"  resident + bf16 + channels_last: {statistics.median(fast):,.0f} img/s",
          file=sys.stderr)
    slow = dataloader_throughput(x, y, device, workers=args.workers, **kw)
    print(f"  DataLoader + PIL, fp32:          {statistics.median(slow):,.0f} img/s",
          file=sys.stderr)
    ratio = statistics.median(fast) / statistics.median(slow)
    print(f"  ratio: {ratio:.2f}x", file=sys.stderr)
    result = {
        "device": str(device), "settings": vars(args) | {"out": str(args.out)},
        "resident_images_per_s": fast, "dataloader_images_per_s": slow, "ratio": ratio,
    }
    study = None if args.no_study else study_throughput(args.tiny, device.type == "cuda")
    if study is not None:
        result["study"] = study
    md = [
        "# Training throughput: tensor-resident loader vs DataLoader",
        "",
        f"VGG-16 (width {args.width}) on {args.images:,} CIFAR-shaped images, batch "
        f"{args.batch}, median of {args.epochs} epochs after one warm-up, device `{device}`.",
        "",
        "| pipeline | images/s |",
        "|---|---|",
        f"| tensor-resident, batched augmentation, bf16 autocast (CUDA), channels_last "
        f"| {statistics.median(fast):,.0f} |",
        f"| DataLoader ({args.workers} workers, PIL transforms), fp32 "
        f"| {statistics.median(slow):,.0f} |",
        f"| ratio | {ratio:.2f}x |",
    ]
    if study is not None:
        md += ["", "## Study throughput on one device", "", study["markdown"]]
    return started.write("gpu" if not args.tiny else "gpu-tiny", result, "\n".join(md),
                         args.out)


if __name__ == "__main__":
    main()
