"""Per-layer allocation: global, uniform, per-stage and per-group ratios, generated from the
model at validate and applied by slimming, structured magnitude and TransTailor."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from prune_core.groups import channel_groups
from prune_core.measure import channel_counts
from prune_core.methods import Context, ParamError, get_method
from prune_core.methods._allocation import generated_params, select, stage_of, units
from prune_core.models import build
from prune_core.train import TrainConfig
from studies._check_model import rehearsal_points
from studies.cli import EXIT_OK, main
from studies.samplers import MAX_SEARCHED, auto_choice
from studies.spec import SpecError, parse_spec
from tests.user_models import dense_gate_net

SHAPE = (3, 32, 32)


def spec(**kw) -> dict:
    raw = {"name": "alloc", "model": {"name": "resnet20"}, "methods": "magnitude",
           "space": {"magnitude.mode": "structured", "magnitude.allocation": "per_stage",
                     "magnitude.ratio": {"low": 0.1, "high": 0.6},
                     "magnitude.finetune_epochs": 0},
           "objectives": {"accuracy": "max", "macs": "min"}, "trials": 4}
    raw.update(kw)
    return raw


def errors_of(raw: dict) -> list[str]:
    with pytest.raises(SpecError) as e:
        parse_spec(raw, rehearse=False)
    return e.value.errors


@pytest.mark.parametrize("model,method,how,expected", [
    (lambda: build("resnet20", num_classes=10), "magnitude", "per_stage",
     ["conv1", "layer2", "layer3"]),
    (lambda: build("vgg11", num_classes=10, width=0.25), "slimming", "per_stage",
     ["features.conv0", "features.conv1", "features.conv2", "features.conv4",
      "features.conv6"]),
    (lambda: dense_gate_net(width=8), "transtailor", "per_stage", None),
])
def test_each_stage_is_a_run_of_groups_at_one_resolution(model, method, how, expected):
    net = model()
    m = get_method(method)
    groups = m.allocation.groups(net, SHAPE)
    covered = units(net, groups, SHAPE, how)
    stage = stage_of(net, groups, SHAPE)
    # every group in exactly one stage, the stages in forward order, each at one size
    assert sorted(r for roots in covered.values() for r in roots) == sorted(g.root for g in groups)
    numbers = [stage[roots[0]][0] for roots in covered.values()]
    assert numbers == sorted(numbers) == list(range(len(covered)))
    for roots in covered.values():
        assert len({stage[r] for r in roots}) == 1
    if expected is not None:
        assert list(covered) == expected
    params = generated_params(net, SHAPE, m, how)
    assert [p.name for p in params] == [f"ratio@{k}" for k in covered]
    base = m.param(m.allocation.ratio)
    assert all(p.search == base.search and p.kind == "float" for p in params)


def test_per_group_names_every_group_by_its_root_conv():
    net = dense_gate_net(width=8)
    m = get_method("magnitude")
    names = [p.name for p in generated_params(net, SHAPE, m, "per_group")]
    groups = channel_groups(net, SHAPE, min_size=2)
    assert names == [f"ratio@{g.root}" for g in groups]
    # the dense block's concatenation, the depthwise conv and the gate's product couple the
    # stem's and the dense conv's channels into one group: one ratio for all of them
    coupled = [g for g in groups if {"stem.0", "dense.0"} <= set(g.convs)]
    assert len(coupled) == 1 and {"depthwise.0", "gate.excite"} <= set(coupled[0].convs)
    assert not any(n.removeprefix("ratio@") in ("stem.0", "dense.0") for n in names)
    assert generated_params(net, SHAPE, m, "uniform") == []


def test_select_spreads_the_ratio_as_each_allocation_says():
    scores = {"a": torch.tensor([0.1, 0.2, 0.3, 0.4]), "b": torch.tensor([5.0, 6.0, 7.0, 8.0])}
    # global: the lowest scores of all groups (one kept per group)
    assert select(scores, "global", 0.5) == {"a": [0, 1, 2], "b": [0]}
    # uniform: half of each group
    assert select(scores, "uniform", 0.5) == {"a": [0, 1], "b": [0, 1]}
    # per-group shares; a group missing from them takes the ratio
    assert select(scores, "per_group", 0.5, {"a": 0.0, "b": 0.75}) == {"a": [], "b": [0, 1, 2]}
    assert select(scores, "per_stage", 0.25, {"a": 1.0}) == {"a": [0, 1, 2], "b": [0]}
    # at least one channel where asked (TransTailor's rounds always remove something)
    assert select(scores, "uniform", 0.0, min_count=1) == {"a": [0], "b": []}


def _magnitude(data, net, params):
    m = get_method("magnitude")
    ctx = Context(data=data, train=TrainConfig(epochs=1))
    return m(net, m.resolve({"mode": "structured", "finetune_epochs": 0, **params}), ctx)


def test_a_stage_ratio_prunes_that_stage_alone_and_coupled_channels_stay_coupled(digits):
    before = channel_counts(build("resnet20", num_classes=10))
    net = _magnitude(digits, build("resnet20", num_classes=10),
                     {"allocation": "per_stage", "ratio@conv1": 0.0, "ratio@layer2": 0.0,
                      "ratio@layer3": 0.5})
    after = channel_counts(net)
    changed = {k for k in before if before[k] != after[k]}
    assert changed and all(k.startswith("layer3") for k in changed), changed
    # layer3's residual stream is one group: every conv writing it keeps the same count
    stream = {after[k] for k in after if k.startswith("layer3") and k.endswith("conv2")}
    assert len(stream) == 1 and stream.pop() == before["layer3.0.conv2"] // 2
    assert after["layer3.0.conv1"] == before["layer3.0.conv1"] // 2
    out = net(torch.randn(2, *SHAPE))
    assert out.shape == (2, 10)


def test_per_group_ratio_reaches_exactly_its_group(digits):
    before = channel_counts(build("resnet20", num_classes=10))
    zeros = {p.name: 0.0 for p in generated_params(build("resnet20", num_classes=10), SHAPE,
                                                   get_method("magnitude"), "per_group")}
    net = _magnitude(digits, build("resnet20", num_classes=10),
                     {"allocation": "per_group", **zeros, "ratio@layer2.1.conv1": 0.75})
    after = channel_counts(net)
    assert {k for k in before if before[k] != after[k]} == {"layer2.1.conv1"}
    assert after["layer2.1.conv1"] == before["layer2.1.conv1"] // 4


def test_global_and_uniform_prune_differently_at_one_ratio(digits, base_vgg):
    def counts(how):
        net = _magnitude(digits, base_vgg.build(), {"allocation": how, "ratio": 0.5})
        return channel_counts(net)
    uniform, global_ = counts("uniform"), counts("global")
    full = channel_counts(base_vgg.build())
    convs = [k for k in full if "conv" in k and "features" in k]
    assert all(uniform[k] == full[k] - round(0.5 * full[k]) for k in convs)
    assert any(global_[k] != uniform[k] for k in convs)
    assert sum(global_[k] for k in convs) == pytest.approx(sum(uniform[k] for k in convs), abs=2)


def test_slimming_and_transtailor_take_their_stage_ratios(digits, base_vgg):
    full = channel_counts(base_vgg.build())
    ctx = Context(data=digits, train=TrainConfig(epochs=1, lr=0.01), stage="slimming")
    m = get_method("slimming")
    net = m(base_vgg.build(), m.resolve({
        "sparsity_epochs": 0, "finetune_epochs": 0, "allocation": "per_stage",
        "ratio@features.conv0": 0.0, "ratio@features.conv1": 0.0, "ratio@features.conv2": 0.0,
        "ratio@features.conv4": 0.0, "ratio@features.conv6": 0.5}), ctx)
    after = channel_counts(net)
    assert {k for k in full if full[k] != after[k] and "conv" in k} == \
        {"features.conv6", "features.conv7"}
    assert after["features.conv6"] == full["features.conv6"] // 2

    t = get_method("transtailor")
    ctx = Context(data=digits, train=TrainConfig(epochs=1, lr=0.01), stage="transtailor")
    net = t(base_vgg.build(), t.resolve({
        "allocation": "per_group", "ratio@features.conv0": 0.5, "max_rounds": 1, "tau": 1.0,
        "alpha_epochs": 1, "finetune_epochs": 1, "step_ratio": 0.1}), ctx)
    after = channel_counts(net)
    assert after["features.conv0"] == full["features.conv0"] // 2
    assert all(after[k] == full[k] - round(0.1 * full[k]) for k in full
               if "conv" in k and k != "features.conv0" and k.startswith("features"))


def test_a_ratio_parameter_needs_a_generated_allocation(digits):
    m = get_method("magnitude")
    with pytest.raises(ParamError, match="allocation per_stage or per_group; magnitude.alloc"):
        m.resolve({"ratio@layer2": 0.5})
    with pytest.raises(ParamError, match=r"ratio@layer2 = 1.5 is invalid; allowed: a number "
                                         r"in \[0, 1\)"):
        m.resolve({"allocation": "per_stage", "ratio@layer2": 1.5})
    net = build("resnet20", num_classes=10)
    ctx = Context(data=digits, train=TrainConfig(epochs=1))
    with pytest.raises(ParamError, match="no stage named 'layer9'; its names: conv1, layer2"):
        m(net, m.resolve({"mode": "structured", "allocation": "per_stage",
                          "ratio@layer9": 0.5}), ctx)


def test_validate_generates_the_ratios_into_the_space():
    s = parse_spec(spec(space={**spec()["space"],
                               "magnitude.ratio@layer3": {"low": 0.0, "high": 0.9}}),
                   rehearse=False)
    gen = {k: p for k, p in s.space.items() if "ratio@" in k}
    assert list(gen) == ["magnitude.ratio@conv1", "magnitude.ratio@layer2",
                         "magnitude.ratio@layer3"]
    # unnamed ones take the method ratio's range; a named one keeps its own
    assert (gen["magnitude.ratio@conv1"].low, gen["magnitude.ratio@conv1"].high) == (0.1, 0.6)
    assert (gen["magnitude.ratio@layer3"].low, gen["magnitude.ratio@layer3"].high) == (0, 0.9)
    assert "magnitude.ratio" not in s.space  # no longer acts
    # without a range for the method's ratio, its declared search range
    space = {k: v for k, v in spec()["space"].items() if k != "magnitude.ratio"}
    s = parse_spec(spec(space=space), rehearse=False)
    declared = get_method("magnitude").param("ratio").search
    assert (s.space["magnitude.ratio@layer2"].low, s.space["magnitude.ratio@layer2"].high) == \
        (declared["low"], declared["high"])


@pytest.mark.parametrize("space,field,message", [
    ({"magnitude.allocation": "per_stage", "magnitude.ratio@layer9": 0.5},
     "space.magnitude.ratio@layer9", "has no stage named 'layer9'; its names under per_stage: "
                                     "conv1, layer2, layer3"),
    ({"magnitude.allocation": "uniform", "magnitude.ratio@layer2": 0.5},
     "space.magnitude.ratio@layer2", "apply with allocation per_stage or per_group; "
                                     "magnitude.allocation is 'uniform'"),
    ({"magnitude.allocation": {"choices": ["uniform", "per_stage"]}},
     "space.magnitude.allocation", "includes 'per_stage', whose ratio@ parameters exist only"),
])
def test_validate_refuses_a_ratio_it_cannot_place(space, field, message):
    errors = errors_of(spec(space={"magnitude.mode": "structured", **space}))
    assert any(e.startswith(field) and message in e for e in errors), errors


def test_a_space_too_large_for_its_sampler_is_refused_with_the_count_and_limit():
    # ResNet-56 has 30 dependency groups: with three more searched parameters, 33 > GP's 32
    raw = spec(model={"name": "resnet56"}, sampler="gp",
               space={"magnitude.mode": "structured", "magnitude.allocation": "per_group",
                      "magnitude.ratio": {"low": 0.0, "high": 0.8},
                      "magnitude.lr": {"low": 1e-3, "high": 0.1},
                      "magnitude.finetune_epochs": {"low": 0, "high": 2},
                      "magnitude.n": {"choices": [1, 2]}})
    errors = errors_of(raw)
    limit = MAX_SEARCHED["gp"]
    assert any(e.startswith("space:") and "33 searched parameters (30 generated" in e
               and f"sampler 'gp' takes at most {limit}" in e for e in errors), errors
    # auto takes TPE past GP's limit, and accepts the space
    raw["sampler"] = "auto"
    raw["space"].pop("magnitude.n")
    assert auto_choice(parse_spec(raw, rehearse=False))[0] == "gp"  # 32: GP's limit
    raw["methods"] = "magnitude+quantize"
    raw["space"]["quantize.calibration_batches"] = {"low": 1, "high": 4}
    assert auto_choice(parse_spec(raw, rehearse=False)) == \
        ("tpe", "33 searched parameters, more than GP's 32")


def test_the_rehearsal_runs_the_generated_corners():
    raw = spec(space={**spec()["space"], "magnitude.ratio": {"low": 0.0, "high": 0.95}})
    s = parse_spec(raw)  # rehearses the method at the points below
    points = rehearsal_points(s.space, ["magnitude"])
    for name in ("magnitude.ratio@conv1", "magnitude.ratio@layer2", "magnitude.ratio@layer3"):
        assert sorted(p[name] for p in points) == [0.0, 0.95]


def test_methods_and_validate_list_the_generated_parameters_of_a_spec(tmp_path, capsys):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec()))
    assert main(["methods", str(path), "--json"]) == EXIT_OK
    rows = json.loads(capsys.readouterr().out)
    assert [r["stage"] for r in rows] == ["magnitude"]
    gen = rows[0]["generated"]
    assert gen["per_stage"]["in_effect"] and not gen["per_group"]["in_effect"]
    assert [p["name"] for p in gen["per_stage"]["params"]] == \
        ["ratio@conv1", "ratio@layer2", "ratio@layer3"]
    assert "(4 group(s): conv1, layer1.0.conv1" in gen["per_stage"]["params"][0]["doc"]
    assert len(gen["per_group"]["params"]) == 12
    assert main(["validate", str(path), "--json"]) == EXIT_OK
    space = json.loads(capsys.readouterr().out)["space"]
    assert space["magnitude.ratio@layer3"] == {"type": "float", "low": 0.1, "high": 0.6,
                                               "log": False}


def test_a_one_channel_group_gets_no_ratio():
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 1, 3, padding=1), torch.nn.BatchNorm2d(1), torch.nn.ReLU(),
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10))
    m = get_method("slimming")
    assert [g.size for g in m.allocation.groups(net, SHAPE)] == [1, 8]
    assert [p.name for p in generated_params(net, SHAPE, m, "per_group")] == ["ratio@3"]
    assert [p.name for p in generated_params(net, SHAPE, m, "per_stage")] == ["ratio@3"]
