"""Reading study directories: trials, history, summary, and clear errors on bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from analysis import pareto, results
from tests.study_factory import METHODS, base_row, make_study


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return make_study(tmp_path_factory.mktemp("s"), "mixed", methods=METHODS, ok=20, failed=2,
                      running=2, pending=1, seed=3)


def test_load_has_one_row_per_trial_with_params_and_measurements(study):
    df = results.load(study)
    assert len(df) == 25 == len(list((study / "trials").glob("*.json")))
    assert df["number"].tolist() == list(range(25))
    assert df["status"].value_counts().to_dict() == {"ok": 20, "failed": 2, "running": 2,
                                                     "pending": 1}
    assert set(df.attrs["params"]) == set(json.loads((study / "study.json").read_text())["space"])
    for col in ("trial_id", "method", "accuracy", "macs", "params", "size_bytes", "channels",
                "slimming.lambda", "repr.plain_accuracy", "on_front", "error"):
        assert col in df, col
    ok = df[df["status"] == "ok"]
    assert ok["accuracy"].notna().all() and ok["method"].isin(METHODS).all()
    failed = df[df["status"] == "failed"]
    assert failed["accuracy"].isna().all() and failed["error"].str.contains("memory").all()
    # Chosen-chain studies name the method of every trial that sampled one.
    assert df.loc[df["status"] == "running", "method"].notna().all()
    assert df.loc[df["status"] == "running", "progress"].str.contains("epoch").all()


def test_on_front_is_the_non_dominated_set_of_finished_trials(study):
    df = results.load(study)
    objectives = df.attrs["objectives"]
    assert not df.loc[df["status"] != "ok", "on_front"].any()
    ok = df[df["status"] == "ok"]
    signed = np.column_stack([(-1 if d == "max" else 1) * ok[c].to_numpy(float)
                              for c, d in objectives.items()])

    def dominated(i):
        return any((signed[j] <= signed[i]).all() and (signed[j] < signed[i]).any()
                   for j in range(len(signed)))

    expected = [not dominated(i) for i in range(len(signed))]
    assert ok["on_front"].tolist() == expected
    assert 1 <= sum(expected) < len(expected)


def test_history_keeps_the_last_report_of_each_step(study):
    h = results.history(study)
    first = h[h["trial_id"] == results.load(study)["trial_id"].iloc[0]]
    assert first["step"].tolist() == sorted(set(first["step"]))  # one row per step
    assert (first["val_accuracy"] > 0).all()  # the stale -1.0 lines lost to the later ones
    assert not h.duplicated(["trial_id", "step"]).any()
    assert {"sparsity", "alpha", "phase", "epoch"} <= set(h.columns)


def test_history_skips_a_line_being_written_and_a_broken_one_naming_them(tmp_path):
    path = make_study(tmp_path, "h", ok=2, failed=0, running=0)
    n = len(results.history(path))
    last = len((path / "history.jsonl").read_text().splitlines()) + 1
    with open(path / "history.jsonl", "a") as f:
        f.write('{"trial_id": "x", "st')
    with pytest.warns(results.StudyDirWarning, match=rf"history.jsonl line {last} skipped: "
                      r"not valid JSON \(unterminated last line"):
        assert len(results.history(path)) == n
    with open(path / "history.jsonl", "a") as f:
        f.write('\n{"trial_id": "x", "step": 2}\n')  # the partial line stays broken
    with pytest.warns(results.StudyDirWarning,
                      match=rf"history.jsonl line {last} skipped: not valid JSON$"):
        assert len(results.history(path)) == n + 1


def test_summary_counts_front_and_hypervolume(study):
    s = results.summary(study)
    json.dumps(s)  # plain values only: prune-study status --json prints it
    counts = (s["trials"], s["finished"], s["running"], s["failed"], s["pending"])
    assert counts == (25, 20, 2, 2, 1)
    df = results.load(study)
    assert s["front_size"] == int(df["on_front"].sum())
    ref = pareto.reference(s["objectives"], base_row())
    values = df.loc[df["status"] == "ok", list(s["objectives"])].to_numpy(float)
    assert s["hypervolume"] == pytest.approx(pareto.hypervolume(values, ref))
    assert 0.1 < s["hypervolume"] < 1.2  # better than the base alone (0.01), below ideal
    knee = df[df["trial_id"] == s["knee"]["trial_id"]]
    assert knee["on_front"].item() and knee["status"].item() == "ok"


def test_objective_missing_from_rows_gives_an_empty_front(tmp_path):
    path = make_study(tmp_path, "lat", ok=3, failed=0, running=0,
                      objectives={"accuracy": "max", "latency_ms": "min"})
    s = results.summary(path)
    assert s["finished"] == 3 and s["front_size"] == 0 and s["hypervolume"] == 0.0
    assert s["knee"] is None


def test_missing_and_empty_directories_are_clear_errors(tmp_path):
    with pytest.raises(results.StudyDirError, match="does not exist"):
        results.load(tmp_path / "nope")
    with pytest.raises(ValueError, match=r"no study.json in .*prune-study run"):
        results.summary(tmp_path)
    with pytest.raises(results.StudyDirError, match="no study.json"):
        results.history(tmp_path)


def test_study_without_trials_yet(tmp_path):
    path = make_study(tmp_path, "new", ok=0, failed=0, running=0)
    df = results.load(path)
    assert len(df) == 0 and {"trial_id", "status", "on_front"} <= set(df.columns)
    s = results.summary(path)
    assert (s["trials"], s["front_size"], s["hypervolume"]) == (0, 0, 0.0)


def test_malformed_files_are_named(tmp_path):
    path = make_study(tmp_path, "bad", ok=2, failed=0, running=0)
    trial = next((path / "trials").glob("*.json"))
    trial.write_text("[1, 2]")
    with pytest.warns(results.StudyDirWarning, match=f"{trial.name} skipped: it holds a JSON list"):
        assert len(results.load(path)) == 1  # the other trial is read
    trial.write_text('{"number": 0}')
    with pytest.warns(results.StudyDirWarning, match="has no 'trial_id'"):
        assert len(results.load(path)) == 1
    doc = json.loads((path / "study.json").read_text())
    (path / "study.json").write_text(json.dumps({**doc, "objectives": {"accuracy": "up"}}))
    with pytest.raises(results.StudyDirError, match="'up'.*max, min"):
        results.study_info(path)


def test_study_info_reads_study_and_base(study):
    info = results.study_info(study)
    assert info.name == "mixed" and info.sampler == "tpe"
    assert info.objectives == {"accuracy": "max", "macs": "min", "params": "min"}
    assert info.base["macs"] == 9_880_832 and info.base["params"] == 579_098


def _with(path, study=None, rows=None):
    """Edit a factory study: study.json keys, and a function applied to each ok row."""
    doc = json.loads((path / "study.json").read_text())
    doc.update(study or {})
    (path / "study.json").write_text(json.dumps(doc))
    for f in (path / "trials").glob("*.json"):
        t = json.loads(f.read_text())
        if t["status"] == "ok" and rows:
            rows(t["row"])
            f.write_text(json.dumps(t))
    return path


def test_constraints_keep_infeasible_trials_off_the_front(tmp_path):
    from tests.study_factory import make_study

    path = make_study(tmp_path, "c", ok=14, failed=0, running=0,
                      objectives={"accuracy": "max", "macs": "min"})
    plain = results.load(path)
    cut = float(plain.loc[plain["status"] == "ok", "macs"].median())
    _with(path, study={"constraints": {"macs": {"min": cut}}})
    df = results.load(path)
    ok = df[df["status"] == "ok"]
    assert ok["feasible"].tolist() == (ok["macs"] >= cut).tolist()
    assert all(v == f"macs >= {cut:g}" for v in ok.loc[~ok["feasible"], "violated"])
    assert not (df["on_front"] & ~df["feasible"]).any()  # no infeasible trial on the front
    s = results.summary(path)
    assert s["feasible"] == int(ok["feasible"].sum())
    assert s["hypervolume"] <= results.summary(_with(path, study={"constraints": {}})
                                               )["hypervolume"]


def test_wilson_interval_and_trials_within_noise_of_the_front(tmp_path):
    from tests.study_factory import make_study

    lo, hi = results.wilson_interval(0.9, 100)
    assert lo == pytest.approx(0.8256, abs=1e-3) and hi == pytest.approx(0.9448, abs=1e-3)
    assert results.wilson_interval(1.0, 359)[1] == pytest.approx(1.0)
    path = _with(make_study(tmp_path, "w", ok=14, failed=0, running=0,
                            objectives={"accuracy": "max", "macs": "min"}),
                 rows=lambda row: row.update(test_images=359))
    df = results.load(path)
    ok = df[df["status"] == "ok"]
    assert ((ok["accuracy_low"] <= ok["accuracy"]) & (ok["accuracy"] <= ok["accuracy_high"])).all()
    front = ok[ok["on_front"]]
    for _, r in ok[ok["near_front"]].iterrows():
        assert not r["on_front"]
        assert ((front["accuracy_low"] <= r["accuracy_high"]) & (front["macs"] >= r["macs"])).any()
    # with 10x the test images, the intervals narrow and fewer trials are within noise
    narrow = results.load(_with(path, rows=lambda row: row.update(test_images=35900)))
    assert df["near_front"].sum() > narrow["near_front"].sum()


def test_cheapest_trial_within_one_point_of_the_base(tmp_path):
    from tests.study_factory import make_study

    path = make_study(tmp_path, "k", ok=14, failed=0, running=0,
                      objectives={"accuracy": "max", "macs": "min"})
    df, s = results.load(path), results.summary(path)
    base = json.loads((path / "base.json").read_text())["accuracy"]
    good = df[(df["status"] == "ok") & (df["accuracy"] >= base - 0.01)]
    if len(good):
        assert s["within_one_point"]["macs"] == good["macs"].min()
    else:
        assert s["within_one_point"] is None


def test_configurations_average_their_repeats_and_wait_for_every_one(tmp_path):
    """A study with ``repeats: 3``: a configuration is ok when all three runs are, its
    numbers their means; a failed or unfinished run makes it failed or running."""
    info = results.StudyInfo(path=tmp_path, name="r", objectives={"accuracy": "max",
                                                                  "macs": "min"}, repeats=3)

    def run(number, repeat, status, accuracy=None, macs=100):
        rec = {"study": "r", "trial_id": f"t{number}{repeat}", "number": number,
               "repeat": repeat, "status": status, "method": "magnitude",
               "magnitude.ratio": 0.5 + number / 10, "started": 10.0 + repeat,
               "ended": 20.0 + repeat, "error": "diverged" if status == "failed" else None}
        if status == "ok":
            rec.update(accuracy=accuracy, macs=macs, test_images=360)
        return rec

    records = [run(0, 0, "ok", 0.90), run(0, 2, "ok", 0.96), run(0, 1, "ok", 0.92),
               run(1, 0, "ok", 0.95), run(1, 1, "failed"), run(1, 2, "ok", 0.97),
               run(2, 0, "ok", 0.99), run(2, 1, "running")]
    configs = {c["number"]: c for c in results.configurations(records, info)}
    c0 = configs[0]
    assert c0["status"] == "ok" and c0["repeats"] == 3
    assert c0["accuracy"] == pytest.approx(0.926666, abs=1e-5)
    assert c0["accuracy_sd"] == pytest.approx(np.std([0.90, 0.92, 0.96], ddof=1))
    assert c0["macs"] == 100 and c0["macs_sd"] == 0.0
    assert c0["trial_id"] == "t01"  # 0.92: the run nearest the mean
    assert c0["trial_ids"] == ["t00", "t01", "t02"] and "repeat" not in c0
    assert (c0["started"], c0["ended"]) == (10.0, 22.0)
    assert configs[1]["status"] == "failed" and configs[1]["error"] == "diverged"
    assert configs[2]["status"] == "running"
    for c in (configs[1], configs[2]):  # no mean of a subset stands in for the configuration
        assert "accuracy" not in c and c["magnitude.ratio"] == 0.5 + c["number"] / 10

    df = results._table(results.configurations(records, info), info)
    assert df["on_front"].tolist() == [True, False, False]
    # the interval covers the t interval of the mean over the seeds, beyond test-set noise
    half = 4.303 * c0["accuracy_sd"] / 3 ** 0.5
    assert df.loc[0, "accuracy_low"] == pytest.approx(c0["accuracy"] - half)
    assert df.loc[0, "accuracy_high"] == pytest.approx(min(1.0, c0["accuracy"] + half))
