"""Datasets: tiny fabricated copies of each on-disk format, loaded the way users load them."""

from __future__ import annotations

import hashlib
import inspect
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import CIFAR10, CIFAR100

from prune_core import data as datasets
from prune_core.data import DataError, augment_batch

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)  # restated: a wrong constant in data.py must fail here
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------- fabrication


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _cifar_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    """[n, 3072] uint8 rows in CIFAR's layout (1024 R, then G, then B), per-channel
    uniform with CIFAR's mean and std, so normalised data must come out ~N(0, 1)."""
    planes = []
    for m, s in zip(CIFAR_MEAN, CIFAR_STD, strict=True):
        half = np.sqrt(3) * s * 255  # a uniform of this half-width has std s
        planes.append(rng.uniform(m * 255 - half, m * 255 + half, (n, 1024)))
    return np.concatenate(planes, axis=1).round().astype(np.uint8)


def _pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the CIFAR files are protocol-2 pickles


def _labels(rng: np.random.Generator, n: int, k: int) -> list[int]:
    return rng.permutation(np.arange(n) % k).tolist()  # every class equally often


def _write_cifar10(root: Path) -> dict:
    rng = np.random.default_rng(10)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    truth = {"train": [], "test": []}
    for name, split, n in [*[(f"data_batch_{i}", "train", 40) for i in range(1, 6)],
                           ("test_batch", "test", 50)]:
        rows, labels = _cifar_rows(rng, n), _labels(rng, n, 10)
        _pickle(folder / name, {"batch_label": name, "labels": labels, "data": rows,
                                "filenames": [f"{name}_{i}.png" for i in range(n)]})
        truth[split].append((rows, labels))
    _pickle(folder / "batches.meta", {"label_names": [f"class{i}" for i in range(10)],
                                      "num_cases_per_batch": 40, "num_vis": 3072})
    return truth


def _write_cifar100(root: Path) -> dict:
    rng = np.random.default_rng(100)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    truth = {}
    for name, n in (("train", 300), ("test", 100)):
        rows, fine = _cifar_rows(rng, n), _labels(rng, n, 100)
        _pickle(folder / name, {"filenames": [f"{i}.png" for i in range(n)], "batch_label": name,
                                "fine_labels": fine, "coarse_labels": [f // 5 for f in fine],
                                "data": rows})
        truth[name] = [(rows, fine)]
    _pickle(folder / "meta", {"fine_label_names": [f"fine{i}" for i in range(100)],
                              "coarse_label_names": [f"coarse{i}" for i in range(20)]})
    return truth


def _trust(monkeypatch, cls, folder: Path) -> None:
    # torchvision verifies every CIFAR file against the md5 of the official release
    # (class attributes train_list / test_list / meta). Pointing those at the fabricated
    # files' md5 keeps the real check and the real loading code in the path.
    monkeypatch.setattr(cls, "train_list", [[f, _md5(folder / f)] for f, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[f, _md5(folder / f)] for f, _ in cls.test_list])
    meta = {**cls.meta, "md5": _md5(folder / cls.meta["filename"])}
    monkeypatch.setattr(cls, "meta", meta)


@pytest.fixture(scope="module")
def cifar_files(tmp_path_factory) -> tuple[Path, dict, dict]:
    root = tmp_path_factory.mktemp("cifar")
    return root, _write_cifar10(root), _write_cifar100(root)


@pytest.fixture
def cifar_root(cifar_files, monkeypatch) -> Path:
    root = cifar_files[0]
    _trust(monkeypatch, CIFAR10, root / "cifar-10-batches-py")
    _trust(monkeypatch, CIFAR100, root / "cifar-100-python")
    return root


def _rows_to_labels(truth: list) -> dict[bytes, int]:
    return {r.tobytes(): lab for rows, labels in truth for r, lab in zip(rows, labels, strict=True)}


def _pairs(split: datasets.Split) -> dict[bytes, int]:
    x = split.x.reshape(len(split), -1).numpy()
    return {r.tobytes(): int(lab) for r, lab in zip(x, split.y.tolist(), strict=True)}


# CUB-200-2011: 3 classes x 8 images, half of each class marked for training.
CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]


