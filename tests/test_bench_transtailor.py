"""The TransTailor benchmark runs end to end at tiny settings and writes JSON + Markdown."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench_transtailor


@pytest.mark.slow
def test_bench_transtailor_tiny_matches_macs_and_epochs(tmp_path):
    doc = bench_transtailor.main(["--tiny", "--out", str(tmp_path), "--cache", str(tmp_path)])
    saved = json.loads((tmp_path / "transtailor.json").read_text())
    md = (tmp_path / "transtailor.md").read_text()
    assert saved["summary"] == json.loads(json.dumps(doc["summary"]))
    assert "--tiny" in saved["command"] and "--tiny" in md
    assert {"git_commit", "dirty", "machine", "load_average"} <= set(saved["environment"])

    seeds, arms = saved["settings"]["seeds"], saved["settings"]["arms"]
    assert len(arms) >= 2 and set(saved["summary"]) == set(arms)
    runs = {(r["arm"], r["seed"], r["kind"]): r for r in saved["runs"]}
    assert set(runs) == {(a, s, k) for a in arms for s in seeds
                         for k in ("transtailor", "plain")}
    for arm in arms:
        # each arm really ran with its own parameters
        params = saved["method_params"][arm]
        assert {k: params[k] for k in bench_transtailor.ARMS[arm]} == bench_transtailor.ARMS[arm]
        for seed in seeds:
            tt, plain = runs[arm, seed, "transtailor"], runs[arm, seed, "plain"]
            _check_pair(tt, plain, saved, md)
        summary = saved["summary"][arm]
        diff = summary["difference_accuracy"]
        assert diff["per_seed"] == pytest.approx(
            [runs[arm, s, "transtailor"]["accuracy"] - runs[arm, s, "plain"]["accuracy"]
             for s in seeds])
        assert diff["transtailor_better"] + diff["transtailor_worse"] + diff["ties"] == len(seeds)
        assert f"| {arm} | " in md
    # alpha starts at 1 in "start" and at random in "random": the first round's alpha differs
    first = {a: runs[a, seeds[0], "transtailor"]["first_alpha"] for a in ("start", "random")}
    assert first["start"]["alpha_min"] > 0.5 > first["random"]["alpha_min"]
    assert "TransTailor - plain" in md and "Reproduce with" in md


def _check_pair(tt: dict, plain: dict, saved: dict, md: str) -> None:
    for r in (tt, plain):
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["balanced_accuracy"] <= 1.0
        assert 0.0 <= r["filters_removed"] < 1.0 and r["seconds"] > 0
        assert r["macs_vs_base"] == pytest.approx(r["macs"] / saved["base"]["macs"])
    # tau 1.0 accepts the tiny run's round: TransTailor really removed filters
    assert tt["rounds_accepted"] == len(tt["rounds"]) >= 1
    assert tt["filters_removed"] == pytest.approx(tt["filters_removed_reported"])
    assert tt["macs"] < saved["base"]["macs"]
    # the plain arm's MACs: within 2 % of TransTailor's, or what the bisection reached
    assert plain["macs_to_transtailor"] == pytest.approx(plain["macs"] / tt["macs"])
    assert plain["macs_matched"] == (abs(plain["macs"] / tt["macs"] - 1) <= 0.02)
    assert plain["macs_matched"], "a uniform L1 share should reach a 10 % TransTailor step"
    # epochs: the plain budget is what TransTailor trained, alpha and fine-tuning together
    phases = tt["epochs_per_phase"]
    assert tt["epochs"] == phases["alpha"] + phases["finetune"] >= 2
    assert plain["epoch_budget"] == tt["epochs"]
    assert plain["epochs_per_phase"]["alpha"] == 0
    assert 1 <= plain["epochs"] <= plain["epoch_budget"]
    if plain["epoch_budget"] <= saved["method_params"][tt["arm"]]["patience"] + 1:
        # early stopping cannot end a run this short: both arms trained the same epochs
        assert plain["epochs"] == tt["epochs"]
    assert f"| {tt['arm']} | {tt['seed']} | plain |" in md
    assert f"| {tt['arm']} | {tt['seed']} | transtailor |" in md


def test_bisection_reaches_the_closest_uniform_share(digits_split):
    from prune_core import models

    model = models.build("vgg11", num_classes=5, width=0.0625)
    base_macs = bench_transtailor._macs(model, digits_split)
    half = bench_transtailor.l1_pruned(model, 0.5, digits_split)
    target = bench_transtailor._macs(half, digits_split)
    match = bench_transtailor.match_ratio(model, target, digits_split)
    # a target that a uniform share produces is hit exactly
    assert match["macs"] == target and match["macs_to_target"] == 1.0
    assert match["probes"] < 15
    # a target below anything reachable reports the smallest MACs and its ratio
    floor = bench_transtailor.match_ratio(model, 1, digits_split)
    assert floor["macs"] < target < base_macs and floor["macs_to_target"] > 1
