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
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from prune_core._data_cache import Writer, entry_dir, fingerprint, open_entry
from prune_core._tensor_data import SPLIT_SEED, Data, Split, augment_batch, carve, carve_index
from prune_core.errors import InputError

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Share of free GPU memory the dataset may take by default; the rest is for the model,
# its activations and other trials sharing the GPU.
DEVICE_FRACTION = 0.5
CUB_URL = "https://www.vision.caltech.edu/datasets/cub_200_2011/"
# Share of the node's memory that data mapped from the cache may take before it is
# streamed: read batch by batch on a background thread instead of paged in at random.
MEMORY_FRACTION = 0.5
SPLIT_NAMES = ("train", "val", "test")


class DataError(InputError):
    """A dataset cannot be loaded as asked (unknown name, missing root, bad files)."""


# --------------------------------------------------------------------------- registry

_DATASETS: dict[str, Callable[..., Data]] = {}
_DOCS: dict[str, str] = {}
_COMMON = ("root", "download", "val_fraction")  # keywords every dataset factory takes
# Settings load() takes for every dataset; dataset_options(name) lists the rest.
LOAD_OPTIONS = (*_COMMON, "max_device_bytes", "max_memory_bytes", "augment")
# Given by load() to the factories that declare it, never by a spec: the directory of the
# node's decoded-data cache.
_CACHE_ARG = "cache_dir"
# Datasets whose splits or statistics changed since base models were first cached: the
# revision enters the base model's key (:func:`data_key`), so those are trained again.
_REVISIONS = {"cub200": 2, "imagefolder": 2}


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
    return {k: p.default for k, p in sig.parameters.items()
            if k not in _COMMON and k != _CACHE_ARG}


def data_key(name: str, kw: dict) -> dict:
    """What of a dataset's settings determines a model trained on it (for cache keys)."""
    key = {k: v for k, v in kw.items() if k != "download"}
    if name in _REVISIONS:
        key["revision"] = _REVISIONS[name]
    return key