def _flat_image(level: int, landscape: bool, gray: bool) -> Image.Image:
    """A flat image whose red level encodes its id, with white borders on the long sides
    that a centre crop removes (a stretch to square would keep them)."""
    w, h = (64, 32) if landscape else (32, 64)
    arr = np.full((h, w, 3), 255, dtype=np.uint8)
    inner = (slice(None), slice(16, 48)) if landscape else (slice(16, 48), slice(None))
    arr[inner] = (level, level, level) if gray else (level, 60, 20)
    img = Image.fromarray(arr)
    return img.convert("L") if gray else img


def _write_cub(parent: Path) -> dict[int, tuple[int, bool]]:
    base = parent / "CUB_200_2011"
    (base / "images").mkdir(parents=True)
    truth, images, split, labels = {}, [], [], []
    for i in range(1, 25):
        label, is_train = (i - 1) % 3, (i // 3) % 2 == 0
        rel = f"{CUB_CLASSES[label]}/{CUB_CLASSES[label][4:]}_{i:04d}.jpg"
        (base / "images" / rel).parent.mkdir(exist_ok=True)
        # CUB has a few grayscale JPEGs; one here checks they come out as 3 channels.
        img = _flat_image(20 + 9 * i, landscape=i % 2 == 0, gray=i == 7)
        img.save(base / "images" / rel, quality=95, subsampling=0)
        images.append(f"{i} {rel}")
        split.append(f"{i} {int(is_train)}")
        labels.append(f"{i} {label + 1}")
        truth[i] = (label, is_train)
    (base / "images.txt").write_text("\n".join(images) + "\n")
    (base / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (base / "classes.txt").write_text(
        "\n".join(f"{k + 1} {c}" for k, c in enumerate(CUB_CLASSES)) + "\n")
    return truth


def _image_ids(split: datasets.Split) -> list[int]:
    """Recover each image's id from its red level (inner pixels; edges blend in resizing)."""
    red = split.x[:, 0, 2:-2, 2:-2].float().mean(dim=(1, 2))
    return [round((float(r) - 20) / 9) for r in red]


@pytest.fixture(scope="module")
def cub(tmp_path_factory) -> tuple[Path, dict]:
    parent = tmp_path_factory.mktemp("cub")
    return parent, _write_cub(parent)


def _write_folder(root: Path, classes: list[str], per_class: int, start: int) -> dict[int, str]:
    """PNG class folders; image id encoded in the red level; returns {id: class}."""
    truth = {}
    for c in classes:
        (root / c).mkdir(parents=True)
        for _ in range(per_class):
            size = (24 + 8 * (start % 3), 24)  # mixed sizes, all centre-cropped to square
            Image.new("RGB", size, (20 + 9 * start, 100, 100)).save(root / c / f"{start}.png")
            truth[start] = c
            start += 1
    return truth


# --------------------------------------------------------------------------- registry


def test_registry_lists_every_dataset():
    names = datasets.list_datasets()
    for name in ("digits", "digits-split", "cifar10", "cifar100", "cub200", "imagefolder"):
        assert name in names and datasets.dataset_doc(name)
    assert datasets.list_datasets("cifar*") == ["cifar10", "cifar100"]
    assert datasets.needs_root("cub200") and not datasets.needs_root("digits")
    # What a spec may set: load()'s own keywords plus each dataset's options; the cache
    # directory is the trial's to give, never a dataset option.
    own = set(inspect.signature(datasets.load).parameters) - {"name", "device", "kw"}
    assert own == {*datasets.LOAD_OPTIONS, "cache_dir"}
    assert datasets.dataset_options("cub200") == {
        "image_size": 224, "resize": "crop", "bad_images": "refuse", "mean": None, "std": None,
        "decode": "cpu"}
    assert datasets.dataset_options("cifar10") == {}


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(DataError, match="unknown dataset 'imagenet'") as e:
        datasets.load("imagenet")
    for name in datasets.list_datasets():
        assert name in str(e.value)


def test_bad_options_name_the_option():
    with pytest.raises(DataError, match="has no option 'colour'.*image_size"):
        datasets.load("digits", colour=True)
    with pytest.raises(DataError, match="image_size must be an integer >= 8; got 4"):
        datasets.load("digits", image_size=4)
    with pytest.raises(DataError, match="max_device_bytes must be a non-negative integer"):
        datasets.load("digits", max_device_bytes=-1)
    with pytest.raises(DataError, match="val_fraction"):
        datasets.load("digits", val_fraction=0.7)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "cub200", "imagefolder"])
