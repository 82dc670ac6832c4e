"""The evidence scripts run end to end at tiny settings and write JSON + Markdown."""

from __future__ import annotations

import ast
import itertools
import json
import os
from pathlib import Path

import pytest

from benchmarks import _common, bench_gpu

BENCHMARKS = sorted(Path(_common.__file__).parent.glob("*.py"))


# The benchmarks share the local Ray the first of them starts; it ends with the module.
pytestmark = pytest.mark.usefixtures("ray_of_the_module")


def test_command_reproduces_the_module_form():
    from benchmarks import bench_lab

    assert _common.command(bench_lab.__file__, ["--tiny", "--out", "a b"]) == \
        "python -m benchmarks.bench_lab --tiny --out 'a b'"


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.stem)
def test_every_benchmark_is_a_module_of_the_package(path):
    """Run as ``python -m benchmarks.<name>``: no script puts the repository on sys.path,
    and every ``main`` takes ``argv=None`` and is what ``python -m`` calls."""
    tree = ast.parse(path.read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "path"
                and isinstance(n.value, ast.Name) and n.value.id == "sys"]
    main = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"),
                None)
    if main is None:
        return
    assert [a.arg for a in main.args.args] == ["argv"]
    assert isinstance(main.args.defaults[0], ast.Constant) and main.args.defaults[0].value is None
    guard = [n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)]
    assert len(guard) == 1 and "main()" in ast.unparse(guard[0])
    if ".write(" in ast.unparse(main):  # a benchmark that writes results notes its start first
        body = [n for n in main.body if not (isinstance(n, ast.Expr)
                                             and isinstance(n.value, ast.Constant))]
        assert ast.unparse(body[0]) == "started = Run(__file__, argv)"


def test_the_load_before_and_the_other_work_flag_a_busy_machine():
    # A benchmark that fills both cores ends near load 2 on an idle machine: quiet.
    quiet = _common.machine_load(0.5, 2.3, 0.1, cpus=2)
    assert quiet == {"load_before": 0.5, "load_after": 2.3, "others_running": 0.1,
                     "busy": False}
    assert _common.busy_note(quiet, cpus=2) is None
    others = _common.machine_load(0.5, 2.3, 1.4, cpus=2)
    assert others["busy"] and _common.busy_note(others, cpus=2) == (
        "Taken on a busy machine (load 2.3 after it, 1.4 runnable threads of other "
        "processes on average during it; 2 cores): timings are indicative only.")
    before = _common.machine_load(2.1, 0.3, 0.0, cpus=2)
    assert before["busy"] and _common.busy_note(before, cpus=2) == (
        "Taken on a busy machine (load 2.1 before the run; 2 cores): timings are indicative "
        "only.")
    # Not sampled (no /proc): the load after decides.
    assert _common.machine_load(0.5, 3.3, None, cpus=2)["busy"]
    assert not _common.machine_load(0.5, 1.9, None, cpus=2)["busy"]
    assert not _common.machine_load(None, None, None, cpus=2)["busy"]


def test_running_outside_leaves_out_the_whole_tree_of_the_root():
    # pid: (parent, runnable threads); 10 is the benchmark, 11 its Ray, 12 a worker of it
    table = {1: (0, 0), 10: (1, 1), 11: (10, 0), 12: (11, 2), 20: (1, 1), 21: (20, 3)}
    assert _common.running_outside(table, 7, root=10) == 4  # 20 and 21
    assert _common.running_outside(table, 7, root=20) == 3  # 10, 12
    assert _common.running_outside(table, 7, root=99) == 7  # a root that ended
    assert _common.running_outside(table, 2, root=20) == 0  # never below zero


def test_other_work_counts_other_processes_and_not_this_ones_children():
    import signal
    import subprocess
    import sys
    import time

    spin = [sys.executable, "-c", "while True: pass"]
    child = subprocess.Popen(spin)
    # The same loop started by a process that exits at once: it leaves this process tree.
    launcher = ("import subprocess; print(subprocess.Popen("
                f"{spin!r}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid)")
    stranger = int(subprocess.run([sys.executable, "-c", launcher], capture_output=True,
                                  text=True, check=True).stdout)
    try:
        time.sleep(0.5)
        table = _common.process_table()
        assert table[child.pid][0] == os.getpid() and table[stranger][0] != os.getpid()
        assert max(_common.process_table()[child.pid][1] for _ in range(5)) == 1
        sampled = _common.OtherWork(interval=0.05)
        time.sleep(1.0)
        assert sampled.stop() >= 0.5  # the stranger, and whatever else runs now
        os.kill(stranger, signal.SIGSTOP)  # a stopped process is not runnable
        time.sleep(0.2)
        assert _common.process_table()[stranger][1] == 0
    finally:
        child.kill()
        os.kill(stranger, signal.SIGKILL)


