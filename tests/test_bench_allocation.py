"""bench_allocation --tiny: every arm kind runs through the study layer, and the table's
numbers are the studies' own."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench_allocation as B
from benchmarks.bench_search import hypervolume_curve


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, test_cache):
    out = tmp_path_factory.mktemp("allocation")
    doc = B.main(["--tiny", "--out", str(out), "--storage", str(out / "runs"),
                  "--cache", str(test_cache)])
    yield doc, out
    import ray

    ray.shutdown()  # later tests must not inherit the benchmark's local Ray


def test_the_arms_run_and_their_hypervolume_is_the_studys(tiny):
    doc, out = tiny
    assert [r["arm"] for r in doc["runs"]] == ["global-tpe", "stage-random", "stage-auto-warm"]
    for r in doc["runs"]:
        study = out / "runs" / f"{r['arm']}-{r['seed']}"
        assert r["curve"] == hypervolume_curve(study)
        assert r["final_hypervolume"] == r["curve"][-1] and len(r["trials"]) == 3
        spec = json.loads((study / "study.json").read_text())
        ratios = [k for k in spec["space"] if "ratio@" in k]
        # the global arm searches one ratio; the per-stage arms one per ResNet stage
        assert len(ratios) == (0 if r["arm"] == "global-tpe" else 3)
    assert doc["arms"]["stage-random"]["ratio_to_random"] == 1.0
    assert json.loads((out / "allocation-tiny.json").read_text())["arms"] == doc["arms"]


def test_the_warm_arm_starts_from_the_scan(tiny):
    doc, out = tiny
    study = out / "runs" / "stage-auto-warm-0"
    assert (study / "sensitivity-magnitude.json").is_file()
    import optuna

    trials = optuna.load_study(study_name="stage-auto-warm-0",
                               storage=f"sqlite:///{study / 'optuna.db'}").trials
    assert "fixed_params" in trials[0].system_attrs  # the scan's allocation ran first


def test_uniform_and_greedy_reach_their_mac_level(tiny):
    doc, _ = tiny
    level = float(next(iter(doc["levels"])))
    (uniform,) = doc["references"]["uniform"]
    # a uniform ratio of 1 - sqrt(level) leaves about that share of the MACs
    assert uniform["macs"] == pytest.approx(level * doc["base_macs"], rel=0.15)
    assert doc["references"]["greedy"], "the scan's greedy allocation ran as a trial"
    for row in doc["levels"].values():
        assert set(row) == {"global-tpe", "stage-random", "stage-auto-warm", "uniform",
                            "greedy"}