def test_missing_root_names_path_and_how_to_get_data(name, tmp_path):
    with pytest.raises(DataError, match="needs data.root"):
        datasets.load(name)
    absent = tmp_path / "nowhere"
    with pytest.raises(DataError) as e:
        datasets.load(name, root=absent)
    msg = str(e.value)
    assert str(absent) in msg and "does not exist" in msg
    hint = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python",
            "cub200": datasets.CUB_URL, "imagefolder": "one folder of images per class"}[name]
    assert hint in msg


# --------------------------------------------------------------------------- CIFAR


def test_cifar10_loads_through_torchvision(cifar_root, cifar_files):
    truth = cifar_files[1]
    d = datasets.load("cifar10", root=cifar_root)
    assert (d.name, d.num_classes, d.input_shape) == ("cifar10", 10, (3, 32, 32))
    assert d.train.x.dtype == torch.uint8 and d.train.y.dtype == torch.int64
    assert d.info["classes"] == [f"class{i}" for i in range(10)]
    # 20 training images per class, 2 of each carved for validation.
    assert (len(d.train), len(d.val), len(d.test)) == (180, 20, 50)
    assert torch.bincount(d.val.y, minlength=10).tolist() == [2] * 10
    # Every image keeps its label and its channel-first layout; no image in two splits.
    train, val = _pairs(d.train), _pairs(d.val)
    assert not set(train) & set(val)
    assert {**train, **val} == _rows_to_labels(truth["train"])
    assert _pairs(d.test) == _rows_to_labels(truth["test"])
    assert d.test.x.reshape(50, -1).numpy().tobytes() == truth["test"][0][0].tobytes()


def test_cifar100_loads_fine_labels(cifar_root, cifar_files):
    truth = cifar_files[2]
    d = datasets.load("cifar100", root=cifar_root / "cifar-100-python")  # inner folder works too
    assert d.num_classes == 100 and d.info["classes"][:2] == ["fine0", "fine1"]
    assert (len(d.train), len(d.val), len(d.test)) == (200, 100, 100)
    assert 0 <= int(d.train.y.min()) and int(d.train.y.max()) == 99
    assert {**_pairs(d.train), **_pairs(d.val)} == _rows_to_labels(truth["train"])
    assert _pairs(d.test) == _rows_to_labels(truth["test"])


def test_val_carving_is_fixed(cifar_root):
    torch.manual_seed(1)
    np.random.seed(1)
    a = datasets.load("cifar10", root=cifar_root)
    torch.manual_seed(2)
    np.random.seed(2)
    b = datasets.load("cifar10", root=cifar_root)
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.train.y, b.train.y)


def test_cifar_normalisation_statistics(cifar_root):
    d = datasets.load("cifar10", root=cifar_root)
    x = torch.cat([x for x, _ in d.batches("train", 64, shuffle=False, augment=False)])
    assert x.dtype == torch.float32
    # The fabricated pixels have CIFAR's per-channel mean and std (tolerance ~4 sigma).
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=0.02)
    assert torch.allclose(x.std(dim=(0, 2, 3)), torch.ones(3), atol=0.02)


def test_cifar_missing_or_corrupt_file(cifar_files, tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for f in (cifar_files[0] / "cifar-10-batches-py").iterdir():
        if f.name != "data_batch_3":
            (folder / f.name).write_bytes(f.read_bytes())
    with pytest.raises(DataError, match="data_batch_3.*is missing"):
        datasets.load("cifar10", root=tmp_path)
    # Present but different from what torchvision expects: its md5 check rejects it.
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="not found or corrupted"):
        datasets.load("cifar10", root=tmp_path)


