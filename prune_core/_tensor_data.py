"""Data and Split: a dataset held as uint8 tensors, its batches and their augmentation.

Batching, shuffling, random crop with padding, horizontal flip and normalisation are
whole-batch tensor operations: no per-sample Python in the training loop. Data that
is streamed (it stays in CPU memory, or in a mapped cache file larger than the memory
budget) has each batch gathered on a background thread and copied to the device
asynchronously while the previous batch is in use. The batches are the same.
:mod:`prune_core.data` loads datasets into these and re-exports them.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

SPLIT_SEED = 0  # fixed: validation and test carving never depend on the trial seed


@dataclass
class Split:
    """Images as uint8 [N, C, H, W] and labels as int64 [N], on one device."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes of images and labels."""
        return self.x.nbytes + self.y.nbytes

    def to(self, device: torch.device | str) -> Split:
        """The split with both tensors on ``device``."""
        return Split(self.x.to(device), self.y.to(device))


@dataclass
class Data:
    """A dataset ready for training: three splits plus what is needed to normalise them.

    ``source`` is set on transfer datasets (``digits-split``): the task the base
    model is trained on before it is fine-tuned to this one. ``stream_device`` is set
    when the splits stay in CPU memory and ``batches()`` moves each batch there.
    """

    name: str
    num_classes: int
    train: Split
    val: Split
    test: Split
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int = 4
    flip: bool = True
    source: Data | None = None
    info: dict = field(default_factory=dict)
    stream_device: torch.device | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape of one image, ``(C, H, W)``."""
        return tuple(self.train.x.shape[1:])  # type: ignore[return-value]

    @property
    def device(self) -> torch.device:
        """Where batches are delivered (the training device)."""
        return self.stream_device if self.stream_device is not None else self.train.x.device

    @property
    def streaming(self) -> bool:
        """True when the splits stay in CPU memory and batches are copied over."""
        return self.stream_device is not None

    @property
    def nbytes(self) -> int:
        """Bytes of all splits, the source task's included."""
        own = self.train.nbytes + self.val.nbytes + self.test.nbytes
        return own + (self.source.nbytes if self.source is not None else 0)

    def to(self, device: torch.device | str) -> Data:
        """All splits resident on ``device``."""
        src = self.source.to(device) if self.source is not None else None
        return replace(
            self,
            train=self.train.to(device),
            val=self.val.to(device),
            test=self.test.to(device),
            source=src,
            stream_device=None,
        )

    def stream(self, device: torch.device | str) -> Data:
        """Splits kept in CPU memory; ``batches()`` copies each batch to ``device``."""
        resident = self.to("cpu")
        src = self.source.stream(device) if self.source is not None else None
        return replace(resident, source=src, stream_device=torch.device(device))

    def split(self, name: str) -> Split:
        """The ``train``, ``val`` or ``test`` split."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"split must be one of train, val, test; got {name!r}")
        return getattr(self, name)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 batch -> float batch normalised per channel."""
        scale, shift = _affine(tuple(self.mean), tuple(self.std), x.device)
        # copy=True: the in-place ops below must never write into a stored split
        return x.to(torch.float32, copy=True).mul_(scale).add_(shift)

    def batches(
        self,
        split: str = "train",
        batch_size: int = 128,
        *,
        shuffle: bool | None = None,
        augment: bool | None = None,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield normalised (x, y) batches. Shuffle and augment default to on for train."""
        s = self.split(split)
        is_train = split == "train"
        shuffle = is_train if shuffle is None else shuffle
        augment = is_train if augment is None else augment
        n = len(s)
        home = s.x.device
        if shuffle:
            order = torch.randperm(n, generator=generator).to(home)
        else:
            order = torch.arange(n, device=home)
        stop = n - n % batch_size if drop_last else n
        # index_select copies whole images (memcpy per row of the index); plain
        # advanced indexing goes element by element and is ~40x slower on the CPU.
        chunks: Iterable[tuple[torch.Tensor, torch.Tensor]] = (
            (s.x.index_select(0, idx), s.y.index_select(0, idx))
            for idx in (order[i : i + batch_size] for i in range(0, stop, batch_size))
        )
        if self.stream_device is not None:
            chunks = _prefetch(chunks, self.stream_device)
        for x, y in chunks:
            # Augmentation runs on the training device after the copy, and draws from
            # the same generator in the same order as the resident path.
            if augment:
                x = augment_batch(x, self.crop_padding, self.flip, generator)
            yield self.normalize(x), y


def _prefetch(
    chunks: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batch i+1 is gathered on a background thread (read from the cache file, where the
    data is mapped), then pinned and its copy to ``device`` started, while batch i is in
    use. Only the gathering moves off the training thread: the order and every random
    draw stay where they were, so the batches are the resident path's."""
    pending = None
    for x, y in _ahead(chunks):
        nxt = (_copy_to(x, device), _copy_to(y, device))
        if pending is not None:
            yield pending
        pending = nxt
    if pending is not None:
        yield pending


def _ahead(items: Iterable) -> Iterator:
    """``items`` produced one ahead on a background thread (tensor gathers and page-ins
    release the GIL, so the reading overlaps the training step)."""
    it = iter(items)
    done = object()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as pool:
        nxt = pool.submit(next, it, done)
        while (item := nxt.result()) is not done:
            nxt = pool.submit(next, it, done)
            yield item


def _copy_to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type != "cuda":
        return t.to(device)
    # Only a pinned source makes the copy asynchronous. The batch is pinned rather than
    # the whole dataset: the random gather copies anyway, and pinning gigabytes of host
    # memory would starve the rest of the machine.
    return t.pin_memory().to(device, non_blocking=True)


def augment_batch(
    x: torch.Tensor, padding: int, flip: bool, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, for a whole batch.

    Each sample draws its own shift (dy, dx) in [0, 2 * padding] and its own flip.
    """
    b, c, h, w = x.shape
    if padding <= 0 and not flip:
        return x
    dev = x.device
    if padding > 0:
        dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(dev)
        dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(dev)
        x = F.pad(x, (padding, padding, padding, padding))
    else:
        dy = dx = torch.zeros(b, dtype=torch.long, device=dev)
    cols = torch.arange(w, device=dev).expand(b, w)
    if flip:
        mirror = (torch.rand(b, generator=generator) < 0.5).to(dev)
        cols = torch.where(mirror[:, None], cols.flip(1), cols)
    # Crop and flip in one gather: output pixel (r, col) of sample i reads padded pixel
    # (dy_i + r, dx_i + col), or (dy_i + r, dx_i + w - 1 - col) when mirrored. One pass
    # over the batch, several times faster on the CPU than advanced indexing plus where().
    rows = (torch.arange(h, device=dev) + dy[:, None]) * x.shape[3]
    src = (rows[:, :, None] + (cols + dx[:, None])[:, None, :]).view(b, 1, h * w)
    return torch.gather(x.reshape(b, c, -1), 2, src.expand(b, c, h * w)).view(b, c, h, w)


@functools.lru_cache(maxsize=32)
def _affine(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel scale and shift with x * scale + shift == (x / 255 - mean) / std."""
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], device=device).view(1, -1, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(mean, std, strict=True)], device=device)
    return scale, shift.view(1, -1, 1, 1)


def carve_index(y: np.ndarray, fraction: float, seed: int = SPLIT_SEED
                ) -> tuple[np.ndarray, np.ndarray]:
    """Rows of labels ``y`` split into (rest, carved), both sorted: a stratified, seeded
    draw of ``fraction`` of each class (at least one image)."""
    g = np.random.default_rng(seed)
    carved = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        g.shuffle(idx)
        carved.extend(idx[: max(1, round(len(idx) * fraction))].tolist())
    mask = np.ones(len(y), dtype=bool)
    mask[carved] = False
    return np.flatnonzero(mask), np.sort(np.array(carved, dtype=np.int64))


def carve(
    x: torch.Tensor, y: torch.Tensor, fraction: float, seed: int = SPLIT_SEED
) -> tuple[Split, Split]:
    """Split (x, y) into (rest, carved) with a stratified, seeded draw of ``fraction``."""
    keep, cut = (torch.from_numpy(i) for i in carve_index(y.numpy(), fraction, seed))
    return Split(x[keep], y[keep]), Split(x[cut], y[cut])


__all__ = ["SPLIT_SEED", "Data", "Split", "augment_batch", "carve", "carve_index"]