def memory_budget() -> int | None:
    """Default bytes of mapped data a process keeps paged in rather than streaming:
    :data:`MEMORY_FRACTION` of the node's memory (None where it cannot be read)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * MEMORY_FRACTION)
    except (ValueError, OSError):
        return None


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
    max_memory_bytes: int | None = None,
    augment: bool = True,
    cache_dir: str | Path | None = None,
    **kw,
) -> Data:
    """Load a registered dataset for training on ``device``.

    ``augment=False`` trains without the dataset's random crop and flip.

    With ``cache_dir``, datasets that decode or unpickle files (CIFAR, CUB-200,
    ImageFolder) are decoded once into that directory and mapped from then on: every
    process on the node shares the pages. Mapped data larger than ``max_memory_bytes``
    (default :func:`memory_budget`) is streamed from the file.

    If its tensors exceed ``max_device_bytes`` (default: half the free memory of a
    CUDA device, no limit elsewhere) the data stays in CPU memory and is streamed.
    """
    if name not in _DATASETS:
        raise DataError(f"unknown dataset {name!r}; valid names: {', '.join(list_datasets())}")
    if not 0.0 < val_fraction < 0.5:
        raise DataError(f"val_fraction must be in (0, 0.5); got {val_fraction}")
    for field_, value in (("max_device_bytes", max_device_bytes),
                          ("max_memory_bytes", max_memory_bytes)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 0):
            raise DataError(
                f"{field_} must be a non-negative integer or null; got {value!r}")
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
    factory = _DATASETS[name]
    if cache_dir is not None and _CACHE_ARG in inspect.signature(factory).parameters:
        kw[_CACHE_ARG] = Path(cache_dir)
    data = factory(root=root, download=download, val_fraction=val_fraction, **kw)
    if not augment:
        data = replace(data, crop_padding=0, flip=False)
    budget = device_budget(device) if max_device_bytes is None else max_device_bytes
    if budget is not None and data.nbytes > budget:
        return data.stream(device)
    memory = memory_budget() if max_memory_bytes is None else max_memory_bytes
    if "cache" in data.info and memory is not None and data.nbytes > memory:
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


def _cifar(name: str, cls, root, download: bool, val_fraction: float,
           cache_dir: Path | None) -> Data:
    how = (
        f"put torchvision's {name} files there (the folder holding "
        f"'{cls.base_folder}'), or set data.download: true on a machine with internet"
    )
    path = Path(root).expanduser() if root is not None else None
    if path is None or (not path.exists() and not download):
        _require_root(name, root, how)
    if path.name == cls.base_folder:  # the user pointed at the inner folder
        path = path.parent
    names = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    if not download:
        for fname in names:
            if not (path / cls.base_folder / fname).is_file():
                where = path / cls.base_folder / fname
                raise DataError(f"data.root {str(path)!r}: {str(where)!r} is missing; {how}")

    def read() -> tuple[np.ndarray, np.ndarray, dict, list[str]]:
        """Every image in split order (train, val, test), labels, bounds, classes."""
        try:
            tr = cls(str(path), train=True, download=download)
            te = cls(str(path), train=False, download=download)
        except RuntimeError as e:  # torchvision: "Dataset not found or corrupted" (md5)
            raise DataError(f"data.root {str(path)!r}: {e} ({how})") from e
        y_tr, y_te = np.asarray(tr.targets, dtype=np.int64), np.asarray(te.targets, np.int64)
        keep, cut = carve_index(y_tr, val_fraction, SPLIT_SEED)
        x = np.concatenate([tr.data[keep], tr.data[cut], te.data]).transpose(0, 3, 1, 2)
        n = [len(keep), len(cut), len(y_te)]
        bounds = {"train": [0, n[0]], "val": [n[0], n[0] + n[1]], "test": [n[0] + n[1], sum(n)]}
        return np.ascontiguousarray(x), np.concatenate([y_tr[keep], y_tr[cut], y_te]), \
            bounds, list(tr.classes)

    if cache_dir is None:
        images, labels, bounds, classes = read()
        info = {}
    else:
        def build(tmp: Path) -> dict:
            x, y, bounds, classes = read()
            writer = Writer(tmp, x.shape)
            writer.images[:] = x
            return writer.finish(y, {"dataset": name, "root": str(path), "classes": classes,
                                     "splits": bounds, "split_seed": SPLIT_SEED})

        files = [path / cls.base_folder / f for f in names]
        entry = open_entry(
            entry_dir(cache_dir, name, None, {"root": str(path.resolve()),
                                              "val_fraction": val_fraction}),
            fingerprint(files, path), build, _log)
        images, labels = entry.arrays()
        bounds, classes = entry.manifest["splits"], entry.manifest["classes"]
        info = {"cache": str(entry.path), "cache_built": entry.built}
    splits = _splits_of(images, labels, bounds)
    return Data(name, len(classes), splits["train"], splits["val"], splits["test"],
                CIFAR_MEAN, CIFAR_STD, info={"classes": classes, **info})


@register_dataset("cifar10", "CIFAR-10 from a torchvision root directory")
def _cifar10(*, root=None, download=False, val_fraction=0.1, cache_dir=None) -> Data:
    from torchvision.datasets import CIFAR10

    return _cifar("cifar10", CIFAR10, root, download, val_fraction, cache_dir)


@register_dataset("cifar100", "CIFAR-100 from a torchvision root directory")
def _cifar100(*, root=None, download=False, val_fraction=0.1, cache_dir=None) -> Data:
    from torchvision.datasets import CIFAR100

    return _cifar("cifar100", CIFAR100, root, download, val_fraction, cache_dir)


# --------------------------------------------------------------------------- image files

RESIZE = ("crop", "stretch", "pad")
BAD_IMAGES = ("refuse", "skip")
# gpu: JPEG decoding (nvJPEG) and resizing on the CUDA device while the cache is built.
# Its pixels differ slightly from PIL's (another IDCT and resize filter), so it is a
# separate cache entry, and a choice: every node of a study should decode alike.
DECODE = ("cpu", "gpu")


def _read_image(path: str | Path, size: int, resize: str = "crop") -> np.ndarray:
    """One image file -> [size, size, 3] uint8. ``crop``: shorter side to ``size``, then
    the center square; ``stretch``: the whole image squeezed to a square; ``pad``: the
    longer side to ``size``, the rest black."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            # JPEG decoding at a reduced scale (never below the target size) is several
            # times faster for large photos and is followed by a proper resize anyway.
            im.draft("RGB", (size, size))
            rgb = im.convert("RGB")
    except FileNotFoundError as e:
        raise DataError(f"image file {str(path)!r} does not exist") from e
    except (OSError, ValueError, SyntaxError) as e:  # truncated or not an image
        raise DataError(f"cannot read image {str(path)!r}: {e}") from e
    bilinear = Image.Resampling.BILINEAR
    if resize == "stretch":
        fitted = rgb.resize((size, size), bilinear)
    elif resize == "pad":
        fitted = ImageOps.pad(rgb, (size, size), bilinear, color=(0, 0, 0))
    else:
        fitted = ImageOps.fit(rgb, (size, size), bilinear, centering=(0.5, 0.5))
    return np.asarray(fitted, dtype=np.uint8)


