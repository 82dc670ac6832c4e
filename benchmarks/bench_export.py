"""Does pruning's MAC reduction become speed in the runtimes users ship? Pruned models in
torch eager, torch compiled and ONNX Runtime, against their MACs; export time and size.

Three networks on digits (3x32x32 input, 10 classes): the registry's VGG-11 at width 0.25
(trained as bench_latency's base, and cached with it), the CIFAR ResNet-20 (``resnet20``)
and torchvision's MobileNetV2 at width_mult 0.5 (``torchvision:mobilenet_v2``). ResNet-20
and MobileNetV2 are not trained: they are freshly initialised under seed 0. Latency
depends on the shapes, not on the weights' values, and structured magnitude pruning
removes ``round(ratio * C)`` channels of every group whatever the weights are, so an
untrained model is pruned to the same shapes as a trained one. No model is fine-tuned.

Each network is pruned with the project's own method (``magnitude``, structured, n 1)
removing 30 %, 60 % and 80 % of every group's channels, each with ``round_to`` 1 (any
count) and 8 (each pruned group keeps a multiple of 8 channels). For the base and every
pruned model: MACs (``count_macs``) and the base's MACs over the model's; latency with
``prune_core.measure.measure_latency`` at batch 1 and 32 in torch eager, torch compiled
(inductor, freezing, one static graph per batch size) and ONNX Runtime (the model
exported by ``torch.onnx``'s dynamo exporter, a CPU session on the same threads), and the
speed-up over the base of the same network taken within each repeat; and, once per
model, the seconds ``torch.export`` + ``torch.export.save`` (model.pt2) and the ONNX
export (model.onnx) take, and the files' bytes. The whole latency measurement is
repeated, the models interleaved within each repeat, so a change of load hits every
model alike. Whether every conv that pruning narrowed keeps a multiple of 8 output
channels is recorded per model (``channels_multiple_of_8``).

    python -m benchmarks.bench_export                    # 3 repeats, about 40 min on 2 cores
    python -m benchmarks.bench_export --threads 2 --models vgg11 resnet20
    python -m benchmarks.bench_export --tiny             # seconds: the test runs this
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from benchmarks._common import (
    DOCS,
    Run,
    add_cache_option,
    base_vgg,
    cache_dir,
    digits,
    load_1min,
)
from prune_core import models as registry
from prune_core.deploy import exported_program, onnx_export
from prune_core.measure import count_macs, count_params, measure_latency
from prune_core.methods import Context, get_method
from prune_core.train import TrainConfig

# The networks: registry name, constructor arguments, and whether the base is trained
# (VGG-11 only: bench_latency's base, from the same cache).
NETWORKS = {
    "vgg11": {"model": "vgg11", "kw": {"width": 0.25}, "trained": True},
    "resnet20": {"model": "resnet20", "kw": {}, "trained": False},
    "mobilenet_v2": {"model": "torchvision:mobilenet_v2", "kw": {"width_mult": 0.5},
                     "trained": False},
}
# Where each column is timed: measure_latency's (compiled, runtime).
RUNTIMES = {"eager": (False, "torch"), "compiled": (True, "torch"),
            "onnxruntime": (False, "onnxruntime")}
DEFAULTS = {"models": list(NETWORKS), "base_epochs": 10, "train_limit": None,
            "ratios": [0.3, 0.6, 0.8], "round_to": [1, 8], "batches": [1, 32],
            "runtimes": list(RUNTIMES), "runs": 30, "warmup": 5, "repeats": 3, "seed": 0}
TINY = {"models": ["vgg11"], "base_epochs": 1, "train_limit": 256, "ratios": [0.75],
        "batches": [1, 4], "runtimes": ["eager", "onnxruntime"], "runs": 3, "warmup": 1,
        "repeats": 2}
BASE = "base"
MULTIPLE = 8  # the channel multiple checked (round_to 8)


def variant_name(ratio: float, round_to: int) -> str:
    return f"{ratio:.0%} filters, round_to {round_to}"


def base_model(key: str, settings: dict, data, cache: Path, log=print):
    """``build() -> a fresh copy of the base``: the cached trained VGG-11, or the network
    initialised under the seed."""
    net = NETWORKS[key]
    if net["trained"]:
        trained = base_vgg({"model": net["model"], "width": net["kw"]["width"],
                            "base_epochs": settings["base_epochs"],
                            "train_limit": settings["train_limit"]}, data, cache, log)
        return lambda: trained.build("cpu").eval()

    def fresh() -> nn.Module:
        torch.manual_seed(settings["seed"])
        return registry.build(net["model"], data.num_classes, **net["kw"]).eval()

    return fresh


def conv_channels(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def channel_check(base: dict[str, int], pruned: dict[str, int]) -> dict:
    """Which convs pruning narrowed, and those of them whose output channels are not a
    multiple of MULTIPLE (``{conv: [base, pruned]}``)."""
    narrowed = {n: c for n, c in pruned.items() if c != base[n]}
    off = {n: [base[n], c] for n, c in narrowed.items() if c % MULTIPLE}
    return {"convs_narrowed": len(narrowed), "not_multiple_of_8": off,
            "channels_multiple_of_8": not off}


def build_models(settings: dict, data, cache: Path, log=print) -> dict[str, dict[str, dict]]:
    """network -> variant -> {"model", "ratio", "round_to"}: the base and every
    (ratio, round_to) pruning of it."""
    method = get_method("magnitude")
    out: dict[str, dict[str, dict]] = {}
    for key in settings["models"]:
        build = base_model(key, settings, data, cache, log)
        variants = {BASE: {"model": build(), "ratio": 0.0, "round_to": None}}
        for ratio in settings["ratios"]:
            for round_to in settings["round_to"]:
                params = method.resolve({"mode": "structured", "n": 1, "ratio": ratio,
                                         "finetune_epochs": 0, "round_to": round_to})
                ctx = Context(stage="magnitude", data=data,
                              train=TrainConfig(seed=settings["seed"]), log=log)
                pruned = method(build(), params, ctx).eval()
                variants[variant_name(ratio, round_to)] = {
                    "model": pruned, "ratio": ratio, "round_to": round_to}
        out[key] = variants
    return out


def export_sizes(model: nn.Module, input_shape) -> dict:
    """Seconds of ``torch.export`` (+ save, model.pt2) and of the ONNX export (model.onnx),
    and the two files' bytes; ``error`` naming the step that failed instead."""
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-export-") as d:
        step = "torch.export"
        try:
            t0 = time.perf_counter()
            program = exported_program(model, input_shape)
            out["export_s"] = time.perf_counter() - t0
            step = "torch.export.save"
            t0 = time.perf_counter()
            torch.export.save(program, Path(d) / "model.pt2")
            out["pt2_save_s"] = time.perf_counter() - t0
            out["pt2_bytes"] = os.path.getsize(Path(d) / "model.pt2")
            step = "ONNX export"
            t0 = time.perf_counter()
            onnx_export(program, Path(d) / "model.onnx")
            out["onnx_s"] = time.perf_counter() - t0
            out["onnx_bytes"] = os.path.getsize(Path(d) / "model.onnx")
        except Exception as e:  # a model that does not export is a result, not a crash
            out["error"] = f"{step}: {type(e).__name__}: {str(e).strip()[:300]}"
    return out


