"""The benchmarks that run studies (samplers, methods, single trials) at tiny settings."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench_search

# The benchmarks share the local Ray the first of them starts; it ends with the module.
pytestmark = pytest.mark.usefixtures("ray_of_the_module")


@pytest.mark.slow
def test_bench_search_tiny_compares_samplers(tmp_path):
    doc = bench_search.main(["--tiny", "--out", str(tmp_path), "--storage",
                             str(tmp_path / "runs")])
    table = doc["samplers"]
    assert set(table) == {"random", "nsga2"}
    assert table["random"]["ratio_to_random"] == pytest.approx(1.0)
    for run in doc["runs"]:
        assert len(run["curve"]) == 2
        # hypervolume after each trial never falls
        assert run["curve"][1] >= run["curve"][0] >= 0
        assert run["final_hypervolume"] == run["curve"][-1]
        assert 0 <= run["collapsed"] <= 2
    assert (tmp_path / "search-tiny.png").stat().st_size > 1000
    assert "ratio to random" in (tmp_path / "search-tiny.md").read_text()
    # the default study's fine-tuning cap reached the trials
    assert doc["space_overrides"] == {"magnitude.finetune_epochs": {"low": 0, "high": 2}}
    rows = [json.loads(f.read_text())["row"]
            for f in (tmp_path / "runs").glob("*/trials/*.json")]
    assert len(rows) == 4  # 2 samplers x 2 trials
    assert all(0 <= r["magnitude.finetune_epochs"] <= 2 for r in rows)


def test_bench_search_space_overrides_parse_yaml_values():
    assert bench_search.space_overrides(
        ["magnitude.lr=0.01", "magnitude.ratio={low: 0.5, high: 0.9}", "magnitude.mode=structured"]
    ) == {"magnitude.lr": 0.01, "magnitude.ratio": {"low": 0.5, "high": 0.9},
          "magnitude.mode": "structured"}
    with pytest.raises(SystemExit, match="expected NAME=VALUE"):
        bench_search.space_overrides(["magnitude.lr"])


def test_bench_search_rejects_a_bad_override_before_running(tmp_path):
    from studies.spec import SpecError

    with pytest.raises(SpecError, match="magnitude.ratio"):
        bench_search.main(["--space", "magnitude.ratio={low: 0.5, high: 2}", "--out",
                           str(tmp_path), "--storage", str(tmp_path / "runs")])
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_bench_methods_tiny_tabulates_knees(tmp_path):
    from benchmarks import bench_methods

    doc = bench_methods.main(["--tiny", "--out", str(tmp_path), "--storage",
                              str(tmp_path / "runs")])
    rows = doc["methods"]
    assert set(rows) == {"slimming + quantize", "magnitude (unstructured)"}
    base = doc["base"]
    # int8 after slimming: fewer bytes than the fp32 base by more than the 4x of int8 alone
    assert rows["slimming + quantize"]["size_bytes"] < base["size_bytes"] / 4
    # unstructured pruning keeps the dense shapes, zeroes weights
    mag = rows["magnitude (unstructured)"]
    assert mag["params"] == base["params"] and mag["nonzero_params"] < base["nonzero_params"]
    # the second table: the cheapest trial within one point of the base, or none
    assert set(doc["closest"]) == set(rows)
    for label, close in doc["closest"].items():
        if close is not None:
            assert close["accuracy"] >= base["accuracy"] - doc["within"]
            assert close["nonzero_macs"] <= rows[label]["nonzero_macs"] or \
                rows[label]["accuracy"] < close["accuracy"]
    md = (tmp_path / "methods-tiny.md").read_text()
    assert md.index("| base model |") < md.index("| slimming + quantize |")
    assert "within 1% of the base accuracy" in md
    assert (tmp_path / "methods-tiny-report" / "report.html").is_file()


@pytest.mark.slow
def test_bench_trials_tiny_runs_each_setting_once(tmp_path):
    from benchmarks import bench_trials

    doc = bench_trials.main(["--tiny", "--group", "summary", "--out", str(tmp_path)])
    assert doc["group"] == "summary"  # the document written last: the only group
    rows = doc["rows"]
    assert [r["label"] for r in rows] == [label for label, _ in
                                          bench_trials.GROUPS["summary"][:3]]
    for r in rows:
        assert r["row"]["status"] == "ok"
        # a row's own settings win over the tiny epochs
        assert r["params"]["slimming.finetune_epochs"] == (
            0 if "no fine-tuning" in r["label"] else 1)
        assert r["row"]["slimming.prune_ratio"] == r["params"]["slimming.prune_ratio"]
    # removing 70 % of the channels lowers MACs below removing 30 %
    by_label = {r["label"]: r["row"] for r in rows}
    assert by_label["slimming, prune 0.7"]["macs"] < \
        by_label["slimming, prune 0.3, no fine-tuning"]["macs"] < doc["base"]["macs"]
    md = (tmp_path / "trials-summary-tiny.md").read_text()
    assert md.count("\n| slimming") == 3 and "| base model |" in md
    assert "--set slimming.prune_ratio=0.7" in md


def test_bench_trials_flags_are_what_prune_study_trial_parses():
    from benchmarks import bench_trials
    from studies.spec import parse_overrides

    for _, params in (row for rows in bench_trials.GROUPS.values() for row in rows):
        flags = bench_trials._flags(params).split()
        assert flags[::2] == ["--set"] * len(params)
        assert parse_overrides(flags[1::2]) == params
