"""The base model: trained once, cached by content, loaded safely."""

from __future__ import annotations

import dataclasses
import pickle
import time

import pytest
import torch

from prune_core.baseline import (
    BaseModel,
    BaseSpec,
    CheckpointError,
    cache_path,
    get_base,
    safe_load,
    train_base,
)
from prune_core.train import TrainConfig
from tests.conftest import BASE_VGG, TEST_CACHE


def test_base_vgg_on_digits_reaches_97_percent(base_vgg):
    assert base_vgg.row["accuracy"] >= 0.97
    assert base_vgg.row["params"] > 0 and base_vgg.row["macs"] > 0


def test_second_call_loads_the_cache_without_training(base_vgg, digits):
    t0 = time.perf_counter()
    again, trained = get_base(BASE_VGG, digits, TEST_CACHE, log=lambda _m: None)
    assert not trained
    assert time.perf_counter() - t0 < 5
    assert again.row == base_vgg.row
    for k, v in base_vgg.state_dict.items():
        assert torch.equal(v, again.state_dict[k])


def test_cache_key_covers_everything_that_changes_the_model():
    keys = {
        BASE_VGG.key(),
        dataclasses.replace(BASE_VGG, model="vgg13").key(),
        dataclasses.replace(BASE_VGG, model_kw={"width": 0.5}).key(),
        dataclasses.replace(BASE_VGG, data="digits-split").key(),
        dataclasses.replace(BASE_VGG, train=TrainConfig(epochs=12, lr=0.05, seed=1)).key(),
        dataclasses.replace(BASE_VGG, train=TrainConfig(epochs=13, lr=0.05, seed=0)).key(),
        dataclasses.replace(BASE_VGG, transfer=TrainConfig(epochs=2)).key(),
    }
    assert len(keys) == 7
    # download is how data arrives, not what it is
    assert dataclasses.replace(BASE_VGG, data_kw={"download": True}).key() == BASE_VGG.key()


def test_corrupt_cache_file_gives_a_clear_error(tmp_path, digits):
    spec = BaseSpec(model="c3", model_kw={"k": 4}, train=TrainConfig(epochs=1))
    path = cache_path(tmp_path, spec)
    path.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match=rf"{path.name}.*Delete it"):
        get_base(spec, digits, tmp_path, log=lambda _m: None)


def test_foreign_file_is_rejected(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="not a prune-study base model"):
        BaseModel.from_payload(safe_load(path), str(path))


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("touch EXPLOITED",))


def test_pickled_code_is_never_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump(_Exploit(), f)
    with pytest.raises(CheckpointError):
        safe_load(path)
    assert not (tmp_path / "EXPLOITED").exists()


def test_transfer_base_trains_on_source_then_target(tmp_path, digits_split):
    spec = BaseSpec(model="c3", model_kw={"k": 4}, data="digits-split",
                    train=TrainConfig(epochs=1), transfer=TrainConfig(epochs=1))
    base, trained = get_base(spec, digits_split, tmp_path, log=lambda _m: None)
    assert trained
    assert [h["phase"] for h in base.history] == ["source", "transfer"]
    assert base.build().classifier.out_features == digits_split.num_classes == 5


def test_the_same_spec_trains_the_same_weights_whatever_ran_before(digits):
    # The initial weights come from the spec's seed, not from the process's RNG state:
    # a base trained by a study driver equals one trained by a benchmark or a test.
    small = dataclasses.replace(digits, train=digits.val)
    spec = BaseSpec(model="vgg11", model_kw={"width": 0.125}, data="digits",
                    train=TrainConfig(epochs=1, lr=0.05, seed=3))
    first = train_base(spec, small, log=lambda _m: None)
    torch.rand(1000)  # anything else drawing from the global RNG in between
    second = train_base(spec, small, log=lambda _m: None)
    for k, v in first.state_dict.items():
        assert torch.equal(v, second.state_dict[k]), k
    other = train_base(dataclasses.replace(spec, train=TrainConfig(epochs=1, lr=0.05, seed=4)),
                       small, log=lambda _m: None)
    assert not torch.equal(other.state_dict["features.conv0.weight"],
                           first.state_dict["features.conv0.weight"])


_TRAIN_ONCE = """
import sys
from prune_core import data
from prune_core.baseline import BaseSpec, get_base
from prune_core.train import TrainConfig
spec = BaseSpec(model="c3", model_kw={"k": 4}, train=TrainConfig(epochs=2))
_, trained = get_base(spec, data.load("digits"), sys.argv[1], log=lambda m: print(m, flush=True))
print("TRAINED" if trained else "LOADED")
"""


def test_processes_sharing_a_cache_train_a_base_once(tmp_path):
    # Two studies (or test workers) started together that need the same base: one trains
    # it, the other waits for the file instead of training it a second time.
    import subprocess
    import sys

    from tests.conftest import ROOT

    procs = [subprocess.Popen([sys.executable, "-c", _TRAIN_ONCE, str(tmp_path)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert sorted(o.splitlines()[-1] for o in outs) == ["LOADED", "TRAINED"], outs
    assert len(list(tmp_path.glob("base-*.pt"))) == 1
