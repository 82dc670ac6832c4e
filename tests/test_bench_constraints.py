"""bench_constraints: both arms scored by one rule, and its numbers agree with the studies."""

from __future__ import annotations

import io
import json
import statistics

import numpy as np
import pandas as pd
import pytest

from benchmarks import bench_constraints as B

LIMIT = B.CONSTRAINTS["accuracy_drop"]["max"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, test_cache):
    """One --tiny run (both arms) and its output folder; its small base model is cached
    with the tests' own."""
    out = tmp_path_factory.mktemp("constraints")
    doc = B.main(["--tiny", "--out", str(out), "--storage", str(out / "runs"),
                  "--cache", str(test_cache)])
    yield doc, out
    import ray

    ray.shutdown()  # later tests must not inherit the benchmark's local Ray


def _trials_csv(study_dir: str) -> pd.DataFrame:
    """The study's trials.csv, as the report writes it."""
    from analysis.report import trials_csv
    from analysis.results import open_studies

    return pd.read_csv(io.StringIO(trials_csv(open_studies([study_dir]))))


def _within(df: pd.DataFrame) -> pd.Series:
    """Rows of trials.csv that finished with accuracy_drop <= the limit, read off the CSV."""
    return (df["status"] == "ok") & (pd.to_numeric(df["accuracy_drop"]) <= LIMIT)


def test_feasible_mask_is_finished_and_within_the_bound():
    df = pd.DataFrame({"status": ["ok", "ok", "ok", "ok", "failed"],
                       "accuracy_drop": [LIMIT - 0.01, LIMIT, LIMIT + 0.01, np.nan, 0.0]})
    assert B.feasible_mask(df, B.CONSTRAINTS) == [True, True, False, False, False]
    # no bounds: every finished trial counts
    assert B.feasible_mask(df, {}) == [True, True, True, True, False]


def test_run_arm_refuses_an_unknown_arm(tmp_path):
    with pytest.raises(ValueError, match="allowed: unconstrained, constrained"):
        B.run_arm(None, "loose", 0, tmp_path, 10, print)


@pytest.mark.slow
def test_tiny_writes_both_arms_and_their_summary(tiny):
    doc, out = tiny
    saved = json.loads((out / "constraints-tiny.json").read_text())
    assert saved["summary"] == doc["summary"] and saved["runs"] == doc["runs"]
    assert saved["constraints"] == B.CONSTRAINTS
    assert [(r["arm"], r["seed"]) for r in doc["runs"]] == \
        [(arm, seed) for seed in range(doc["seeds"]) for arm in B.ARMS]
    arms = doc["summary"]["arms"]
    assert list(arms) == list(B.ARMS)
    for arm, v in arms.items():
        mine = [r for r in doc["runs"] if r["arm"] == arm]
        assert v["runs"] == len(mine) == doc["seeds"]
        for key in ("feasible_hypervolume", "feasible", "hypervolume", "seconds"):
            values = [r[key] for r in mine]
            assert v[key]["mean"] == pytest.approx(statistics.fmean(values))
            assert v[key]["min"] == min(values) and v[key]["max"] == max(values)
    un, con = (arms[a]["feasible_hypervolume"]["mean"] for a in B.ARMS)
    assert doc["summary"]["ratio"] == (pytest.approx(con / un) if un else None)
    assert len(doc["load_average"]["before"]) == len(doc["load_average"]["after"]) == 3
    md = (out / "constraints-tiny.md").read_text()
    assert "| arm | runs | feasible hypervolume |" in md
    assert "python -m benchmarks.bench_constraints --tiny" in md
    assert "accuracy_drop <= 0.02" in md


@pytest.mark.slow
def test_tiny_runs_are_consistent_with_their_own_numbers(tiny):
    doc, _ = tiny
    for r in doc["runs"]:
        assert len(r["curve"]) == r["trials"] == doc["trials"]
        assert 0 <= r["feasible"] <= r["finished"] <= r["trials"]
        assert all(b >= a >= 0 for a, b in zip(r["curve"], r["curve"][1:], strict=False))
        assert r["feasible_hypervolume"] == r["curve"][-1]
        # the feasible trials are a subset of the finished ones
        assert r["feasible_hypervolume"] <= r["hypervolume"] + 1e-12
        assert r["seconds"] > 0


@pytest.mark.slow
def test_tiny_feasible_numbers_match_the_trials_csv(tiny):
    from analysis import pareto
    from analysis.results import study_info

    doc, _ = tiny
    seen = set()
    for r in doc["runs"]:
        df = _trials_csv(r["study_dir"])
        ok = _within(df)
        seen.update(ok[df["status"] == "ok"])
        assert r["feasible"] == int(ok.sum())
        assert r["finished"] == int((df["status"] == "ok").sum())
        info = study_info(r["study_dir"])
        ref = pareto.reference(info.objectives, info.base)
        values = df.loc[ok, list(info.objectives)].to_numpy(dtype=float)
        assert r["feasible_hypervolume"] == pytest.approx(pareto.hypervolume(values, ref))
        everything = df.loc[df["status"] == "ok", list(info.objectives)].to_numpy(dtype=float)
        assert r["hypervolume"] == pytest.approx(pareto.hypervolume(everything, ref))
    # the tiny settings give trials on both sides of the constraint, so the checks above
    # compare non-trivial sets
    assert seen == {True, False}


@pytest.mark.slow
def test_tiny_only_the_constrained_arm_tells_its_constraint(tiny):
    from analysis.results import study_info, summary

    doc, _ = tiny
    for r in doc["runs"]:
        info = study_info(r["study_dir"])
        df = _trials_csv(r["study_dir"])
        if r["arm"] == "unconstrained":
            assert info.constraints == {}
            continue
        assert info.constraints == B.CONSTRAINTS
        # the report's own rule and number agree with the benchmark's
        done = df["status"] == "ok"
        assert (df.loc[done, "feasible"].astype(bool) == _within(df)[done]).all()
        assert summary(r["study_dir"])["hypervolume"] == pytest.approx(
            r["feasible_hypervolume"])
        assert summary(r["study_dir"])["feasible"] == r["feasible"]
