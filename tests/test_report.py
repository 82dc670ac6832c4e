"""The report: one self-contained HTML file, Markdown with PNGs beside it, trials.csv, and
the comparison table of seed 002."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest

from analysis import pareto, report, results
from tests.study_factory import base_row, make_study

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("rep")
    a = make_study(root, "mixed", methods=("slimming", "magnitude"), ok=10, failed=2,
                   running=1, pending=1, seed=11)
    b = make_study(root, "slim", methods=("slimming",), ok=6, failed=1, running=0,
                   sampler="nsga2", seed=12)
    out = root / "out"
    page = report.write_report([a, b], out)
    return a, b, out, page


def test_files_are_written(written):
    _, _, out, page = written
    assert page == out / "report.html"
    for name in ("report.html", "report.md", "trials.csv"):
        assert (out / name).stat().st_size > 0
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert "pareto-front.png" in pngs and "hypervolume.png" in pngs
    assert "latency.png" not in pngs  # neither study was timed
    for p in out.glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_html_is_one_self_contained_file(written):
    _, _, out, page = written
    text = page.read_text()
    # Nothing loaded from elsewhere: no URLs, no external scripts, styles or images.
    assert not re.search(r"(?:src|href)\s*=\s*[\"'](?!data:|#)", text)
    assert "http://" not in text and "https://" not in text and "<script" not in text
    imgs = re.findall(r'<img src="data:image/png;base64,([^"]+)"', text)
    assert len(imgs) == len(list(out.glob("*.png")))
    # The embedded images are the PNG files of the Markdown report, byte for byte.
    on_disk = {p.read_bytes() for p in out.glob("*.png")}
    assert {base64.b64decode(b) for b in imgs} == on_disk


def test_markdown_links_every_png_beside_it(written):
    _, _, out, _ = written
    md = (out / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert sorted(links) == sorted(p.name for p in out.glob("*.png"))
    assert all((out / link).is_file() for link in links)


def test_trials_csv_has_every_trial_with_status_and_front(written):
    a, b, out, _ = written
    csv = pd.read_csv(out / "trials.csv")
    assert len(csv) == 14 + 7
    for col in ("study", "trial_id", "status", "method", "slimming.lambda", "accuracy", "macs",
                "params", "size_bytes", "on_front", "channels"):
        assert col in csv, col
    assert set(csv["status"]) == {"ok", "failed", "running", "pending"}
    assert not csv.loc[csv["status"] != "ok", "on_front"].any()
    for path in (a, b):
        df = results.load(path)
        mine = csv[csv["study"] == df.attrs["study"]].set_index("trial_id")
        assert mine.loc[df["trial_id"], "on_front"].tolist() == df["on_front"].tolist()


def test_tables_show_unfinished_trials_with_their_status(written):
    a, _, out, page = written
    text = page.read_text()
    df = results.load(a)
    for t in df[df["status"] != "ok"].itertuples():
        row = re.search(rf"<tr>.*?{t.trial_id}.*?</tr>", text)
        assert row and f'<span class="status {t.status}">' in row.group(0)
    md = (out / "report.md").read_text()
    front = md.split("## Trials on the front")[1].split("## All trials")[0]
    assert "failed" not in front and "running" not in front and "pending" not in front
    assert "CUDA out of memory" in md.split("## All trials")[1]


def test_comparison_table_base_first_then_each_methods_knee(written):
    a, b, _, _ = written
    studies = results.open_studies([a, b])
    table = report.comparison_table(studies)
    assert table.iloc[0]["model"] == "base model"  # both studies share one base: one row
    assert (table["model"] == "base model").sum() == 1
    assert table.iloc[0]["macs"] == base_row()["macs"]
    knees = table[~table["model"].str.contains("within 1 pt")]
    assert list(zip(knees["study"][1:], knees["model"][1:], strict=True)) == [
        ("mixed", "magnitude"), ("mixed", "slimming"), ("slim", "slimming")]
    # Each study's knee rows end with its cheapest trial within one point of the base.
    within = table[table["model"].str.contains("within 1 pt")]
    assert within.index.tolist() == [3, 5] and within["study"].tolist() == ["mixed", "slim"]
    for s in studies:
        ok = s.trials[s.trials["status"] == "ok"]
        for method, d in ok.groupby("method"):
            values = results.objective_values(d, s.info.objectives)
            knee = d.iloc[pareto.knee(values, pareto.maximise_flags(s.info.objectives))]
            row = table[(table["study"] == s.label) & (table["model"] == method)]
            assert row["trial_id"].item() == knee["trial_id"]
            assert row["accuracy"].item() == knee["accuracy"]


def test_human_units_in_tables(written):
    _, _, out, _ = written
    md = (out / "report.md").read_text()
    base_line = next(line for line in md.splitlines() if "| base model |" in line)
    assert "579 k" in base_line and "2.21 MiB" in base_line and "9.88 M" in base_line
    assert "98.30 %" in base_line
    assert report.fmt("accuracy_drop", 0.0123) == "−1.23 pts"
    assert report.fmt("size_bytes", 90_000) == "87.9 KiB"
    assert report.fmt("speedup", 3.456) == "3.46x"


def test_report_of_a_study_without_finished_trials(tmp_path):
    path = make_study(tmp_path, "new", ok=0, failed=1, running=0, pending=2)
    (path / "history.jsonl").write_text("")  # the trial failed before its first epoch
    page = report.write_report([path], tmp_path / "out")
    text = page.read_text()
    assert "<img" not in text and "nothing to plot" in text
    assert len(pd.read_csv(tmp_path / "out" / "trials.csv")) == 3


def test_missing_study_directory_is_a_clear_error(tmp_path):
    with pytest.raises(results.StudyDirError, match="does not exist"):
        report.write_report([tmp_path / "missing"], tmp_path / "out")
    with pytest.raises(results.StudyDirError, match="no study directories"):
        report.write_report([], tmp_path / "out")


def test_trials_table_keeps_the_first_line_of_an_error(tmp_path):
    path = make_study(tmp_path, "tb", ok=2, failed=1, running=0)
    failed = results.load(path).query("status == 'failed'")["trial_id"].item()
    file = path / "trials" / f"{failed}.json"
    doc = json.loads(file.read_text())
    doc["error"] = "ValueError: slimming.lambda = -1 is invalid\nTraceback (most recent...\n" * 40
    file.write_text(json.dumps(doc))
    table = report.trials_table(results.open_studies([path]))
    cell = table.loc[table["trial_id"] == failed, "error"].item()
    assert cell == "ValueError: slimming.lambda = -1 is invalid"


def _study_of_known_trials(root, name, accuracies, macs, params=None, constraints=None):
    """A study of magnitude pruning whose finished trials have these accuracies and MACs
    (and params), in trial-number order, each timed at batch 1."""
    path = make_study(root, name, methods=("magnitude",), ok=len(accuracies), failed=0,
                      running=0, objectives={"accuracy": "max", "macs": "min"})
    if constraints:
        doc = json.loads((path / "study.json").read_text())
        doc["constraints"] = constraints
        (path / "study.json").write_text(json.dumps(doc))
    base = base_row()["accuracy"]
    params = params or [base_row()["params"]] * len(accuracies)
    for file in (path / "trials").glob("*.json"):
        doc = json.loads(file.read_text())
        n = doc["number"]
        doc["row"].update(accuracy=accuracies[n], accuracy_drop=base - accuracies[n],
                          macs=macs[n], params=params[n], latency_ms=0.1 + macs[n] * 1e-7,
                          latency_iqr_ms=0.01, latency_ms_b1=0.1 + macs[n] * 1e-7,
                          latency_iqr_ms_b1=0.01)
        file.write_text(json.dumps(doc))
    return path


def test_cheapest_trial_within_one_point_beside_the_knees(tmp_path):
    # Base 98.3 %: trials 0-2 are within one point; trial 3 is cheaper but 1.3 points
    # below; trial 4 is cheapest and accurate but breaks the params constraint.
    path = _study_of_known_trials(
        tmp_path, "one", accuracies=[0.983, 0.978, 0.976, 0.970, 0.981],
        macs=[9_000_000, 5_000_000, 3_000_000, 2_000_000, 1_000_000],
        params=[500_000, 400_000, 300_000, 200_000, 900_000],
        constraints={"params": {"max": 600_000}})
    df = results.load(path)
    qualifies = df.loc[df["number"] == 2, "trial_id"].item()
    table = report.comparison_table(results.open_studies([path]))
    row = table[table["model"] == "magnitude, cheapest within 1 pt of base"]
    assert row["trial_id"].item() == qualifies
    assert row["macs"].item() == 3_000_000 and row["accuracy"].item() == 0.976
    assert row["trial_id"].item() == results.summary(path)["within_one_point"]["trial_id"]
    page = report.write_report([path], tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    comparison = md.split("## Best trade-off per method")[1].split("## ")[0]
    line = next(ln for ln in comparison.splitlines() if "within 1 pt" in ln)
    assert qualifies in line and "3 M" in line and "97.60 %" in line
    html_rows = re.findall(r"<tr>.*?</tr>", page.read_text().split('id="comparison"')[1]
                           .split("</section>")[0])
    assert any("cheapest within 1 pt of base" in r and qualifies in r for r in html_rows)
    # Timed trials: the report shows MACs against latency.
    assert (tmp_path / "out" / "latency.png").is_file()


def test_no_trial_within_one_point_says_so(tmp_path):
    path = _study_of_known_trials(tmp_path, "none", accuracies=[0.95, 0.97, 0.96],
                                  macs=[9_000_000, 5_000_000, 3_000_000])
    table = report.comparison_table(results.open_studies([path]))
    assert table["model"].iloc[-1] == "cheapest within 1 pt of base: no trial qualifies"
    assert pd.isna(table["trial_id"].iloc[-1]) and table["macs"].isna().iloc[-1]
    assert "cheapest within 1 pt of base: no trial qualifies |" in report.markdown_table(table)
    assert ">cheapest within 1 pt of base: no trial qualifies</td>" in report.html_table(table)
    # No base model recorded: nothing to be within a point of, so no such row.
    (path / "base.json").unlink()
    with pytest.warns(results.StudyDirWarning, match="base.json is missing"):
        studies = results.open_studies([path])
    assert not report.comparison_table(studies)["model"].str.contains("within").any()


def test_report_module_exports_what_it_lists():
    assert [n for n in report.__all__ if not hasattr(report, n)] == []
    assert {"write_report", "comparison_table", "fmt", "ReportError"} <= set(report.__all__)


def test_each_front_trial_carries_its_export_command(written):
    a, b, out, _ = written
    md = (out / "report.md").read_text()
    front = md.split("## Trials on the front", 1)[1].split("## All trials", 1)[0]
    rows = [line for line in front.splitlines() if line.startswith("| ") and "---" not in line]
    header, body = rows[0], rows[1:]
    assert "take it away" in header and body
    for study in (a, b):
        front_ids = set(results.load(study).query("on_front")["trial_id"])
        assert front_ids
        for tid in front_ids:
            assert any(f"prune-study export {study} --trial {tid} -o {tid}-export" in r
                       for r in body), tid


def test_report_json_lists_files_studies_and_front_exports(written, tmp_path, capsys):
    from studies.cli import main

    a, b, _, _ = written
    assert main(["report", str(a), str(b), "-o", str(tmp_path / "r"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["report"] == str(tmp_path / "r" / "report.html")
    assert str(tmp_path / "r" / "report.md") in doc["files"]
    assert [s["name"] for s in doc["studies"]] == ["mixed", "slim"]
    for s, path in zip(doc["studies"], (a, b), strict=True):
        df = results.load(path)
        assert s["front_size"] == len(s["front"]) == int(df["on_front"].sum())
        assert s["hypervolume"] == results.summary(path)["hypervolume"]
        assert {f["trial_id"] for f in s["front"]} == set(df[df["on_front"]]["trial_id"])
        for f in s["front"]:
            assert f["export"] == f"prune-study export {path} --trial {f['trial_id']} " \
                                  f"-o {f['trial_id']}-export"


def _without_timestamps(name: str, data: bytes) -> bytes:
    if name == "report.md":
        return re.sub(rb"Generated [^\n]*", b"", data)
    if name == "report.html":
        return re.sub(rb"generated \d{4}-\d\d-\d\d \d\d:\d\d UTC", b"", data)
    return data


# Writes the report in a fresh interpreter (a test process may hold other threads, beside
# which the figures are drawn in-process) through the real pool, noting that it was made.
PARALLEL = """
import json, sys
from pathlib import Path
from analysis import report
pools = []
class Recorded(report.ProcessPoolExecutor):
    def __init__(self, *args, **kw):
        pools.append(list(args))
        super().__init__(*args, **kw)