def decode_into(out: np.ndarray, paths: list[str], size: int, resize: str = "crop",
                log: Callable[[str], None] | None = None,
                rows: list[int] | None = None) -> dict[int, str]:
    """Decode image files into ``out[i]`` (uint8 [N, 3, size, size], an array or a mapped
    file) on threads, for every ``i`` in ``rows`` (default: all); returns {index: why}
    for the files that could not be read."""
    failed: dict[int, str] = {}
    t0 = last = time.monotonic()
    rows = list(range(len(paths))) if rows is None else rows

    def read(i: int) -> None:
        try:
            # Written channel-first image by image: no second full-size copy to permute.
            out[i] = _read_image(paths[i], size, resize).transpose(2, 0, 1)
        except DataError as e:
            failed[i] = str(e)

    # PIL releases the GIL while decoding and resizing, so threads use every core.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for done, _ in enumerate(pool.map(read, rows), 1):
            if log is not None and time.monotonic() - last > 10:
                last = time.monotonic()
                log(f"decoded {done} of {len(rows)} images ({last - t0:.0f} s)")
    return failed


def _fit_tensor(img: torch.Tensor, size: int, resize: str) -> torch.Tensor:
    """:func:`_read_image`'s resize policies, placed as PIL's ``ImageOps`` places them, on
    a uint8 [3, h, w] tensor on its device."""
    x = img.unsqueeze(0).float()
    h, w = img.shape[1:]

    def scaled(t: torch.Tensor, nh: int, nw: int) -> torch.Tensor:
        return F.interpolate(t, size=(nh, nw), mode="bilinear", antialias=True,
                             align_corners=False)

    if resize == "stretch" or h == w:
        y = scaled(x, size, size)
    elif resize == "pad":  # the longer side to size, centred on black
        nh, nw = (size, max(1, round(w / h * size))) if h > w else \
            (max(1, round(h / w * size)), size)
        y = x.new_zeros(1, 3, size, size)
        top, left = round((size - nh) * 0.5), round((size - nw) * 0.5)
        y[..., top : top + nh, left : left + nw] = scaled(x, nh, nw)
    else:  # the centre square of the source, then to size
        side = min(h, w)
        top, left = int((h - side) * 0.5), int((w - side) * 0.5)
        y = scaled(x[..., top : top + side, left : left + side], size, size)
    return y.round_().clamp_(0, 255).to(torch.uint8)[0]