def describe(models: dict[str, dict[str, dict]], input_shape, log=print) -> dict:
    """network -> variant -> params, MACs, MACs ratio, channels and export sizes."""
    out: dict[str, dict[str, dict]] = {}
    for key, variants in models.items():
        base = variants[BASE]["model"]
        base_macs, base_channels = count_macs(base, input_shape)[0], conv_channels(base)
        out[key] = {}
        for name, v in variants.items():
            macs = count_macs(v["model"], input_shape)[0]
            channels = conv_channels(v["model"])
            # round_to that changes nothing (a ratio whose counts are multiples already)
            twin = next((n for n, a in out[key].items() if a["conv_channels"] == channels),
                        None)
            out[key][name] = {
                "ratio": v["ratio"], "round_to": v["round_to"],
                "params": count_params(v["model"])[0], "macs": macs,
                "macs_ratio": base_macs / macs, "conv_channels": channels,
                **channel_check(base_channels, channels), "same_shapes_as": twin,
                "export": export_sizes(v["model"], input_shape)}
            e = out[key][name]["export"]
            log(f"{key} {name}: exported, "
                + (e["error"] if "error" in e else f"{e['export_s'] + e['onnx_s']:.0f} s"))
    return out


def time_repeats(models: dict[str, dict[str, dict]], input_shape, settings: dict,
                 log=print) -> list[dict]:
    """``repeats`` rounds; in each, every (runtime, network, variant) timed once at every
    batch size. One record per round: its load and ``{runtime: {network: {variant:
    measure_latency(...) or {"error": ...}}}}``."""
    import torch._dynamo

    rounds = []
    # As bench_latency: one static graph per batch size, and a recompile limit above the
    # graphs made here, so none silently falls back to eager.
    torch._dynamo.reset()
    with torch._dynamo.config.patch(automatic_dynamic_shapes=False, recompile_limit=64):
        for r in range(settings["repeats"]):
            t0 = time.perf_counter()
            record = {"repeat": r, "load_1min": load_1min(), "latency": {}}
            for runtime in settings["runtimes"]:
                compiled, where = RUNTIMES[runtime]
                record["latency"][runtime] = {}
                for key, variants in models.items():
                    record["latency"][runtime][key] = {}
                    for name, v in variants.items():
                        t1 = time.perf_counter()
                        try:
                            timed = measure_latency(
                                v["model"], input_shape, batch=settings["batches"],
                                threads=settings["threads"], compiled=compiled,
                                runs=settings["runs"], warmup=settings["warmup"],
                                runtime=where)
                        except Exception as e:  # recorded; the table says "failed"
                            timed = {"error": f"{type(e).__name__}: {str(e).strip()[:300]}"}
                            log(f"  {runtime} {key} {name}: {timed['error']}")
                        record["latency"][runtime][key][name] = timed
                        if r == 0:
                            log(f"  {runtime} {key} {name}: {time.perf_counter() - t1:.0f} s")
            record["seconds"] = time.perf_counter() - t0
            log(f"repeat {r + 1}/{settings['repeats']}: {record['seconds']:.0f} s, load "
                f"{record['load_1min']}")
            rounds.append(record)
    return rounds