# --------------------------------------------------------------------------- augmentation


def _coordinate_images(n: int, size: int = 32) -> torch.Tensor:
    """Pixel (i, j) holds (i + 1, j + 1, 200): every pixel knows where it came from."""
    i = torch.arange(size)[:, None].expand(size, size) + 1
    j = torch.arange(size)[None, :].expand(size, size) + 1
    img = torch.stack([i, j, torch.full((size, size), 200)]).to(torch.uint8)
    return img.expand(n, -1, -1, -1).contiguous()


def test_crop_shifts_content_by_at_most_the_padding():
    x = _coordinate_images(64)
    out = augment_batch(x, padding=4, flip=False, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    rows = torch.arange(32)[:, None].expand(32, 32)
    cols = torch.arange(32)[None, :].expand(32, 32)
    shifts = set()
    for img in out:
        inside = img[2] == 200  # padding is zero in every channel
        assert torch.all(img[:, ~inside] == 0)
        sy = (img[0][inside].long() - 1 - rows[inside]).unique()
        sx = (img[1][inside].long() - 1 - cols[inside]).unique()
        assert len(sy) == 1 and len(sx) == 1  # one rigid shift per image
        assert abs(int(sy)) <= 4 and abs(int(sx)) <= 4
        shifts.add((int(sy), int(sx)))
    assert len(shifts) > 10  # drawn per sample, not once per batch


def test_flip_is_a_per_sample_mirror():
    x = _coordinate_images(64)
    out = augment_batch(x, padding=0, flip=True, generator=torch.Generator().manual_seed(0))
    same = [torch.equal(o, x[0]) for o in out]
    mirrored = [torch.equal(o, x[0].flip(2)) for o in out]
    assert all(s or m for s, m in zip(same, mirrored, strict=True))
    assert 10 < sum(mirrored) < 54


def _reference_augment(img: torch.Tensor, dy: int, dx: int, flip: bool, p: int) -> torch.Tensor:
    padded = torch.zeros(img.shape[0], img.shape[1] + 2 * p, img.shape[2] + 2 * p,
                         dtype=img.dtype)
    padded[:, p : p + img.shape[1], p : p + img.shape[2]] = img
    crop = padded[:, dy : dy + img.shape[1], dx : dx + img.shape[2]]
    return crop.flip(2) if flip else crop


def test_training_batches_are_augmented_copies(cifar_root):
    d = datasets.load("cifar10", root=cifar_root)
    x, y = next(d.batches("train", 16, shuffle=False, generator=torch.Generator().manual_seed(3)))
    assert torch.equal(y, d.train.y[:16])
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    pixels = ((x * std + mean) * 255).round().to(torch.uint8)
    p, changed = d.crop_padding, 0
    for k in range(16):
        candidates = [(dy, dx, f) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                      for f in (False, True)
                      if torch.equal(_reference_augment(d.train.x[k], dy, dx, f, p), pixels[k])]
        assert candidates, f"sample {k} is not a crop/flip of its source image"
        changed += candidates[0] != (p, p, False)
    assert changed >= 12
    # Evaluation batches are neither shuffled nor augmented.
    x, y = next(d.batches("test", 16))
    assert torch.allclose(x, (d.test.x[:16].float() / 255 - mean) / std, atol=1e-5)


# --------------------------------------------------------------------------- streaming


def test_streaming_fallback_gives_identical_batches(cifar_root):
    resident = datasets.load("cifar10", root=cifar_root)
    streamed = datasets.load("cifar10", root=cifar_root, max_device_bytes=1000)
    assert not resident.streaming and streamed.streaming
    assert streamed.device == torch.device("cpu") and streamed.nbytes > 1000
    assert not datasets.load("cifar10", root=cifar_root,
                             max_device_bytes=resident.nbytes).streaming
    for split in ("train", "test"):
        a = list(resident.batches(split, 32, generator=torch.Generator().manual_seed(5)))
        b = list(streamed.batches(split, 32, generator=torch.Generator().manual_seed(5)))
        assert len(a) == len(b) == -(-len(resident.split(split)) // 32)
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert datasets.device_budget("cpu") is None


def test_streaming_covers_the_source_task(digits_split):
    d = digits_split.stream("cpu")
    assert d.streaming and d.source is not None and d.source.streaming
    back = d.to("cpu")
    assert not back.streaming and not back.source.streaming


# --------------------------------------------------------------------------- CUB-200-2011


def test_cub200_loads_real_format(cub):
    parent, truth = cub
    d = datasets.load("cub200", root=parent, image_size=16)  # parent of CUB_200_2011
    assert (d.num_classes, d.input_shape, d.crop_padding) == (3, (3, 16, 16), 2)
    assert d.info["classes"] == CUB_CLASSES
    # Normalised with the training split's own statistics, not ImageNet's.
    train = d.train.x.double() / 255
    assert d.mean == pytest.approx(train.mean(dim=(0, 2, 3)).tolist(), abs=1e-9)
    assert d.std == pytest.approx(train.std(dim=(0, 2, 3), correction=0).tolist(), abs=1e-6)
    assert d.mean != pytest.approx(IMAGENET_MEAN, abs=1e-3)
    assert (len(d.train), len(d.val), len(d.test)) == (9, 3, 12)
    ids = {s: _image_ids(d.split(s)) for s in ("train", "val", "test")}
    assert sorted(ids["test"]) == [i for i, (_, tr) in truth.items() if not tr]
    assert sorted(ids["train"] + ids["val"]) == [i for i, (_, tr) in truth.items() if tr]
    for s in ("train", "val", "test"):
        assert d.split(s).y.tolist() == [truth[i][0] for i in ids[s]]
    # Centre crop, not a stretch: the white borders are gone and each image is flat.
    every = torch.cat([d.train.x, d.val.x, d.test.x])
    assert float(every[:, :, 1:-1, 1:-1].float().std(dim=(2, 3)).max()) < 6
    gray = every[(ids["train"] + ids["val"] + ids["test"]).index(7)]  # a grayscale JPEG
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[0], gray[2])
    # Statistics given in the spec are used instead.
    d = datasets.load("cub200", root=parent, image_size=16, mean=list(IMAGENET_MEAN),
                      std=list(IMAGENET_STD))
    assert d.mean == IMAGENET_MEAN and d.std == IMAGENET_STD
    x, _ = next(d.batches("test", 4))
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(x, (d.test.x[:4].float() / 255 - mean) / std, atol=1e-5)


def test_cub200_same_from_inner_folder(cub):
    parent, _ = cub
    a = datasets.load("cub200", root=parent, image_size=16)
    b = datasets.load("cub200", root=parent / "CUB_200_2011", image_size=16)
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.train.y, b.train.y)


