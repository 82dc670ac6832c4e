"""Datasets held as uint8 tensors on the training device, with batched augmentation.

Every dataset has train / val / test splits. The validation split is carved from
the training data with a fixed seed, so every trial of a study sees the same one.
Batching, shuffling, random crop with padding, horizontal flip and normalisation
are whole-batch tensor operations: no per-sample Python in the training loop.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLIT_SEED = 0  # fixed: validation and test carving never depend on the trial seed


class DataError(ValueError):
    """A dataset cannot be loaded as asked (unknown name, missing root, bad files)."""


@dataclass
class Split:
    """Images as uint8 [N, C, H, W] and labels as int64 [N], on one device."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: torch.device | str) -> Split:
        return Split(self.x.to(device), self.y.to(device))


@dataclass
class Data:
    """A dataset ready for training: three splits plus what is needed to normalise them.

    ``source`` is set on transfer datasets (``digits-split``): the task the base
    model is trained on before it is fine-tuned to this one.
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

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.x.shape[1:])  # type: ignore[return-value]

    @property
    def device(self) -> torch.device:
        return self.train.x.device

    def to(self, device: torch.device | str) -> Data:
        src = self.source.to(device) if self.source is not None else None
        return replace(
            self,
            train=self.train.to(device),
            val=self.val.to(device),
            test=self.test.to(device),
            source=src,
        )

    def split(self, name: str) -> Split:
        if name not in ("train", "val", "test"):
            raise ValueError(f"split must be one of train, val, test; got {name!r}")
        return getattr(self, name)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 batch -> float batch normalised per channel."""
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x.float().div_(255.0) - mean) / std

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
        if shuffle:
            order = torch.randperm(n, generator=generator).to(s.x.device)
        else:
            order = torch.arange(n, device=s.x.device)
        stop = n - n % batch_size if drop_last else n
        for i in range(0, stop, batch_size):
            idx = order[i : i + batch_size]
            x = s.x[idx]
            if augment:
                x = augment_batch(x, self.crop_padding, self.flip, generator)
            yield self.normalize(x), s.y[idx]

    def steps_per_epoch(self, batch_size: int) -> int:
        return -(-len(self.train) // batch_size)


def augment_batch(
    x: torch.Tensor, padding: int, flip: bool, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, for a whole batch."""
    b, _, h, w = x.shape
    if padding > 0:
        padded = F.pad(x, (padding, padding, padding, padding))
        dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(x.device)
        dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        bi = torch.arange(b, device=x.device)[:, None, None, None]
        ci = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[bi, ci, rows, cols]
    if flip:
        mask = (torch.rand(b, generator=generator) < 0.5).to(x.device)
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


# --------------------------------------------------------------------------- registry

_DATASETS: dict[str, Callable[..., Data]] = {}
_DOCS: dict[str, str] = {}


def register_dataset(name: str, doc: str = "") -> Callable[[Callable[..., Data]], Callable[..., Data]]:
    def deco(fn: Callable[..., Data]) -> Callable[..., Data]:
        _DATASETS[name] = fn
        _DOCS[name] = doc or (fn.__doc__ or "").strip().splitlines()[0]
        return fn

    return deco


def list_datasets(pattern: str = "*") -> list[str]:
    """Registered dataset names matching a shell-style wildcard."""
    return sorted(n for n in _DATASETS if fnmatch.fnmatch(n, pattern))


def dataset_doc(name: str) -> str:
    return _DOCS[name]


def needs_root(name: str) -> bool:
    """True for datasets read from a directory the user provides."""
    return name not in ("digits", "digits-split")


def load(
    name: str,
    *,
    root: str | Path | None = None,
    download: bool = False,
    device: torch.device | str = "cpu",
    val_fraction: float = 0.1,
    **kw,
) -> Data:
    """Load a registered dataset onto ``device``."""
    if name not in _DATASETS:
        raise DataError(f"unknown dataset {name!r}; valid names: {', '.join(list_datasets())}")
    if not 0.0 < val_fraction < 0.5:
        raise DataError(f"val_fraction must be in (0, 0.5); got {val_fraction}")
    data = _DATASETS[name](root=root, download=download, val_fraction=val_fraction, **kw)
    return data.to(device)


def carve(
    x: torch.Tensor, y: torch.Tensor, fraction: float, seed: int = SPLIT_SEED
) -> tuple[Split, Split]:
    """Split (x, y) into (rest, carved) with a stratified, seeded draw of ``fraction``."""
    g = np.random.default_rng(seed)
    yn = y.numpy()
    carved = []
    for c in np.unique(yn):
        idx = np.flatnonzero(yn == c)
        g.shuffle(idx)
        carved.extend(idx[: max(1, round(len(idx) * fraction))].tolist())
    mask = np.ones(len(yn), dtype=bool)
    mask[carved] = False
    keep = torch.from_numpy(np.flatnonzero(mask))
    cut = torch.from_numpy(np.sort(np.array(carved)))
    return Split(x[keep], y[keep]), Split(x[cut], y[cut])


def _require_root(name: str, root: str | Path | None, how: str) -> Path:
    if root is None:
        raise DataError(f"dataset {name!r} needs data.root (a directory); {how}")
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(f"data.root {str(path)!r} for dataset {name!r} does not exist; {how}")
    return path


# --------------------------------------------------------------------------- digits


def _digits_arrays(size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images).float().unsqueeze(1) / 16.0  # [N,1,8,8] in 0..1
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    return x, torch.from_numpy(d.target).long()


def _digits_data(name: str, x: torch.Tensor, y: torch.Tensor, val_fraction: float) -> Data:
    trainval, test = carve(x, y, 0.2, seed=SPLIT_SEED)
    train, val = carve(trainval.x, trainval.y, val_fraction, seed=SPLIT_SEED + 1)
    mean = tuple(float(v) for v in (train.x.float() / 255).mean(dim=(0, 2, 3)))
    std = tuple(float(v) for v in (train.x.float() / 255).std(dim=(0, 2, 3)))
    # Digits are not mirror-symmetric: no flips; a small crop jitter only.
    return Data(name, int(y.max()) + 1, train, val, test, mean, std, crop_padding=2, flip=False)


@register_dataset("digits", "scikit-learn's 8x8 digits upsampled to 3x32x32 (embedded, no download)")
def _digits(*, root=None, download=False, val_fraction=0.1, image_size: int = 32) -> Data:
    x, y = _digits_arrays(image_size)
    return _digits_data("digits", x, y, val_fraction)


@register_dataset("digits-split", "digits 0-4 as source task, 5-9 as target task (transfer)")
def _digits_split(*, root=None, download=False, val_fraction=0.1, image_size: int = 32) -> Data:
    x, y = _digits_arrays(image_size)
    src, tgt = y < 5, y >= 5
    source = _digits_data("digits-split:source", x[src], y[src], val_fraction)
    target = _digits_data("digits-split", x[tgt], y[tgt] - 5, val_fraction)
    target.source = source
    return target


# --------------------------------------------------------------------------- CIFAR


def _cifar(name: str, cls, root, download: bool, val_fraction: float) -> Data:
    how = (
        f"put torchvision's {name} files there (the folder holding "
        f"'{cls.base_folder}'), or set data.download: true on a machine with internet"
    )
    path = Path(root).expanduser() if root is not None else None
    if path is None or (not path.exists() and not download):
        _require_root(name, root, how)
    try:
        tr = cls(str(path), train=True, download=download)
        te = cls(str(path), train=False, download=download)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
        raise DataError(f"data.root {str(path)!r}: {e} ({how})") from e

    def to_split(ds) -> Split:
        x = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        return Split(x, torch.as_tensor(ds.targets, dtype=torch.long))

    full = to_split(tr)
    train, val = carve(full.x, full.y, val_fraction)
    return Data(name, len(tr.classes), train, val, to_split(te), CIFAR_MEAN, CIFAR_STD)


@register_dataset("cifar10", "CIFAR-10 from a torchvision root directory")
def _cifar10(*, root=None, download=False, val_fraction=0.1) -> Data:
    from torchvision.datasets import CIFAR10

    return _cifar("cifar10", CIFAR10, root, download, val_fraction)


@register_dataset("cifar100", "CIFAR-100 from a torchvision root directory")
def _cifar100(*, root=None, download=False, val_fraction=0.1) -> Data:
    from torchvision.datasets import CIFAR100

    return _cifar("cifar100", CIFAR100, root, download, val_fraction)
