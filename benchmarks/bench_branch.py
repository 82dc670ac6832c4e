"""Parallel-branch pruning: seed 004's linear alpha schedule against gradual ones.

The base VGG is trained once (cached by content hash); each schedule then converts
it with ``keep_ratio`` branches on every conv layer. Per schedule and seed the
benchmark records the validation accuracy after each alpha stage (where seed 004 saw
the collapse below alpha = 0.4), and the merged model's test accuracy and MACs.
Writes ``branch.json`` and ``branch.md``.

    python benchmarks/bench_branch.py          # defaults: digits, vgg11 width 0.25
    python benchmarks/bench_branch.py --tiny   # seconds: a smoke run for the tests
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks._common import (  # noqa: E402
    DOCS,
    add_cache_option,
    base_vgg,
    cache_dir,
    command,
    digits,
    spread,
    write_results,
)
from prune_core.measure import measure  # noqa: E402
from prune_core.methods import Context, get_method  # noqa: E402
from prune_core.methods.branch import alpha_values  # noqa: E402
from prune_core.train import TrainConfig, evaluate  # noqa: E402

DEFAULTS = {"model": "vgg11", "width": 0.25, "base_epochs": 30, "keep_ratio": 0.75,
            "schedules": ["linear", "cosine", "exponential"], "steps": 10,
            "epochs_per_step": 1, "finetune_epochs": 2, "lr": 0.01, "seeds": [0, 1, 2]}
TINY = {"width": 0.125, "base_epochs": 2, "schedules": ["linear", "cosine"], "steps": 2,
        "finetune_epochs": 1, "seeds": [0], "train_limit": 128}


def run(settings: dict, cache: Path, log=print) -> dict:
    data = digits(settings.get("train_limit"))
    base = base_vgg(settings, data, cache, log)
    base_row = {"accuracy": evaluate(base.build(data.device), data, "test")["accuracy"],
                **measure(base.build(data.device), data.input_shape)}
    method = get_method("branch")
    runs = []
    for schedule in settings["schedules"]:
        for seed in settings["seeds"]:
            params = method.resolve({"keep_ratio": settings["keep_ratio"],
                                     "alpha_schedule": schedule, "steps": settings["steps"],
                                     "epochs_per_step": settings["epochs_per_step"],
                                     "finetune_epochs": settings["finetune_epochs"],
                                     "lr": settings["lr"]})
            rows: list = []
            ctx = Context(data=data, train=TrainConfig(seed=seed), stage="branch",
                          report=rows.append, seed=seed)
            t0 = time.perf_counter()
            model = method(base.build(data.device), params, ctx)
            test = evaluate(model, data, "test")
            m = measure(model, data.input_shape)
            # the last epoch at each alpha
            per_alpha = {}
            for r in rows:
                if r["phase"] == "branch":
                    per_alpha[r["alpha"]] = r["val_accuracy"]
            row = {"schedule": schedule, "seed": seed,
                   "alphas": alpha_values(schedule, settings["steps"]),
                   "val_accuracy_per_alpha": [per_alpha[a] for a in
                                              alpha_values(schedule, settings["steps"])],
                   "accuracy": test["accuracy"],
                   "balanced_accuracy": test["balanced_accuracy"],
                   "macs": m["macs"], "params": m["params"],
                   "seconds": time.perf_counter() - t0}
            log(f"{schedule} seed {seed}: accuracy {row['accuracy']:.4f}, "
                f"macs {row['macs'] / base_row['macs']:.3f} of base ({row['seconds']:.0f} s)")
            runs.append(row)
    summary = {}
    for schedule in settings["schedules"]:
        accs = [r["accuracy"] for r in runs if r["schedule"] == schedule]
        summary[schedule] = {**spread(accs), "min_val_accuracy_on_the_way": min(
                                 min(r["val_accuracy_per_alpha"]) for r in runs
                                 if r["schedule"] == schedule)}
    return {"settings": settings, "base": base_row, "runs": runs, "summary": summary}


def markdown(doc: dict) -> str:
    s, b = doc["settings"], doc["base"]
    lines = [
        "# Parallel-branch pruning: alpha schedules",
        "",
        f"Base {s['model']} width {s['width']} on digits ({s['base_epochs']} epochs): test "
        f"accuracy {b['accuracy']:.4f}, {b['macs'] / 1e6:.2f} M MACs. keep_ratio "
        f"{s['keep_ratio']}, {s['steps']} alpha stages of {s['epochs_per_step']} epoch(s), "
        f"then {s['finetune_epochs']} fine-tuning epoch(s) of the merged model; lr {s['lr']}; "
        f"all layers at once. The val accuracy per alpha is the mixed model's, in training "
        f"(before the merge).",
        "",
        "| schedule | seed | test accuracy | MACs vs base | lowest val accuracy on the way "
        "| val accuracy per alpha |",
        "|---|---|---|---|---|---|",
    ]
    for r in doc["runs"]:
        path = ", ".join(f"{a:.2f}: {v:.3f}" for a, v in
                         zip(r["alphas"], r["val_accuracy_per_alpha"], strict=True))
        lines.append(f"| {r['schedule']} | {r['seed']} | {r['accuracy']:.4f} | "
                     f"{r['macs'] / b['macs']:.3f} | {min(r['val_accuracy_per_alpha']):.3f} | "
                     f"{path} |")
    lines += ["", "Mean test accuracy per schedule: " + ", ".join(
        f"{k} {v['mean']:.4f} (std {v['std']:.4f})" for k, v in doc["summary"].items()) + ".",
        ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="a seconds-long smoke run")
    ap.add_argument("--seeds", type=int, nargs="+")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--out", default=str(DOCS))
    add_cache_option(ap)
    args = ap.parse_args(argv)
    settings = dict(DEFAULTS, **(TINY if args.tiny else {}))
    for key in ("seeds", "steps"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    out = Path(args.out)
    cache = cache_dir(args)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    doc = run(settings, cache, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    write_results("branch", doc, markdown(doc), out, cmd=command(__file__, argv))
    print(json.dumps(doc["summary"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
