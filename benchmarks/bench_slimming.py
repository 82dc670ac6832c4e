"""Network Slimming's lambda sweep (seed 001) on digits: sparsity, accuracy, gammas, pruning.

For each lambda the base VGG is sparsity-trained (L1 on the BN scale factors) from
the same cached weights; per epoch the benchmark records training accuracy, validation
accuracy and the share of near-zero scale factors. After sparsity training it keeps
every |gamma|, then removes 50 % and 90 % of the channels (global threshold, bias
folding) and measures test accuracy right after removal and after fine-tuning.
Writes ``slimming.json``, ``slimming.md`` and the figure ``slimming.png``.

    python -m benchmarks.bench_slimming          # defaults: 6 lambdas, 10 + 10 epochs
    python -m benchmarks.bench_slimming --tiny   # seconds: a smoke run for the tests
"""

from __future__ import annotations

import argparse
import copy
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
)
from prune_core.measure import measure
from prune_core.methods import Context
from prune_core.methods.slimming import (
    SPARSE_REL,
    bn_names,
    gammas,
    l1_subgradient,
    prune,
    refresh_bn_stats,
    slimmable,
    sparsity_of,
)
from prune_core.train import Hooks, TrainConfig, evaluate

# Seed 001 swept 0, 1e-4 and 1e-2 on CIFAR-10; digits gives about 12 steps per epoch,
# so the sweep reaches further up to show where sparsity appears.
DEFAULTS = {"model": "vgg11", "width": 0.25, "base_epochs": 30,
            "lambdas": [0.0, 1e-4, 1e-3, 1e-2, 3e-2, 5e-2], "sparsity_epochs": 10,
            "sparsity_lr": 0.05, "prune_ratios": [0.5, 0.9], "finetune_epochs": 10,
            "lr": 0.01, "seed": 0}
TINY = {"width": 0.125, "base_epochs": 2, "lambdas": [0.0, 5e-2], "sparsity_epochs": 2,
        "finetune_epochs": 1, "train_limit": 128}


def run(settings: dict, cache: Path, log=print) -> dict:
    data = digits(settings.get("train_limit"))
    base = base_vgg(settings, data, cache, log)
    base_model = base.build(data.device)
    base_row = {"accuracy": evaluate(base_model, data, "test")["accuracy"],
                **measure(base_model, data.input_shape)}
    layers = slimmable(base_model, data.input_shape)
    bns = bn_names(layers)
    # One fixed threshold for every lambda, as the method uses: 1 % of the base mean |gamma|.
    threshold = SPARSE_REL * float(torch.cat(list(gammas(base_model, layers).values())).mean())
    train = TrainConfig(seed=settings["seed"])
    sweeps = []
    for lam in settings["lambdas"]:
        t0 = time.perf_counter()
        model = base.build(data.device)
        rows: list = []
        ctx = Context(data=data, train=train, stage="slimming", report=rows.append,
                      seed=settings["seed"])
        ctx.fit(model, settings["sparsity_epochs"], phase="sparsity", lr=settings["sparsity_lr"],
                hooks=Hooks(after_backward=[l1_subgradient(lam, bns)]),
                extra=lambda m: {"sparsity": sparsity_of(gammas(m, layers), threshold)})
        refresh_bn_stats(model, data)
        g = gammas(model, layers)
        sweep = {
            "lambda": lam,
            "epochs": [{k: r[k] for k in ("epoch", "train_accuracy", "val_accuracy", "sparsity")}
                       for r in rows],
            "gammas": [round(float(v), 7) for t in g.values() for v in t.tolist()],
            "sparsity": sparsity_of(g, threshold),
            "accuracy": evaluate(model, data, "test")["accuracy"],
            "pruned": [],
        }
        for ratio in settings["prune_ratios"]:
            small = copy.deepcopy(model)
            prune(small, ratio, data, groups=layers)
            before = evaluate(small, data, "test")["accuracy"]
            ft = Context(data=data, train=train, stage="slimming", seed=settings["seed"])
            ft.fit(small, settings["finetune_epochs"], phase="finetune", lr=settings["lr"])
            m = measure(small, data.input_shape)
            sweep["pruned"].append({
                "prune_ratio": ratio, "accuracy_before_finetune": before,
                "accuracy_after_finetune": evaluate(small, data, "test")["accuracy"],
                "macs_vs_base": m["macs"] / base_row["macs"],
                "params_vs_base": m["params"] / base_row["params"]})
        sweep["seconds"] = time.perf_counter() - t0
        log(f"lambda {lam:g}: sparsity {sweep['sparsity']:.2f}, accuracy "
            f"{sweep['accuracy']:.4f}; " + ", ".join(
                f"{p['prune_ratio']:.0%} removed {p['accuracy_before_finetune']:.4f} -> "
                f"{p['accuracy_after_finetune']:.4f}" for p in sweep["pruned"])
            + f" ({sweep['seconds']:.0f} s)")
        sweeps.append(sweep)
    return {"settings": settings, "threshold": threshold, "base": base_row, "sweeps": sweeps}


