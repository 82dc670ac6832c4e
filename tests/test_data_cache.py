"""The node's decoded-data cache: built once, mapped by every later load, rebuilt when its
source or its files change; unreadable images; streaming from the mapped file."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from prune_core import data as datasets
from prune_core._data_cache import IMAGES, MANIFEST
from prune_core.data import DataError
from prune_core.train import TrainConfig, evaluate, fit
from studies import caches
from tests import test_data
from tests.conftest import ROOT
from tests.test_data import _image_ids, _write_folder

cifar_files, cifar_root = test_data.cifar_files, test_data.cifar_root  # fixtures

SPLITS = ("train", "val", "test")


def _same(a: datasets.Data, b: datasets.Data) -> bool:
    return all(torch.equal(a.split(s).x, b.split(s).x) and torch.equal(a.split(s).y,
                                                                       b.split(s).y)
               for s in SPLITS)


def _mapped_ranges(path: Path) -> list[tuple[int, int]]:
    """Address ranges where this process maps ``path`` (from /proc/self/maps)."""
    out = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        if line.endswith(str(path)):
            lo, hi = line.split()[0].split("-")
            out.append((int(lo, 16), int(hi, 16)))
    return out


def _contents(d: datasets.Data) -> list[tuple[int, int]]:
    """(image id, label) of every image in every split, sorted."""
    every = datasets.Split(torch.cat([d.split(s).x for s in SPLITS]),
                           torch.cat([d.split(s).y for s in SPLITS]))
    return sorted(zip(_image_ids(every), every.y.tolist(), strict=True))


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "images"
    _write_folder(root, ["cat", "dog", "emu"], 8, start=1)
    return root


def test_first_load_decodes_later_loads_map_the_same_arrays(folder, tmp_path):
    cache = tmp_path / "cache"
    memory = datasets.load("imagefolder", root=folder, image_size=16)
    first = datasets.load("imagefolder", root=folder, image_size=16, cache_dir=cache)
    later = datasets.load("imagefolder", root=folder, image_size=16, cache_dir=cache)
    assert first.info["cache_built"] and not later.info["cache_built"]
    assert first.info["cache"] == later.info["cache"]
    assert _same(memory, first) and _same(memory, later)
    assert later.mean == memory.mean and later.std == memory.std
    # Every split is a view into the one mapped file: no process holds a copy.
    images = Path(later.info["cache"]) / IMAGES
    ranges = _mapped_ranges(images)
    assert ranges
    for s in SPLITS:
        ptr = later.split(s).x.data_ptr()
        assert any(lo <= ptr < hi for lo, hi in ranges), s
    # Another size is another entry; the first one stays.
    datasets.load("imagefolder", root=folder, image_size=8, cache_dir=cache)
    assert len([d for d in cache.iterdir() if d.is_dir()]) == 2


def test_cifar_cached_equals_uncached(cifar_root, tmp_path):
    a = datasets.load("cifar10", root=cifar_root)
    b = datasets.load("cifar10", root=cifar_root, cache_dir=tmp_path)
    c = datasets.load("cifar10", root=cifar_root, cache_dir=tmp_path)
    assert b.info["cache_built"] and not c.info["cache_built"]
    assert _same(a, b) and _same(a, c) and a.info["classes"] == c.info["classes"]


def test_a_changed_source_is_rebuilt_never_used(folder, tmp_path, capfd):
    cache = tmp_path / "cache"
    before = datasets.load("imagefolder", root=folder, image_size=16, cache_dir=cache)
    # A new image in a class: the cached arrays no longer describe the folder.
    Image.new("RGB", (24, 24), (20 + 9 * 25, 100, 100)).save(folder / "dog" / "25.png")
    after = datasets.load("imagefolder", root=folder, image_size=16, cache_dir=cache)
    assert after.info["cache_built"]
    assert "source files changed" in capfd.readouterr().err
    assert sum(len(after.split(s)) for s in SPLITS) == sum(len(before.split(s))
                                                           for s in SPLITS) + 1
    assert 25 in _image_ids(after.train) + _image_ids(after.val) + _image_ids(after.test)
    # An image replaced in place (same name, other content) is a change too.
    Image.new("RGB", (24, 24), (20 + 9 * 26, 100, 100)).save(folder / "dog" / "25.png")
    os.utime(folder / "dog" / "25.png", ns=(1, 1))  # even with an older time stamp
    again = datasets.load("imagefolder", root=folder, image_size=16, cache_dir=cache)
    assert again.info["cache_built"]
    ids = _image_ids(again.train) + _image_ids(again.val) + _image_ids(again.test)
    assert 26 in ids and 25 not in ids


@pytest.mark.parametrize("damage", ["truncated", "manifest", "foreign", "labels"])
def test_a_damaged_entry_is_rebuilt(folder, tmp_path, capfd, damage):
    cache = tmp_path / "cache"
    good = datasets.load("imagefolder", root=folder, image_size=16, cache_dir=cache)
    entry = Path(good.info["cache"])
    del good  # unmap before damaging
    if damage == "truncated":  # a copy cut short
        os.truncate(entry / IMAGES, (entry / IMAGES).stat().st_size // 2)
    elif damage == "manifest":
        (entry / MANIFEST).write_text('{"format": 1, "sha')
    elif damage == "foreign":  # same size, other bytes
        (entry / IMAGES).write_bytes(bytes((entry / IMAGES).stat().st_size))
    else:
        np.save(entry / "labels.npy", np.zeros(3, dtype=np.int64))
    fresh = datasets.load("imagefolder", root=folder, image_size=16, cache_dir=cache)
    assert fresh.info["cache_built"] and fresh.info["cache"] == str(entry)
    assert f"data cache {entry} is rebuilt" in capfd.readouterr().err
    assert _same(fresh, datasets.load("imagefolder", root=folder, image_size=16))


def test_a_killed_build_leaves_nothing_that_is_used(folder, tmp_path):
    cache = tmp_path / "_cache" / "data"
    entry = Path(datasets.load("imagefolder", root=folder, image_size=16,
                               cache_dir=cache).info["cache"])
    # What a process killed mid-build leaves: its temporary directory, never the entry.
    half = entry.with_name(entry.name + ".tmp-99999")
    half.mkdir()
    (half / IMAGES).write_bytes(b"\0" * 100)
    d = datasets.load("imagefolder", root=folder, image_size=16, cache_dir=cache)
    assert not d.info["cache_built"]
    rows = caches.items(tmp_path / "_cache")
    assert [r.get("partial", False) for r in rows] == [False, True]
    assert caches.clear(tmp_path / "_cache", ("data",)) == rows
    assert caches.items(tmp_path / "_cache") == [] and not half.exists()


def _load_in_child(root: str, cache: str, start, out) -> None:
    start.wait()
    d = datasets.load("imagefolder", root=root, image_size=32, cache_dir=cache)
    out.put((d.info["cache_built"], d.train.x.sum().item(), len(d.train)))


def test_two_processes_build_the_cache_once(tmp_path):
    root = tmp_path / "images"
    _write_folder(root, [f"c{i}" for i in range(4)], 60, start=1)
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_load_in_child, args=(str(root), str(tmp_path / "c"), start,
                                                      out)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sorted(r[0] for r in results) == [False, True]  # one built, one mapped
    assert results[0][1:] == results[1][1:]
    assert len([d for d in (tmp_path / "c").iterdir() if d.is_dir()]) == 1


def test_unreadable_images_are_refused_or_left_out(folder, tmp_path):
    (folder / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (folder / "emu" / "empty.png").write_bytes(b"")
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"2 of 26 images of imagefolder cannot be read: .*"
                       r"broken.jpg.*empty.png.*data.bad_images: skip"):
        datasets.load("imagefolder", root=folder, image_size=16, cache_dir=cache)
    assert not any(d.is_dir() for d in cache.iterdir())  # nothing half-built remains
    d = datasets.load("imagefolder", root=folder, image_size=16, cache_dir=cache,
                      bad_images="skip")
    assert sorted(d.info["skipped"]) == ["dog/broken.jpg", "emu/empty.png"]
    assert sum(len(d.split(s)) for s in SPLITS) == 24
    # The readable images and their labels are exactly those of the clean folder.
    (folder / "dog" / "broken.jpg").unlink()
    (folder / "emu" / "empty.png").unlink()
    assert _contents(d) == _contents(datasets.load("imagefolder", root=folder, image_size=16))


def test_empty_class_folder_is_refused_by_name(tmp_path):
    root = tmp_path / "images"
    _write_folder(root, ["cat", "dog"], 3, start=1)
    (root / "emu").mkdir()
    with pytest.raises(DataError, match="emu"):
        datasets.load("imagefolder", root=root, image_size=16, cache_dir=tmp_path / "c")


def test_streaming_from_the_map_gives_the_resident_batches(folder, tmp_path):
    cache = tmp_path / "cache"
    resident = datasets.load("imagefolder", root=folder, image_size=16, cache_dir=cache)
    streamed = datasets.load("imagefolder", root=folder, image_size=16, cache_dir=cache,
                             max_memory_bytes=1000)
    assert not resident.streaming and streamed.streaming and streamed.nbytes > 1000
    for split in SPLITS:
        a = list(resident.batches(split, 5, generator=torch.Generator().manual_seed(7)))
        b = list(streamed.batches(split, 5, generator=torch.Generator().manual_seed(7)))
        assert len(a) == len(b) > 0
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_training_on_a_budget_smaller_than_the_data(tmp_path):
    root = tmp_path / "images"
    # Two classes told apart by colour: learnable in a few epochs.
    for c, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        (root / c).mkdir(parents=True)
        rng = np.random.default_rng(len(c))
        for i in range(30):
            noise = rng.integers(-30, 30, (20, 20, 3))
            Image.fromarray(np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
                            ).save(root / c / f"{i}.png")
    data = datasets.load("imagefolder", root=root, image_size=16, cache_dir=tmp_path / "c",
                         max_memory_bytes=4096)
    assert data.streaming and data.nbytes > 4096
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(8, 2))
    fit(model, data, TrainConfig(epochs=6, lr=0.05, batch_size=8))
    assert evaluate(model, data, "test")["accuracy"] == 1.0


def test_resize_policies_and_split_files(tmp_path):
    root = tmp_path / "images"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(4):
            arr = np.full((16, 48, 3), 255, dtype=np.uint8)  # wide, white sides
            arr[:, 16:32] = (10, 10, 10)
            Image.fromarray(arr).save(root / c / f"{i}.png")
    (root / "train.txt").write_text("# train\na/0.png\na/1.png\na/2.png\nb/0.png\nb/1.png\n")
    (root / "test.txt").write_text("a/3.png\nb/3.png\nb/2.png\n")
    kw = {"root": root, "image_size": 16, "split_files": {"train": "train.txt",
                                                          "test": "test.txt"}}
    crop = datasets.load("imagefolder", **kw)
    assert (len(crop.train) + len(crop.val), len(crop.test)) == (5, 3)
    assert crop.info["layout"] == "split_files" and crop.test.y.tolist() == [0, 1, 1]
    stretch = datasets.load("imagefolder", resize="stretch", **kw)
    pad = datasets.load("imagefolder", resize="pad", **kw)
    # Centre crop: the dark middle only; stretch: the white sides kept; pad: black bands.
    assert crop.test.x.float().mean() < 20
    assert stretch.test.x[:, :, :, 0].float().mean() > 240
    assert pad.test.x[:, :, 0, :].float().mean() < 1 and pad.test.x[:, :, 8, 0].min() > 240
    (root / "test.txt").write_text("a/3.png\nzebra.png\n")
    with pytest.raises(DataError, match=r"test.txt:2: 'zebra.png' is not <class>/<file>"):
        datasets.load("imagefolder", **kw)


def test_base_model_keys_change_with_the_folder_statistics():
    from prune_core.baseline import BaseSpec

    # Cached folder base models trained under ImageNet statistics are not reused.
    old = BaseSpec("vgg11", data="imagefolder", data_kw={"root": "/x"})
    assert datasets.data_key("imagefolder", {"root": "/x"}) == {"root": "/x", "revision": 2}
    assert datasets.data_key("cifar10", {"root": "/x", "download": True}) == {"root": "/x"}
    assert old.key() != BaseSpec("vgg11", data="imagefolder", data_kw={
        "root": "/x", "mean": [0.5] * 3}).key()


def test_cache_command_lists_and_clears(folder, tmp_path):
    storage = tmp_path / "runs"
    datasets.load("imagefolder", root=folder, image_size=16, cache_dir=storage / "_cache" /
                  "data")
    (storage / "_cache" / "base-vgg11-digits-0123.pt").write_bytes(b"x" * 2048)
    cli = [sys.executable, "-m", "studies.cli", "cache"]
    listed = subprocess.run([*cli, "list", "--storage", str(storage), "--json"], cwd=ROOT,
                            capture_output=True, text=True, check=True)
    rows = json.loads(listed.stdout)["entries"]
    assert sorted(r["kind"] for r in rows) == ["base", "data"]
    data_row = next(r for r in rows if r["kind"] == "data")
    assert "imagefolder: 24 images 3x16x16" in data_row["detail"]
    assert data_row["bytes"] >= 24 * 3 * 16 * 16
    text = subprocess.run([*cli, "clear", "--storage", str(storage), "--kind", "data"],
                          cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "removed 1 entry" in text
    assert [r["kind"] for r in caches.items(storage / "_cache")] == ["base"]
    kept = subprocess.run([*cli, "clear", "--storage", str(storage), "--older-than", "1d"],
                          cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "removed 0 entries" in kept
    bad = subprocess.run([*cli, "clear", "--storage", str(storage), "--older-than", "soon"],
                         cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "expected a duration such as 90, 30m, 12h or 7d" in bad.stderr


def test_device_decoding_matches_pil_and_names_the_same_bad_files(tmp_path):
    """decode: gpu's code path (torchvision's decode_jpeg and resize), run on the CPU:
    JPEGs within a few levels of PIL's pixels under every resize policy, other formats
    through PIL exactly, and the same unreadable files named."""
    paths = []
    # Shorter sides under twice the size: PIL decodes them at full scale (no JPEG draft
    # reduction), so only the resize filters differ.
    for i, (h, w) in enumerate([(40, 50), (64, 32), (30, 90), (24, 24), (33, 47)]):
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([255 * xx / w, 255 * yy / h, 128 + 100 * np.sin(xx / 7 + i)], -1)
        paths.append(tmp_path / f"{i}.jpg")
        Image.fromarray(img.astype(np.uint8)).save(paths[-1], quality=95)
    paths.append(tmp_path / "plain.png")
    Image.fromarray(img.astype(np.uint8)).save(paths[-1])
    paths.append(tmp_path / "bad.jpg")
    paths[-1].write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    for resize in datasets.RESIZE:
        pil = np.zeros((len(paths), 3, 24, 24), np.uint8)
        dev = np.zeros_like(pil)
        assert sorted(datasets.decode_into(pil, paths, 24, resize)) == [6]
        failed = datasets.decode_on_device(dev, paths, 24, resize, "cpu", batch=4)
        assert list(failed) == [6] and "bad.jpg" in failed[6]
        # A placement one pixel off costs 5 to 17 levels on these gradients.
        diff = np.abs(pil[:5].astype(int) - dev[:5]).mean(axis=(1, 2, 3))
        assert diff.max() < 1, (resize, diff)
        assert np.array_equal(pil[5], dev[5])  # the PNG: PIL in both


def test_gpu_decoding_runs_on_a_gpu_node_and_is_refused_elsewhere(folder, tmp_path):
    if torch.cuda.is_available():  # its own cache entry, pixels close to PIL's
        gpu = datasets.load("imagefolder", root=folder, image_size=16, decode="gpu",
                            cache_dir=tmp_path / "c")
        cpu = datasets.load("imagefolder", root=folder, image_size=16, cache_dir=tmp_path / "c")
        assert gpu.info["cache"] != cpu.info["cache"]
        diff = (gpu.train.x.float() - cpu.train.x.float()).abs().mean()
        assert float(diff) < 3
        return
    with pytest.raises(DataError, match="decode: gpu needs a CUDA device, and this node has "
                                        "none; set decode: cpu"):
        datasets.load("imagefolder", root=folder, image_size=16, decode="gpu")