def test_cub200_bad_trees(cub, tmp_path):
    with pytest.raises(DataError, match="images.txt.*is missing.*" + datasets.CUB_URL):
        datasets.load("cub200", root=tmp_path)
    parent, _ = cub
    broken = tmp_path / "CUB_200_2011"
    broken.mkdir()
    for f in ("images.txt", "train_test_split.txt", "image_class_labels.txt"):
        (broken / f).write_text((parent / "CUB_200_2011" / f).read_text())
    with pytest.raises(DataError, match="image file .*_0001.jpg. does not exist"):
        datasets.load("cub200", root=tmp_path, image_size=16)
    (broken / "train_test_split.txt").write_text("1 1\n")
    with pytest.raises(DataError, match="train_test_split.txt.*other image ids"):
        datasets.load("cub200", root=tmp_path, image_size=16)
    with pytest.raises(DataError, match="cannot be downloaded"):
        datasets.load("cub200", root=tmp_path, download=True)


# --------------------------------------------------------------------------- ImageFolder


def test_imagefolder_without_splits_carves_test_and_val(tmp_path):
    truth = _write_folder(tmp_path, ["cat", "dog", "emu"], 6, start=1)
    d = datasets.load("imagefolder", root=tmp_path, image_size=16)
    assert d.num_classes == 3 and d.info["classes"] == ["cat", "dog", "emu"]
    assert d.input_shape == (3, 16, 16) and d.info["layout"] == "carved"
    # 6 per class: 1 carved for test, then 1 of the remaining 5 for validation.
    assert (len(d.train), len(d.val), len(d.test)) == (12, 3, 3)
    ids = {s: _image_ids(d.split(s)) for s in ("train", "val", "test")}
    assert sorted(ids["train"] + ids["val"] + ids["test"]) == sorted(truth)
    for s in ("train", "val", "test"):
        assert [d.info["classes"][c] for c in d.split(s).y.tolist()] == [truth[i] for i in ids[s]]
    again = datasets.load("imagefolder", root=tmp_path, image_size=16)
    assert torch.equal(again.test.x, d.test.x) and torch.equal(again.val.x, d.val.x)


