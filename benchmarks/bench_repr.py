"""RePr against plain training of the same freshly initialised C^3(k), at equal epochs.

For each seed the ``repr`` method trains one fresh C^3(k) plainly and one with RePr's
drop / re-initialise cycles, both for the same epochs at the same constant rate, and
both are measured on the test split. Writes ``repr.json`` and ``repr.md``.

    python benchmarks/bench_repr.py            # defaults: digits, c3 k=32, 5 seeds
    python benchmarks/bench_repr.py --tiny     # seconds: a smoke run for the tests
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

from benchmarks._common import DOCS, command, digits, spread, write_results  # noqa: E402
from prune_core import models  # noqa: E402
from prune_core.methods import Context, get_method  # noqa: E402
from prune_core.train import TrainConfig  # noqa: E402

DEFAULTS = {"k": 32, "seeds": [0, 1, 2, 3, 4], "epochs": 30, "s1": 5, "s2": 3, "cycles": 3,
            "ratio": 0.3, "rank": "global", "reinit": "qr", "clip": 3.0, "lr": 0.02}
TINY = {"k": 4, "seeds": [0, 1], "epochs": 3, "s1": 1, "s2": 1, "cycles": 1, "train_limit": 256}


def run(settings: dict, log=print) -> dict:
    data = digits(settings.get("train_limit"))
    method = get_method("repr")
    params = method.resolve({k: settings[k] for k in
                             ("epochs", "s1", "s2", "cycles", "ratio", "rank", "reinit", "clip",
                              "lr")})
    runs = []
    for seed in settings["seeds"]:
        t0 = time.perf_counter()
        ctx = Context(data=data, train=TrainConfig(seed=seed), stage="repr", seed=seed)
        # The method re-initialises the model under ctx.seed: both runs of a seed start there.
        model = method(models.build("c3", num_classes=data.num_classes, k=settings["k"]),
                       params, ctx)
        test = ctx.evaluate(model, "test")
        row = {
            "seed": seed,
            "plain_accuracy": ctx.results["repr.plain_accuracy"],
            "repr_accuracy": test["accuracy"],
            "plain_balanced_accuracy": ctx.results["repr.plain_balanced_accuracy"],
            "repr_balanced_accuracy": test["balanced_accuracy"],
            "pruned_share_per_cycle": ctx.results["repr.pruned_share_per_cycle"],
            "seconds": time.perf_counter() - t0,
        }
        log(f"seed {seed}: plain {row['plain_accuracy']:.4f}  repr {row['repr_accuracy']:.4f}  "
            f"({row['seconds']:.0f} s)")
        runs.append(row)
    plain = [r["plain_accuracy"] for r in runs]
    rep = [r["repr_accuracy"] for r in runs]
    summary = {"plain_accuracy": spread(plain), "repr_accuracy": spread(rep),
               "difference": spread([b - a for a, b in zip(plain, rep, strict=True)]),
               "repr_better": sum(b > a for a, b in zip(plain, rep, strict=True)),
               "repr_worse": sum(b < a for a, b in zip(plain, rep, strict=True))}
    return {"settings": settings, "runs": runs, "summary": summary}


def markdown(doc: dict) -> str:
    s, m = doc["settings"], doc["summary"]
    lines = [
        "# RePr against plain training (C^3(k) on digits)",
        "",
        f"Model c3 k={s['k']}; {s['epochs']} epochs for both runs at a constant rate "
        f"{s['lr']}; RePr S1={s['s1']}, S2={s['s2']}, {s['cycles']} cycles, ratio "
        f"{s['ratio']}, rank {s['rank']}, re-init {s['reinit']}, clip {s['clip']}. "
        f"Test split accuracy; the same fresh initialisation for both runs of a seed.",
        "",
        "| seed | plain | RePr | RePr - plain | pruned share per layer, first cycle | s |",
        "|---|---|---|---|---|---|",
    ]
    for r in doc["runs"]:
        first = r["pruned_share_per_cycle"][0]
        shares = ", ".join(f"{k.split('.')[-1]} {v:.2f}" for k, v in first.items())
        lines.append(f"| {r['seed']} | {r['plain_accuracy']:.4f} | {r['repr_accuracy']:.4f} | "
                     f"{r['repr_accuracy'] - r['plain_accuracy']:+.4f} | {shares} | "
                     f"{r['seconds']:.0f} |")
    lines += [
        "",
        f"Mean (std) over {len(doc['runs'])} seeds: plain "
        f"{m['plain_accuracy']['mean']:.4f} ({m['plain_accuracy']['std']:.4f}), RePr "
        f"{m['repr_accuracy']['mean']:.4f} ({m['repr_accuracy']['std']:.4f}), difference "
        f"{m['difference']['mean']:+.4f} ({m['difference']['std']:.4f}); RePr better on "
        f"{m['repr_better']}, worse on {m['repr_worse']} seeds.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="a seconds-long smoke run")
    ap.add_argument("--seeds", type=int, nargs="+", help="seeds (default 0 1 2 3 4)")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--k", type=int, help="filters per layer of C^3(k)")
    ap.add_argument("--out", default=str(DOCS))
    args = ap.parse_args(argv)
    settings = dict(DEFAULTS, **(TINY if args.tiny else {}))
    for key in ("seeds", "epochs", "k"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    doc = run(settings, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    write_results("repr", doc, markdown(doc), Path(args.out), cmd=command(__file__, argv))
    print(json.dumps(doc["summary"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
