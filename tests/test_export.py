"""Taking a model away: trials keep their compressed model, `prune-study export` writes it
as torch.export, ONNX and safetensors, and proves each artifact is the model the study
measured; bad requests are refused before any work, and the study directory is never
written."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch

import prune_core
from analysis.studydir import INDEX
from prune_core.compressed import file_sha256
from prune_core.train import TrainConfig, evaluate, fit
from prune_core.trial import load_data
from studies.cli import EXIT_BAD_INPUT, EXIT_OK, main
from studies.record import Recorder, trial_records, write_json
from studies.runner import run_study
from studies.spec import parse_spec
from tests.test_runner import tiny_spec

pytestmark = pytest.mark.slow

MAGNITUDE = {"magnitude.mode": "structured", "magnitude.ratio": {"low": 0.2, "high": 0.8},
             "magnitude.finetune_epochs": 1}


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("export-runs")


@pytest.fixture(scope="module")
def study(local_ray, storage):
    """Two structured-magnitude trials; models kept for the front (the default)."""
    spec = parse_spec(tiny_spec("pruned", storage, methods="magnitude", trials=2, finetune={},
                                sampler={"name": "tpe", "seed": 2}, space=MAGNITUDE))
    run_study(spec, log=lambda _m: None)
    return spec


@pytest.fixture(scope="module")
def int8_study(local_ray, storage):
    """One pruned and int8-quantized trial, with no model kept."""
    spec = parse_spec(tiny_spec("int8", storage, methods="magnitude+quantize", trials=1,
                                finetune={}, keep_models="none", sampler={"name": "random"},
                                space=MAGNITUDE))
    run_study(spec, log=lambda _m: None)
    return spec


def _tree(path: Path) -> dict[str, str]:
    """Every file of a study and its hash, but the readers' trial index: a cache any reader
    of the study refreshes (docs/study-directory.md), not the study's record."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file() and p.name != INDEX}