def decode_on_device(out: np.ndarray, paths: list[str], size: int, resize: str,
                     device: torch.device | str, batch: int = 256,
                     log: Callable[[str], None] | None = None) -> dict[int, str]:
    """:func:`decode_into` with JPEG files decoded and resized by torchvision on
    ``device`` (nvJPEG on a CUDA device), ``batch`` files at a time; other formats, and
    files it cannot decode, go through :func:`decode_into` (which names the bad ones)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    jpeg = [i for i, p in enumerate(paths)
            if os.path.splitext(p)[1].lower() in (".jpg", ".jpeg")]
    rest = sorted(set(range(len(paths))) - set(jpeg))
    for start in range(0, len(jpeg), batch):
        rows = jpeg[start : start + batch]
        raw = []
        for i in rows:
            try:
                raw.append(torch.from_numpy(np.fromfile(paths[i], dtype=np.uint8)))
            except OSError:
                raw.append(torch.empty(0, dtype=torch.uint8))
        try:
            images: list = decode_jpeg(raw, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # one bad file fails the batch: decode them one by one
            images = []
            for r in raw:
                try:
                    images.append(decode_jpeg(r, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    images.append(None)
        for i, img in zip(rows, images, strict=True):
            if img is None:
                rest.append(i)
            else:
                out[i] = _fit_tensor(img, size, resize).cpu().numpy()
        if log is not None and len(jpeg) > 10 * batch and (start // batch) % 20 == 19:
            log(f"decoded {start + len(rows)} of {len(jpeg)} JPEG images on {device}")
    return decode_into(out, paths, size, resize, log, rows=sorted(rest))


def read_images(paths: list[str], size: int, resize: str = "crop") -> torch.Tensor:
    """Decode image files once into a uint8 [N, 3, size, size] tensor (threads decode);
    the first unreadable file is refused."""
    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    failed = decode_into(out, paths, size, resize)
    if failed:
        raise DataError(failed[min(failed)])
    return torch.from_numpy(out)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _channel_stats(x: np.ndarray) -> tuple[tuple, tuple]:
    """Per-channel mean and std of uint8 images [N, C, H, W] in 0..1, read in chunks of
    about 16 M values (a mapped file is never loaded whole)."""
    c = x.shape[1]
    chunk = max(1, 2**24 // max(1, int(np.prod(x.shape[1:]))))
    total, sq, n = np.zeros(c), np.zeros(c), 0
    for i in range(0, len(x), chunk):
        part = np.asarray(x[i : i + chunk], dtype=np.float64) / 255.0
        total += part.sum(axis=(0, 2, 3))
        sq += np.square(part).sum(axis=(0, 2, 3))
        n += part.shape[0] * part.shape[2] * part.shape[3]
    mean = total / max(n, 1)
    std = np.sqrt(np.maximum(sq / max(n, 1) - mean**2, 1e-12))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


@dataclass
class ImagePlan:
    """An image dataset before decoding: each split's files and labels, in order."""

    name: str
    root: Path
    classes: list[str]
    # file paths as strings: tens of thousands of Path objects cost a mapped load its speed
    splits: dict[str, tuple[list[str], list[int]]]
    image_size: int
    resize: str = "crop"
    bad_images: str = "refuse"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    decode: str = "cpu"  # cpu: PIL on threads; gpu: torchvision's nvJPEG on the CUDA device
    key: dict = field(default_factory=dict)  # options that shape the splits
    extra_sources: list[Path] = field(default_factory=list)  # metadata files
    info: dict = field(default_factory=dict)

    def cache_key(self) -> dict:
        return {"dataset": self.name, "root": str(self.root.resolve()),
                "image_size": self.image_size, "resize": self.resize,
                "bad_images": self.bad_images, "decode": self.decode, **self.key}

    def files(self) -> list[str]:
        return [p for s in SPLIT_NAMES for p in self.splits[s][0]]

    def source(self) -> str:
        return fingerprint([*self.extra_sources, *self.files()], self.root)

    def build(self, images: np.ndarray, log: Callable[[str], None]) -> tuple[dict, np.ndarray]:
        """Decode into ``images`` (rows in split order); images that cannot be read are
        refused, or left out with the rest moved down. Returns (manifest fields, labels)."""
        paths = self.files()
        labels = np.array([t for s in SPLIT_NAMES for t in self.splits[s][1]], dtype=np.int64)
        if len(paths) > 1000:
            log(f"decoding {len(paths)} images of {self.name} at {self.image_size} px")
        if self.decode == "gpu":
            failed = decode_on_device(images, paths, self.image_size, self.resize,
                                      torch.device("cuda"), log=log)
        else:
            failed = decode_into(images, paths, self.image_size, self.resize, log)
        if failed and self.bad_images == "refuse":
            shown = "; ".join(failed[i] for i in sorted(failed)[:5])
            more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
            raise DataError(
                f"{len(failed)} of {len(paths)} images of {self.name} cannot be read: "
                f"{shown}{more}. Replace them, or set data.bad_images: skip to train "
                "without them")
        keep = [i for i in range(len(paths)) if i not in failed]
        if failed:  # move the rest down over the unreadable rows
            for new, old in enumerate(keep):
                images[new] = images[old]
        bounds, start, kept_before = {}, 0, 0
        for s in SPLIT_NAMES:
            n = len(self.splits[s][0])
            kept = n - sum(1 for i in failed if start <= i < start + n)
            if kept == 0:
                raise DataError(f"the {s} split of {self.name} has no readable image")
            bounds[s] = [kept_before, kept_before + kept]
            start, kept_before = start + n, kept_before + kept
        if failed:
            log(f"warning: {len(failed)} unreadable image(s) of {self.name} left out "
                f"(data.bad_images: skip), the first: {failed[min(failed)]}")
        a, b = bounds["train"]
        mean, std = _channel_stats(images[a:b])
        manifest = {
            "dataset": self.name, "root": str(self.root), "classes": self.classes,
            "splits": bounds, "mean": mean, "std": std, "image_size": self.image_size,
            "resize": self.resize, "split_seed": SPLIT_SEED,
            "skipped": {os.path.relpath(paths[i], self.root): failed[i] for i in sorted(failed)},
        }
        return manifest, labels[keep]


