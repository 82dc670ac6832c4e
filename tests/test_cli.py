"""The `prune-study` commands added by the study layer: validate, run, resume, status, report."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from studies.cli import EXIT_BAD_INPUT, EXIT_ERROR, EXIT_OK, main

ROOT = Path(__file__).resolve().parent.parent
GOOD = {
    "name": "cli", "data": "digits", "model": {"name": "vgg11", "width": 0.25},
    "methods": "none", "space": {"none.finetune_epochs": {"low": 0, "high": 2}},
    "objectives": {"accuracy": "max", "macs": "min"}, "trials": 3,
}
# (a mistake, the field the message must name)
BAD = {
    "unknown_model": ({"model": {"name": "vgg12"}}, "model.name: unknown model 'vgg12'"),
    "unknown_data": ({"data": "mnist"}, "data.name: unknown dataset 'mnist'"),
    "unknown_method": ({"methods": "prune"}, "methods: unknown method 'prune'"),
    "unknown_parameter": ({"space": {"none.epochs": 2}},
                          "space.none.epochs: method 'none' has no parameter 'epochs'"),
    "unknown_stage": ({"space": {"slim.lambda": 2}}, "space.slim.lambda: unknown stage"),
    "outside_domain": ({"space": {"none.lr": {"low": 0.01, "high": 50}}},
                       "space.none.lr.high: 50 is outside the domain of none.lr"),
    "low_above_high": ({"space": {"none.lr": {"low": 0.1, "high": 0.01}}},
                       "space.none.lr: low 0.1 is above high 0.01"),
    "log_low_zero": ({"space": {"none.finetune_epochs": {"low": 0, "high": 3, "log": True}}},
                     "space.none.finetune_epochs.low: 0 with log: true"),
    "empty_choices": ({"space": {"none.lr": {"choices": []}}}, "space.none.lr.choices: []"),
    "asha_two_objectives": ({"scheduler": "asha"}, "scheduler: asha stops trials on one"),
    "unknown_objective": ({"objectives": {"acc": "max"}}, "objectives.acc: unknown result"),
    "missing_root": ({"data": {"name": "cifar10", "root": "/no/such/dir"}},
                     "data.root: '/no/such/dir' does not exist"),
}


def write_spec(tmp_path: Path, name: str, **kw) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**GOOD, **kw}))
    return path


@pytest.mark.parametrize("case", sorted(BAD))
def test_validate_names_the_bad_field_and_exits_2(case, tmp_path, capsys):
    mistake, message = BAD[case]
    rc = main(["validate", str(write_spec(tmp_path, case, **mistake))])
    err = capsys.readouterr().err
    assert rc == EXIT_BAD_INPUT and message in err, err


def test_validate_exits_in_seconds_without_starting_ray(tmp_path):
    path = write_spec(tmp_path, "bad", model={"name": "vgg12"}, trials=0)
    code = ("import json, sys; from studies.cli import main; "
            f"rc = main(['validate', {str(path)!r}]); "
            "print(json.dumps({'rc': rc, 'ray': any(m == 'ray' or m.startswith('ray.') "
            "for m in sys.modules)}))")
    t0 = time.time()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    elapsed = time.time() - t0
    result = json.loads(out.stdout)
    assert result == {"rc": EXIT_BAD_INPUT, "ray": False}  # Ray never imported, never started
    assert "model.name" in out.stderr and "trials: 0" in out.stderr
    assert elapsed < 60


def test_validate_json_lists_every_error(tmp_path, capsys):
    path = write_spec(tmp_path, "two", model={"name": "vgg12"}, objectives={"acc": "max"})
    assert main(["validate", str(path), "--json"]) == EXIT_BAD_INPUT
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and len(doc["errors"]) == 2
    assert main(["validate", str(write_spec(tmp_path, "fine")), "--json"]) == EXIT_OK
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True and doc["space"]["none.finetune_epochs"]["type"] == "int"


def _study_dir(tmp_path: Path) -> Path:
    """A study directory as docs/study-directory.md describes it, written by hand."""
    d = tmp_path / "handmade"
    (d / "trials").mkdir(parents=True)
    (d / "study.json").write_text(json.dumps({
        "name": "handmade", "objectives": {"accuracy": "max", "macs": "min"},
        "sampler": "tpe", "sampler_seed": 0, "trials": 6, "methods": "none", "space": {},
        "created": "2026-01-01T00:00:00+00:00", "environment": {}}))
    (d / "base.json").write_text(json.dumps({"accuracy": 0.95, "macs": 30, "params": 100}))
    rows = {"a": (0.9, 10), "b": (0.8, 5), "c": (0.7, 20)}  # c is dominated by a
    for n, (tid, (acc, macs)) in enumerate(rows.items()):
        (d / "trials" / f"{tid}.json").write_text(json.dumps({
            "trial_id": tid, "number": n, "status": "ok", "params": {"none.lr": 0.01},
            "row": {"status": "ok", "method": "none", "accuracy": acc, "macs": macs,
                    "params": 100, "none.lr": 0.01}, "last": {}, "error": None}))
    for n, (tid, status) in enumerate((("d", "failed"), ("e", "running")), start=3):
        (d / "trials" / f"{tid}.json").write_text(json.dumps({
            "trial_id": tid, "number": n, "status": status, "params": {"none.lr": 5.0},
            "row": {}, "last": {}, "error": "TrainingDiverged" if status == "failed" else None}))
    return d


def test_status_json_is_one_document_with_the_counts(tmp_path, capsys):
    d = _study_dir(tmp_path)
    assert main(["status", str(d), "--json"]) == EXIT_OK
    out = capsys.readouterr().out
    doc = json.loads(out)  # one document, nothing else on stdout
    assert {k: doc[k] for k in ("trials", "finished", "running", "failed", "front_size")} == {
        "trials": 5, "finished": 3, "running": 1, "failed": 1, "front_size": 2}
    assert "hypervolume" in doc
    assert main(["status", str(d)]) == EXIT_OK
    assert "3 of 6 trials finished, 1 running, 1 failed" in capsys.readouterr().out
    assert doc["cache"] is None  # the storage has no cache yet
    # With a base model and a decoded dataset in the storage's cache, status shows both.
    (tmp_path / "_cache" / "data" / "x-8px-0").mkdir(parents=True)
    (tmp_path / "_cache" / "data" / "x-8px-0" / "images.u8").write_bytes(bytes(3 * 2**20))
    (tmp_path / "_cache" / "base-vgg11-digits-0.pt").write_bytes(bytes(2**20))
    assert main(["status", str(d)]) == EXIT_OK
    assert (f"cache {tmp_path / '_cache'}: 1 base model(s) 1.0 MiB, 1 dataset(s) 3.0 MiB"
            in capsys.readouterr().out)


def test_study_commands_reject_a_directory_that_is_not_a_study(tmp_path, capsys):
    for cmd in (["status", str(tmp_path)], ["resume", str(tmp_path)],
                ["report", str(tmp_path / "nothing")]):
        assert main(cmd) == EXIT_BAD_INPUT
        assert "is not a study directory" in capsys.readouterr().err


def test_report_without_the_analysis_package_fails_clearly(tmp_path, capsys, monkeypatch):
    d = _study_dir(tmp_path)
    monkeypatch.setitem(sys.modules, "analysis.report", None)  # import raises ImportError
    assert main(["report", str(d)]) == EXIT_ERROR
    assert "`report` needs the analysis package" in capsys.readouterr().err


def test_run_against_no_cluster_fails_fast_and_says_so(tmp_path, capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens
    path = write_spec(tmp_path, "nocluster", storage=str(tmp_path / "runs"))
    t0 = time.time()
    rc = main(["run", str(path), "--address", f"127.0.0.1:{port}"])
    assert rc == EXIT_ERROR and time.time() - t0 < 30
    assert f"nothing answers at 127.0.0.1:{port}" in capsys.readouterr().err
    assert main(["run", str(path), "--address", "nonsense"]) == EXIT_ERROR


def test_help_explains_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for cmd in ("models", "methods", "measure", "validate", "trial", "run", "resume", "status",
                "report"):
        assert f"    {cmd}" in text
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "RAY_AUTH_MODE=token" in capsys.readouterr().out


def test_trial_runs_on_the_thread_count_of_a_studys_trial(tmp_path, capsys, monkeypatch,
                                                         test_cache):
    import torch

    # The conftest's 12-epoch base, found through <storage>/_cache: no training here.
    (tmp_path / "_cache").symlink_to(test_cache, target_is_directory=True)
    spec = {**GOOD, "baseline": {"epochs": 12, "lr": 0.05}, "storage": str(tmp_path),
            "resources": {"cpu": 3}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    threads = []
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    assert main(["trial", str(path), "--set", "none.finetune_epochs=0", "--json"]) == EXIT_OK
    assert threads == [3]
    row = json.loads(capsys.readouterr().out)
    assert row["status"] == "ok" and row["none.finetune_epochs"] == 0
    # no fine-tuning: the base model itself, measured again
    assert row["accuracy"] > 0.9 and row["speedup"] == pytest.approx(1.0)
