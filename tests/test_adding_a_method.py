"""The worked example of docs/methods/adding-a-method.md runs as the page shows it."""

from __future__ import annotations

import importlib.util
import re

import pytest

from prune_core.measure import count_macs
from prune_core.methods import _registry, get_method, incompatibilities, parse_chain
from prune_core.models import build
from prune_core.trial import TrialSpec, run_trial
from tests.conftest import ROOT, TEST_CACHE

PAGE = ROOT / "docs" / "methods" / "adding-a-method.md"


@pytest.fixture
def example(tmp_path):
    """The page's code block as an imported module; its method unregistered afterwards."""
    code = re.search(r"```python\n(.*?)```", PAGE.read_text(), re.S).group(1)
    path = tmp_path / "random_channels.py"
    path.write_text(code)
    spec = importlib.util.spec_from_file_location("random_channels_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    _registry._METHODS.pop("random_channels", None)


def test_the_pages_method_registers_and_prunes(example, base_vgg, digits):
    method = get_method("random_channels")
    assert [p.name for p in method.params] == ["ratio", "finetune_epochs"]
    spec = TrialSpec(model="vgg11", model_kw={"width": 0.25}, methods="random_channels",
                     baseline={"epochs": 12, "lr": 0.05}, cache_dir=str(TEST_CACHE))
    row = run_trial({"study": spec.to_dict(),
                     "params": {"random_channels.ratio": 0.5,
                                "random_channels.finetune_epochs": 2}}, base=base_vgg)
    assert row["random_channels.channels_removed"] == sum(
        round(0.5 * c) for c in (16, 32, 64, 64, 128, 128, 128, 128))
    assert row["speedup"] > 3.0 and row["accuracy"] > 0.5
    macs, _ = count_macs(base_vgg.build(), digits.input_shape)
    assert row["macs"] < macs


def test_the_pages_check_refuses_a_model_without_conv_groups(example):
    stages = parse_chain(["random_channels"])
    tiny = build("c3", k=1)  # one filter per layer: nothing to remove
    lines = incompatibilities(stages, tiny, (3, 32, 32), "c3")
    assert len(lines) == 1 and "random_channels" in lines[0] and "'c3'" in lines[0]
    assert incompatibilities(stages, build("vgg11", width=0.25), (3, 32, 32)) == []