def test_imagefolder_uses_train_and_test_folders(tmp_path):
    train = _write_folder(tmp_path / "train", ["a", "b"], 5, start=1)
    test = _write_folder(tmp_path / "test", ["b"], 2, start=11)  # a class may be absent
    d = datasets.load("imagefolder", root=tmp_path, image_size=8)
    assert d.info["layout"] == "folders" and d.num_classes == 2
    assert sorted(_image_ids(d.test)) == sorted(test) and d.test.y.tolist() == [1, 1]
    assert sorted(_image_ids(d.train) + _image_ids(d.val)) == sorted(train)
    assert len(d.val) == 2
    # With val/ as well, validation comes from it instead of being carved.
    val = _write_folder(tmp_path / "val", ["a"], 1, start=13)
    d = datasets.load("imagefolder", root=tmp_path, image_size=8)
    assert _image_ids(d.val) == sorted(val) and len(d.train) == 10
    _write_folder(tmp_path / "test", ["zebra"], 1, start=14)
    with pytest.raises(DataError, match="classes not in.*zebra"):
        datasets.load("imagefolder", root=tmp_path, image_size=8)


def test_imagefolder_without_images(tmp_path):
    with pytest.raises(DataError, match="one folder of images per class"):
        datasets.load("imagefolder", root=tmp_path)


# --------------------------------------------------------------------------- benchmark


def test_benchmark_tiny(tmp_path):
    from benchmarks import bench_data

    threads = torch.get_num_threads()
    try:
        bench_data.main(["--tiny", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)  # the benchmark sets its own thread count
    result = json.loads((tmp_path / "data.json").read_text())
    assert result["images"] == 512 and result["epochs"] == 2
    assert result["tensor_epoch_s"] > 0 and result["torchvision_epoch_s"] > 0
    assert result["speedup"] == pytest.approx(
        result["torchvision_epoch_s"] / result["tensor_epoch_s"], rel=1e-6)
    assert "-m benchmarks.bench_data --tiny" in result["command"]
    assert "speedup" in (tmp_path / "data.md").read_text()
    # Part 2: one decode, then 1 + 4 trial processes that each mapped the cache.
    cache = result["cache"]
    assert cache["folder_images"] == 600 and cache["data_bytes"] == 600 * 3 * 32 * 32 + 600 * 8
    assert len(cache["mapped_load_s"]) == 1 and len(cache["concurrent_load_s"]) == 4
    assert cache["decode_over_mapped"] == pytest.approx(
        cache["decode_s"] / cache["mapped_load_median_s"])
    assert cache["streamed_images_per_s"] > 0 and cache["resident_images_per_s"] > 0
    assert "PSS / one copy" in (tmp_path / "data.md").read_text()


def test_augment_false_trains_without_crop_and_flip():
    plain = datasets.load("digits", augment=False)
    assert plain.crop_padding == 0 and plain.flip is False
    x = plain.train.x[:8]
    assert torch.equal(datasets.augment_batch(x, plain.crop_padding, plain.flip), x)
    assert datasets.load("digits").crop_padding > 0
    with pytest.raises(datasets.DataError, match="augment must be true or false"):
        datasets.load("digits", augment="no")
