"""bench_analysis: its synthetic studies read like real ones, and a tiny run writes its
JSON and Markdown with every measurement."""

from __future__ import annotations

import json
import os

import pytest

from analysis import results
from analysis.studydir import INDEX, skipped_files
from benchmarks import bench_analysis as B


def test_build_study_writes_valid_varied_trials(tmp_path):
    path = B.build_study(tmp_path, 120)
    with skipped_files(lambda m: None) as seen:
        df = results.load(path)
    assert seen == []  # every copied file passes the reader's checks
    assert len(df) == 120 and list(df["number"]) == list(range(120))
    assert set(df["status"]) == {"ok", "failed", "running", "pending"}
    ok = df[df["status"] == "ok"]
    # other values than the templates': no two finished trials measure the same
    assert ok["macs"].nunique() == len(ok) and ok["accuracy"].nunique() == len(ok)
    assert (ok["test_images"] == B.TEST_IMAGES).all() and ok["on_front"].any()
    assert len(results.history(path)["trial_id"].unique()) > 100
    assert B.build_study(tmp_path, 120) == path  # reused, not rebuilt


def test_floors_compare_this_code_at_the_floor_size_only():
    rows = [{"trials": B.FLOOR_SIZE, "code": "this", "command": "status", "mode": "warm",
             "seconds": 0.5, "max_rss_mb": 150.0},
            {"trials": B.FLOOR_SIZE, "code": "this", "command": "report", "mode": "",
             "seconds": 20.0, "max_rss_mb": 900.0},
            {"trials": B.FLOOR_SIZE, "code": "baseline", "command": "status", "mode": "warm",
             "seconds": 9.0, "max_rss_mb": 500.0},
            {"trials": 1000, "code": "this", "command": "status", "mode": "cold",
             "seconds": 9.0, "max_rss_mb": 500.0}]
    got = {(f["command"], f["what"]): f for f in B.floors(rows)}
    assert set(got) == {("status", "status_seconds"), ("status", "status_mb"),
                        ("report", "report_seconds")}
    assert got["status", "status_seconds"]["floor_over_value"] == 4.0
    assert got["status", "status_seconds"]["met"] and got["status", "status_mb"]["met"]
    assert not got["report", "report_seconds"]["met"]
    assert got["report", "report_seconds"]["floor_over_value"] == 0.75


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-analysis")
    doc = B.main(["--tiny", "--warm", "2", "--out", str(out), "--work", str(out / "work")])
    return doc, out


def test_tiny_run_measures_status_cold_and_warm_and_report(tiny):
    doc, out = tiny
    saved = json.loads((out / "analysis-tiny.json").read_text())
    assert saved["rows"] == doc["rows"]
    n = B.TINY_SIZES[0]
    assert saved["sizes"] == [n]
    got = {(r["command"], r["mode"]): r for r in saved["rows"]}
    assert set(got) == {("status", "cold"), ("status", "warm"), ("report", "")}
    assert len(got["status", "warm"]["runs"]) == 2
    for r in saved["rows"]:
        assert r["trials"] == n and r["code"] == "this"
        assert r["seconds"] > 0 and r["max_rss_mb"] > 10 and r["load_1min"] >= 0
    for key in ("command", "environment", "load_before", "load_after", "busy"):
        assert key in saved
    # the commands really ran: the report exists, and the index was cleaned up after
    study = out / "work" / f"study-{n}"
    assert (out / "work" / f"report-this-{n}" / "report.html").is_file()
    assert not (study / INDEX).exists()
    assert len(os.listdir(study / "trials")) == n


def test_tiny_markdown_has_the_table_and_the_command(tiny):
    _, out = tiny
    md = (out / "analysis-tiny.md").read_text()
    n = B.TINY_SIZES[0]
    row = next(line for line in md.splitlines() if line.startswith(f"| {n} |"))
    assert row.count(" s, ") == 3  # status cold, status warm, report: seconds and MB
    assert "python -m benchmarks.bench_analysis --tiny" in md
    assert "Load average" in md