def summarise(rounds: list[dict], described: dict, settings: dict) -> list[dict]:
    """One row per (network, variant, runtime, batch): the median over repeats of each
    repeat's median and IQR, the repeats' medians, and the speed-up over the network's
    base taken within each repeat (median, and range over repeats), beside the MACs
    ratio. A cell that failed in any repeat carries its ``error`` instead of numbers."""
    rows = []
    for key, variants in described.items():
        for name, about in variants.items():
            for runtime in settings["runtimes"]:
                timed = [r["latency"][runtime][key] for r in rounds]
                errors = [t[n]["error"] for t in timed for n in (BASE, name) if "error" in t[n]]
                for b in settings["batches"]:
                    row = {"model": key, "variant": name, "ratio": about["ratio"],
                           "round_to": about["round_to"], "runtime": runtime, "batch": b,
                           "macs_ratio": about["macs_ratio"]}
                    if errors:
                        rows.append({**row, "error": errors[0]})
                        continue
                    k = f"latency_ms_b{b}"
                    medians = [t[name][k] for t in timed]
                    speedups = [t[BASE][k] / t[name][k] for t in timed]
                    speedup = statistics.median(speedups)
                    rows.append({
                        **row, "median_ms": statistics.median(medians),
                        "iqr_ms": statistics.median(t[name][f"latency_iqr_ms_b{b}"]
                                                    for t in timed),
                        "repeat_medians_ms": medians,
                        "speedup": speedup, "speedup_range": [min(speedups), max(speedups)],
                        # 1: time fell as much as MACs; above 1: by less than MACs
                        "macs_over_latency_reduction": about["macs_ratio"] / speedup})
    return rows