report.ProcessPoolExecutor = Recorded
report.write_report([Path(p) for p in sys.argv[2:]], Path(sys.argv[1]), workers=2)
print(json.dumps(pools))
"""


def test_figures_drawn_in_other_processes_are_the_same_files(written, tmp_path):
    a, b, serial_out, _ = written
    report.write_report([a, b], tmp_path / "serial", workers=0)
    child = subprocess.run([sys.executable, "-c", PARALLEL, str(tmp_path / "parallel"), str(a),
                            str(b)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
    assert json.loads(child.stdout) == [[2]]  # two worker processes drew the figures
    serial = {p.name: p.read_bytes() for p in (tmp_path / "serial").iterdir()}
    parallel = {p.name: p.read_bytes() for p in (tmp_path / "parallel").iterdir()}
    assert sorted(serial) == sorted(parallel) and len([n for n in serial if n.endswith(".png")])
    for name, data in serial.items():
        assert _without_timestamps(name, data) == _without_timestamps(name, parallel[name]), name
    with pytest.raises(ValueError, match="workers=-1"):
        report.write_report([a], tmp_path / "bad", workers=-1)


def test_beside_another_thread_the_figures_are_drawn_here(written, tmp_path, monkeypatch):
    a, _, _, _ = written
    pools = []

    class Recorded(report.ProcessPoolExecutor):
        def __init__(self, *args, **kw):
            pools.append(args)
            super().__init__(*args, **kw)

    monkeypatch.setattr(report, "ProcessPoolExecutor", Recorded)
    # A lock another thread holds would stay held in a forked child.
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        report.write_report([a], tmp_path / "threaded", workers=2)
    finally:
        stop.set()
        other.join()
    assert pools == [] and (tmp_path / "threaded" / "report.html").is_file()


def test_tables_formatted_by_column_match_cell_by_cell_formatting():
    df = pd.DataFrame({"status": pd.Series(["ok", None, "failed"], dtype="str"),
                       "params": [1.5e6, float("nan"), 3.0], "on_front": [True, False, True],
                       "note": ["a|b", "<i>", None], "accuracy": [0.5, -0.0, None]})
    expected = [[report.fmt(c, v) for c, v in zip(df.columns, row, strict=True)]
                for row in df.itertuples(index=False)]
    md = report.markdown_table(df)
    assert md.splitlines()[2:] == ["| " + " | ".join(
        " ".join(c.split()).replace("<", "&lt;").replace("|", "\\|") for c in row) + " |"
        for row in expected]
    assert "-0.00 %" in md and "&lt;i>" in md
    page = report.html_table(df)
    assert page.count("<tr>") == 4 and '<span class="status failed">failed</span>' in page
