"""RePr and the seed's ablations against plain training of the same fresh C^3(k).

For each arm and seed the ``repr`` method trains one fresh C^3(k) plainly and one with
RePr's drop / re-initialise cycles, both for the same epochs at the same constant rate,
and both are measured on the test split. The arms (``ARMS``) are seed 003's
ablations: RePr as is, the inverted ranking (drop the most orthogonal filters), no
zeroing of the next layer's channels, and training without the dataset's random crop.
Without augmentation the plain control trains without it too: the method trains both
runs on the same data. Arms that train on the same data share one plain control per
seed (it is the same computation: same initialisation, data, rate and batch order).
Writes ``repr.json`` and ``repr.md``.

    python -m benchmarks.bench_repr            # defaults: digits, c3 k=32, 3 seeds, 4 arms
    python -m benchmarks.bench_repr --arms repr no-augment
    python -m benchmarks.bench_repr --tiny     # seconds: a smoke run for the tests
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from benchmarks._common import DOCS, Run, first_images, spread
from prune_core import data as datasets
from prune_core import models
from prune_core.methods import Context, get_method
from prune_core.train import TrainConfig

# arm: (RePr parameters changed from the settings, train with the dataset's crop jitter)
ARMS = {"repr": ({}, True),
        "orthogonal": ({"drop": "orthogonal"}, True),
        "keep-next": ({"zero_next": False}, True),
        "no-augment": ({}, False)}
DEFAULTS = {"k": 32, "seeds": [0, 1, 2], "epochs": 30, "s1": 5, "s2": 3, "cycles": 3,
            "ratio": 0.3, "rank": "global", "reinit": "qr", "clip": 3.0, "lr": 0.02,
            "arms": list(ARMS)}
TINY = {"k": 4, "seeds": [0, 1], "epochs": 3, "s1": 1, "s2": 1, "cycles": 1, "train_limit": 256,
        "arms": ["repr", "orthogonal", "no-augment"]}
METHOD_KEYS = ("epochs", "s1", "s2", "cycles", "ratio", "rank", "reinit", "clip", "lr")


@dataclass
class SharedControl(Context):
    """A context whose ``plain`` phase is trained once per ``key`` and then reloaded.

    The plain control depends only on the fresh initialisation (the seed), the data
    and the rate, not on RePr's parameters: arms that share those share its weights.
    """

    key: tuple = ()
    trained: dict = field(default_factory=dict)

    def fit(self, model, epochs, *, phase="finetune", **kw):
        if phase != "plain":
            return super().fit(model, epochs, phase=phase, **kw)
        if self.key not in self.trained:
            rows = super().fit(model, epochs, phase=phase, **kw)
            self.trained[self.key] = copy.deepcopy(model.state_dict())
            return rows
        super().fit(model, 0, phase=phase, **kw)  # keeps the later calls' seeds in step
        model.load_state_dict(self.trained[self.key])
        return []


def run(settings: dict, log=print) -> dict:
    method = get_method("repr")
    data = {aug: first_images(datasets.load("digits", augment=aug), settings.get("train_limit"))
            for aug in sorted({ARMS[a][1] for a in settings["arms"]})}
    arm_params = {arm: method.resolve({**{k: settings[k] for k in METHOD_KEYS}, **ARMS[arm][0]})
                  for arm in settings["arms"]}
    controls: dict = {}
    runs = []
    for arm, params in arm_params.items():
        augment = ARMS[arm][1]
        for seed in settings["seeds"]:
            t0 = time.perf_counter()
            shared = (seed, augment) in controls
            ctx = SharedControl(data=data[augment], train=TrainConfig(seed=seed), stage="repr",
                                seed=seed, key=(seed, augment), trained=controls)
            # The method re-initialises the model under ctx.seed: both runs start there.
            model = method(models.build("c3", num_classes=data[augment].num_classes,
                                        k=settings["k"]), params, ctx)
            test = ctx.evaluate(model, "test")
            row = {
                "arm": arm, "seed": seed, "augment": augment, "plain_shared": shared,
                "plain_accuracy": ctx.results["repr.plain_accuracy"],
                "repr_accuracy": test["accuracy"],
                "plain_balanced_accuracy": ctx.results["repr.plain_balanced_accuracy"],
                "repr_balanced_accuracy": test["balanced_accuracy"],
                "pruned_share_per_cycle": ctx.results["repr.pruned_share_per_cycle"],
                "seconds": time.perf_counter() - t0,
            }
            log(f"{arm} seed {seed}: plain {row['plain_accuracy']:.4f}  repr "
                f"{row['repr_accuracy']:.4f}  ({row['seconds']:.0f} s)")
            runs.append(row)
    return {"settings": settings, "method_params": arm_params, "runs": runs,
            "summary": {arm: summarize([r for r in runs if r["arm"] == arm])
                        for arm in arm_params}}


def summarize(runs: list[dict]) -> dict:
    """One arm's accuracies over seeds and RePr - plain per seed."""
    plain = [r["plain_accuracy"] for r in runs]
    rep = [r["repr_accuracy"] for r in runs]
    diff = [b - a for a, b in zip(plain, rep, strict=True)]
    return {"plain_accuracy": spread(plain), "repr_accuracy": spread(rep),
            "difference": {**spread(diff), "per_seed": diff},
            "repr_better": sum(d > 0 for d in diff), "repr_worse": sum(d < 0 for d in diff)}


