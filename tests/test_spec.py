"""The study spec: every mistake reported with its field before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from prune_core.baseline import BaseSpec
from prune_core.train import TrainConfig
from studies.spec import SpecError, load_spec, parse_overrides, parse_spec

SPECS = sorted((Path(__file__).resolve().parent.parent / "studies" / "specs").glob("*.yaml"))


def good(**kw) -> dict:
    spec = {
        "name": "t", "data": "digits", "model": {"name": "vgg11", "width": 0.25},
        "baseline": {"epochs": 2, "lr": 0.05}, "methods": "slimming",
        "space": {"slimming.prune_ratio": {"low": 0.2, "high": 0.9},
                  "slimming.lambda": {"low": 1e-3, "high": 0.05, "log": True},
                  "slimming.finetune_epochs": 3},
        "objectives": {"accuracy": "max", "macs": "min"}, "trials": 5,
    }
    spec.update(kw)
    return spec


def errors_of(raw: dict) -> list[str]:
    with pytest.raises(SpecError) as e:
        parse_spec(raw)
    return e.value.errors


def test_a_good_spec_becomes_the_trial_spec(tmp_path):
    spec = parse_spec(good(storage=str(tmp_path), finetune={"lr": "1e-3"}, seed=3))
    ts = spec.trial_spec()
    assert ts.model == "vgg11" and ts.model_kw == {"width": 0.25} and ts.data == "digits"
    assert ts.methods == ["slimming"] and ts.fixed == {"slimming.finetune_epochs": 3}
    assert ts.finetune == {"lr": 1e-3}  # YAML 1.1 reads 1e-3 as a string; the spec does not
    assert ts.seed == 3 and Path(ts.cache_dir) == tmp_path.resolve() / "_cache"
    assert spec.study_dir == tmp_path.resolve() / "t"
    # The base model key is the one the baseline cache uses.
    assert ts.base_spec() == BaseSpec(model="vgg11", model_kw={"width": 0.25}, data="digits",
                                      train=TrainConfig(epochs=2, lr=0.05, seed=3))
    p = spec.space["slimming.lambda"]
    assert (p.kind, p.low, p.high, p.log) == ("float", 1e-3, 0.05, True)


def test_range_outside_the_method_domain_names_field_value_and_domain():
    errs = errors_of(good(space={"slimming.prune_ratio": {"low": 0.1, "high": 1.5}}))
    assert errs == ["space.slimming.prune_ratio.high: 1.5 is outside the domain of "
                    "slimming.prune_ratio: a number in [0, 1)"]


def test_every_error_is_reported_at_once():
    raw = good(
        name="bad name", data={"name": "digitz"}, model={"name": "vgg99"},
        baseline={"lr": -1, "epochz": 3}, methods="slimming+nosuch",
        space={"slimming.prune_ratio": {"low": 0.9, "high": 0.2},
               "slimming.lambda": {"low": 0, "high": 0.1, "log": True},
               "slimming.fold_bias": {"choices": []},
               "slimming.gamma": 1, "pruner.x": 1},
        objectives={"accurcy": "max", "macs": "min"}, scheduler="asha",
        sampler="cmaes", resources={"gpu": -1}, trials=0,
    )
    errs = errors_of(raw)
    expect = [
        "name: 'bad name'", "data.name: unknown dataset 'digitz'", "model.name: unknown model "
        "'vgg99'", "baseline.lr: -1", "baseline.epochz: unknown training setting",
        "methods: unknown method 'nosuch'", "space.slimming.prune_ratio: low 0.9 is above high "
        "0.2", "space.slimming.lambda.low: 0 with log: true", "space.slimming.fold_bias.choices:"
        " [] is not valid", "space.slimming.gamma: method 'slimming' has no parameter 'gamma'",
        "space.pruner.x: unknown stage 'pruner'", "objectives.accurcy: unknown result column",
        "scheduler: asha stops trials on one metric", "sampler: unknown sampler 'cmaes'",
        "resources.gpu: -1", "trials: 0 is not valid",
    ]
    for e in expect:
        assert any(x.startswith(e) for x in errs), f"missing {e!r} in {errs}"
    assert len(errs) == len(expect)


def test_folder_data_options_are_checked_by_name(tmp_path):
    (tmp_path / "train.txt").write_text("a/1.png\n")
    errs = errors_of(good(data={
        "name": "imagefolder", "root": str(tmp_path), "resize": "zoom", "bad_images": "ignore",
        "mean": [0.5, 0.5], "std": [0.2, 0.0, 0.2], "max_memory_bytes": -1,
        "split_files": {"train": "train.txt", "test": "test.txt"}}))
    assert errs == [
        "data.resize: 'zoom' is not one of crop, stretch, pad",
        "data.bad_images: 'ignore' is not one of refuse, skip",
        "data.mean: [0.5, 0.5] is not three numbers, one per RGB channel; leave it out to "
        "use the training split's own",
        "data.std: [0.2, 0.0, 0.2] is not three numbers, one per RGB channel (each > 0); "
        "leave it out to use the training split's own",
        "data.max_memory_bytes: -1 is not valid; allowed: an integer in [0, 4611686018427387904]",
        "data.split_files.test: 'test.txt' is not a file (relative paths are under data.root)",
    ]
    errs = errors_of(good(data={"name": "imagefolder", "root": str(tmp_path),
                                "split_files": {"val": "train.txt"}}))
    assert errs[0].startswith("data.split_files: {'val': 'train.txt'} is not a mapping of "
                              "train, test and optionally val")


def test_missing_data_root_is_reported(tmp_path):
    errs = errors_of(good(data={"name": "cifar10"}))
    assert errs == ["data.root: dataset 'cifar10' needs a root directory; set data.root"]
    errs = errors_of(good(model={"name": "vgg16_bn", "weights": str(tmp_path / "w.pth")}))
    assert errs[0].startswith("model.weights: ") and "is not a file" in errs[0]
    errs = errors_of(good(data={"name": "cub200", "root": str(tmp_path / "nowhere")}))
    assert len(errs) == 1 and errs[0].startswith("data.root: ") and "does not exist" in errs[0]
    spec = parse_spec(good(data={"name": "cifar10", "root": str(tmp_path)}))
    assert spec.data_kw["root"] == str(tmp_path.resolve())


def test_asha_needs_one_accuracy_objective():
    spec = parse_spec(good(objectives={"accuracy": "max"}, scheduler={"name": "asha",
                                                                       "grace_period": 2}))
    assert spec.scheduler == {"name": "asha", "grace_period": 2}
    errs = errors_of(good(objectives={"macs": "min"}, scheduler="asha"))
    assert len(errs) == 1 and "does not track 'macs'" in errs[0]


def test_named_without_range_takes_the_declared_search_range():
    spec = parse_spec(good(space={"slimming.lr": None, "slimming.sparsity_epochs": "search",
                                  "slimming.fold_bias": {}}))
    from prune_core.methods import get_method

    m = get_method("slimming")
    lr = spec.space["slimming.lr"]
    assert (lr.low, lr.high, lr.log) == (m.param("lr").search["low"],
                                         m.param("lr").search["high"],
                                         bool(m.param("lr").search.get("log")))
    assert spec.space["slimming.sparsity_epochs"].kind == "int"
    assert spec.space["slimming.fold_bias"].choices == (True, False)


def test_fixed_values_and_choices_are_checked_against_the_domain():
    errs = errors_of(good(space={"slimming.prune_ratio": 1.0,
                                 "slimming.sparsity_epochs": {"choices": [2, 2.5]},
                                 "slimming.lambda": [0.1, 0.2]}))
    assert errs[0].startswith("space.slimming.prune_ratio: 1.0 is outside the domain")
    assert errs[1].startswith("space.slimming.sparsity_epochs.choices[1]: 2.5 is outside")
    assert errs[2].startswith("space.slimming.lambda: [0.1, 0.2]: a fixed value must be one")


def test_a_choice_between_chains_and_its_stages():
    spec = parse_spec(good(methods={"choice": ["none", "slimming"]},
                           space={"slimming.prune_ratio": {"low": 0.2, "high": 0.9},
                                  "none.finetune_epochs": 2}))
    assert spec.chain_names == ["none", "slimming"] and spec.methods_label == ["none",
                                                                              "slimming"]
    errs = errors_of(good(methods={"choice": ["none", "none"]}, space={}))
    assert errs == ["methods.choice: chain(s) none listed twice"]
    errs = errors_of(good(space={"pipeline": {"choices": ["a"]}}))
    assert errs[0].startswith("space.pipeline:")


def test_unknown_top_level_field_and_bad_yaml(tmp_path):
    assert errors_of(good(trails=3))[0].startswith("trails: unknown field")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "missing.yaml")


def test_overrides_are_yaml_typed():
    assert parse_overrides(["slimming.lambda=1e-3", "slimming.sparsity_epochs=4",
                            "slimming.fold_bias=false", "pipeline=none",
                            "magnitude.scope=global"]) == {
        "slimming.lambda": 1e-3, "slimming.sparsity_epochs": 4, "slimming.fold_bias": False,
        "pipeline": "none", "magnitude.scope": "global"}
    with pytest.raises(SpecError) as e:
        parse_overrides(["noequals", "lambda=1"])
    assert len(e.value.errors) == 2


def test_with_overrides_checks_again(tmp_path):
    spec = parse_spec(good())
    again = spec.with_overrides(trials=9, storage=str(tmp_path), name="other")
    assert (again.trials, again.name, again.study_dir) == (9, "other",
                                                           tmp_path.resolve() / "other")
    with pytest.raises(SpecError, match="trials"):
        spec.with_overrides(trials=0)
    # spec.yaml is written with absolute paths so a study resumes from any directory.
    assert yaml.safe_load(again.to_yaml())["storage"] == str(tmp_path.resolve())


# Full-size VGG-16 specs: their rehearsal (studies._check_model.check_rehearsal) takes
# minutes on two cores, so they are checked field by field only; the rehearsal itself is
# tested in tests/test_rehearsal.py and on every other shipped spec here.
NOT_REHEARSED = {"vgg16-cub200", "course-lab-cifar10", "branch-cifar10"}


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_every_shipped_spec_validates(path, tmp_path):
    raw = yaml.safe_load(path.read_text())
    data = raw.get("data")
    if isinstance(data, dict) and "root" in data:
        # GPU specs carry a placeholder root for the user's data; any existing folder will do.
        raw["data"] = {**data, "root": str(tmp_path)}
    model = raw.get("model")
    if isinstance(model, dict) and "weights" in model:
        (tmp_path / "weights.pth").write_bytes(b"")  # likewise a placeholder weights file
        raw["model"] = {**model, "weights": str(tmp_path / "weights.pth")}
    spec = parse_spec(raw, source=str(path), rehearse=path.stem not in NOT_REHEARSED)
    assert spec.name == path.stem
    assert spec.trials >= 1 and spec.objectives


@pytest.mark.parametrize("latency,message", [
    ({"runtime": "tensorrt"}, "latency.runtime: 'tensorrt' is not allowed; allowed: torch, "
                              "onnxruntime"),
    ({"runtime": "onnxruntime", "compiled": True}, "latency.compiled: true with runtime "
                                                   "onnxruntime"),
])
def test_latency_runtime_is_checked(latency, message):
    from studies.spec import SpecError, parse_spec

    with pytest.raises(SpecError) as e:
        parse_spec({"name": "x", "methods": "none", "objectives": {"accuracy": "max"},
                    "latency": latency})
    assert message in str(e.value)
    ok = parse_spec({"name": "x", "methods": "none", "objectives": {"accuracy": "max"},
                     "latency": {"runtime": "onnxruntime", "batch": [1, 8]}})
    assert ok.latency == {"runtime": "onnxruntime", "batch": [1, 8]}


def test_the_readme_shows_the_quickstart_spec_as_it_is():
    import re
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parent.parent
    block = re.search(r"```yaml\n(name: quickstart\n.*?)```", (root / "README.md").read_text(),
                      re.S)
    assert block, "README.md shows no quickstart spec"
    assert yaml.safe_load(block.group(1)) == yaml.safe_load(
        (root / "studies" / "specs" / "quickstart.yaml").read_text())


@pytest.mark.parametrize("text", ["1e400", str(10**400), ".nan", "-.inf"])
def test_overrides_refuse_numbers_no_float_holds(text):
    with pytest.raises(SpecError) as e:
        parse_overrides([f"slimming.sparsity_epochs={text}"])
    (line,) = e.value.errors
    assert line.startswith("--set ") and "slimming.sparsity_epochs" in line
    assert "allowed: a finite number" in line and "0" * 100 not in line


def test_a_number_no_float_holds_is_refused_in_every_kind_of_field(tmp_path):
    huge = 10**400
    errors = errors_of(good(
        trials=huge, seed=huge, resources={"cpu": huge, "time_limit_s": "1e400"},
        baseline={"epochs": huge, "milestones": [0.5, huge]},
        constraints={"accuracy_drop": {"max": huge}},
        space={"slimming.prune_ratio": {"low": 0.2, "high": huge},
               "slimming.finetune_epochs": huge},
    ))
    fields = {line.split(":")[0] for line in errors}
    assert {"trials", "seed", "resources.cpu", "resources.time_limit_s", "baseline.epochs",
            "baseline.milestones", "constraints.accuracy_drop.max",
            "space.slimming.prune_ratio.high", "space.slimming.finetune_epochs"} <= fields
    assert all("0" * 100 not in line for line in errors)
    assert any("an integer of 401 digits" in line and "too large for a float" in line
               for line in errors)


@pytest.mark.parametrize("path, message", [
    ("~nosuchuser/data", "no user 'nosuchuser'"),
    ("data\x00x", "control character"),
    ("/tmp/" + "d/" * 2500, "too long"),
    ("/tmp/" + "n" * 300, "255 bytes"),
])
def test_a_path_the_system_cannot_take_is_refused_in_every_path_field(path, message):
    errors = errors_of(good(
        data={"name": "cifar10", "root": path}, storage=path, optuna_storage=path,
        warm_start=path, loggers={"mlflow": {"tracking_uri": path}},
    )) + errors_of(good(model={"name": "resnet18", "weights": path}))
    for field in ("data.root", "storage", "optuna_storage", "warm_start",
                  "loggers.mlflow.tracking_uri", "model.weights"):
        assert any(line.startswith(f"{field}:") for line in errors), (field, errors)
    assert any(message in line for line in errors), errors


def test_warm_start_refuses_the_other_studys_unexpandable_storage(tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    (old / "study.json").write_text("{}")
    (old / "spec.yaml").write_text("optuna_storage: ~nosuchuser/optuna.db\n")
    errors = errors_of(good(warm_start=str(old)))
    assert any(line.startswith("warm_start:") and "spec.yaml's optuna_storage" in line
               and "nosuchuser" in line for line in errors), errors


def test_a_data_root_is_expanded_and_made_absolute(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "cifar").mkdir()
    spec = parse_spec(good(data={"name": "cifar10", "root": "~/cifar"}), rehearse=False)
    assert spec.data_kw["root"] == str((tmp_path / "cifar").resolve())


def test_schedulers_refuse_rungs_ray_or_mo_asha_cannot_build():
    errors = errors_of(good(objectives={"accuracy": "max"},
                            scheduler={"name": "asha", "reduction_factor": 1}))
    assert any(line.startswith("scheduler.reduction_factor:") for line in errors)
    errors = errors_of(good(scheduler={"name": "mo_asha", "reduction_factor": 1 + 1e-12,
                                       "max_t": 1000}))
    assert any("rungs" in line for line in errors), errors
