"""benchmarks/zoo.py: every cell of a --quick run has an outcome, pruned cells shrink, the
Markdown's counts are the cells', a refusal is classified, and a timeout is recorded."""

from __future__ import annotations

import json
import re

import pytest

from benchmarks import zoo as Z


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One --quick run. One torch thread per worker: beside other busy processes, two
    threads' spin-waits made these small models' passes up to 50 times slower."""
    out = tmp_path_factory.mktemp("zoo")
    doc = Z.main(["--quick", "--json", str(out / "zoo.json"), "--markdown", str(out / "zoo.md"),
                  "--timeout", "120", "--threads", "1"])
    return doc, out


def test_every_timm_name_exists_and_spaces_cover_every_method():
    import timm

    from prune_core.methods import list_methods

    assert [n for n, _, _ in Z.TIMM if not timm.is_model(n)] == []
    assert len(Z.TIMM) >= 30
    assert set(Z.SPACES) == set(list_methods())
    assert len(Z.zoo()) == len({e["model"] for e in Z.zoo()})
    for method in Z.SPACES:  # the short run's point resolves against the method's table
        from prune_core.methods import parse_chain, split_params

        split_params(parse_chain([method]), Z.run_point(method))


def test_a_model_without_batchnorm_is_refused_for_slimming_with_the_reason():
    entry = {"model": "torchvision:squeezenet1_1", "kw": {}, "size": 32}
    cell = Z.cell(entry, "slimming", data=None)  # refused: no short run, no data needed
    assert cell["outcome"] == "refused" and cell["reason"] == "no BatchNorm"
    assert any(e.startswith("methods:") for e in cell["errors"])


def test_refusal_kinds():
    rehearsal = ("methods: slimming cannot run on model 'timm:x': rehearsed on random images, "
                 "stage 'slimming' at slimming.prune_ratio=0.9 failed in module 'head.fc': "
                 "RuntimeError: mat1 and mat2 shapes cannot be multiplied; choose another")
    assert Z.refusal_kind([rehearsal]) == "rehearsal failed: RuntimeError"
    assert Z.refusal_kind(["methods: method 'quantize' (stage 'quantize') cannot run on "
                           "model 'm': torch.export cannot capture its graph (UserError: x)"]) \
        == "torch.export failed: UserError"
    assert Z.refusal_kind(["methods: method 'magnitude' (stage 'magnitude') cannot run on "
                           "model 'm': tracing the model failed (KeyError: 'a')"]) \
        == "tracing failed: KeyError"
    assert Z.refusal_kind(["model.img_size: model 'timm:x' does not take 'img_size'"]) \
        == "spec: model.img_size"


def test_a_worker_past_its_timeout_is_recorded_as_timeout():
    entry = {"model": "timm:resnet10t", "kw": {}, "size": 32}
    record = Z.run_model(entry, ["none", "slimming"], timeout=0.5, threads=1)
    assert [c["outcome"] for c in record["cells"].values()] == ["timeout", "timeout"]
    assert Z.letters(record, ["none", "slimming"]) == "TT"


def test_a_dead_worker_is_described_by_its_signal_and_the_project_frames():
    root = str(Z.ROOT)
    log = "\n".join([
        "double free or corruption (!prev)", "Fatal Python error: Aborted", "",
        "Current thread 0x00007fc4af450b80 (most recent call first):",
        '  File "/venv/torch/autograd/graph.py", line 1072 in _engine_run_backward',
        f'  File "{root}/prune_core/train.py", line 292 in _train_epoch',
        f'  File "{root}/prune_core/methods/repr.py", line 265 in repr_training',
        f'  File "{root}/studies/spec.py", line 251 in parse_spec',
        "Extension modules: numpy, torch._C (total: 175)"])
    cell = Z.crash_cell(-6, log)
    assert cell["outcome"] == "crashed" and cell["step"] == "validate"
    assert cell["error"] == ("the worker died (signal SIGABRT): double free or corruption "
                             "(!prev); Fatal Python error: Aborted")
    assert cell["where"] == "prune_core/train.py:292 in _train_epoch"
    assert cell["stack"][1] == "prune_core/methods/repr.py:265 in repr_training"
    assert not any("Extension modules" in s for s in cell["log_tail"])
    assert Z.crash_cell(1, "")["error"] == "the worker died (exit code 1)"


def test_quick_every_cell_has_an_outcome(quick):
    doc, _ = quick
    models = [e["model"] for e in Z.QUICK]
    assert list(doc["models"]) == models
    for record in doc["models"].values():
        assert set(record["cells"]) == set(Z.QUICK_METHODS)
        assert record["params"] > 0 and record["macs"] > 0
        for method, c in record["cells"].items():
            assert c["outcome"] in Z.OUTCOMES, (record["model"], method, c)
            if c["outcome"] == "refused":
                assert c["reason"] and c["errors"]
            if c["outcome"] in ("failed", "crashed"):
                assert c["error"] and c["step"]


def test_quick_pruned_cells_have_fewer_macs_and_the_same_output(quick):
    doc, _ = quick
    pruned = 0
    for record in doc["models"].values():
        for method in ("slimming", "magnitude"):
            c = record["cells"][method]
            if c["outcome"] != "pruned":
                continue
            pruned += 1
            assert c["macs_after"] < c["macs_before"] == record["macs"]
            assert c["params_after"] < c["params_before"] == record["params"]
            assert c["shape"] == [4, 10]
            assert c["train_loss"] > 0
    assert pruned >= 4  # these small networks are the ones every method must handle


def test_quick_markdown_counts_match_the_cells_and_name_every_model(quick):
    doc, out = quick
    saved = json.loads((out / "zoo.json").read_text())
    assert saved["models"] == json.loads(json.dumps(doc["models"]))
    md = (out / "zoo.md").read_text()
    for method in Z.QUICK_METHODS:
        row = re.search(rf"^\| {method} \|" + r" (\d+) \|" * len(Z.OUTCOMES) + "$", md, re.M)
        assert row, method
        cells = [r["cells"][method]["outcome"] for r in doc["models"].values()]
        assert [int(n) for n in row.groups()] == [cells.count(o) for o in Z.OUTCOMES]
    failed = sum(c["outcome"] == "failed" for r in doc["models"].values()
                 for c in r["cells"].values())
    assert f"Here: **{failed}**." in md
    for record in doc["models"].values():
        assert f"| {record['model'].partition(':')[2]} |" in md
    assert "--quick" in md and "Total wall time" in md and "torch-pruning" in md


def test_runs_of_parts_of_the_zoo_merge_into_one_report(quick, tmp_path):
    doc, _ = quick
    first, second = (tmp_path / "a.json"), (tmp_path / "b.json")
    keys = list(doc["models"])
    for path, part in ((first, keys[:1]), (second, keys[1:])):
        path.write_text(json.dumps({**doc, "models": {k: doc["models"][k] for k in part}}))
    Z.main(["--json", str(first), "--markdown", str(tmp_path / "z.md"), "--merge", str(second)])
    merged = json.loads(first.read_text())
    assert list(merged["models"]) == keys  # zoo order
    assert merged["models"] == json.loads(json.dumps(doc["models"]))
    assert len(merged["runs"]) == 2 * len(doc["runs"])
    assert f"| {keys[-1].partition(':')[2]} |" in (tmp_path / "z.md").read_text()


def test_non_finite_numbers_count_as_diverged_and_other_errors_as_failed():
    """An untrained network's loss or post-training output going to nan or inf is listed
    apart from failures, also in records written before it was; anything else fails."""
    for error in ("TrainingDiverged: training loss is nan at epoch 1",
                  "FloatingPointError: eval-mode output is not finite"):
        assert Z.outcome({"outcome": "failed", "error": error}) == "diverged"
    assert Z.outcome({"outcome": "failed", "error": "ValueError: eval output shape"}) == "failed"
    assert Z.outcome({"outcome": "pruned"}) == "pruned"