def _splits_of(images, labels, bounds) -> dict[str, Split]:
    return {s: Split(torch.from_numpy(images[a:b]), torch.from_numpy(labels[a:b]))
            for s, (a, b) in bounds.items()}


def _decoded(plan: ImagePlan, cache_dir: Path | None) -> Data:
    """Decode the plan's images: into memory, or once into the node's data cache under
    ``cache_dir``, which every later load maps instead of decoding."""
    paths = plan.files()
    shape = (len(paths), 3, plan.image_size, plan.image_size)
    if cache_dir is None:
        images = np.empty(shape, dtype=np.uint8)
        manifest, labels = plan.build(images, _log)
        info = {}
    else:
        def build(tmp: Path) -> dict:
            writer = Writer(tmp, shape)
            manifest, labels = plan.build(writer.images, _log)
            return writer.finish(labels, manifest)

        entry = open_entry(entry_dir(cache_dir, plan.name, plan.image_size, plan.cache_key()),
                           plan.source(), build, _log)
        manifest = entry.manifest
        images, labels = entry.arrays()
        info = {"cache": str(entry.path), "cache_built": entry.built}
    splits = _splits_of(images, labels, manifest["splits"])
    mean = plan.mean if plan.mean is not None else tuple(manifest["mean"])
    std = plan.std if plan.std is not None else tuple(manifest["std"])
    # Crop jitter of an eighth of the side: the same relative shift as 4 pixels on CIFAR.
    return Data(plan.name, len(plan.classes), splits["train"], splits["val"], splits["test"],
                mean, std, crop_padding=plan.image_size // 8, flip=True,
                info={**plan.info, "classes": plan.classes, "skipped": manifest["skipped"],
                      **info})


