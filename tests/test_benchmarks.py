"""The evidence scripts run end to end at tiny settings and write JSON + Markdown."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench_gpu, bench_search


@pytest.fixture(autouse=True)
def _own_ray():
    """The benchmarks start a local Ray in this process; later tests must not inherit it."""
    yield
    import ray

    ray.shutdown()


@pytest.mark.slow
def test_bench_gpu_tiny_writes_throughputs(tmp_path):
    doc = bench_gpu.main(["--tiny", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "gpu-tiny.json").read_text())
    assert saved["ratio"] == pytest.approx(doc["ratio"])
    assert all(r > 0 for r in saved["resident_images_per_s"] + saved["dataloader_images_per_s"])
    study = saved["study"]
    assert study["exclusive"]["trials"] == study["shared"]["trials"] == 4
    assert study["shared"]["max_concurrent"] == 4 and study["exclusive"]["max_concurrent"] == 1
    assert study["ratio"] == pytest.approx(
        study["shared"]["trials_per_hour"] / study["exclusive"]["trials_per_hour"])
    md = (tmp_path / "gpu-tiny.md").read_text()
    assert "images/s" in md and "trials/hour" in md and "Reproduce with" in md


@pytest.mark.slow
def test_bench_search_tiny_compares_samplers(tmp_path):
    doc = bench_search.main(["--tiny", "--out", str(tmp_path), "--storage",
                             str(tmp_path / "runs")])
    table = doc["samplers"]
    assert set(table) == {"random", "nsga2"}
    assert table["random"]["ratio_to_random"] == pytest.approx(1.0)
    for run in doc["runs"]:
        assert len(run["curve"]) == 2
        # hypervolume after each trial never falls
        assert run["curve"][1] >= run["curve"][0] >= 0
        assert run["final_hypervolume"] == run["curve"][-1]
    assert (tmp_path / "search-tiny.png").stat().st_size > 1000
    assert "ratio to random" in (tmp_path / "search-tiny.md").read_text()


@pytest.mark.slow
def test_bench_methods_tiny_tabulates_knees(tmp_path):
    from benchmarks import bench_methods

    doc = bench_methods.main(["--tiny", "--out", str(tmp_path), "--storage",
                              str(tmp_path / "runs")])
    rows = doc["methods"]
    assert set(rows) == {"slimming + quantize", "magnitude (unstructured)"}
    base = doc["base"]
    # int8 after slimming: fewer bytes than the fp32 base by more than the 4x of int8 alone
    assert rows["slimming + quantize"]["size_bytes"] < base["size_bytes"] / 4
    # unstructured pruning keeps the dense shapes, zeroes weights
    mag = rows["magnitude (unstructured)"]
    assert mag["params"] == base["params"] and mag["nonzero_params"] < base["nonzero_params"]
    # the second table: the cheapest trial within one point of the base, or none
    assert set(doc["closest"]) == set(rows)
    for label, close in doc["closest"].items():
        if close is not None:
            assert close["accuracy"] >= base["accuracy"] - doc["within"]
            assert close["nonzero_macs"] <= rows[label]["nonzero_macs"] or \
                rows[label]["accuracy"] < close["accuracy"]
    md = (tmp_path / "methods-tiny.md").read_text()
    assert md.index("| base model |") < md.index("| slimming + quantize |")
    assert "within 1% of the base accuracy" in md
    assert (tmp_path / "methods-tiny-report" / "report.html").is_file()
