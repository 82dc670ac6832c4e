"""The result-column table: a new objective is one entry, and every reader follows it."""

from __future__ import annotations

import json
import math
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from analysis import pareto, results
from analysis.figures import human_bytes
from analysis.report import write_report
from prune_core import columns
from prune_core.columns import Column
from studies.cli import EXIT_BAD_INPUT, EXIT_OK, main
from tests.study_factory import make_study

ROOT = Path(__file__).resolve().parent.parent


def add_from_the_docs() -> Column:
    """Run docs/architecture.md's example of a new objective: its one Python block."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    exec(textwrap.dedent(block), {})  # noqa: S102 (the project's own docs)
    return columns.column("peak_bytes")


@pytest.fixture
def peak(monkeypatch):
    """The table with one more objective, for this test only."""
    monkeypatch.setattr(columns, "COLUMNS", dict(columns.COLUMNS))
    return add_from_the_docs()


def _study(tmp_path):
    path = make_study(tmp_path, "peak", objectives={"accuracy": "max", "peak_bytes": "min"},
                      ok=12, failed=1, running=0)
    rng = np.random.default_rng(3)
    base = json.loads((path / "base.json").read_text())
    (path / "base.json").write_text(json.dumps({**base, "peak_bytes": 4.0e6}))
    for f in sorted((path / "trials").glob("*.json")):
        doc = json.loads(f.read_text())
        if doc["status"] == "ok":
            doc["row"]["peak_bytes"] = float(rng.uniform(0.5e6, 4.0e6))
            f.write_text(json.dumps(doc))
    return path


def _spec(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({
        "name": "p", "data": "digits", "model": {"name": "vgg11", "width": 0.25},
        "methods": "none", "space": {"none.finetune_epochs": {"low": 0, "high": 2}},
        "objectives": {"accuracy": "max", "peak_bytes": "min"}, "trials": 3,
        "scheduler": "mo_asha", "constraints": {"peak_bytes": {"max": 3.0e6}}}))
    return path


def test_an_objective_added_to_the_table_alone_is_validated_fronted_reported_and_shown(
        tmp_path, capsys, monkeypatch):
    spec = _spec(tmp_path)
    assert main(["validate", str(spec)]) == EXIT_BAD_INPUT  # not a column yet
    assert "objectives.peak_bytes: unknown result column" in capsys.readouterr().err

    monkeypatch.setattr(columns, "COLUMNS", dict(columns.COLUMNS))
    assert add_from_the_docs().header == "peak memory"
    # validate: an objective, a constraint, and a stand-in mo_asha can judge it by
    assert main(["validate", str(spec)]) == EXIT_OK, capsys.readouterr().err
    assert "peak_bytes min" in capsys.readouterr().out
    assert columns.stand_ins()["peak_bytes"] == ("params", 1)

    path = _study(tmp_path)
    df = results.load(path)
    ok = df[df["status"] == "ok"]
    points = np.column_stack([ok["accuracy"], ok["peak_bytes"]]).astype(float)
    expected = set(ok["trial_id"][pareto.nondominated(points, [True, False])])
    assert set(df.loc[df["on_front"], "trial_id"]) == expected and expected

    assert main(["status", str(path)]) == EXIT_OK
    out = capsys.readouterr().out
    best = ok["peak_bytes"].min()
    assert f"best peak_bytes (min): {best:.6g}" in out
    assert "hypervolume" in out

    report = write_report([path], tmp_path / "report")
    md = (report.parent / "report.md").read_text() if report.suffix == ".html" else \
        report.read_text()
    assert "| peak memory |" in md  # the table's header
    assert f"| {human_bytes(best)} |" in md  # and its unit's format


def test_the_table_range_decides_what_a_study_directory_may_hold(tmp_path, peak):
    path = _study(tmp_path)
    f = sorted((path / "trials").glob("*.json"))[0]
    doc = json.loads(f.read_text())
    doc["status"], doc["row"] = "ok", {**doc["row"], "peak_bytes": -1.0}
    f.write_text(json.dumps(doc))
    with pytest.warns(UserWarning, match="peak_bytes is -1.0; expected a non-negative number"):
        df = results.load(path)
    assert doc["trial_id"] not in set(df["trial_id"])


def test_the_stand_in_sign_follows_the_two_columns_directions():
    s = columns.stand_ins()
    assert s["accuracy_drop"] == ("val_accuracy", -1)  # min against max
    assert s["speedup"] == ("macs", -1) and s["compression"] == ("params", -1)
    assert s["latency_ms"] == ("macs", 1) and s["accuracy"] == ("val_accuracy", 1)
    assert "train_seconds" not in s  # no per-epoch stand-in
    assert columns.asha_objectives() == ("accuracy", "balanced_accuracy", "val_accuracy",
                                         "accuracy_drop")
    assert columns.implied_base() == {"compression": 1.0, "speedup": 1.0}
    with pytest.raises(ValueError, match="unit 'mJ'"):
        Column("energy", "energy", "mJ", "min")
    assert math.isinf(columns.column("macs").high) and columns.column("accuracy").high == 1