def run(settings: dict, cache: Path, log=print) -> dict:
    data = digits(settings["train_limit"])
    shape = tuple(data.input_shape)
    t0 = time.perf_counter()
    models = build_models(settings, data, cache, log)
    described = describe(models, shape, log)
    prepare_seconds = time.perf_counter() - t0
    rounds = time_repeats(models, shape, settings, log)
    return {"settings": settings, "input_shape": list(shape),
            "networks": {k: {"model": NETWORKS[k]["model"], "kw": NETWORKS[k]["kw"],
                             "trained": NETWORKS[k]["trained"]} for k in settings["models"]},
            "models": described, "rows": summarise(rounds, described, settings),
            "repeats": rounds, "prepare_seconds": prepare_seconds,
            "timing_seconds": sum(r["seconds"] for r in rounds)}


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} k"


def channels_note(about: dict) -> str:
    if about["ratio"] == 0:
        return f"{len(about['conv_channels'])} convs"
    off = about["not_multiple_of_8"]
    note = f"{about['convs_narrowed']} narrowed"
    if about["same_shapes_as"]:
        note += f" (the shapes of {about['same_shapes_as']})"
    if not off:
        return f"{note}, all multiples of 8"
    shown = ", ".join(f"{n} {a}->{b}" for n, (a, b) in list(off.items())[:2])
    more = f" and {len(off) - 2} more" if len(off) > 2 else ""
    return f"{note}, {len(off)} not a multiple of 8 ({shown}{more})"


def _network(key: str, net: dict, settings: dict) -> str:
    kw = ", ".join(f"{k} {v}" for k, v in net["kw"].items())
    epochs = settings["base_epochs"]
    trained = (f"trained {epochs} epoch{'s' if epochs != 1 else ''}" if net["trained"]
               else f"untrained, seed {settings['seed']}")
    return f"{key} (`{net['model']}`{' ' + kw if kw else ''}; {trained})"


def _cell(row: dict) -> str:
    if "error" in row:
        return "failed"
    return f"{row['median_ms']:.3f} ({row['speedup']:.2f}x)"


def markdown(doc: dict) -> str:
    s = doc["settings"]
    shape = "x".join(map(str, doc["input_shape"]))
    nets = ", ".join(_network(k, n, s) for k, n in doc["networks"].items())
    cols = [(rt, b) for rt in s["runtimes"] for b in s["batches"]]
    lines = [
        "# Does pruning's MAC reduction become speed? Eager, compiled and ONNX Runtime", "",
        f"Networks on digits ({shape} input): {nets}. Structured magnitude pruning "
        "(`magnitude`, mode structured, n 1, no fine-tuning) removing "
        f"{', '.join(f'{r:.0%}' for r in s['ratios'])} of every group's channels, with "
        f"`round_to` {' and '.join(map(str, s['round_to']))}. Latency does not depend on "
        "weight values, and the pruned shapes do not either, so untrained networks give "
        "the same timings as trained ones.", "",
        f"`measure_latency(model, input_shape, batch={s['batches']}, threads={s['threads']}"
        f", ...)`: {s['runs']} timed passes after {s['warmup']} warm-up call(s), median; "
        "`eager` is torch as it is, `compiled` `torch.compile` (inductor, freezing, one "
        "static graph per batch size), `onnxruntime` the dynamo-exported ONNX model in an "
        f"ONNX Runtime CPU session. The whole measurement ran {s['repeats']} times, the "
        "models interleaved within each repeat. A cell is the median over repeats of each "
        "repeat's median latency in ms, and in brackets the speed-up over the network's "
        "base, taken within each repeat (median over repeats). `MACs ratio` is the base's "
        "MACs over the model's: what the speed-up would be if time followed MACs.",
    ]
    for key, variants in doc["models"].items():
        rows = {(r["variant"], r["runtime"], r["batch"]): r for r in doc["rows"]
                if r["model"] == key}
        lines += ["", f"## {key}", "",
                  "| level | round_to | channels | MACs | MACs ratio | "
                  + " | ".join(f"{rt} b{b} ms (speed-up)" for rt, b in cols) + " |",
                  "|---|---|---|---|---|" + "---|" * len(cols)]
        for name, about in variants.items():
            level = "base" if about["ratio"] == 0 else f"{about['ratio']:.0%}"
            lines.append(f"| {level} | {about['round_to'] or '-'} | {channels_note(about)} | "
                         f"{_mb(about['macs'])} | {about['macs_ratio']:.2f}x | "
                         + " | ".join(_cell(rows[(name, rt, b)]) for rt, b in cols) + " |")
    lines += ["", "## Export", "",
              "Once per model, into a temporary folder: `exported_program` (`torch.export`, "
              "batch dynamic) then `torch.export.save` (model.pt2), and `torch.onnx`'s dynamo "
              "exporter on that program (model.onnx, weights inside).", "",
              "| model | level | round_to | torch.export s | save s | ONNX export s | "
              "model.pt2 bytes | model.onnx bytes |", "|---|---|---|---|---|---|---|---|"]
    for key, variants in doc["models"].items():
        for about in variants.values():
            e = about["export"]
            level = "base" if about["ratio"] == 0 else f"{about['ratio']:.0%}"
            head = f"| {key} | {level} | {about['round_to'] or '-'} |"
            if "error" in e:
                lines.append(f"{head} failed: {e['error'][:120]} | | | | |")
                continue
            lines.append(f"{head} {e['export_s']:.2f} | {e['pt2_save_s']:.2f} | "
                         f"{e['onnx_s']:.2f} | {e['pt2_bytes']:,} | {e['onnx_bytes']:,} |")
    failed = sorted({r["error"] for r in doc["rows"] if "error" in r})
    if failed:
        lines += ["", "Failed timings: " + "; ".join(failed)]
    loads = [r["load_1min"] for r in doc["repeats"]]
    lines += ["", f"Load (1-minute average) at the start of each repeat: {loads}. Preparing "
              f"the models (training, pruning, exporting) took {doc['prepare_seconds']:.0f} s, "
              f"the timing {doc['timing_seconds']:.0f} s (compiling and ONNX exports "
              f"included), {doc['total_seconds'] / 60:.1f} min in all."]
    return "\n".join(lines)