@pytest.mark.parametrize("after", [0.0, 1000.0])
def test_write_results_stores_the_load_and_says_when_it_was_busy(tmp_path, monkeypatch, after):
    monkeypatch.setattr(_common, "load_1min", lambda: after)
    doc = _common.write_results("x", {"value": 1}, "# Title\n\nText.", tmp_path,
                                cmd="python -m benchmarks.x", load_before=0.0, others=after)
    saved = json.loads((tmp_path / "x.json").read_text())
    assert saved == json.loads(json.dumps(doc))
    assert (saved["load_before"], saved["load_after"], saved["others_running"],
            saved["busy"]) == (0.0, after, after, after > 0)
    md = (tmp_path / "x.md").read_text()
    note = ("**Taken on a busy machine (load 1000.0 after it, 1000.0 runnable threads of "
            f"other processes on average during it; {os.cpu_count()} cores): timings are "
            "indicative only.**")
    if after:
        assert md.startswith(f"# Title\n\n{note}\n\nText.")
    else:
        assert "busy" not in md and md.startswith("# Title\n\nText.")
    assert "- load before and after the run: 0.0, " in md and "python -m benchmarks.x" in md


@pytest.mark.slow
def test_bench_gpu_tiny_writes_throughputs(tmp_path):
    doc = bench_gpu.main(["--tiny", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "gpu-tiny.json").read_text())
    assert saved["ratio"] == pytest.approx(doc["ratio"])
    assert all(r > 0 for r in saved["resident_images_per_s"] + saved["dataloader_images_per_s"])
    study = saved["study"]
    assert study["exclusive"]["trials"] == study["shared"]["trials"] == 2  # tiny: 2 at once
    assert study["shared"]["max_concurrent"] == 2 and study["exclusive"]["max_concurrent"] == 1
    assert study["ratio"] == pytest.approx(
        study["shared"]["trials_per_hour"] / study["exclusive"]["trials_per_hour"])
    md = (tmp_path / "gpu-tiny.md").read_text()
    assert "images/s" in md and "trials/hour" in md and "Reproduce with" in md


@pytest.mark.slow
def test_bench_resnet_tiny_compares_three_slimmings(tmp_path):
    from benchmarks import bench_resnet

    # MACs that fall, then rise again past a ratio (Torch-Pruning skipping groups it would
    # empty): each target takes the closest ratio up to its first crossing, never a later one
    # (steps of 40 MACs up to 0.8; exactly the 500 target at 0.95)
    rows, probes = bench_resnet.match_ratios(
        lambda r: 1000 - 40 * int(r * 25) if r < 0.8 else 500, [500, 100], 0.95, 1 / 25)
    assert rows[0]["status"] == "reached" and rows[0]["macs"] in (480, 520)
    assert rows[0]["ratio"] < 0.8
    assert rows[1]["status"] == "unreachable" and rows[1]["macs"] == min(m for _, m in probes)

    doc = bench_resnet.main(["--tiny", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "resnet-tiny.json").read_text())
    assert set(saved["depths"]) == {"resnet20", "resnet56"}
    targets = saved["settings"]["targets"]
    tol = bench_resnet.MACS_TOLERANCE
    for d in saved["depths"].values():
        seeds = saved["settings"]["seeds"]
        assert {(r["approach"], r["seed"]) for r in d["runs"]} == {
            (a, s) for a in bench_resnet.APPROACHES for s in seeds}
        base = d["bases"][0]
        runs = {r["approach"]: r for r in d["runs"] if r["seed"] == seeds[0]}
        for r in runs.values():
            probed = [m for _, m in r["probes"]]
            assert r["smallest_macs_vs_base"] == pytest.approx(min(probed) / base["macs"])
            assert [p["target"] for p in r["points"]] == targets
            for p in r["points"]:
                assert 0.0 <= p["accuracy"] <= 1.0
                assert 0.0 <= p["accuracy_before_finetune"] <= 1.0
                # the MACs of the model that was fine-tuned, not only of a probe
                assert p["macs_vs_base"] == pytest.approx(p["macs"] / base["macs"])
                assert p["macs"] in probed
                target = p["target"] * base["macs"]
                if p["status"] == "reached":
                    assert abs(p["macs"] / target - 1) <= tol + 1e-3
                elif p["status"] == "unreachable":  # the smallest model stands in
                    assert p["macs"] == min(probed) > target * (1 + tol) * (1 - 1e-3)
                else:  # one channel more or less jumps across the target
                    assert p["status"] == "not matched"
                    assert abs(p["macs"] / target - 1) > tol - 1e-3
                    assert min(probed) <= target * (1 + tol)
            close = r["within_one_point"]
            if close is not None:
                assert close["accuracy"] >= base["accuracy"] - bench_resnet.WITHIN
            assert r["seconds"] > 0
        # only ranking every group thins the residual streams: first-conv-only stops above
        # the 0.25x target, our groups go below it
        assert runs["groups"]["smallest_macs_vs_base"] < 0.25 < \
            runs["first_conv"]["smallest_macs_vs_base"]
        assert [p["status"] for p in runs["first_conv"]["points"]][-1] == "unreachable"
        assert "unreachable" not in [p["status"] for p in runs["groups"]["points"]]
        # the same L1 term: Torch-Pruning's regularize trains the same model as ours
        assert runs["torch_pruning"]["max_weight_difference_to_groups"] == pytest.approx(
            0.0, abs=1e-6)
        assert set(d["summary"]) >= set(bench_resnet.APPROACHES)
    md = (tmp_path / "resnet-tiny.md").read_text()
    assert md.count("| (g) every group | (a) first conv only |") == 2
    assert "| 0.25x base MACs |" in md and "| within one point of base" in md
    assert "unreachable, smallest:" in md
    assert "Reproduce with" in md and "--tiny" in saved["command"]
    assert doc["total_seconds"] == saved["total_seconds"]


