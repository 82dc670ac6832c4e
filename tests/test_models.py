"""Every registered model builds, runs and is counted as published."""

from __future__ import annotations

import pickle

import pytest
import torch

from prune_core import measure, models
from prune_core.baseline import CheckpointError

SMALL_INPUT = {"vgg16_bn": (3, 64, 64), "resnet18": (3, 64, 64)}


def convs(model: torch.nn.Module) -> list[tuple[str, torch.nn.Conv2d]]:
    """Conv layers in registration order, with their qualified names."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]


@pytest.mark.parametrize("name", models.list_models())
def test_every_model_builds_and_classifies(name):
    model = models.build(name, num_classes=7).eval()
    shape = SMALL_INPUT.get(name, (3, 32, 32))
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.shape == (2, 7)
    assert models.classifier_name(model)
    assert convs(model), "every model has conv layers to prune"


def test_list_models_filters_by_wildcard():
    assert models.list_models("vgg*") == ["vgg11", "vgg13", "vgg16", "vgg16_bn", "vgg19"]
    assert models.list_models("resnet*") == ["resnet18", "resnet20", "resnet56"]


def test_unknown_model_lists_valid_names():
    with pytest.raises(models.ModelError, match="unknown model 'vgg17'.*vgg16"):
        models.build("vgg17")


def test_unknown_argument_names_what_is_taken():
    with pytest.raises(models.ModelError, match="does not take depth.*width"):
        models.build("vgg11", depth=3)
    with pytest.raises(models.ModelError, match="width must be in"):
        models.build("vgg11", width=0)


def test_width_multiplier_scales_every_conv():
    full = dict(convs(models.build("vgg11")))
    quarter = dict(convs(models.build("vgg11", width=0.25)))
    for name, conv in full.items():
        assert quarter[name].out_channels == round(conv.out_channels / 4)


@pytest.mark.parametrize("name, shape, classes, params, macs", [
    ("vgg16", (3, 32, 32), 10, 14.72e6, 313e6),
    ("resnet18", (3, 224, 224), 1000, 11.69e6, 1.82e9),
])
def test_counts_match_published_figures(name, shape, classes, params, macs):
    row = measure.measure(models.build(name, num_classes=classes), shape)
    assert row["params"] == pytest.approx(params, rel=0.01)
    assert row["macs"] == pytest.approx(macs, rel=0.01)


def test_replace_classifier_changes_outputs_only():
    model = models.build("vgg11", width=0.25, num_classes=5)
    convs_before = {n: m.weight.clone() for n, m in convs(model)}
    models.replace_classifier(model, 3)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    for n, m in convs(model):
        assert torch.equal(m.weight, convs_before[n])


def test_pretrained_weights_load_from_local_file(tmp_path):
    src = models.build("resnet18", num_classes=1000)
    path = tmp_path / "resnet18.pth"
    torch.save(src.state_dict(), path)
    # A different head size keeps the backbone and leaves the classifier fresh.
    dst = models.build("resnet18", num_classes=10, weights=str(path))
    assert torch.equal(dst.conv1.weight, src.conv1.weight)
    assert dst.fc.out_features == 10


def test_pretrained_weights_missing_file_says_what_to_do(tmp_path):
    with pytest.raises(models.ModelError, match="is not a file.*local path"):
        models.build("vgg16_bn", weights=str(tmp_path / "nope.pth"))


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("touch EXPLOITED",))


def test_foreign_weights_file_never_executes_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _Exploit()}, f)
    with pytest.raises(CheckpointError, match="evil.pth"):
        models.build("resnet18", weights=str(path))
    assert not (tmp_path / "EXPLOITED").exists()
