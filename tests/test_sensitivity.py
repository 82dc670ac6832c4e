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
    greedy_allocation,
    group_info,
    reference,
    scan_group,
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
