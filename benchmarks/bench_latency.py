"""Does removing work remove time? CPU latency of pruned and int8 models against their MACs.

One base model (the registry's VGG-11 at width 0.25, trained on digits, 3x32x32 input)
and four compressed versions made with the project's own methods: L1 filter pruning
(``magnitude``, structured, n 1) removing 50 % and 75 % of every layer's channels, and
int8 (``quantize``: torchao PT2E, x86 quantizer, per-channel weights) of the base and of
the 50 % model, so int8 meets fp32 at equal architecture. None is fine-tuned: latency
depends on the shapes, not on the weights' values.

Each model is timed with ``prune_core.measure.measure_latency`` (``torch.utils.benchmark``;
median and interquartile range of single forward passes after warm-up) at batch 1 and 32,
eager and compiled (``torch.compile``, inductor, freezing: what runs torchao's int8 graph
on int8 kernels), on the study's thread count. The whole measurement is repeated, the
models interleaved within each repeat, so that a change of load hits every model alike;
the spread across repeats says how far one number can be trusted.

    python -m benchmarks.bench_latency                 # 3 repeats, about 10 min on 2 cores
    python -m benchmarks.bench_latency --threads 2
    python -m benchmarks.bench_latency --tiny          # seconds: eager only; the test runs this
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks._common import (
    DOCS,
    Run,
    add_cache_option,
    base_vgg,
    cache_dir,
    digits,
    load_1min,
)
from prune_core.measure import measure, measure_latency
from prune_core.methods import Context, get_method
from prune_core.train import TrainConfig

DEFAULTS = {"model": "vgg11", "width": 0.25, "base_epochs": 10, "train_limit": None,
            "ratios": [0.5, 0.75], "int8_ratio": 0.5, "batches": [1, 32],
            "modes": ["eager", "compiled"], "runs": 30, "warmup": 5, "repeats": 3,
            "calibration_batches": 8}
TINY = {"base_epochs": 1, "train_limit": 256, "batches": [1, 8], "modes": ["eager"],
        "runs": 3, "warmup": 1, "repeats": 2, "calibration_batches": 1}
BASE = "fp32 base"


def pruned_name(ratio: float) -> str:
    return f"fp32 L1 filters {ratio:.0%}"


def int8_name(name: str) -> str:
    return name.replace("fp32", "int8", 1)


def build_models(settings: dict, data, cache: Path, log=print) -> dict[str, dict]:
    """name -> {"model", "float" (the fp32 model it counts as), "ratio", "precision"}."""
    trained = base_vgg(settings, data, cache, log)
    base = trained.build("cpu").eval()
    ctx = {"data": data, "train": TrainConfig(seed=0), "log": log}
    magnitude, quantize = get_method("magnitude"), get_method("quantize")
    out = {BASE: {"model": base, "float": base, "ratio": 0.0, "precision": "fp32"}}
    for ratio in settings["ratios"]:
        params = magnitude.resolve({"mode": "structured", "n": 1, "ratio": ratio,
                                    "finetune_epochs": 0})
        pruned = magnitude(trained.build("cpu"), params,
                           Context(stage="magnitude", **ctx)).eval()
        out[pruned_name(ratio)] = {"model": pruned, "float": pruned, "ratio": ratio,
                               "precision": "fp32"}
    q_params = quantize.resolve({"calibration_batches": settings["calibration_batches"]})
    for name in (BASE, pruned_name(settings["int8_ratio"])):
        fp32 = out[name]["model"]
        t0 = time.perf_counter()
        int8 = quantize(fp32, q_params, Context(stage="quantize", **ctx))
        log(f"{int8_name(name)}: quantized in {time.perf_counter() - t0:.0f} s")
        out[int8_name(name)] = {"model": int8, "float": fp32, "ratio": out[name]["ratio"],
                            "precision": "int8"}
    return out


@torch.no_grad()
def agreement(model, reference, data) -> float:
    """Share of test images on which ``model`` and ``reference`` predict the same class."""
    same = total = 0
    for x, _ in data.batches("test", 128, shuffle=False, augment=False):
        same += int((model(x).argmax(1) == reference(x).argmax(1)).sum())
        total += len(x)
    return same / max(1, total)


def describe(models: dict[str, dict], data) -> dict[str, dict]:
    """Per model: params, MACs, bytes, and for int8 the top-1 agreement with its fp32 twin."""
    out = {}
    base_macs = None
    for name, m in models.items():
        row = measure(m["model"], data.input_shape,
                      structure=m["float"] if m["precision"] == "int8" else None)
        base_macs = base_macs or row["macs"]
        out[name] = {"precision": m["precision"], "filters_removed": m["ratio"],
                     "params": row["params"], "macs": row["macs"],
                     "size_bytes": row["size_bytes"], "macs_vs_base": row["macs"] / base_macs,
                     "agreement_with_fp32": agreement(m["model"], m["float"], data)
                     if m["precision"] == "int8" else None}
    return out


def time_repeats(models: dict[str, dict], data, settings: dict, log=print) -> list[dict]:
    """``repeats`` rounds; in each, every (mode, model) measured once at every batch size.
    Returns one record per round: its load and ``{mode: {model: measure_latency(...)}}``."""
    import torch._dynamo

    rounds = []
    # One static graph per batch size, as a deployment at a fixed batch size compiles
    # (after batch 1, batch 32 would otherwise recompile with a symbolic batch); a limit
    # above the graphs this benchmark makes, so none silently falls back to eager.
    torch._dynamo.reset()
    with torch._dynamo.config.patch(automatic_dynamic_shapes=False, recompile_limit=64):
        for r in range(settings["repeats"]):
            t0 = time.perf_counter()
            record = {"repeat": r, "load_1min": load_1min(), "latency": {}}
            for mode in settings["modes"]:
                record["latency"][mode] = {}
                for name, m in models.items():
                    t1 = time.perf_counter()
                    record["latency"][mode][name] = measure_latency(
                        m["model"], data.input_shape, batch=settings["batches"],
                        threads=settings["threads"], compiled=mode == "compiled",
                        runs=settings["runs"], warmup=settings["warmup"])
                    if r == 0:
                        log(f"  {mode} {name}: {time.perf_counter() - t1:.0f} s")
            record["seconds"] = time.perf_counter() - t0
            log(f"repeat {r + 1}/{settings['repeats']}: {record['seconds']:.0f} s, load "
                f"{record['load_1min']}")
            rounds.append(record)
    return rounds


def summarise(rounds: list[dict], described: dict[str, dict], settings: dict) -> list[dict]:
    """One row per (model, mode, batch): the median over repeats of each repeat's median
    and IQR, the spread of the medians across repeats, and the speed-up over the fp32 base
    taken within each repeat (both timed side by side), with its range over repeats."""
    rows = []
    for mode in settings["modes"]:
        for name, about in described.items():
            for b in settings["batches"]:
                key = f"latency_ms_b{b}"
                medians = [r["latency"][mode][name][key] for r in rounds]
                iqrs = [r["latency"][mode][name][f"latency_iqr_ms_b{b}"] for r in rounds]
                speedups = [r["latency"][mode][BASE][key] / r["latency"][mode][name][key]
                            for r in rounds]
                median = statistics.median(medians)
                speedup = statistics.median(speedups)
                macs_reduction = 1 / about["macs_vs_base"]
                rows.append({
                    "model": name, "mode": mode, "batch": b,
                    "median_ms": median, "iqr_ms": statistics.median(iqrs),
                    "repeat_medians_ms": medians,
                    "repeat_spread": (max(medians) - min(medians)) / median,
                    "speedup": speedup, "speedup_range": [min(speedups), max(speedups)],
                    "macs_reduction": macs_reduction,
                    # 1: latency fell as much as MACs; above 1: by less than MACs
                    "macs_over_latency_reduction": macs_reduction / speedup,
                })
    return rows


def run(settings: dict, cache: Path, log=print) -> dict:
    data = digits(settings["train_limit"])
    t0 = time.perf_counter()
    models = build_models(settings, data, cache, log)
    described = describe(models, data)
    prepare_seconds = time.perf_counter() - t0
    rounds = time_repeats(models, data, settings, log)
    return {"settings": settings, "input_shape": list(data.input_shape),
            "models": described, "rows": summarise(rounds, described, settings),
            "repeats": rounds,
            "prepare_seconds": prepare_seconds,
            "timing_seconds": sum(r["seconds"] for r in rounds)}


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} k"


def markdown(doc: dict) -> str:
    s = doc["settings"]
    shape = "x".join(map(str, doc["input_shape"]))
    lines = [
        "# Latency against MACs: pruned and int8 models on the CPU", "",
        f"{s['model']} at width {s['width']} on digits ({shape} input, a "
        f"{s['base_epochs']}-epoch base), L1 filter pruning (`magnitude`, structured, n 1) "
        f"removing {' and '.join(f'{r:.0%}' for r in s['ratios'])} of every layer's "
        "channels, and int8 (`quantize`, torchao PT2E, x86 quantizer, per-channel weights) "
        f"of the base and of the {s['int8_ratio']:.0%} model. No model is fine-tuned "
        "(latency depends on shapes, not on weight values).", "",
        f"`measure_latency(model, input_shape, batch={s['batches']}, threads={s['threads']}, "
        f"compiled=...)`: {s['runs']} timed single passes after {s['warmup']} warm-up call(s), "
        "median and interquartile range. `eager` runs the module as it is (the int8 model "
        "is torchao's converted graph, which eagerly runs quantize/dequantize around float "
        "kernels); `compiled` is `torch.compile` (inductor) with freezing, one static graph "
        "per batch size, which lowers the int8 graph to int8 kernels. The whole "
        f"measurement ran {s['repeats']} times, the models interleaved within each repeat; "
        "a latency is the median over repeats of each repeat's median, `spread` the range "
        "of those medians over their median, and the speed-up over the fp32 base is taken "
        "within each repeat (median, and range over repeats). `MACs / latency reduction` "
        "is the base's MACs over the model's, divided by the speed-up: 1 when time falls "
        "as much as MACs, above 1 when it falls less.", "",
        "## Models", "",
        "| model | params | MACs | MACs vs base | bytes | int8 agrees with fp32 (test top-1) |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in doc["models"].items():
        agree = "-" if m["agreement_with_fp32"] is None else f"{m['agreement_with_fp32']:.1%}"
        lines.append(f"| {name} | {_mb(m['params'])} | {_mb(m['macs'])} | "
                     f"{m['macs_vs_base']:.3f}x | {m['size_bytes']:,} | {agree} |")
    for mode in s["modes"]:
        lines += ["", f"## {mode}", "",
                  "| model | batch | median ms (IQR) | spread over repeats | speed-up vs fp32 "
                  "base (range) | MACs reduction | MACs / latency reduction |",
                  "|---|---|---|---|---|---|---|"]
        for r in (r for r in doc["rows"] if r["mode"] == mode):
            lo, hi = r["speedup_range"]
            lines.append(f"| {r['model']} | {r['batch']} | {r['median_ms']:.3f} "
                         f"({r['iqr_ms']:.3f}) | {r['repeat_spread']:.0%} | "
                         f"{r['speedup']:.2f}x ({lo:.2f}-{hi:.2f}) | "
                         f"{r['macs_reduction']:.2f}x | {r['macs_over_latency_reduction']:.2f} |")
    loads = [r["load_1min"] for r in doc["repeats"]]
    lines += ["", f"Load (1-minute average) at the start of each repeat: {loads}. Preparing "
              f"the models took {doc['prepare_seconds']:.0f} s, the timing "
              f"{doc['timing_seconds']:.0f} s (compiling included), "
              f"{doc['total_seconds'] / 60:.1f} min in all."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    started = Run(__file__, argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1,
                    help="intra-op threads, as a study's trial with resources.cpu (default 1)")
    ap.add_argument("--repeats", type=int, help="rounds of the whole measurement (default 3)")
    ap.add_argument("--runs", type=int, help="timed passes per model and batch (default 30)")
    ap.add_argument("--modes", nargs="+", choices=["eager", "compiled"],
                    help="default: eager compiled")
    ap.add_argument("--tiny", action="store_true",
                    help="a 1-epoch base on 256 images, batches 1 and 8, eager only, "
                         "2 repeats of 3 runs")
    ap.add_argument("--out", type=Path, default=DOCS, help="where latency.{json,md} go")
    add_cache_option(ap)
    args = ap.parse_args(argv)
    if args.threads < 1:
        ap.error(f"--threads {args.threads}: must be at least 1")
    settings = dict(DEFAULTS, **(TINY if args.tiny else {}), threads=args.threads)
    for key in ("repeats", "runs", "modes"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if settings["repeats"] < 1 or settings["runs"] < 1:
        ap.error("--repeats and --runs must be at least 1")
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:  # written before the threads are restored: the environment records them
        t0 = time.perf_counter()
        doc = run(settings, cache_dir(args),
                  log=lambda msg: print(msg, file=sys.stderr, flush=True))
        doc["total_seconds"] = time.perf_counter() - t0
        return started.write("latency-tiny" if args.tiny else "latency", doc, markdown(doc),
                             args.out)
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
