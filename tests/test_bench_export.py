"""bench_export: pruned models timed in eager torch and ONNX Runtime, exported, and
written to JSON + Markdown; its channel check and speed-ups computed as documented."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench_export as B


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, test_cache):
    """One --tiny run and its output folder; its small base model is cached with the
    tests' own (the same spec as bench_latency's tiny base)."""
    out = tmp_path_factory.mktemp("export")
    doc = B.main(["--tiny", "--out", str(out), "--cache", str(test_cache)])
    return doc, out


def test_channel_check_names_the_narrowed_convs_off_the_multiple():
    base = {"a": 16, "b": 8, "c": 32, "d": 64}
    pruned = {"a": 8, "b": 4, "c": 32, "d": 60}
    check = B.channel_check(base, pruned)
    assert check == {"convs_narrowed": 3, "not_multiple_of_8": {"b": [8, 4], "d": [64, 60]},
                     "channels_multiple_of_8": False}
    # a conv pruning left alone counts even off the multiple (a 3-channel stem, say)
    assert B.channel_check({"a": 3, "b": 16}, {"a": 3, "b": 8})["channels_multiple_of_8"]


def test_summarise_takes_the_speedup_within_each_repeat_and_carries_errors():
    settings = {"runtimes": ["eager", "onnxruntime"], "batches": [1]}
    described = {"net": {B.BASE: {"ratio": 0.0, "round_to": None, "macs_ratio": 1.0},
                         "p": {"ratio": 0.5, "round_to": 8, "macs_ratio": 4.0}}}

    def timed(base_ms, p_ms):
        return {B.BASE: {"latency_ms_b1": base_ms, "latency_iqr_ms_b1": 0.1},
                "p": {"latency_ms_b1": p_ms, "latency_iqr_ms_b1": 0.2}}

    rounds = [{"latency": {"eager": {"net": timed(10.0, 5.0)},
                           "onnxruntime": {"net": {B.BASE: {"error": "boom"},
                                                   "p": {"latency_ms_b1": 1.0,
                                                         "latency_iqr_ms_b1": 0.0}}}}},
              {"latency": {"eager": {"net": timed(30.0, 10.0)},
                           "onnxruntime": {"net": timed(2.0, 1.0)}}}]
    rows = {(r["variant"], r["runtime"]): r for r in B.summarise(rounds, described, settings)}
    eager = rows[("p", "eager")]
    # speed-ups 2 and 3 within the repeats (not the ratio of medians, 20 / 7.5)
    assert eager["speedup"] == pytest.approx(2.5) and eager["speedup_range"] == [2.0, 3.0]
    assert eager["median_ms"] == pytest.approx(7.5) and eager["repeat_medians_ms"] == [5, 10]
    assert eager["macs_over_latency_reduction"] == pytest.approx(4.0 / 2.5)
    assert rows[(B.BASE, "eager")]["speedup"] == 1.0
    # the base failed in one repeat: no speed-up for any model of that runtime
    assert rows[("p", "onnxruntime")]["error"] == "boom"
    assert "median_ms" not in rows[("p", "onnxruntime")]
    assert B._cell(rows[("p", "onnxruntime")]) == "failed"


@pytest.mark.slow
def test_tiny_has_every_model_level_runtime_and_batch(tiny):
    doc, out = tiny
    s = doc["settings"]
    assert s["threads"] == doc["environment"]["torch_threads"]
    expected = [B.BASE] + [B.variant_name(r, rt) for r in s["ratios"] for rt in s["round_to"]]
    assert list(doc["models"]) == s["models"]
    for key in s["models"]:
        assert list(doc["models"][key]) == expected
    assert sorted((r["model"], r["variant"], r["runtime"], r["batch"]) for r in doc["rows"]) \
        == sorted((m, v, rt, b) for m in s["models"] for v in expected
                  for rt in s["runtimes"] for b in s["batches"])
    assert not [r for r in doc["rows"] if "error" in r]
    assert len(doc["repeats"]) == s["repeats"] == 2


@pytest.mark.slow
def test_tiny_macs_ratio_is_one_for_the_base_and_above_one_when_pruned(tiny):
    doc, _ = tiny
    for variants in doc["models"].values():
        base = variants[B.BASE]
        assert base["macs_ratio"] == 1.0 and base["convs_narrowed"] == 0
        for name, m in variants.items():
            assert m["macs_ratio"] == pytest.approx(base["macs"] / m["macs"])
            if name != B.BASE:
                assert m["macs_ratio"] > 1 and m["params"] < base["params"]
                assert m["convs_narrowed"] > 0
    for r in doc["rows"]:
        assert r["macs_ratio"] == doc["models"][r["model"]][r["variant"]]["macs_ratio"]


@pytest.mark.slow
def test_tiny_round_to_8_keeps_every_pruned_conv_at_a_multiple_of_8(tiny):
    doc, _ = tiny
    for variants in doc["models"].values():
        base = variants[B.BASE]["conv_channels"]
        for m in variants.values():
            narrowed = {n: c for n, c in m["conv_channels"].items() if c != base[n]}
            off = {n: c for n, c in narrowed.items() if c % 8}
            assert m["channels_multiple_of_8"] == (not off)
            assert sorted(m["not_multiple_of_8"]) == sorted(off)
            if m["round_to"] == 8:
                assert m["channels_multiple_of_8"] and not off, off
            twin = m["same_shapes_as"]
            assert twin is None or variants[twin]["conv_channels"] == m["conv_channels"]
    # round_to 1 at 75 % leaves VGG-11's 16-channel first conv with 4: the check can fail
    vgg = doc["models"]["vgg11"]
    assert not vgg[B.variant_name(0.75, 1)]["channels_multiple_of_8"]
    assert vgg[B.variant_name(0.75, 1)]["conv_channels"]["features.conv0"] == 4
    assert vgg[B.variant_name(0.75, 8)]["conv_channels"]["features.conv0"] == 8


@pytest.mark.slow
def test_tiny_latencies_and_speedups_are_positive(tiny):
    doc, _ = tiny
    s = doc["settings"]
    for r in doc["rows"]:
        assert r["median_ms"] > 0 and r["iqr_ms"] >= 0 and r["speedup"] > 0
        assert len(r["repeat_medians_ms"]) == s["repeats"]
        assert all(t > 0 for t in r["repeat_medians_ms"])
        assert r["speedup_range"][0] <= r["speedup"] <= r["speedup_range"][1]
        assert r["macs_over_latency_reduction"] == pytest.approx(r["macs_ratio"] / r["speedup"])
        if r["variant"] == B.BASE:
            assert r["speedup"] == 1.0
    for rnd in doc["repeats"]:
        assert set(rnd["latency"]) == set(s["runtimes"])
        for nets in rnd["latency"].values():
            for variants in nets.values():
                for timed in variants.values():
                    assert all(timed[f"latency_ms_b{b}"] > 0 for b in s["batches"])


@pytest.mark.slow
def test_tiny_exports_files_and_pruning_shrinks_them(tiny):
    doc, _ = tiny
    top = max(doc["settings"]["ratios"])
    for variants in doc["models"].values():
        for m in variants.values():
            e = m["export"]
            assert "error" not in e, e
            assert e["pt2_bytes"] > 0 and e["onnx_bytes"] > 0
            assert e["export_s"] > 0 and e["pt2_save_s"] > 0 and e["onnx_s"] > 0
        base = variants[B.BASE]["export"]
        for rt in doc["settings"]["round_to"]:
            pruned = variants[B.variant_name(top, rt)]["export"]
            assert pruned["pt2_bytes"] < base["pt2_bytes"]
            assert pruned["onnx_bytes"] < base["onnx_bytes"]


@pytest.mark.slow
def test_tiny_writes_json_and_markdown(tiny):
    doc, out = tiny
    saved = json.loads((out / "export-tiny.json").read_text())
    assert saved == json.loads(json.dumps(doc))
    assert "--tiny" in saved["command"] and isinstance(saved["busy"], bool)
    assert saved["load_before"] is not None
    md = (out / "export-tiny.md").read_text()
    assert "## vgg11" in md and "## Export" in md and "Reproduce with" in md
    assert "| base | - | 8 convs |" in md and "| 75% | 8 | 8 narrowed, all multiples of 8 |" in md
    assert "eager b1 ms (speed-up)" in md and "onnxruntime b4 ms (speed-up)" in md
    assert "failed" not in md
    assert ("Taken on a busy machine" in md) == saved["busy"]
    pruned = doc["models"]["vgg11"][B.variant_name(0.75, 8)]
    assert f"{pruned['export']['pt2_bytes']:,}" in md
    assert f"MACs {pruned['macs_ratio']:.2f}x" in B.ratios_text(doc)
