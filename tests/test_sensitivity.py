"""The sensitivity scan: each channel group of a trained model, its channels removed share
by share without fine-tuning, on Ray, cached, drawn as a heat map."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from prune_core import models
from prune_core.groups import channel_groups, select_per_group
from prune_core.sensitivity import (
    SensitivityError,
    allocation_levels,
    greedy_allocation,
    group_info,
    reference,
    scan_group,
    smallest_reach,
)
from prune_core.surgery import remove_channels
from studies import cli


def test_groups_come_with_their_stages_and_coupling(digits):
    model = models.build("resnet20", num_classes=10, width=0.25)
    info = group_info(model, digits.input_shape, "magnitude")
    stages = list(dict.fromkeys(g.stage for g in info))
    assert stages == ["stage1 (32x32)", "stage2 (16x16)", "stage3 (8x8)"]
    streams = [g for g in info if g.coupled]
    assert len(streams) == 3, "one residual stream per stage"
    # the stream of stage 1 holds the stem conv and the second conv of every block
    first = next(g for g in streams if g.stage.startswith("stage1"))
    assert "conv1" in first.convs and "layer1.2.conv2" in first.convs
    with pytest.raises(SensitivityError, match="no channel group that slimming"):
        group_info(models.build("c3", num_classes=10, k=8), digits.input_shape, "slimming")


def test_a_group_loses_accuracy_as_its_channels_go(base_vgg, digits):
    model = base_vgg.build("cpu")
    ref = reference(model, digits)
    assert ref["val_accuracy"] > 0.9
    info = group_info(model, digits.input_shape, "slimming")
    first = info[0]  # the stem: the group a VGG can least afford to thin
    rows = scan_group(model, digits, "slimming", first.root, (0.25, 0.5, 0.9))
    assert [r["removed"] for r in rows] == [round(first.size * r) for r in (0.25, 0.5, 0.9)]
    macs = [r["macs"] for r in rows]
    assert ref["macs"] > macs[0] > macs[1] > macs[2]
    acc = [r["val_accuracy"] for r in rows]
    assert acc[2] < acc[0] <= ref["val_accuracy"] + 1e-9 and acc[2] < 0.5
    # the model handed in is left as it was
    assert reference(model, digits) == ref
    with pytest.raises(SensitivityError, match="not a channel group"):
        scan_group(model, digits, "slimming", "classifier", (0.5,))


def test_coupled_channels_go_together(digits):
    """What the scan removes from a residual stream is removed from every conv of it."""
    model = models.build("resnet20", num_classes=10, width=0.25).eval()
    shape = digits.input_shape
    stream = next(g for g in group_info(model, shape, "magnitude") if g.coupled)
    rows = scan_group(model, digits, "magnitude", stream.root, (0.5,))
    groups = {g.root: g for g in channel_groups(model, shape, min_size=2)}
    from prune_core.groups import group_norms

    plan = select_per_group(group_norms(model, [groups[stream.root]], p=1), 0.5)
    remove_channels(model, plan, shape)
    for conv in stream.convs:
        assert model.get_submodule(conv).out_channels == stream.size - rows[0]["removed"]


@pytest.mark.usefixtures("ray_of_the_module")
def test_the_command_scans_on_ray_caches_and_draws(tmp_path, capsys):
    spec = {"name": "scan", "data": {"name": "digits", "image_size": 16},
            "model": {"name": "vgg11", "width": 0.25}, "baseline": {"epochs": 3, "lr": 0.05},
            "methods": "slimming", "trials": 1, "storage": str(tmp_path / "runs"),
            "objectives": {"accuracy": "max", "macs": "min"}}
    path = tmp_path / "scan.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert cli.main(["sensitivity", str(path), "--ratios", "0.5,0.2", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["method"] == "slimming" and doc["ratios"] == [0.2, 0.5]
    assert not doc["cached"]
    assert len(doc["groups"]) == 8 and len(doc["rows"]) == 16  # VGG-11: 8 convs
    study = tmp_path / "runs" / "scan"
    on_disk = json.loads((study / "sensitivity-slimming.json").read_text())
    assert on_disk["rows"] == doc["rows"]
    assert (study / "sensitivity-slimming.png").read_bytes()[:4] == b"\x89PNG"
    cached = list((tmp_path / "runs" / "_cache" / "sensitivity").glob("*.json"))
    assert len(cached) == 1
    from studies.caches import items

    assert [r["path"] for r in items(tmp_path / "runs" / "_cache")
            if r["kind"] == "sensitivity"] == [str(cached[0])]
    # the same base, method and ratios: read back, not recomputed
    assert cli.main(["sensitivity", str(path), "--ratios", "0.2,0.5", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["cached"] and again["rows"] == doc["rows"]
    # other ratios are another scan
    assert cli.main(["sensitivity", str(path), "--ratios", "0.9", "-o",
                     str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "features.conv0" in out and "90%" in out
    assert (tmp_path / "out" / "sensitivity-slimming.png").is_file()
    # the greedy allocation for a MAC target, from the cached scan
    assert cli.main(["sensitivity", str(path), "--ratios", "0.2,0.5", "--target-macs",
                     "0.8,0.01", "--json"]) == 0
    picked = json.loads(capsys.readouterr().out)["allocations"]
    assert picked[0]["target"] == 0.8 and picked[0]["predicted_macs"] <= 0.8 * doc["base"][
        "macs"] and set(picked[0]["ratios"]) == {g["root"] for g in doc["groups"]}
    assert picked[1] == {"target": 0.01, "ratios": None}


@pytest.mark.parametrize("argv, message", [
    (["--ratios", "0.5,1.5"], "every share must lie between 0 and 1"),
    (["--ratios", "half"], "expected comma-separated shares"),
    (["--method", "quantize"], "the scan covers magnitude, slimming, transtailor"),
    (["--target-macs", "0.5,2"], "fractions of the base model's MACs between 0 and 1"),
])
def test_bad_arguments_are_refused_before_anything_runs(tmp_path, capsys, argv, message):
    path = tmp_path / "scan.yaml"
    path.write_text(yaml.safe_dump({
        "name": "scan", "model": {"name": "vgg11", "width": 0.25}, "methods": "slimming",
        "trials": 1, "storage": str(tmp_path / "runs"),
        "objectives": {"accuracy": "max", "macs": "min"}}))
    assert cli.main(["sensitivity", str(path), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_spec_without_a_scannable_method_names_the_choice(tmp_path, capsys):
    path = tmp_path / "q.yaml"
    path.write_text(yaml.safe_dump({
        "name": "q", "model": {"name": "vgg11", "width": 0.25}, "methods": "quantize",
        "trials": 1, "storage": str(tmp_path / "runs"),
        "objectives": {"accuracy": "max", "size_bytes": "min"}}))
    assert cli.main(["sensitivity", str(path)]) == 2
    err = capsys.readouterr().err
    assert "have no sensitivity scan" in err and "--method" in err


def test_scan_rows_are_plain_numbers(base_vgg, digits):
    rows = scan_group(base_vgg.build("cpu"), digits, "magnitude", "features.conv3", (0.5,))
    assert set(rows[0]) == {"group", "ratio", "removed", "val_accuracy", "macs"}
    assert isinstance(rows[0]["macs"], int) and torch.isfinite(
        torch.tensor(rows[0]["val_accuracy"]))


def _doc():
    """A scan of two groups: "wide" costs 60 of 100 M MACs and loses little; "narrow"
    costs 40 M and collapses early."""
    rows = []
    for r in (0.25, 0.5, 0.75):
        rows.append({"group": "wide", "ratio": r, "val_accuracy": 0.98 - 0.02 * r,
                     "macs": int(100e6 - 60e6 * r)})
        rows.append({"group": "narrow", "ratio": r, "val_accuracy": 0.98 - 0.8 * r,
                     "macs": int(100e6 - 40e6 * r)})
    return {"base": {"val_accuracy": 0.98, "macs": int(100e6)}, "rows": rows,
            "ratios": [0.25, 0.5, 0.75]}


def test_greedy_cuts_where_the_scan_says_it_is_cheap():
    doc = _doc()
    a = greedy_allocation(doc, 0.6)  # 40 M to save: the wide group's 0.75 gives 45 M
    assert a["ratios"] == {"wide": 0.75, "narrow": 0.0}
    assert a["predicted_macs"] == int(55e6) and a["epsilon"] == pytest.approx(0.015)
    b = greedy_allocation(doc, 0.45)  # 55 M: the narrow group must give 10 M, at 0.25
    assert b["ratios"] == {"wide": 0.75, "narrow": 0.25}
    assert b["predicted_macs"] <= 0.45 * 100e6
    assert b["epsilon"] == pytest.approx(0.2)  # its loss at 0.25, the least that reaches
    assert greedy_allocation(doc, 0.99)["ratios"]["narrow"] == 0.0
    assert greedy_allocation(doc, 0.2) is None  # 75 M + 30 M at most: 0.25x out of reach


def test_allocation_levels_are_evenly_spaced_and_cheaper_in_turn():
    doc = _doc()
    assert smallest_reach(doc) == pytest.approx(0.25)  # 45 M + 30 M saved at 0.75
    found = allocation_levels(doc, 2)  # targets 0.75 and 0.5 of the base MACs
    assert [a["target"] for a in found] == pytest.approx([0.75, 0.5])
    assert found[0]["ratios"] == {"wide": 0.5, "narrow": 0.0}
    assert found[1]["ratios"] == {"wide": 0.75, "narrow": 0.25}


def _warm_spec(tmp_path, **kw) -> dict:
    spec = {"name": "warm", "data": {"name": "digits", "image_size": 16},
            "model": {"name": "vgg11", "width": 0.25}, "baseline": {"epochs": 3, "lr": 0.05},
            "methods": "magnitude", "trials": 3, "storage": str(tmp_path / "runs"),
            "space": {"magnitude.mode": "structured", "magnitude.allocation": "per_stage",
                      "magnitude.ratio": {"low": 0.0, "high": 0.6},
                      "magnitude.finetune_epochs": 0},
            "warm_start": {"sensitivity": {"levels": 2}}, "sampler": "random",
            "objectives": {"accuracy": "max", "macs": "min"}}
    spec.update(kw)
    return spec


def test_allocation_points_map_group_shares_onto_the_stages(tmp_path):
    from studies.sensitivity import allocation_points
    from studies.spec import parse_spec

    spec = parse_spec(_warm_spec(tmp_path), rehearse=False)
    doc = {"base": {"val_accuracy": 0.9, "macs": 100}, "ratios": [0.5, 0.9],
           "groups": [{"root": "a", "size": 8}, {"root": "b", "size": 24},
                      {"root": "c", "size": 16}],
           "rows": [{"group": g, "ratio": r, "val_accuracy": 0.9 - loss * r, "macs": 100 - m * r}
                    for g, loss, m in (("a", 0.01, 10), ("b", 0.5, 40), ("c", 0.02, 40))
                    for r in (0.5, 0.9)]}
    covered = {"features.conv0": ["a", "b"], "features.conv1": ["c"]}
    points = allocation_points(spec, doc, covered, "magnitude", 2)
    # targets 0.73 and 0.46 of the base MACs (the scan reaches 0.19); a stage loses the
    # share of its channels its groups lose together: at 0.73, a 0.9 of its 8 channels
    # and b none of 24; at 0.46 also b 0.5, and c's 0.9 is clipped to the range's 0.6
    assert points == [
        {"magnitude.ratio@features.conv0": pytest.approx(0.9 * 8 / 32),
         "magnitude.ratio@features.conv1": 0.5},
        {"magnitude.ratio@features.conv0": pytest.approx((0.9 * 8 + 0.5 * 24) / 32),
         "magnitude.ratio@features.conv1": 0.6}]


def test_warm_start_sensitivity_needs_a_generated_allocation(tmp_path):
    from studies.spec import SpecError, parse_spec

    raw = _warm_spec(tmp_path)
    raw["space"]["magnitude.allocation"] = "uniform"
    with pytest.raises(SpecError, match="warm_start: sensitivity enqueues per-stage or "
                                        "per-group ratios"):
        parse_spec(raw, rehearse=False)
    raw = _warm_spec(tmp_path, warm_start={"sensitivity": {"levels": 0}})
    with pytest.raises(SpecError, match="warm_start.sensitivity.levels"):
        parse_spec(raw, rehearse=False)


@pytest.mark.usefixtures("ray_of_the_module")
def test_a_warm_started_study_runs_the_scans_allocations_first(tmp_path):
    import optuna

    path = tmp_path / "warm.yaml"
    path.write_text(yaml.safe_dump(_warm_spec(tmp_path)))
    assert cli.main(["run", str(path), "--quiet"]) == 0
    study_dir = tmp_path / "runs" / "warm"
    scan = list((tmp_path / "runs" / "_cache" / "sensitivity").glob("*.json"))
    assert len(scan) == 1  # scanned once, on Ray, and cached
    study = optuna.load_study(study_name="warm",
                              storage=f"sqlite:///{study_dir / 'optuna.db'}")
    trials = sorted(study.trials, key=lambda t: t.number)
    enqueued = [t for t in trials if "fixed_params" in t.system_attrs]
    assert len(enqueued) == 2 and [t.number for t in enqueued] == [0, 1]
    for t in enqueued:  # run as enqueued, and told
        assert t.params == pytest.approx(t.system_attrs["fixed_params"])
        assert t.state == optuna.trial.TrialState.COMPLETE
    # the second level is the cheaper one
    assert sum(enqueued[1].params.values()) > sum(enqueued[0].params.values())
    # the scan is kept with the study, and its heat map is in the report
    assert (study_dir / "sensitivity-magnitude.json").is_file()
    assert cli.main(["report", str(study_dir), "--json"]) == 0
    report = study_dir / "report"
    assert (report / "sensitivity-magnitude.png").read_bytes()[:4] == b"\x89PNG"
    assert "Sensitivity of vgg11 to magnitude" in (report / "report.md").read_text()
