"""Datasets by name: ``load(name, root=..., device=...)`` gives a :class:`Data`.

Every dataset has train / val / test splits. The validation split is carved from
the training data with a fixed seed, so every trial of a study sees the same one.
The splits are uint8 tensors on the training device (see :mod:`prune_core._tensor_data`
for batching and augmentation); a dataset larger than the device's memory budget
stays in CPU memory and is streamed batch by batch.
"""

from __future__ import annotations

import fnmatch
import inspect
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from prune_core._tensor_data import SPLIT_SEED, Data, Split, augment_batch, carve
from prune_core.errors import InputError

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Share of free GPU memory the dataset may take by default; the rest is for the model,
# its activations and other trials sharing the GPU.
DEVICE_FRACTION = 0.5
CUB_URL = "https://www.vision.caltech.edu/datasets/cub_200_2011/"


class DataError(InputError):
    """A dataset cannot be loaded as asked (unknown name, missing root, bad files)."""


# --------------------------------------------------------------------------- registry

_DATASETS: dict[str, Callable[..., Data]] = {}
_DOCS: dict[str, str] = {}
_COMMON = ("root", "download", "val_fraction")  # keywords every dataset factory takes
# Settings load() takes for every dataset; dataset_options(name) lists the rest.
LOAD_OPTIONS = (*_COMMON, "max_device_bytes", "augment")


def register_dataset(
    name: str, doc: str = ""
) -> Callable[[Callable[..., Data]], Callable[..., Data]]:
    """Register a dataset factory under ``name``; ``doc`` defaults to its docstring's first line."""
    def deco(fn: Callable[..., Data]) -> Callable[..., Data]:
        _DATASETS[name] = fn
        _DOCS[name] = doc or (fn.__doc__ or "").strip().splitlines()[0]
        return fn

    return deco


def list_datasets(pattern: str = "*") -> list[str]:
    """Registered dataset names matching a shell-style wildcard."""
    return sorted(n for n in _DATASETS if fnmatch.fnmatch(n, pattern))


def dataset_doc(name: str) -> str:
    """One line about a registered dataset."""
    return _DOCS[name]


def dataset_options(name: str) -> dict[str, object]:
    """The dataset's own options (beyond root, download, val_fraction) with defaults."""
    sig = inspect.signature(_DATASETS[name])
    return {k: p.default for k, p in sig.parameters.items() if k not in _COMMON}


def needs_root(name: str) -> bool:
    """True for datasets read from a directory the user provides."""
    return name not in ("digits", "digits-split")