def _check_choice(field_: str, value: object, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise DataError(f"{field_} must be one of {', '.join(allowed)}; got {value!r}")
    return str(value)


def _check_decode(value: object) -> str:
    decode = _check_choice("decode", value, DECODE)
    if decode == "gpu" and not torch.cuda.is_available():
        raise DataError("decode: gpu needs a CUDA device, and this node has none; set "
                        "decode: cpu (the default), or run the study on GPU nodes only")
    return decode


def _check_stats(field_: str, value: object) -> tuple[float, ...] | None:
    if value is None:
        return None
    ok = (isinstance(value, (list, tuple)) and len(value) == 3
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))
    if not ok or (field_ == "std" and min(value) <= 0):
        raise DataError(f"{field_} must be three numbers (one per RGB channel"
                        f"{', each > 0' if field_ == 'std' else ''}) or null for the "
                        f"training split's own; got {value!r}")
    return tuple(float(v) for v in value)


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
def _cub200(*, root=None, download=False, val_fraction=0.1, image_size: int = 224,
            resize: str = "crop", bad_images: str = "refuse", mean=None, std=None,
            decode: str = "cpu", cache_dir=None) -> Data:
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
    meta = [base / f for f in ("images.txt", "train_test_split.txt", "image_class_labels.txt")]
    files, is_train, labels = (_cub_table(f, how) for f in meta)
    ids = sorted(files)
    for table, f in ((is_train, meta[1]), (labels, meta[2])):
        if set(table) != set(ids):
            raise DataError(f"{str(f)!r} lists other image ids than images.txt")
    classes_file = base / "classes.txt"
    classes = list(_cub_table(classes_file, how).values()) if classes_file.is_file() else None
    y = np.array([int(labels[i]) - 1 for i in ids], dtype=np.int64)  # files count from 1
    num_classes = len(classes) if classes else int(y.max()) + 1
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise DataError(f"{str(meta[2])!r}: class labels must be 1..{num_classes}")
    paths = [os.path.join(base, "images", files[i]) for i in ids]
    train_rows = np.flatnonzero([is_train[i] == "1" for i in ids])
    test_rows = np.flatnonzero([is_train[i] != "1" for i in ids])
    keep, cut = carve_index(y[train_rows], val_fraction, SPLIT_SEED)
    order = {"train": train_rows[keep], "val": train_rows[cut], "test": test_rows}
    plan = ImagePlan(
        "cub200", base, classes or [str(c) for c in range(num_classes)],
        {s: ([paths[i] for i in rows], y[rows].tolist()) for s, rows in order.items()},
        size, _check_choice("resize", resize, RESIZE),
        _check_choice("bad_images", bad_images, BAD_IMAGES),
        _check_stats("mean", mean), _check_stats("std", std), _check_decode(decode),
        key={"val_fraction": val_fraction}, extra_sources=meta, info={"root": str(base)})
    return _decoded(plan, cache_dir)


# --------------------------------------------------------------------------- ImageFolder


def _folder(path: Path, how: str) -> tuple[list[str], list[int], list[str]]:
    from torchvision.datasets import ImageFolder

    try:
        ds = ImageFolder(str(path))
    except FileNotFoundError as e:  # no class folders, or no image files in them
        raise DataError(f"data.root {str(path)!r}: {e}; {how}") from e
    return [p for p, _ in ds.samples], [t for _, t in ds.samples], list(ds.classes)