def ratios_text(doc: dict) -> str:
    """One line per pruned model: the MACs ratio and every measured speed-up."""
    lines = []
    for key, variants in doc["models"].items():
        for name, about in variants.items():
            if about["ratio"] == 0:
                continue
            cells = [f"{r['runtime']} b{r['batch']} "
                     + ("failed" if "error" in r else f"{r['speedup']:.2f}x")
                     for r in doc["rows"] if r["model"] == key and r["variant"] == name]
            lines.append(f"{key} {name}: MACs {about['macs_ratio']:.2f}x; "
                         + ", ".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    started = Run(__file__, argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_threads = min(2, os.cpu_count() or 1)
    ap.add_argument("--threads", type=int, default=default_threads,
                    help=f"intra-op threads of every runtime (default {default_threads}: 2, "
                         "or the machine's cores where fewer)")
    ap.add_argument("--models", nargs="+", choices=list(NETWORKS),
                    help="default: " + " ".join(NETWORKS))
    ap.add_argument("--repeats", type=int, help="rounds of the whole measurement (default 3)")
    ap.add_argument("--runs", type=int, help="timed passes per model and batch (default 30)")
    ap.add_argument("--runtimes", nargs="+", choices=list(RUNTIMES),
                    help="default: " + " ".join(RUNTIMES))
    ap.add_argument("--tiny", action="store_true",
                    help="VGG-11 only (a 1-epoch base on 256 images), one ratio (75 %%), "
                         "batches 1 and 4, eager and onnxruntime, 2 repeats of 3 runs")
    ap.add_argument("--out", type=Path, default=DOCS, help="where export.{json,md} go")
    add_cache_option(ap)
    args = ap.parse_args(argv)
    if args.threads < 1:
        ap.error(f"--threads {args.threads}: must be at least 1")
    settings = dict(DEFAULTS, **(TINY if args.tiny else {}), threads=args.threads)
    for key in ("models", "repeats", "runs", "runtimes"):
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
        written = started.write("export-tiny" if args.tiny else "export", doc, markdown(doc),
                                args.out)
        print(ratios_text(doc), flush=True)
        return written
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
