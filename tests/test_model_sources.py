"""Models from anywhere: torchvision:, timm:, import: and strictly loaded weights files."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml

from prune_core import models
from prune_core.baseline import BaseSpec, cache_path
from studies.spec import SpecError, parse_spec

FIXTURE = "tests.model_sources_fixture"


def good(**kw) -> dict:
    """The minimal spec of tests/test_spec.py."""
    spec = {
        "name": "t", "data": "digits", "model": {"name": "vgg11", "width": 0.25},
        "baseline": {"epochs": 2, "lr": 0.05}, "methods": "slimming",
        "space": {"slimming.prune_ratio": {"low": 0.2, "high": 0.9}},
        "objectives": {"accuracy": "max", "macs": "min"}, "trials": 5,
    }
    spec.update(kw)
    return spec


def errors_of(raw: dict) -> list[str]:
    with pytest.raises(SpecError) as e:
        parse_spec(raw)
    return e.value.errors


def _out(model: torch.nn.Module, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    with torch.no_grad():
        return model.eval()(torch.randn(2, 3, 32, 32))


# --------------------------------------------------------------------------- torchvision


def test_torchvision_model_takes_its_own_arguments():
    narrow = models.build("torchvision:mobilenet_v2", num_classes=10, width_mult=0.25)
    assert _out(narrow).shape == (2, 10)
    full = models.build("torchvision:mobilenet_v2", num_classes=10)
    # width_mult reached the constructor: the first conv has a quarter of the filters
    assert narrow.features[0][0].out_channels == 8 and full.features[0][0].out_channels == 32
    assert models.classifier_name(narrow) == "classifier.1"


def test_torchvision_wrong_keyword_names_the_key_and_the_model():
    with pytest.raises(models.ModelError,
                       match="'torchvision:mobilenet_v2' does not take 'width_mul'") as e:
        models.build("torchvision:mobilenet_v2", width_mul=0.5)
    assert e.value.key == "width_mul"


def test_unknown_torchvision_and_timm_names_say_where_the_names_are():
    with pytest.raises(models.ModelError, match=r"unknown torchvision classification model "
                       r"'mobilenetv2' \(did you mean mobilenet_v2.*list_models"):
        models.build("torchvision:mobilenetv2")
    # a torchvision detection model is not a classifier
    with pytest.raises(models.ModelError, match="unknown torchvision classification model"):
        models.build("torchvision:fasterrcnn_resnet50_fpn")
    with pytest.raises(models.ModelError, match="unknown timm model 'resnet10tt'.*resnet10t"):
        models.build("timm:resnet10tt")


# --------------------------------------------------------------------------- timm


def test_timm_model_builds_with_the_data_classes():
    model = models.build("timm:resnet10t", num_classes=10)
    assert _out(model).shape == (2, 10)
    with pytest.raises(models.ModelError, match="'timm:resnet10t' does not take 'depth'"):
        models.build("timm:resnet10t", depth=3)


def test_timm_missing_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    with pytest.raises(models.ModelError, match=r"pip install 'prune-study\[timm\]'"):
        models.build("timm:resnet10t")


# --------------------------------------------------------------------------- import


def test_import_factory_gets_num_classes_and_kwargs():
    model = models.build(f"import:{FIXTURE}:tiny_net", num_classes=7, width=8)
    assert model[0].out_channels == 8
    assert _out(model).shape == (2, 7)


@pytest.mark.parametrize("target, message", [
    (f"{FIXTURE}", r"is not valid; write import:<module.path>:<factory>"),
    (f"{FIXTURE}:", r"is not valid; write import:<module.path>:<factory>"),
    (f"{FIXTURE}:a:b", r"is not valid"),
    ("tests.no_such_module:f", r"cannot import module 'tests.no_such_module'.*working "
                               r"directory.*PYTHONPATH"),
    (f"{FIXTURE}:tiny_nett", r"has no 'tiny_nett' \(did you mean tiny_net\?\)"),
    (f"{FIXTURE}:NOT_A_FACTORY", r"is a int, not a factory"),
    (f"{FIXTURE}:no_num_classes", r"does not take num_classes.*its arguments: width"),
    (f"{FIXTURE}:returns_a_dict", r"returned a dict, not a torch.nn.Module"),
])
def test_import_mistakes_are_model_errors(target, message):
    with pytest.raises(models.ModelError, match=message):
        models.build(f"import:{target}")


def test_import_wrong_kwarg_names_it():
    with pytest.raises(models.ModelError, match="does not take depth; it takes: width") as e:
        models.build(f"import:{FIXTURE}:tiny_net", depth=3)
    assert e.value.key == "depth"


def test_import_module_with_a_missing_dependency_names_the_dependency(tmp_path, monkeypatch):
    (tmp_path / "needs_missing.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(models.ModelError, match="importing 'needs_missing'.*"
                                                "no_such_dependency_xyz"):
        models.build("import:needs_missing:f")


def test_import_finds_modules_in_the_working_directory(tmp_path, monkeypatch):
    # The prune-study script does not put the working directory on sys.path; build does.
    (tmp_path / "cwd_nets.py").write_text(
        "from tests.model_sources_fixture import tiny_net as net\n")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".")])
    monkeypatch.chdir(tmp_path)
    assert _out(models.build("import:cwd_nets:net", num_classes=3)).shape == (2, 3)


# --------------------------------------------------------------------------- weights


def _save(state: dict, path: Path) -> str:
    torch.save(state, path)
    return str(path)


def test_weights_round_trip_gives_identical_outputs(tmp_path):
    src = models.build("torchvision:mobilenet_v2", width_mult=0.25)
    _out(src)  # eval mode; running statistics stay those of the file
    path = _save(src.state_dict(), tmp_path / "w.pth")
    dst = models.build("torchvision:mobilenet_v2", width_mult=0.25, weights=path)
    assert torch.equal(_out(dst), _out(src))
    # a {"state_dict": ...} wrapper and DataParallel's module. prefix are accepted
    wrapped = {"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}
    dst = models.build("torchvision:mobilenet_v2", width_mult=0.25,
                       weights=_save(wrapped, tmp_path / "dp.pth"))
    assert torch.equal(_out(dst), _out(src))


def test_weights_that_do_not_fit_name_every_tensor(tmp_path):
    src = models.build(f"import:{FIXTURE}:tiny_net", width=8).state_dict()
    src.pop("0.bias")
    src["3.weight"] = torch.zeros(8, 8, 5, 5)
    src["extra.weight"] = torch.zeros(1)
    path = _save(src, tmp_path / "w.pth")
    with pytest.raises(models.ModelError) as e:
        models.build(f"import:{FIXTURE}:tiny_net", width=8, weights=path)
    text = str(e.value)
    assert "(3 tensors wrong)" in text and e.value.key == "weights"
    for part in ("missing 0.bias", "unexpected extra.weight",
                 "3.weight has shape (8, 8, 5, 5) in the file, (8, 8, 3, 3) in the model"):
        assert part in text


def test_many_wrong_tensors_are_counted(tmp_path):
    path = _save(models.build("resnet20").state_dict(), tmp_path / "w.pth")
    with pytest.raises(models.ModelError, match=r"tensors wrong\): .*; \.\.\. and \d+ more"):
        models.build("torchvision:mobilenet_v2", weights=path)


def test_a_classifier_of_another_size_stays_fresh_with_a_warning(tmp_path):
    src = models.build("torchvision:mobilenet_v2", num_classes=1000, width_mult=0.25)
    path = _save(src.state_dict(), tmp_path / "imagenet.pth")
    with pytest.warns(UserWarning, match=r"classifier.1.weight/bias of shape \(1000, 1280\) "
                                         r"replaced: the data has 10 classes"):
        dst = models.build("torchvision:mobilenet_v2", num_classes=10, width_mult=0.25,
                           weights=path)
    assert dst.classifier[1].out_features == 10
    assert torch.equal(dst.features[0][0].weight, src.features[0][0].weight)
    assert torch.equal(dst.features[1].conv[0][1].running_var,
                       src.features[1].conv[0][1].running_var)


def test_a_classifier_of_another_input_size_is_an_error(tmp_path):
    src = models.build(f"import:{FIXTURE}:tiny_net", num_classes=10, width=8).state_dict()
    src["7.weight"] = torch.zeros(10, 16)
    path = _save(src, tmp_path / "w.pth")
    with pytest.raises(models.ModelError, match=r"7.weight has shape \(10, 16\)"):
        models.build(f"import:{FIXTURE}:tiny_net", num_classes=10, width=8, weights=path)


def test_registry_weights_are_strict_too(tmp_path):
    state = models.build("resnet18").state_dict()
    state.pop("layer1.0.conv1.weight")
    with pytest.raises(models.ModelError, match="missing layer1.0.conv1.weight"):
        models.build("resnet18", weights=_save(state, tmp_path / "w.pth"))


def test_a_file_of_other_things_is_not_a_state_dict(tmp_path):
    with pytest.raises(models.ModelError, match="is not a state dict"):
        models.build("torchvision:mobilenet_v2", weights=_save({"epoch": 3}, tmp_path / "w"))


# --------------------------------------------------------------------------- registry helpers


def test_doc_and_kwargs_of_source_names_do_not_need_the_model():
    assert models.model_kwargs("torchvision:resnet18") is None
    assert models.model_kwargs("import:nowhere:f") is None
    assert models.model_kwargs("vgg11") == ["width"]
    assert "mobilenet_v2" in models.model_doc("torchvision:mobilenet_v2")
    assert "resnet10t" in models.model_doc("timm:resnet10t")
    with pytest.raises(models.ModelError, match="unknown model 'vgg99'"):
        models.model_kwargs("vgg99")


def test_cache_file_names_are_safe_and_registry_names_unchanged(tmp_path):
    spec = BaseSpec(model="vgg11", model_kw={"width": 0.25})
    assert cache_path(tmp_path, spec).name == f"base-vgg11-digits-{spec.key()}.pt"
    spec = BaseSpec(model=f"import:{FIXTURE}:tiny_net")
    assert cache_path(tmp_path, spec).name == \
        f"base-import_tests_model_sources_fixture_tiny_net-digits-{spec.key()}.pt"
    assert cache_path(tmp_path, spec).parent == tmp_path


# --------------------------------------------------------------------------- spec


@pytest.mark.parametrize("model, name, kw", [
    ({"name": "resnet20", "width": 0.5}, "resnet20", {"width": 0.5}),
    ({"name": "torchvision:mobilenet_v2", "width_mult": 0.25}, "torchvision:mobilenet_v2",
     {"width_mult": 0.25}),
    ("timm:resnet10t", "timm:resnet10t", {}),
    ({"import": f"{FIXTURE}:tiny_net", "kwargs": {"width": 8}}, f"import:{FIXTURE}:tiny_net",
     {"width": 8}),
])
def test_every_model_form_validates(model, name, kw):
    spec = parse_spec(good(model=model))
    assert (spec.model, spec.model_kw) == (name, kw)
    ts = spec.trial_spec()
    assert _out(models.build(ts.model, num_classes=10, **ts.model_kw)).shape == (2, 10)


@pytest.mark.parametrize("model, expect", [
    ({"name": "torchvision:mobilenetv2"}, "model.name: unknown torchvision classification "
                                          "model 'mobilenetv2'"),
    ({"name": "torchvision:mobilenet_v2", "width_mul": 0.5}, "model.width_mul: model "
     "'torchvision:mobilenet_v2' does not take 'width_mul'"),
    ({"name": "timm:nope_net"}, "model.name: unknown timm model 'nope_net'"),
    ({"import": "tests.no_such_module:f"}, "model.import: cannot import module "
                                           "'tests.no_such_module'"),
    ({"import": f"{FIXTURE}"}, "model.import: model 'import:tests.model_sources_fixture' is not "
                               "valid"),
    ({"import": f"{FIXTURE}:nope"}, "model.import: module 'tests.model_sources_fixture' has "
                                    "no 'nope'"),
    ({"import": f"{FIXTURE}:tiny_net", "kwargs": {"depth": 2}}, "model.kwargs.depth: factory"),
    ({"import": f"{FIXTURE}:tiny_net", "kwargs": [8]}, "model.kwargs: [8] is not a mapping"),
    ({"import": f"{FIXTURE}:tiny_net", "width": 8}, "model.width: unknown key beside import"),
    ({"import": f"{FIXTURE}:tiny_net", "name": "vgg11"}, "model.name: give either name or "
                                                         "import"),
    ({"import": 3}, "model.import: 3 is not valid"),
    ({"import": f"{FIXTURE}:broken"}, "model: building import:tests.model_sources_fixture:"
                                      "broken failed: RuntimeError: the user's factory fails"),
    ({"name": "vgg99"}, "model.name: unknown model 'vgg99'"),
])
def test_every_model_mistake_names_its_field(model, expect):
    errs = errors_of(good(model=model))
    assert len(errs) == 1 and errs[0].startswith(expect), errs


def test_weights_in_a_spec_are_checked_and_written_back_as_given(tmp_path, monkeypatch):
    tiny = models.build(f"import:{FIXTURE}:tiny_net", width=8)
    _save(tiny.state_dict(), tmp_path / "tiny.pth")
    _save(models.build(f"import:{FIXTURE}:tiny_net", width=4).state_dict(), tmp_path / "bad.pth")
    monkeypatch.chdir(tmp_path)
    model = {"import": f"{FIXTURE}:tiny_net", "kwargs": {"width": 8}, "weights": "tiny.pth"}
    spec = parse_spec(good(model=model, storage=str(tmp_path)))
    assert spec.model_kw == {"width": 8, "weights": str(tmp_path / "tiny.pth")}
    written = yaml.safe_load(spec.to_yaml())["model"]
    assert written == {**model, "weights": str(tmp_path / "tiny.pth")}
    assert parse_spec(good(model=written)).model_kw == spec.model_kw
    errs = errors_of(good(model={**model, "weights": "bad.pth"}))
    assert len(errs) == 1 and errs[0].startswith("model.weights: model.weights ") \
        and "does not fit" in errs[0] and "0.weight has shape (4, 3, 3, 3)" in errs[0]
    errs = errors_of(good(model={**model, "weights": "nowhere.pth"}))
    assert errs == ["model.weights: 'nowhere.pth' is not a file; give the path of a local "
                    "weights file (nothing is downloaded at run time)"]
    tv = {"name": "torchvision:mobilenet_v2", "width_mult": 0.25, "weights": "tiny.pth"}
    errs = errors_of(good(model=tv))
    assert len(errs) == 1 and errs[0].startswith("model.weights: ")


# --------------------------------------------------------------------------- command line


def test_models_command_explains_every_form(capsys):
    import json

    from studies.cli import main

    assert main(["models"]) == 0
    text = capsys.readouterr().out
    assert "vgg16_bn" in text
    for form in ("torchvision:<name>", "timm:<name>", "import:<module>:<factory>", "weights"):
        assert form in text
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == models.list_models()