def _export(capsys, *args) -> tuple[int, str, str]:
    code = main(["export", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_finished_trials_keep_their_model_and_its_hash(study, capsys):
    recs = {r["trial_id"]: r for r in trial_records(study.study_dir)}
    assert all(r["status"] == "ok" for r in recs.values())
    kept = [r for r in recs.values() if not r["model"].get("removed")]
    assert kept, "the front's models must be kept"
    for r in recs.values():
        path = study.study_dir / r["model"]["file"]
        if r["model"].get("removed"):
            assert not path.exists() and "dominated by trial" in r["model"]["removed"]
        else:
            assert file_sha256(path) == r["model"]["sha256"]
            assert path.stat().st_size == r["model"]["bytes"]
    assert main(["status", str(study.study_dir), "--json"]) == EXIT_OK
    status = json.loads(capsys.readouterr().out)
    assert status["kept_models"] == {"count": len(kept),
                                     "bytes": sum(r["model"]["bytes"] for r in kept)}


def test_export_of_the_knee_runs_in_a_python_without_this_project(study, tmp_path, capsys):
    before = _tree(study.study_dir)
    out = tmp_path / "knee"
    code, _, err = _export(capsys, study.study_dir, "--pick", "knee", "-o", out)
    assert code == EXIT_OK, err
    assert {"model.pt2", "model.onnx", "weights.safetensors", "architecture.json",
            "model-card.md", "card.json"} <= {p.name for p in out.iterdir()}
    card = json.loads((out / "card.json").read_text())
    assert card["model_source"] == "kept" and card["chosen"] == "the knee of the front"
    assert all(c["ok"] for c in card["checks"]), card["checks"]
    row = next(r for r in trial_records(study.study_dir)
               if r["trial_id"] == card["trial_id"])["row"]
    assert card["metrics"]["accuracy"] == row["accuracy"]
    assert card["reproduce"].startswith("prune-study trial ") and "--set" in card["reproduce"]

    # The test split as plain tensors, and a Python whose sys.path holds no project code.
    data = load_data(study.trial_spec())
    batches = list(data.batches("test", 512, shuffle=False, augment=False))
    torch.save({"x": torch.cat([x for x, _ in batches]), "y": torch.cat([y for _, y in batches])},
               tmp_path / "test.pt")
    # -S: no site-packages processing, so no editable-install hook; only torch's folder.
    script = textwrap.dedent(f"""
        import sys
        sys.path.append({str(Path(torch.__file__).parent.parent)!r})
        import importlib.util, json, torch
        assert importlib.util.find_spec("prune_core") is None, sys.path
        assert importlib.util.find_spec("studies") is None, sys.path
        d = torch.load({str(tmp_path / 'test.pt')!r}, weights_only=True)
        model = torch.export.load({str(out / 'model.pt2')!r}).module()
        with torch.no_grad():
            logits = torch.cat([model(x) for x in d["x"].split(100)])
        print(json.dumps({{"accuracy": float((logits.argmax(1) == d["y"]).float().mean()),
                           "logits": logits[:8].tolist()}}))
    """)
    p = subprocess.run([sys.executable, "-I", "-S", "-c", script], capture_output=True, text=True,
                       cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    got = json.loads(p.stdout)
    assert round(got["accuracy"] * len(data.test)) == round(row["accuracy"] * len(data.test))

    # ONNX Runtime, run here directly, against torch's program on the same images.
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.cat([x for x, _ in batches])[:64]
    onnx_out = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    with torch.no_grad():
        torch_out = torch.export.load(str(out / "model.pt2")).module()(x)
    assert (onnx_out - torch_out).abs().max() < 1e-3
    # The batch dimension is dynamic in both.
    assert session.run(None, {session.get_inputs()[0].name: x[:3].numpy()})[0].shape[0] == 3
    assert _tree(study.study_dir) == before  # export never writes into the study


def test_load_compressed_rebuilds_the_pruned_module_and_fine_tunes_it(study, tmp_path, capsys):
    out = tmp_path / "again"
    assert _export(capsys, study.study_dir, "--pick", "knee", "-o", out, "--no-onnx")[0] == 0
    model = prune_core.load_compressed(out)
    arch = json.loads((out / "architecture.json").read_text())
    card = json.loads((out / "card.json").read_text())
    # The module comes back pruned, not at the base width.
    assert card["metrics"]["compression"] > 1
    assert sum(p.numel() for p in model.parameters()) == card["metrics"]["params"]
    assert arch["stages"][0]["method"] == "magnitude"
    data = load_data(study.trial_spec())
    before = evaluate(model, data, "test")
    assert before["accuracy"] == pytest.approx(card["metrics"]["accuracy"])
    weights = [p.detach().clone() for p in model.parameters()]
    fit(model, data, TrainConfig(epochs=1, lr=0.01, seed=0))
    assert any(not torch.equal(a, b) for a, b in zip(weights, model.parameters(), strict=True))
    assert not (out / "model.onnx").exists()


def test_a_rebuilt_trial_matches_its_row_exactly(study, tmp_path, capsys):
    code, _, err = _export(capsys, study.study_dir, "--pick", "knee", "--rebuild",
                           "-o", tmp_path / "rebuilt", "--no-onnx")
    assert code == EXIT_OK, err
    card = json.loads((tmp_path / "rebuilt" / "card.json").read_text())
    assert card["model_source"] == "rebuilt" and all(c["ok"] for c in card["checks"])
    assert "rebuilding the model" in err


def test_an_int8_trial_with_no_kept_model_is_rebuilt_and_exported(int8_study, tmp_path,
                                                                   capsys):
    assert not (int8_study.study_dir / "models").exists()  # keep_models: none
    out = tmp_path / "int8"
    code, _, err = _export(capsys, int8_study.study_dir, "--trial", "0", "-o", out)
    assert code == EXIT_OK, err
    assert "rebuilding it by running the trial again" in err
    card = json.loads((out / "card.json").read_text())
    assert [s["method"] for s in card["methods"]] == ["magnitude", "quantize"]
    assert all(c["ok"] for c in card["checks"]), card["checks"]
    assert "interval" in card["checks"][1]["detail"]  # judged by the row's interval
    program = torch.export.load(str(out / "model.pt2"))
    int8_ops = [n for n in program.graph.nodes if "quantize" in str(n.target)]
    assert int8_ops, "the exported program is not the int8 model"
    if card["files"]["model.onnx"].get("bytes"):  # ONNX as QDQ where the exporter can
        ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    else:
        assert "cannot export this int8" in card["files"]["model.onnx"]["missing"]


# --------------------------------------------------------------------------- bad input


def test_bad_requests_are_refused_with_what_to_do(study, tmp_path, capsys):
    d = study.study_dir
    before = _tree(d)
    code, _, err = _export(capsys, d, "--trial", "nosuchtrial", "-o", tmp_path / "a")
    assert code == EXIT_BAD_INPUT and "no such trial" in err and "Traceback" not in err
    first = trial_records(d)[0]["trial_id"]
    code, _, err = _export(capsys, d, "--trial", first[:-1] + "x", "-o", tmp_path / "a")
    assert code == EXIT_BAD_INPUT and f"nearest: {first}" in err
    code, _, err = _export(capsys, d, "--pick", "cheapest", "--max-drop", "-0.5",
                           "-o", tmp_path / "a")
    assert code == EXIT_BAD_INPUT and "--max-drop" in err
    code, _, err = _export(capsys, d, "--pick", "cheapest", "-o", tmp_path / "a")
    assert code == EXIT_BAD_INPUT and "needs --max-drop" in err
    code, _, err = _export(capsys, d, "--pick", "best", "--max-macs", "1", "-o",
                           tmp_path / "a")
    assert code == EXIT_BAD_INPUT and "no finished trial is within macs <= 1" in err
    assert "the closest is trial" in err
    with pytest.raises(SystemExit) as e:  # exactly one of --trial and --pick
        main(["export", str(d), "--trial", "0", "--pick", "knee", "-o", str(tmp_path / "a")])
    assert e.value.code == 2
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    code, _, err = _export(capsys, d, "--pick", "knee", "-o", tmp_path / "full")
    assert code == EXIT_BAD_INPUT and "--force" in err
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine"
    code, _, err = _export(capsys, d, "--pick", "knee", "-o", d / "export")
    assert code == EXIT_BAD_INPUT and "inside the study directory" in err
    assert not (tmp_path / "a").exists()
    assert _tree(d) == before


def test_a_failed_trial_and_a_changed_model_file_are_refused(study, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy" / study.study_dir.name
    shutil.copytree(study.study_dir, copy)
    recs = trial_records(copy)
    kept = next(r for r in recs if not r["model"].get("removed"))
    failed = next(r for r in recs if r is not kept)
    failed.update(status="failed", error="FloatingPointError: loss is NaN", row={})
    write_json(copy / "trials" / f"{failed['trial_id']}.json", failed)
    code, _, err = _export(capsys, copy, "--trial", failed["trial_id"], "-o", tmp_path / "f")
    assert code == EXIT_BAD_INPUT and "ended failed: FloatingPointError" in err

    for r in recs:  # no trial within a point of the base
        if r["status"] == "ok":
            r["row"]["accuracy_drop"] = 0.5
            write_json(copy / "trials" / f"{r['trial_id']}.json", r)
    code, _, err = _export(capsys, copy, "--pick", "cheapest", "--max-drop", "0.01",
                           "-o", tmp_path / "c")
    assert code == EXIT_BAD_INPUT and "no finished trial loses at most 0.01" in err
    assert "the closest is trial" in err and "accuracy_drop 0.5" in err

    path = copy / kept["model"]["file"]
    path.write_bytes(path.read_bytes() + b"changed")
    code, _, err = _export(capsys, copy, "--trial", kept["trial_id"], "-o", tmp_path / "h")
    assert code == EXIT_BAD_INPUT and "differs from the" in err and "--rebuild" in err
    assert not (tmp_path / "h").exists()


def test_keep_models_front_removes_exactly_the_models_that_cannot_reach_the_front(tmp_path):
    rec = Recorder(tmp_path, {"accuracy": "max", "macs": "min"}, 4, keep_models="front",
                   constraints={"accuracy": {"min": 0.5}})
    rows = {"a": (0.9, 100), "b": (0.8, 200), "c": (0.7, 50), "d": (0.4, 10)}
    for i, (tid, (acc, macs)) in enumerate(rows.items()):
        f = tmp_path / "models" / f"{tid}.pt"
        f.parent.mkdir(exist_ok=True)
        f.write_bytes(b"model")
        rec.records[tid] = {"trial_id": tid, "number": i, "status": "ok",
                            "row": {"accuracy": acc, "macs": macs},
                            "model": {"file": f"models/{tid}.pt", "sha256": "x", "bytes": 5}}
    rec._loaded = True
    rec._drop_models()
    left = {p.stem for p in (tmp_path / "models").glob("*.pt")}
    # b is dominated by a; d is infeasible (accuracy below 0.5) though nothing dominates it.
    assert left == {"a", "c"}
    assert rec.records["b"]["model"]["removed"] == "dominated by trial 0 (a)"
    assert rec.records["d"]["model"]["removed"].startswith("infeasible: accuracy >= 0.5")
    saved = json.loads((tmp_path / "trials" / "b.json").read_text())
    assert saved["model"]["removed"]
    Recorder(tmp_path, {"accuracy": "max"}, 1, keep_models="all")._drop_models()
    assert {p.stem for p in (tmp_path / "models").glob("*.pt")} == {"a", "c"}