def figure(doc: dict, path: Path) -> None:
    """Sparsity and training accuracy per epoch, |gamma| histograms, accuracy after pruning."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper")
    sweeps = doc["sweeps"]
    curves = pd.DataFrame([{"lambda": f"{s['lambda']:g}", **e} for s in sweeps
                           for e in s["epochs"]])
    n = len(sweeps)
    fig = plt.figure(figsize=(max(10.0, 2.0 * n), 7.0), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.2, 1.0])
    ax_sp, ax_acc, ax_pr = top.subplots(1, 3)
    sns.lineplot(curves, x="epoch", y="sparsity", hue="lambda", marker="o", ax=ax_sp)
    ax_sp.set(title="near-zero scale factors", ylabel="share of |gamma| below threshold",
              ylim=(-0.03, 1.03))
    sns.lineplot(curves, x="epoch", y="train_accuracy", hue="lambda", marker="o", ax=ax_acc,
                 legend=False)
    ax_acc.set(title="training accuracy during sparsity training", ylabel="accuracy")
    pruned = pd.DataFrame([{"lambda": f"{s['lambda']:g}",
                            "removed": f"{p['prune_ratio']:.0%}", "stage": stage,
                            "accuracy": p[f"accuracy_{key}_finetune"]}
                           for s in sweeps for p in s["pruned"]
                           for stage, key in (("before fine-tuning", "before"),
                                              ("after fine-tuning", "after"))])
    sns.lineplot(pruned, x="lambda", y="accuracy", hue="removed", style="stage",
                 markers=True, palette=["C2", "C3"], ax=ax_pr)
    ax_pr.set(title="test accuracy of the pruned model", ylim=(0, 1.02))
    ax_pr.legend(fontsize=7)
    axes = bottom.subplots(1, n, sharey=True)
    for ax, s in zip(axes if n > 1 else [axes], sweeps, strict=True):
        sns.histplot(x=s["gammas"], bins=30, element="step", ax=ax, color="C0")
        ax.axvline(doc["threshold"], color="C3", lw=0.8, ls="--")
        ax.set(title=f"lambda {s['lambda']:g}", xlabel="|gamma|")
    bottom.suptitle(f"scale factors after sparsity training (dashed: the near-zero "
                    f"threshold {doc['threshold']:.3g})", fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(doc: dict) -> str:
    s, b = doc["settings"], doc["base"]
    lines = [
        "# Network Slimming: the lambda sweep on digits",
        "",
        f"Base {s['model']} width {s['width']} on digits ({s['base_epochs']} epochs): test "
        f"accuracy {b['accuracy']:.4f}. Each lambda: {s['sparsity_epochs']} sparsity epochs "
        f"at lr {s['sparsity_lr']} from the base weights, BN statistics re-measured, then "
        f"{', '.join(f'{r:.0%}' for r in s['prune_ratios'])} of all prunable channels removed "
        f"by one global |gamma| threshold (bias folding on) and {s['finetune_epochs']} "
        f"fine-tuning epochs at lr {s['lr']}. Sparsity: share of |gamma| below "
        f"{doc['threshold']:.3g} (1 % of the base model's mean).",
        "",
        "![lambda sweep](slimming.png)",
        "",
        "| lambda | sparsity | accuracy after sparsity training | removed | before fine-tuning "
        "| after fine-tuning | MACs vs base | params vs base |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for sw in doc["sweeps"]:
        for p in sw["pruned"]:
            lines.append(
                f"| {sw['lambda']:g} | {sw['sparsity']:.2f} | {sw['accuracy']:.4f} | "
                f"{p['prune_ratio']:.0%} | {p['accuracy_before_finetune']:.4f} | "
                f"{p['accuracy_after_finetune']:.4f} | {p['macs_vs_base']:.3f} | "
                f"{p['params_vs_base']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    started = Run(__file__, argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="a seconds-long smoke run")
    ap.add_argument("--lambdas", type=float, nargs="+", help="L1 weights to sweep")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--out", default=str(DOCS), help="where the JSON, Markdown and PNG go")
    add_cache_option(ap)
    args = ap.parse_args(argv)
    settings = dict(DEFAULTS, **(TINY if args.tiny else {}))
    for key in ("lambdas", "seed"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    out = Path(args.out)
    cache = cache_dir(args)
    doc = run(settings, cache, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    out.mkdir(parents=True, exist_ok=True)
    figure(doc, out / "slimming.png")
    return started.write("slimming", doc, markdown(doc), out)


if __name__ == "__main__":
    main()
