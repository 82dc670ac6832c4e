"""Parallel-branch pruning: seed 004's linear alpha schedule against other schedules and
against converting one layer after another.

The base VGG is trained once (cached by content hash); each arm (``ARMS``: an alpha
schedule and an order) then converts it with ``keep_ratio`` branches on every conv
layer, all at once or one layer per schedule pass (``order: sequential``, which trains
``sequential_steps`` stages per layer: a VGG-11 has 8 passes, so its branch epochs are
``8 * sequential_steps`` against ``steps`` all at once). Per arm
and seed the benchmark records the validation accuracy after each alpha stage (where
seed 004 saw the collapse below alpha = 0.4), and the merged model's test accuracy and
MACs. Writes ``branch.json`` and ``branch.md``.

    python -m benchmarks.bench_branch          # defaults: digits, vgg11 width 0.25
    python -m benchmarks.bench_branch --arms linear cosine exponential
    python -m benchmarks.bench_branch --tiny   # seconds: a smoke run for the tests
"""

from __future__ import annotations

import argparse
import json
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
    spread,
)
from prune_core.measure import measure
from prune_core.methods import Context, get_method
from prune_core.methods.branch import alpha_values
from prune_core.train import TrainConfig, evaluate

# arm: the branch parameters it sets (the rest come from the settings)
ARMS = {"linear": {"alpha_schedule": "linear", "order": "all"},
        "step": {"alpha_schedule": "step", "order": "all"},
        "cosine": {"alpha_schedule": "cosine", "order": "all"},
        "exponential": {"alpha_schedule": "exponential", "order": "all"},
        "sequential": {"alpha_schedule": "linear", "order": "sequential"}}
# sequential_steps: 5 stages per layer (40 branch epochs on a VGG-11) rather than all
# arms' 10, which would take 80 and, on a shared 2-core machine, over half an hour a seed.
DEFAULTS = {"model": "vgg11", "width": 0.25, "base_epochs": 30, "keep_ratio": 0.75,
            "arms": ["linear", "step", "sequential"], "steps": 10, "sequential_steps": 5,
            "epochs_per_step": 1, "finetune_epochs": 2, "lr": 0.01, "seeds": [0, 1, 2]}
TINY = {"width": 0.125, "base_epochs": 2, "arms": ["linear", "step", "sequential"],
        "steps": 2, "sequential_steps": 2, "finetune_epochs": 1, "seeds": [0],
        "train_limit": 128}


def run(settings: dict, cache: Path, log=print) -> dict:
    data = digits(settings.get("train_limit"))
    base = base_vgg(settings, data, cache, log)
    base_row = {"accuracy": evaluate(base.build(data.device), data, "test")["accuracy"],
                **measure(base.build(data.device), data.input_shape)}
    method = get_method("branch")
    arm_params = {}
    for arm in settings["arms"]:
        values = {k: settings[k] for k in ("keep_ratio", "steps", "epochs_per_step",
                                           "finetune_epochs", "lr")} | ARMS[arm]
        if values["order"] == "sequential":
            values["steps"] = settings["sequential_steps"]
        arm_params[arm] = method.resolve(values)
    runs = []
    for arm, params in arm_params.items():
        alphas = alpha_values(params["alpha_schedule"], params["steps"])
        for seed in settings["seeds"]:
            rows: list = []
            ctx = Context(data=data, train=TrainConfig(seed=seed), stage="branch",
                          report=rows.append, seed=seed)
            t0 = time.perf_counter()
            model = method(base.build(data.device), params, ctx)
            test = evaluate(model, data, "test")
            m = measure(model, data.input_shape)
            # the last epoch at each alpha of each pass (one pass per layer if sequential)
            stages: dict = {}
            for r in rows:
                if r["phase"] == "branch":
                    stages[r["pass"], r["alpha"]] = r["val_accuracy"]
            passes = sorted({p for p, _ in stages})
            row = {"arm": arm, "schedule": params["alpha_schedule"], "order": params["order"],
                   "seed": seed, "alphas": alphas,
                   "layers_branched": ctx.results["branch.layers_branched"],
                   "val_accuracy_per_alpha": [[stages[p, a] for a in alphas] for p in passes],
                   "epochs": {ph: sum(1 for r in rows if r["phase"] == ph)
                              for ph in ("branch", "finetune")},
                   "accuracy": test["accuracy"],
                   "balanced_accuracy": test["balanced_accuracy"],
                   "macs": m["macs"], "params": m["params"],
                   "seconds": time.perf_counter() - t0}
            row["lowest_val_accuracy"] = min(min(v) for v in row["val_accuracy_per_alpha"])
            log(f"{arm} seed {seed}: accuracy {row['accuracy']:.4f}, "
                f"macs {row['macs'] / base_row['macs']:.3f} of base, "
                f"{row['epochs']['branch']} branch epochs ({row['seconds']:.0f} s)")
            runs.append(row)
    summary = {}
    for arm in arm_params:
        rs = [r for r in runs if r["arm"] == arm]
        summary[arm] = {**spread([r["accuracy"] for r in rs]),
                        "min_val_accuracy_on_the_way": min(r["lowest_val_accuracy"]
                                                           for r in rs),
                        "macs_vs_base": spread([r["macs"] / base_row["macs"] for r in rs]),
                        "branch_epochs": rs[0]["epochs"]["branch"],
                        "seconds": spread([r["seconds"] for r in rs])}
    return {"settings": settings, "method_params": arm_params, "base": base_row, "runs": runs,
            "summary": summary}