def _split_file(base: Path, path: object, how: str) -> tuple[Path, list[tuple[int, str]]]:
    """A split file and its (line number, image path) entries: one image per line, its
    path under data.root ending in ``<class>/<file>``; blank and ``#`` lines skipped."""
    f = Path(str(path)).expanduser()
    f = f if f.is_absolute() else base / f
    if not f.is_file():
        raise DataError(f"split file {str(f)!r} does not exist; {how}")
    lines = [(n, line.strip()) for n, line in enumerate(f.read_text().splitlines(), 1)
             if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise DataError(f"split file {str(f)!r} lists no image")
    for n, rel in lines:
        if len(Path(rel).parts) < 2:
            raise DataError(f"{str(f)}:{n}: {rel!r} is not <class>/<file>")
        if not (base / rel).is_file():
            raise DataError(f"{str(f)}:{n}: {str(base / rel)!r} does not exist")
    return f, lines


@register_dataset("imagefolder", "any torchvision ImageFolder tree (a folder per class)")
def _imagefolder(
    *, root=None, download=False, val_fraction=0.1, image_size: int = 224,
    test_fraction: float = 0.2, resize: str = "crop", bad_images: str = "refuse",
    mean=None, std=None, split_files=None, decode: str = "cpu", cache_dir=None,
) -> Data:
    how = (
        "data.root must hold one folder of images per class (root/<class>/<image>), "
        "or train/ and test/ (or val/) folders laid out that way, or data.split_files "
        "naming a file per split that lists <class>/<image> paths under data.root"
    )
    if download:
        raise DataError(f"dataset 'imagefolder' cannot be downloaded; {how}")
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be in (0, 1); got {test_fraction!r}")
    size = _check_image_size(image_size)
    base = _require_root("imagefolder", root, how)
    options = (_check_choice("resize", resize, RESIZE),
               _check_choice("bad_images", bad_images, BAD_IMAGES),
               _check_stats("mean", mean), _check_stats("std", std), _check_decode(decode))
    held = next((base / d for d in ("test", "val") if (base / d).is_dir()), None)

    def plan(splits, classes, layout, key, extra=()) -> Data:
        return _decoded(ImagePlan("imagefolder", base, classes, splits, size, *options,
                                  key={"layout": layout, **key}, extra_sources=list(extra),
                                  info={"layout": layout}), cache_dir)

    def pick(paths, targets, rows) -> tuple[list[str], list[int]]:
        return [paths[i] for i in rows], [targets[i] for i in rows]

    if split_files is not None:
        if not isinstance(split_files, dict) or not {"train", "test"} <= set(split_files) \
                or not set(split_files) <= {"train", "val", "test"}:
            raise DataError(f"split_files must map train, test and optionally val to list "
                            f"files; got {split_files!r}")
        read = {s: _split_file(base, f, how) for s, f in sorted(split_files.items())}
        classes = sorted({Path(rel).parts[-2] for _, lines in read.values() for _, rel in lines})
        index = {c: i for i, c in enumerate(classes)}
        lists = {s: ([os.path.join(base, rel) for _, rel in lines],
                     [index[Path(rel).parts[-2]] for _, rel in lines])
                 for s, (_, lines) in read.items()}
        if "val" not in lists:
            keep, cut = carve_index(np.array(lists["train"][1]), val_fraction, SPLIT_SEED)
            lists["train"], lists["val"] = (pick(*lists["train"], keep),
                                            pick(*lists["train"], cut))
        return plan(lists, classes, "split_files",
                    {"val_fraction": val_fraction,
                     "split_files": {k: str(f) for k, (f, _) in read.items()}},
                    [f for f, _ in read.values()])

    if not ((base / "train").is_dir() and held is not None):
        paths, targets, classes = _folder(base, how)
        y = np.array(targets)
        rest, test = carve_index(y, test_fraction, SPLIT_SEED)
        keep, cut = carve_index(y[rest], val_fraction, SPLIT_SEED + 1)
        rows = {"train": rest[keep], "val": rest[cut], "test": test}
        return plan({s: pick(paths, targets, r) for s, r in rows.items()}, classes, "carved",
                    {"val_fraction": val_fraction, "test_fraction": test_fraction})

    paths, targets, classes = _folder(base / "train", how)
    index = {c: i for i, c in enumerate(classes)}

    def held_split(path: Path) -> tuple[list[str], list[int]]:
        hp, ht, hc = _folder(path, how)
        extra = sorted(set(hc) - set(index))
        if extra:
            raise DataError(f"{str(path)!r} has classes not in {str(base / 'train')!r}: {extra}")
        return hp, [index[hc[t]] for t in ht]

    splits = {"test": held_split(held)}
    if held.name == "test" and (base / "val").is_dir():
        splits["train"], splits["val"] = (paths, targets), held_split(base / "val")
    else:
        keep, cut = carve_index(np.array(targets), val_fraction, SPLIT_SEED)
        splits["train"], splits["val"] = pick(paths, targets, keep), pick(paths, targets, cut)
    return plan(splits, classes, "folders", {"val_fraction": val_fraction})


__all__ = [
    "BAD_IMAGES", "CIFAR_MEAN", "CIFAR_STD", "CUB_URL", "DECODE", "DEVICE_FRACTION",
    "IMAGENET_MEAN", "IMAGENET_STD", "LOAD_OPTIONS", "MEMORY_FRACTION", "RESIZE",
    "SPLIT_SEED", "Data", "DataError", "ImagePlan", "Split", "augment_batch", "carve",
    "carve_index", "data_key", "dataset_doc", "dataset_options", "decode_into",
    "decode_on_device", "device_budget", "list_datasets", "load", "memory_budget",
    "needs_root", "read_images", "register_dataset",
]