def test_bench_lab_tiny_writes_the_seed_table_and_int8_latency(tmp_path):
    from benchmarks import bench_lab

    doc = bench_lab.main(["--tiny", "--out", str(tmp_path)])
    rows = {r["label"]: r for r in doc["rows"]}
    assert {r["section"] for r in doc["rows"]} == {"2.1", "2.2", "3.1.1", "3.1.2", "3.2",
                                                   "3.1.2 + 3.2"}
    assert all(r["row"]["status"] == "ok" for r in doc["rows"])
    layer, glob = rows["L1 unstructured, layer, 0.5"]["row"], \
        rows["L1 unstructured, global, 0.5"]["row"]
    assert layer["magnitude.scope"] == "layer" and glob["magnitude.scope"] == "global"
    assert layer["nonzero_params"] < layer["params"] == doc["base"]["params"]
    assert rows["L1 structured (filters), 0.5"]["row"]["magnitude.n"] == 1
    assert rows["L2 structured 0.5, then int8"]["row"]["size_bytes"] < \
        rows["L2 structured (filters), 0.5"]["row"]["size_bytes"]
    assert set(doc["latency"]) == {"fp32 base", "int8 base", "fp32 L2 structured 0.5",
                                   "int8 L2 structured 0.5"}
    for modes in doc["latency"].values():
        assert set(modes) == {"eager"}  # --tiny leaves compiling out
        assert modes["eager"]["latency_ms_b1"] > 0 and "latency_iqr_ms_b32" in modes["eager"]
    assert doc["load_average_during_latency"] and doc["environment"]["load_average"]
    md = (tmp_path / "lab-tiny.md").read_text()
    assert "| 1 | base |" in md and "## int8 latency" in md and "Reproduce with" in md


@pytest.mark.slow
def test_bench_latency_tiny_times_pruned_and_int8_models(tmp_path):
    from benchmarks import bench_latency

    doc = bench_latency.main(["--tiny", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "latency-tiny.json").read_text())
    assert saved == json.loads(json.dumps(doc))
    models, settings = saved["models"], saved["settings"]
    assert settings["threads"] == saved["environment"]["torch_threads"] == 1
    fp32 = [m for m in models.values() if m["precision"] == "fp32"]
    # MACs and params fall with every share of filters removed
    assert [m["filters_removed"] for m in fp32] == [0.0, *settings["ratios"]]
    assert all(a["macs"] > b["macs"] and a["params"] > b["params"]
               for a, b in itertools.pairwise(fp32))
    # int8 at equal architecture: the same MACs and params, fewer bytes, the same answers
    for name in ("fp32 base", bench_latency.pruned_name(settings["int8_ratio"])):
        f, q = models[name], models[bench_latency.int8_name(name)]
        assert (q["macs"], q["params"]) == (f["macs"], f["params"])
        assert q["size_bytes"] < f["size_bytes"] / 3
        assert q["agreement_with_fp32"] >= 0.9
    rows = saved["rows"]
    assert {(r["model"], r["mode"], r["batch"]) for r in rows} == {
        (m, mode, b) for m in models for mode in settings["modes"] for b in settings["batches"]}
    for r in rows:
        assert r["median_ms"] > 0 and r["iqr_ms"] >= 0 and r["speedup"] > 0
        assert len(r["repeat_medians_ms"]) == settings["repeats"] == 2
        assert all(t > 0 for t in r["repeat_medians_ms"])
        assert r["speedup_range"][0] <= r["speedup"] <= r["speedup_range"][1]
        assert r["macs_over_latency_reduction"] == pytest.approx(
            r["macs_reduction"] / r["speedup"])
        if r["model"] == "fp32 base":
            assert r["speedup"] == 1.0
    assert isinstance(saved["busy"], bool) and saved["load_before"] is not None
    md = (tmp_path / "latency-tiny.md").read_text()
    assert "| int8 base |" in md and "## eager" in md and "--tiny" in saved["command"]
    assert ("Taken on a busy machine" in md) == saved["busy"]