def device_budget(device: torch.device | str) -> int | None:
    """Default bytes a dataset may occupy on ``device``; None means no limit."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free * DEVICE_FRACTION)


def load(
    name: str,
    *,
    root: str | Path | None = None,
    download: bool = False,
    device: torch.device | str = "cpu",
    val_fraction: float = 0.1,
    max_device_bytes: int | None = None,
    augment: bool = True,
    **kw,
) -> Data:
    """Load a registered dataset for training on ``device``.

    ``augment=False`` trains without the dataset's random crop and flip.

    If its tensors exceed ``max_device_bytes`` (default: half the free memory of a
    CUDA device, no limit elsewhere) the data stays in CPU memory and is streamed.
    """
    if name not in _DATASETS:
        raise DataError(f"unknown dataset {name!r}; valid names: {', '.join(list_datasets())}")
    if not 0.0 < val_fraction < 0.5:
        raise DataError(f"val_fraction must be in (0, 0.5); got {val_fraction}")
    if max_device_bytes is not None and (
        isinstance(max_device_bytes, bool)
        or not isinstance(max_device_bytes, int)
        or max_device_bytes < 0
    ):
        raise DataError(
            f"max_device_bytes must be a non-negative integer or null; got {max_device_bytes!r}"
        )
    options = dataset_options(name)
    unknown = sorted(set(kw) - set(options))
    if unknown:
        allowed = ", ".join(sorted(options)) or "none"
        raise DataError(
            f"dataset {name!r} has no option {', '.join(map(repr, unknown))}; "
            f"its options: {allowed} (and {', '.join(LOAD_OPTIONS)})"
        )
    if not isinstance(augment, bool):
        raise DataError(f"augment must be true or false; got {augment!r}")
    data = _DATASETS[name](root=root, download=download, val_fraction=val_fraction, **kw)
    if not augment:
        data = replace(data, crop_padding=0, flip=False)
    budget = device_budget(device) if max_device_bytes is None else max_device_bytes
    if budget is not None and data.nbytes > budget:
        return data.stream(device)
    return data.to(device)


def _require_root(name: str, root: str | Path | None, how: str) -> Path:
    if root is None:
        raise DataError(f"dataset {name!r} needs data.root (a directory); {how}")
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(f"data.root {str(path)!r} for dataset {name!r} does not exist; {how}")
    return path


def _check_image_size(image_size: object) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise DataError(f"image_size must be an integer >= 8; got {image_size!r}")
    return image_size


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


@register_dataset("digits", "scikit-learn's 8x8 digits upsampled to 3x32x32 (embedded)")
def _digits(*, root=None, download=False, val_fraction=0.1, image_size: int = 32) -> Data:
    x, y = _digits_arrays(_check_image_size(image_size))
    return _digits_data("digits", x, y, val_fraction)


@register_dataset("digits-split", "digits 0-4 as source task, 5-9 as target task (transfer)")
def _digits_split(*, root=None, download=False, val_fraction=0.1, image_size: int = 32) -> Data:
    x, y = _digits_arrays(_check_image_size(image_size))
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
    if path.name == cls.base_folder:  # the user pointed at the inner folder
        path = path.parent
    if not download:
        names = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        for fname in names:
            if not (path / cls.base_folder / fname).is_file():
                where = path / cls.base_folder / fname
                raise DataError(f"data.root {str(path)!r}: {str(where)!r} is missing; {how}")
    try:
        tr = cls(str(path), train=True, download=download)
        te = cls(str(path), train=False, download=download)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted" (md5 mismatch)
        raise DataError(f"data.root {str(path)!r}: {e} ({how})") from e

    def to_split(ds) -> Split:
        x = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        return Split(x, torch.as_tensor(ds.targets, dtype=torch.long))

    full = to_split(tr)
    train, val = carve(full.x, full.y, val_fraction)
    return Data(name, len(tr.classes), train, val, to_split(te), CIFAR_MEAN, CIFAR_STD,
                info={"classes": list(tr.classes)})


@register_dataset("cifar10", "CIFAR-10 from a torchvision root directory")
def _cifar10(*, root=None, download=False, val_fraction=0.1) -> Data:
    from torchvision.datasets import CIFAR10

    return _cifar("cifar10", CIFAR10, root, download, val_fraction)


@register_dataset("cifar100", "CIFAR-100 from a torchvision root directory")
def _cifar100(*, root=None, download=False, val_fraction=0.1) -> Data:
    from torchvision.datasets import CIFAR100

    return _cifar("cifar100", CIFAR100, root, download, val_fraction)


# --------------------------------------------------------------------------- image files


def _read_image(path: Path, size: int) -> np.ndarray:
    """One image file -> [size, size, 3] uint8: shorter side resized to size, center crop."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            # JPEG decoding at a reduced scale (never below the target size) is several
            # times faster for large photos and is followed by a proper resize anyway.
            im.draft("RGB", (size, size))
            rgb = im.convert("RGB")
    except FileNotFoundError as e:
        raise DataError(f"image file {str(path)!r} does not exist") from e
    except (OSError, ValueError) as e:  # truncated or not an image
        raise DataError(f"cannot read image {str(path)!r}: {e}") from e
    fitted = ImageOps.fit(rgb, (size, size), Image.Resampling.BILINEAR, centering=(0.5, 0.5))
    return np.asarray(fitted, dtype=np.uint8)


def read_images(paths: list[Path], size: int) -> torch.Tensor:
    """Decode image files once into a uint8 [N, 3, size, size] tensor (threads decode)."""
    # Written channel-first image by image: no second full-size copy to permute.
    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)

    def read(i: int) -> None:
        out[i] = _read_image(paths[i], size).transpose(2, 0, 1)

    # PIL releases the GIL while decoding and resizing, so threads use every core.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(read, range(len(paths))))
    return torch.from_numpy(out)