def _path(r: dict) -> str:
    """All at once: the val accuracy at each alpha; sequential: the lowest of each pass."""
    if len(r["val_accuracy_per_alpha"]) == 1:
        return ", ".join(f"{a:.2f}: {v:.3f}" for a, v in
                         zip(r["alphas"], r["val_accuracy_per_alpha"][0], strict=True))
    return "lowest per layer pass: " + ", ".join(f"{min(v):.3f}"
                                                 for v in r["val_accuracy_per_alpha"])


def markdown(doc: dict) -> str:
    s, b = doc["settings"], doc["base"]
    arms = ", ".join(f"`{a}` ({p['alpha_schedule']}, order {p['order']}, {p['steps']} stages"
                     f"{' per layer' if p['order'] == 'sequential' else ''})"
                     for a, p in doc["method_params"].items())
    lines = [
        "# Parallel-branch pruning: alpha schedules and layer order",
        "",
        f"Base {s['model']} width {s['width']} on digits ({s['base_epochs']} epochs): test "
        f"accuracy {b['accuracy']:.4f}, {b['macs'] / 1e6:.2f} M MACs. keep_ratio "
        f"{s['keep_ratio']}, alpha stages of {s['epochs_per_step']} epoch(s) in each schedule "
        f"pass (one pass for all layers at once, one per conv layer in order sequential), "
        f"then {s['finetune_epochs']} fine-tuning epoch(s) of the merged model; "
        f"lr {s['lr']}. Arms: {arms}. The val accuracy per alpha is the mixed model's, in "
        f"training (before the merge).",
        "",
        "| arm | test accuracy, mean (sd) | MACs vs base | lowest val accuracy on the way "
        "| branch epochs per run | s per run, mean |",
        "|---|---|---|---|---|---|",
    ]
    for arm, m in doc["summary"].items():
        lines.append(f"| {arm} | {100 * m['mean']:.2f} % ({100 * m['std']:.2f}) | "
                     f"{m['macs_vs_base']['mean']:.3f} | {m['min_val_accuracy_on_the_way']:.3f}"
                     f" | {m['branch_epochs']} | {m['seconds']['mean']:.0f} |")
    lines += [
        "",
        "| arm | seed | test accuracy | MACs vs base | lowest val accuracy on the way "
        "| val accuracy per alpha |",
        "|---|---|---|---|---|---|",
    ]
    for r in doc["runs"]:
        lines.append(f"| {r['arm']} | {r['seed']} | {r['accuracy']:.4f} | "
                     f"{r['macs'] / b['macs']:.3f} | {r['lowest_val_accuracy']:.3f} | "
                     f"{_path(r)} |")
    lines += ["", "Seconds are wall time on a shared machine.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    started = Run(__file__, argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="a seconds-long smoke run")
    ap.add_argument("--seeds", type=int, nargs="+")
    ap.add_argument("--arms", nargs="+", choices=list(ARMS),
                    help=f"schedules and orders (default {' '.join(DEFAULTS['arms'])})")
    ap.add_argument("--steps", type=int, help="alpha stages of the all-at-once arms")
    ap.add_argument("--sequential-steps", type=int, help="alpha stages per layer, sequential")
    ap.add_argument("--out", default=str(DOCS))
    add_cache_option(ap)
    args = ap.parse_args(argv)
    settings = dict(DEFAULTS, **(TINY if args.tiny else {}))
    for key in ("seeds", "steps", "sequential_steps", "arms"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    out = Path(args.out)
    cache = cache_dir(args)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    t0 = time.perf_counter()
    doc = run(settings, cache, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    doc["total_seconds"] = time.perf_counter() - t0
    saved = started.write("branch", doc, markdown(doc), out)
    print(json.dumps(doc["summary"], indent=2))
    return saved


if __name__ == "__main__":
    main()
