"""bench_early_stop: its numbers are what the study directories it wrote say."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import yaml

from analysis import pareto, results
from benchmarks import bench_early_stop
from prune_core.data import load as load_data


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, local_ray) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("early-stop")
    doc = bench_early_stop.main(["--tiny", "--out", str(out), "--storage", str(out / "runs")])
    return doc, out


def runs(doc: dict):
    for arm, mine in doc["runs"].items():
        for run in mine:
            yield arm, run, Path(run["study"])


def epoch_rows(study_dir: Path) -> dict[str, dict[int, dict]]:
    """history.jsonl by trial and step; a step reported again (a resumed trial) once."""
    out: dict[str, dict[int, dict]] = {}
    for line in (study_dir / "history.jsonl").read_text().splitlines():
        row = json.loads(line)
        out.setdefault(row["trial_id"], {})[row["step"]] = row
    return out


def trial_files(study_dir: Path) -> dict[str, dict]:
    docs = (json.loads(f.read_text()) for f in (study_dir / "trials").glob("*.json"))
    return {d["trial_id"]: d for d in docs}


@pytest.mark.slow
def test_tiny_writes_both_arms_its_figure_and_the_load(tiny):
    doc, out = tiny
    assert json.loads((out / "early_stop-tiny.json").read_text()) == doc
    assert set(doc["runs"]) == set(bench_early_stop.ARMS)
    assert all(len(mine) == doc["seeds"] for mine in doc["runs"].values())
    assert (out / "early_stop-tiny.png").stat().st_size > 1000
    md = (out / "early_stop-tiny.md").read_text()
    for load in (doc["load_average_before"], doc["load_average_after"]):
        assert bench_early_stop._load(load) in md
    assert "python -m benchmarks.bench_early_stop --tiny" in doc["command"]
    for arm, _run, study_dir in runs(doc):
        spec = yaml.safe_load((study_dir / "spec.yaml").read_text())
        assert spec["space"]["magnitude.finetune_epochs"] == doc["finetune_epochs"]
        assert spec.get("scheduler") == (doc["scheduler"] if arm == "mo_asha" else None)


@pytest.mark.slow
def test_compute_is_the_epoch_rows_of_every_trial(tiny):
    doc, _ = tiny
    full = doc["finetune_epochs"]
    classes = load_data("digits").num_classes
    for _arm, run, study_dir in runs(doc):
        assert yaml.safe_load((study_dir / "spec.yaml").read_text())["data"] == "digits"
        rows, trials = epoch_rows(study_dir), trial_files(study_dir)
        assert len(trials) == len(run["curve"]) == len(run["cumulative_epochs"])
        assert run["epochs"] == sum(len(r) for r in rows.values()) == run["cumulative_epochs"][-1]
        assert run["trial_seconds"] == pytest.approx(
            sum(r["epoch_seconds"] for per in rows.values() for r in per.values()))
        # the trials at chance after their first epoch, and those that finished above it
        chance = 1 / classes + bench_early_stop.CHANCE_MARGIN
        low = [t for t, per in rows.items() if per[min(per)]["val_accuracy"] <= chance]
        assert run["first_epoch_at_chance"] == len(low)
        assert run["recovered"] == sum(trials[t]["status"] == "ok"
                                       and trials[t]["row"]["accuracy"] > chance for t in low)
        for trial_id, rec in trials.items():
            trained = len(rows.get(trial_id, {}))
            assert rec["last"]["step"] == trained  # the step counts every epoch it trained
            if rec["status"] == "ok":
                assert trained == full
            elif rec["status"] == "stopped":
                assert trained < full and trained in doc["rungs"]


@pytest.mark.slow
def test_only_mo_asha_stops_trials(tiny):
    doc, _ = tiny
    for arm, run, study_dir in runs(doc):
        stopped = [t for t in trial_files(study_dir).values() if t["status"] == "stopped"]
        assert run["stopped"] == len(stopped) == sum(run["stopped_at_epochs"].values())
        if arm == "fifo":
            assert not stopped
        assert run["ok"] + run["stopped"] + run["failed"] == doc["trials"]


@pytest.mark.slow
def test_hypervolume_is_what_analysis_recomputes_from_ok_trials(tiny):
    doc, _ = tiny
    for _arm, run, study_dir in runs(doc):
        info, df = results.study_info(study_dir), results.load(study_dir)
        ok = df[df["status"] == "ok"]
        ref = results.study_reference(info, df)
        values = results.objective_values(ok, info.objectives)
        assert run["final_hypervolume"] == pytest.approx(pareto.hypervolume(values, ref))
        assert run["final_hypervolume"] == run["curve"][-1]
        assert all(a <= b for a, b in zip(run["curve"], run["curve"][1:], strict=False))


@pytest.mark.slow
def test_summary_is_the_mean_of_the_runs_and_ratios_are_mo_asha_over_fifo(tiny):
    doc, _ = tiny
    arms = doc["summary"]["arms"]
    for arm, mine in doc["runs"].items():
        for m in bench_early_stop.MEASURES:
            assert arms[arm][m]["mean"] == pytest.approx(statistics.fmean(r[m] for r in mine))
    for m in ("epochs", "final_hypervolume"):
        assert doc["summary"]["ratios"][m] == pytest.approx(
            arms["mo_asha"][m]["mean"] / arms["fifo"][m]["mean"])


def test_hypervolume_within_a_budget_takes_the_last_trial_that_fits():
    run = {"cumulative_epochs": [2, 4, 5], "curve": [0.1, 0.3, 0.4]}
    assert bench_early_stop.hypervolume_within(run, 4) == 0.3
    assert bench_early_stop.hypervolume_within(run, 1) == 0.0
    assert bench_early_stop.hypervolume_within(run, 9) == 0.4


def test_curve_data_starts_every_run_at_zero_and_steps_at_each_trial():
    runs_ = {"fifo": [{"seed": 0, "cumulative_epochs": [4, 8], "curve": [0.2, 0.5]}],
             "mo_asha": [{"seed": 0, "cumulative_epochs": [1, 5], "curve": [0.0, 0.5]}]}
    data = bench_early_stop.curve_data(runs_)
    assert data.arm == ["fifo"] * 3 + ["mo_asha"] * 3
    assert data.epochs == [0, 4, 8, 0, 1, 5]
    assert data.hypervolume == [0.0, 0.2, 0.5, 0.0, 0.0, 0.5]


@pytest.mark.slow
def test_replayed_settings_train_and_find_no_more_than_the_fifo_runs(tiny):
    doc, out = tiny
    fifo = doc["runs"]["fifo"]
    assert [{k: r[k] for k in ("grace_period", "reduction_factor", "min_dominators")}
            for r in doc["replay"]] == bench_early_stop.REPLAYED
    for r in doc["replay"]:
        assert r["epochs"] == pytest.approx(sum(m["epochs"] for m in r["runs"])
                                            / sum(f["epochs"] for f in fifo))
        for m, f in zip(r["runs"], fifo, strict=True):
            assert m["epochs"] <= f["epochs"] and m["hypervolume"] <= f["final_hypervolume"] + 1e-12
            if m["stopped"] == 0:  # stops nothing: the fifo run itself
                assert (m["epochs"], m["hypervolume"]) == (f["epochs"],
                                                           pytest.approx(f["final_hypervolume"]))
            else:  # a stopped trial trains at least to the first rung, never to the end
                assert f["epochs"] - m["epochs"] <= m["stopped"] * (
                    doc["finetune_epochs"] - r["grace_period"])
    md = (out / "early_stop-tiny.md").read_text()
    assert "## Other settings, replayed" in md
    assert md.count("x |") >= len(bench_early_stop.REPLAYED)


def test_the_scheduler_options_are_checked_before_any_study(tmp_path):
    for argv, says in ((["--reduction-factor", "1"], "--reduction-factor: 1 is not valid"),
                       (["--min-dominators", "0"], "--min-dominators: 0 is not valid"),
                       (["--grace-period", "0"], "--grace-period: 0 is not valid")):
        with pytest.raises(SystemExit, match=says):
            bench_early_stop.main([*argv, "--out", str(tmp_path)])
    assert not list(tmp_path.iterdir())