def _image_data(name: str, num_classes: int, train: Split, val: Split, test: Split,
                image_size: int, info: dict) -> Data:
    # Crop jitter of an eighth of the side: the same relative shift as 4 pixels on CIFAR.
    return Data(name, num_classes, train, val, test, IMAGENET_MEAN, IMAGENET_STD,
                crop_padding=image_size // 8, flip=True, info=info)


# --------------------------------------------------------------------------- CUB-200-2011


def _cub_table(path: Path, how: str) -> dict[int, str]:
    """A CUB metadata file ('<image id> <value>' per line) as {id: value}."""
    if not path.is_file():
        raise DataError(
            f"{str(path)!r} is missing: cub200 expects images.txt, train_test_split.txt and "
            f"image_class_labels.txt in the CUB_200_2011 folder; {how}"
        )
    table: dict[int, str] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise DataError(f"{str(path)}:{lineno}: expected '<image id> <value>', got {line!r}")
        table[int(parts[0])] = parts[1].strip()
    return table


@register_dataset("cub200", "CUB-200-2011 birds from its folder, resized and center-cropped")
def _cub200(*, root=None, download=False, val_fraction=0.1, image_size: int = 224) -> Data:
    how = (
        f"download CUB_200_2011.tgz from {CUB_URL} and extract it; "
        "data.root is the CUB_200_2011 folder or the folder that holds it"
    )
    if download:
        raise DataError(f"dataset 'cub200' cannot be downloaded automatically; {how}")
    size = _check_image_size(image_size)
    base = _require_root("cub200", root, how)
    if not (base / "images.txt").exists() and (base / "CUB_200_2011" / "images.txt").exists():
        base = base / "CUB_200_2011"
    files = _cub_table(base / "images.txt", how)
    is_train = _cub_table(base / "train_test_split.txt", how)
    labels = _cub_table(base / "image_class_labels.txt", how)
    ids = sorted(files)
    for table, fname in ((is_train, "train_test_split.txt"), (labels, "image_class_labels.txt")):
        if set(table) != set(ids):
            raise DataError(f"{str(base / fname)!r} lists other image ids than images.txt")
    classes_file = base / "classes.txt"
    classes = list(_cub_table(classes_file, how).values()) if classes_file.is_file() else None
    y = torch.tensor([int(labels[i]) - 1 for i in ids], dtype=torch.long)  # files count from 1
    num_classes = len(classes) if classes else int(y.max()) + 1
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise DataError(
            f"{str(base / 'image_class_labels.txt')!r}: class labels must be 1..{num_classes}"
        )
    x = read_images([base / "images" / files[i] for i in ids], size)
    train_mask = torch.tensor([is_train[i] == "1" for i in ids])
    test = Split(x[~train_mask], y[~train_mask])
    x, y = x[train_mask], y[train_mask]  # drop the full array before carving copies again
    train, val = carve(x, y, val_fraction)
    return _image_data("cub200", num_classes, train, val, test, size,
                       {"classes": classes, "root": str(base)})


# --------------------------------------------------------------------------- ImageFolder


def _folder(path: Path, how: str) -> tuple[list[Path], list[int], list[str]]:
    from torchvision.datasets import ImageFolder

    try:
        ds = ImageFolder(str(path))
    except FileNotFoundError as e:  # no class folders, or no image files in them
        raise DataError(f"data.root {str(path)!r}: {e}; {how}") from e
    return [Path(p) for p, _ in ds.samples], [t for _, t in ds.samples], list(ds.classes)


@register_dataset("imagefolder", "any torchvision ImageFolder tree (a folder per class)")
def _imagefolder(
    *, root=None, download=False, val_fraction=0.1, image_size: int = 224,
    test_fraction: float = 0.2,
) -> Data:
    how = (
        "data.root must hold one folder of images per class (root/<class>/<image>), "
        "or train/ and test/ (or val/) folders laid out that way"
    )
    if download:
        raise DataError(f"dataset 'imagefolder' cannot be downloaded; {how}")
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be in (0, 1); got {test_fraction!r}")
    size = _check_image_size(image_size)
    base = _require_root("imagefolder", root, how)
    held = next((base / d for d in ("test", "val") if (base / d).is_dir()), None)
    if not ((base / "train").is_dir() and held is not None):
        paths, targets, classes = _folder(base, how)
        x, y = read_images(paths, size), torch.tensor(targets, dtype=torch.long)
        trainval, test = carve(x, y, test_fraction, seed=SPLIT_SEED)
        train, val = carve(trainval.x, trainval.y, val_fraction, seed=SPLIT_SEED + 1)
        return _image_data("imagefolder", len(classes), train, val, test, size,
                           {"classes": classes, "layout": "carved"})

    paths, targets, classes = _folder(base / "train", how)
    index = {c: i for i, c in enumerate(classes)}

    def held_split(path: Path) -> Split:
        hp, ht, hc = _folder(path, how)
        extra = sorted(set(hc) - set(index))
        if extra:
            raise DataError(f"{str(path)!r} has classes not in {str(base / 'train')!r}: {extra}")
        y = torch.tensor([index[hc[t]] for t in ht], dtype=torch.long)
        return Split(read_images(hp, size), y)

    full = Split(read_images(paths, size), torch.tensor(targets, dtype=torch.long))
    test = held_split(held)
    if held.name == "test" and (base / "val").is_dir():
        train, val = full, held_split(base / "val")
    else:
        train, val = carve(full.x, full.y, val_fraction)
    return _image_data("imagefolder", len(classes), train, val, test, size,
                       {"classes": classes, "layout": "folders"})


__all__ = [
    "CIFAR_MEAN", "CIFAR_STD", "CUB_URL", "DEVICE_FRACTION", "IMAGENET_MEAN", "IMAGENET_STD",
    "LOAD_OPTIONS", "SPLIT_SEED", "Data", "DataError", "Split", "augment_batch", "carve",
    "dataset_doc", "dataset_options", "device_budget", "list_datasets", "load", "needs_root",
    "read_images", "register_dataset",
]