def _pct(s: dict) -> str:
    return f"{100 * s['mean']:.2f} % ({100 * s['std']:.2f})"


def markdown(doc: dict) -> str:
    s = doc["settings"]
    arms = ", ".join(
        f"`{a}` ({', '.join(f'{k} {v}' for k, v in ARMS[a][0].items()) or 'as is'}"
        f"{'' if ARMS[a][1] else ', data augment false for both runs'})"
        for a in doc["method_params"])
    lines = [
        "# RePr and its ablations against plain training (C^3(k) on digits)",
        "",
        f"Model c3 k={s['k']}; {s['epochs']} epochs for both runs at a constant rate "
        f"{s['lr']}; RePr S1={s['s1']}, S2={s['s2']}, {s['cycles']} cycles, ratio "
        f"{s['ratio']}, rank {s['rank']}, re-init {s['reinit']}, clip {s['clip']}. "
        f"Arms: {arms}. Test split accuracy; the same fresh initialisation for both runs of "
        f"a seed. The plain control is trained once per seed and data setting and shared by "
        f"the arms that train on the same data; without augmentation (no random crop) it "
        f"trains without augmentation too.",
        "",
        "| arm | plain | RePr | RePr - plain (points) | RePr better / worse |",
        "|---|---|---|---|---|",
    ]
    for arm, m in doc["summary"].items():
        d = m["difference"]
        lines.append(f"| {arm} | {_pct(m['plain_accuracy'])} | {_pct(m['repr_accuracy'])} | "
                     f"{100 * d['mean']:+.2f} ({100 * d['std']:.2f}) | "
                     f"{m['repr_better']} / {m['repr_worse']} |")
    lines += [
        "",
        f"Mean (sd) over {len(s['seeds'])} seeds.",
        "",
        "| arm | seed | plain | RePr | RePr - plain | pruned share per layer, first cycle | s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in doc["runs"]:
        first = r["pruned_share_per_cycle"][0]
        shares = ", ".join(f"{k.split('.')[-1]} {v:.2f}" for k, v in first.items())
        lines.append(f"| {r['arm']} | {r['seed']} | {r['plain_accuracy']:.4f} | "
                     f"{r['repr_accuracy']:.4f} | "
                     f"{r['repr_accuracy'] - r['plain_accuracy']:+.4f} | {shares} | "
                     f"{r['seconds']:.0f} |")
    lines += ["", "Seconds are wall time on a shared machine; an arm that reused its seed's "
              "plain control spent no time on it.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    started = Run(__file__, argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="a seconds-long smoke run")
    ap.add_argument("--seeds", type=int, nargs="+", help="seeds (default 0 1 2)")
    ap.add_argument("--arms", nargs="+", choices=list(ARMS),
                    help=f"ablations (default {' '.join(DEFAULTS['arms'])})")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--k", type=int, help="filters per layer of C^3(k)")
    ap.add_argument("--out", default=str(DOCS))
    args = ap.parse_args(argv)
    settings = dict(DEFAULTS, **(TINY if args.tiny else {}))
    for key in ("seeds", "epochs", "k", "arms"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    t0 = time.perf_counter()
    doc = run(settings, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    doc["total_seconds"] = time.perf_counter() - t0
    saved = started.write("repr", doc, markdown(doc), Path(args.out))
    print(json.dumps(doc["summary"], indent=2))
    return saved


if __name__ == "__main__":
    main()
