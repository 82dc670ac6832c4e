"""The course lab's table (seed 002): size, operations and accuracy of each reduction.

One table in the seed's form, every row one trial of ``studies/specs/none.yaml`` (VGG-11
at width 0.25 on digits, the 15-epoch base) run through ``prune_core.trial.run_trial``
as ``prune-study trial ... --set`` runs it, on one thread: the base; orthogonal
parametrisation (2.1) on a couple of layer counts; separable filters (2.2);
L1-unstructured pruning per layer and global over the ratio range (3.1.1);
Ln-structured filter pruning with n = 1 and n = 2 (3.1.2); int8 (3.2). Then the
latency of fp32 against int8 (the base, and one structured-pruned model) at batch 1
and 32 on one thread, eager and compiled (``torch.compile`` with freezing, which is
what runs torchao's int8 graph on int8 kernels).

    python -m benchmarks.bench_lab                                  # the full table
    python -m benchmarks.bench_lab --ratios 0.5,0.8,0.95            # fewer unstructured ratios
    python -m benchmarks.bench_lab --tiny                           # seconds: the test runs this
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path

from benchmarks._common import DOCS, Run, add_cache_option, cache_dir
from benchmarks.bench_trials import BULKY, SPEC, _cell, _flags, _key

MAG = {"pipeline": "magnitude"}
FACT = {"pipeline": "factorize"}
RATIOS = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95)  # unstructured, per layer and global
STRUCTURED_RATIOS = (0.3, 0.5, 0.7)  # share of each layer's filters removed
ORTHOGONAL_LAYERS = (2, 4)
# The pruned model whose int8 twin is timed: structured (L2) at 0.5.
PRUNED = {**MAG, "magnitude.mode": "structured", "magnitude.n": 2, "magnitude.ratio": 0.5}
INT8 = {"pipeline": "quantize"}
PRUNED_INT8 = {**PRUNED, "pipeline": "magnitude+quantize"}
COLUMNS = ("params", "nonzero_params", "size_bytes", "ops", "macs", "nonzero_macs", "accuracy")
# --tiny: every row of every section, on a model and images small enough for seconds a row
# (VGG-11 at width 0.125 on 16x16 digits: about 1/16 of the default's MACs).
TINY = {"baseline": {"epochs": 1}, "model": {"width": 0.125}, "data": {"image_size": 16},
        "params": {"magnitude.finetune_epochs": 1, "factorize.finetune_epochs": 1}}


def rows(ratios, structured_ratios, orthogonal_layers) -> list[tuple[str, str, dict]]:
    """(seed section, label, trial parameters) for every row after the base."""
    out = [("2.1", f"orthogonal, {n} layer{'s' if n != 1 else ''}",
            {**FACT, "factorize.variant": "orthogonal", "factorize.layers": n})
           for n in orthogonal_layers]
    out.append(("2.2", "separable, 3 layers, rank 0.5", {**FACT, "factorize.layers": 3}))
    for scope in ("layer", "global"):
        out += [("3.1.1", f"L1 unstructured, {scope}, {r:g}",
                 {**MAG, "magnitude.scope": scope, "magnitude.ratio": r}) for r in ratios]
    for n in (1, 2):
        out += [("3.1.2", f"L{n} structured (filters), {r:g}",
                 {**MAG, "magnitude.mode": "structured", "magnitude.n": n,
                  "magnitude.ratio": r}) for r in structured_ratios]
    out.append(("3.2", "int8 (per channel)", INT8))
    out.append(("3.1.2 + 3.2", "L2 structured 0.5, then int8", PRUNED_INT8))
    return out


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v.strip())


def lab_table(lab_rows, results: dict, base: dict) -> list[str]:
    head = ["seed", "model", *COLUMNS, "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
             "| 1 | base | " + " | ".join(_cell(base.get(c)) for c in COLUMNS) + " | - |"]
    for section, label, p in lab_rows:
        r = results[_key(p)]
        cells = [_cell(r.get(c), base.get(c)) for c in COLUMNS]
        lines.append(f"| {section} | {label} | " + " | ".join(cells)
                     + f" | {r['train_seconds']:.0f} |")
    return lines


def latency_table(latency: dict) -> list[str]:
    lines = ["| model | mode | batch 1 median (IQR), ms | batch 32 median (IQR), ms |",
             "|---|---|---|---|"]
    for name, modes in latency.items():
        for mode, t in modes.items():
            lines.append(f"| {name} | {mode} | {t['latency_ms_b1']:.3f} "
                         f"({t['latency_iqr_ms_b1']:.3f}) | {t['latency_ms_b32']:.3f} "
                         f"({t['latency_iqr_ms_b32']:.3f}) |")
    return lines


def main(argv: list[str] | None = None) -> dict:
    started = Run(__file__, argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ratios", type=_floats, default=RATIOS,
                   help="unstructured ratios, comma-separated (default: %(default)s)")
    p.add_argument("--structured-ratios", type=_floats, default=STRUCTURED_RATIOS,
                   help="structured ratios, comma-separated (default: %(default)s)")
    p.add_argument("--orthogonal-layers", type=lambda s: tuple(int(v) for v in s.split(",")),
                   default=ORTHOGONAL_LAYERS, help="layer counts (default: %(default)s)")
    p.add_argument("--runs", type=int, default=30, help="timed forward passes per batch size")
    p.add_argument("--tiny", action="store_true",
                   help="a 1-epoch base at width 0.125 on 16x16 digits, 1-epoch stages, one "
                        "ratio, eager latency only")
    p.add_argument("--out", type=Path, default=DOCS, help="where lab.* go")
    add_cache_option(p)
    args = p.parse_args(argv)
    import torch

    from prune_core.baseline import get_base
    from prune_core.measure import measure_latency
    from prune_core.trial import load_data, run_trial
    from studies.spec import load_spec

    spec = load_spec(SPEC)
    ratios, structured, orthogonal = args.ratios, args.structured_ratios, args.orthogonal_layers
    compiled_modes = [False, True]
    if args.tiny:
        spec = spec.with_overrides(baseline={**spec.source["baseline"], **TINY["baseline"]},
                                   model={**spec.source["model"], **TINY["model"]},
                                   data={"name": spec.data, **spec.data_kw, **TINY["data"]})
        ratios, structured, orthogonal = (0.5,), (0.5,), (1,)
        compiled_modes = [False]  # compiling takes 15-40 s a model
        args.runs = min(args.runs, 3)
    lab_rows = rows(ratios, structured, orthogonal)
    if args.tiny:
        lab_rows = [(s, label, {**{k: v for k, v in TINY["params"].items()
                                   if k.split(".")[0] in params["pipeline"]}, **params})
                    for s, label, params in lab_rows]
    def find(want: dict) -> dict:
        found = [q for _, _, q in lab_rows if all(q.get(k) == v for k, v in want.items())]
        if not found:
            raise SystemExit(f"no row has {want}: the latency comparison needs it")
        return found[0]

    pruned, pruned_int8, int8 = find(PRUNED), find(PRUNED_INT8), find(INT8)

    ts = replace(spec.trial_spec(), cache_dir=str(cache_dir(args)))
    torch.set_num_threads(1)  # none.yaml's resources.cpu: one thread, as a study's trial
    t_start = time.perf_counter()
    data = load_data(ts)
    base, _ = get_base(ts.base_spec(), data, ts.cache_dir, log=print)

    keep = {_key(pruned), _key(pruned_int8), _key(int8)}
    results: dict[str, dict] = {}
    models: dict[str, torch.nn.Module] = {}
    todo = {_key(q): (label, q) for _, label, q in lab_rows}
    for i, (key, (label, params)) in enumerate(todo.items(), start=1):
        t0 = time.perf_counter()
        out: dict = {}
        row = run_trial({"study": ts, "params": params}, base=base,
                        log=lambda m: print(f"    {m}"), model_out=out)
        results[key] = {k: v for k, v in row.items() if k not in BULKY}
        if key in keep:
            models[key] = out["model"]
        print(f"[{i}/{len(todo)}] {label}: accuracy {row['accuracy']:.4f}, "
              f"{row['nonzero_macs'] / 1e6:.2f} M non-zero MACs, {row['size_bytes']:,} bytes "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    trials_seconds = time.perf_counter() - t_start

    timed = {"fp32 base": base.build("cpu"), "int8 base": models[_key(int8)],
             "fp32 L2 structured 0.5": models[_key(pruned)],
             "int8 L2 structured 0.5": models[_key(pruned_int8)]}
    latency: dict[str, dict] = {}
    load_during: list[list[float]] = []
    for name, model in timed.items():
        latency[name] = {}
        for compiled in compiled_modes:
            t0 = time.perf_counter()
            load_during.append([round(v, 2) for v in os.getloadavg()])
            latency[name]["compiled" if compiled else "eager"] = measure_latency(
                model, data.input_shape, batch=[1, 32], threads=1, compiled=compiled,
                runs=args.runs)
            print(f"latency {name} {'compiled' if compiled else 'eager'}: "
                  f"{latency[name]['compiled' if compiled else 'eager']['latency_ms_b1']:.3f} ms "
                  f"b1 ({time.perf_counter() - t0:.0f} s)", flush=True)
    wall = time.perf_counter() - t_start

    intro = (f"Each row is one trial of `studies/specs/none.yaml` ({ts.model} at width "
             f"{ts.model_kw.get('width', 1)} on {ts.data} at "
             f"{'x'.join(map(str, data.input_shape))}, a {ts.baseline['epochs']}-epoch "
             f"base, seed {ts.seed}) with the row's parameters set and the rest at their "
             "defaults (`prune-study methods`), on 1 thread. `seed` is the lab's section. "
             "Ratios are to the base. `nonzero_params` and `nonzero_macs` count only weights "
             "that are not zero (unstructured pruning keeps the dense shapes, so `params`, "
             "`macs` and `size_bytes` do not fall); `ops` is MACs plus one operation per "
             "activation output; `size_bytes` is the stored tensors (int8 weights for int8); "
             "`accuracy` is on the whole test split; `seconds` is the trial's training time.")
    lat_intro = ("`measure_latency(model, input_shape, batch=[1, 32], threads=1, "
                 f"compiled=...)`, {args.runs} timed passes after 5 warm-up calls: median "
                 "and interquartile range in ms. `eager` runs the module as it is (the int8 "
                 "model is torchao's converted PT2E graph, which eagerly runs quantize/"
                 "dequantize around float kernels); `compiled` is `torch.compile` (inductor) "
                 "with freezing, which lowers that graph to int8 kernels - what deployment "
                 f"runs. Load average when each measurement started: {load_during}. The "
                 f"machine has {os.cpu_count()} logical CPUs and other processes run on it, "
                 "so these timings are indicative only.")
    lines = ["# The course lab's table (seed 002)", "", intro, "",
             *lab_table(lab_rows, results, base.row), "", "## int8 latency", "", lat_intro,
             "", *latency_table(latency), "",
             f"Wall time: {wall / 60:.1f} min ({trials_seconds / 60:.1f} min of trials).", "",
             "`prune-study trial studies/specs/none.yaml` options per row:", ""]
    lines += [f"- {label}: `{_flags(params)}`" for _, label, params in lab_rows]
    doc = {"base": base.row,
           "rows": [{"section": s, "label": label, "params": params,
                     "row": results[_key(params)]} for s, label, params in lab_rows],
           "latency": latency, "load_average_during_latency": load_during,
           "wall_seconds": wall, "trials_seconds": trials_seconds}
    return started.write("lab-tiny" if args.tiny else "lab", doc, "\n".join(lines), args.out)


if __name__ == "__main__":
    main()
