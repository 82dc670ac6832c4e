"""Network Slimming (seed 001) on residual networks: three ways to slim at equal MACs.

For ResNet-20 and ResNet-56 on digits, per seed, a base model is trained once (cached
by content hash) and slimmed three ways, each with the same lambda, sparsity epochs,
fine-tuning epochs and learning rates:

- ``groups``: our ``slimming`` on every dependency group (the first conv of each block
  and the residual streams): L1 on all their BN scale factors, BN statistics
  re-measured, one global |gamma| threshold over all groups, bias folding on;
- ``first_conv``: the previous behaviour, the same pipeline on the uncoupled groups
  only (the first conv of each residual block): the streams keep their width;
- ``torch_pruning``: Torch-Pruning's own ``BNScalePruner`` (global, its
  ``BNScaleImportance``, the classifier ignored), its ``regularize`` as the L1 term
  during sparsity training and its ``step`` to prune (BN statistics re-measured too).

After sparsity training each approach's prune ratio is found by bisection so that the
pruned copy's MACs come closest to each target (a share of the base MACs); where even
the largest ratio leaves more MACs, the target is marked unreachable and the smallest
model the approach reaches stands in for it. Every pruned model is fine-tuned for the
same epochs and measured on the test split. Writes ``resnet.json`` and ``resnet.md``.

    python -m benchmarks.bench_resnet          # defaults: width 0.25, 3 seeds, about 13 min
    python -m benchmarks.bench_resnet --tiny   # seconds: a smoke run for the tests
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

import torch
import torch_pruning as tp
from torch import nn

from benchmarks._common import (
    DOCS,
    Run,
    add_cache_option,
    cache_dir,
    digits,
    spread,
)
from prune_core.baseline import BaseSpec, get_base
from prune_core.data import Data
from prune_core.groups import ChannelGroup
from prune_core.measure import count_macs, count_params
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
from prune_core.models import classifier_name
from prune_core.surgery import example_input
from prune_core.train import Hooks, TrainConfig, evaluate

# The distribution's version: torch_pruning.__version__ of 1.6.1 still says 1.6.0.
TP_VERSION = version("torch-pruning")
APPROACHES = {"groups": "(g) every group", "first_conv": "(a) first conv only",
              "torch_pruning": "(b) torch-pruning BNScalePruner"}
MACS_TOLERANCE = 0.05  # a target counts as reached within 5 % of its MACs
WITHIN = 0.01  # "within one point": test accuracy at least base - 0.01
# Torch-Pruning removes round(ratio * all channels) by one threshold but skips a group it
# would empty, so its MACs need not fall as the ratio rises: it is probed on a grid up to
# this ratio as well as by bisection.
TP_MAX_RATIO = 0.95
GRID_STEPS = 4

# Sized to finish in about 13 minutes on one thread of the shared 2-core machine. Batches
# of 32: digits has 1,295 training images, and with batches of 128 a ResNet-20 reached 72 %
# in 8 epochs against 97.5 % with 32, for 17 % more time per epoch.
DEFAULTS = {"depths": ["resnet20", "resnet56"], "width": 0.25, "batch_size": 32,
            "base_epochs": 6, "base_lr": 0.05, "seeds": [0, 1, 2], "lambda": 3e-2,
            "sparsity_epochs": 2, "sparsity_lr": 0.05, "finetune_epochs": 2, "lr": 0.01,
            "targets": [0.5, 0.25]}
# At width 0.125 first-conv-only cannot reach 0.25x (its smallest: 0.36x and 0.31x), and
# one channel of a residual stream is a step of several per cent of the MACs.
TINY = {"width": 0.125, "base_epochs": 1, "seeds": [0], "sparsity_epochs": 1,
        "finetune_epochs": 1, "train_limit": 128}


def _macs(model: nn.Module, data: Data) -> int:
    return count_macs(model, data.input_shape)[0]


@contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one thread inside the block.

    A MACs probe traces single images through many small layers: a second thread only
    adds synchronisation, which on a loaded machine costs more than the work (a 4-channel
    conv took 24 ms on two threads under load 4, 0.1 ms on one).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def bnscale_pruner(model: nn.Module, data: Data, ratio: float, lam: float
                   ) -> tp.pruner.BNScalePruner:
    """Torch-Pruning's Network Slimming pruner on ``model``: global, classifier kept."""
    was_training = model.training
    model.eval()  # tracing runs a forward pass: no BN statistics may move
    try:
        return tp.pruner.BNScalePruner(
            model, example_input(model, data.input_shape),
            importance=tp.importance.BNScaleImportance(), global_pruning=True,
            pruning_ratio=ratio, ignored_layers=[model.get_submodule(classifier_name(model))],
            reg=lam)
    finally:
        model.train(was_training)


def pruned_copy(model: nn.Module, approach: str, ratio: float, data: Data,
                groups: list[ChannelGroup], lam: float, fold_bias: bool = True) -> nn.Module:
    """A copy of ``model`` with ``ratio`` of the approach's channels removed."""
    small = copy.deepcopy(model)
    if ratio <= 0:
        return small
    if approach == "torch_pruning":
        bnscale_pruner(small, data, ratio, lam).step()
    else:
        prune(small, ratio, data, groups=groups, fold_bias=fold_bias)
    return small


def match_ratios(macs_at: Callable[[float], int], targets: list[int], top: float,
                 resolution: float) -> tuple[list[dict], list[list]]:
    """Per target MACs: the probed prune ratio whose MACs come closest to it.

    MACs are probed on a grid of ratios up to ``top``; between the first grid ratio at or
    below a target and the one before it, bisection halves the bracket down to
    ``resolution`` (one channel's share: the count removed differs by at most one across
    it). The answer is the closest probe up to that first crossing: MACs fall in steps,
    and Torch-Pruning's do not fall monotonically (near its largest ratios it skips every
    group it would empty, and on ResNet-20 a ratio of 0.95 gave 0.50x MACs with the last
    residual stream cut to one channel), so a later ratio is never taken for a target.
    Returns one row per target and every probe as ``[ratio, MACs]``, by ratio.
    """
    probes: dict[float, int] = {}

    def probe(r: float) -> int:
        if r not in probes:
            probes[r] = macs_at(r)
        return probes[r]

    grid = [top * i / GRID_STEPS for i in range(GRID_STEPS + 1)]
    for r in grid:
        probe(r)
    rows = []
    for target in targets:
        hit = next((i for i, r in enumerate(grid) if probe(r) <= target), None)
        upto = top
        if hit is not None:
            lo, hi = grid[max(0, hit - 1)], grid[hit]
            while hi - lo > resolution:
                mid = (lo + hi) / 2
                if probe(mid) <= target:
                    hi = mid
                else:
                    lo = mid
            upto = hi
        smallest = min(probes.values())
        ratio = min((r for r in probes if r <= upto),
                    key=lambda r: (abs(probes[r] - target), r))
        if smallest > target * (1 + MACS_TOLERANCE):
            status, ratio = "unreachable", min(probes, key=lambda r: (probes[r], r))
        elif abs(probes[ratio] / target - 1) <= MACS_TOLERANCE:
            status = "reached"
        else:
            status = "not matched"
        rows.append({"target_macs": target, "ratio": ratio, "macs": probes[ratio],
                     "status": status})
    return rows, sorted([r, m] for r, m in probes.items())


def within_one_point(points: list[dict], base_accuracy: float) -> dict | None:
    """The evaluated point with the fewest MACs whose accuracy is within WITHIN of the base."""
    close = [p for p in points if p["accuracy"] >= base_accuracy - WITHIN]
    if not close:
        return None
    best = min(close, key=lambda p: p["macs"])
    return {"macs_vs_base": best["macs_vs_base"], "reduction": 1 / best["macs_vs_base"],
            "accuracy": best["accuracy"], "target": best["target"]}


def slim(approach: str, base_model: nn.Module, base_row: dict, data: Data, settings: dict,
         seed: int, log=print) -> tuple[dict, nn.Module]:
    """One approach on one base model: sparsity training, MACs matching, pruning, fine-tuning.

    Returns the run's row and the sparsity-trained model (before pruning).
    """
    t0 = time.perf_counter()
    lam = settings["lambda"]
    model = copy.deepcopy(base_model)
    groups = slimmable(model, data.input_shape)
    if approach == "first_conv":
        groups = [g for g in groups if not g.coupled]
    if approach == "torch_pruning":
        pruner = bnscale_pruner(model, data, 0.5, lam)  # the ratio is unused while training
        hook = pruner.regularize
    else:
        hook = l1_subgradient(lam, bn_names(groups))
    threshold = SPARSE_REL * float(torch.cat(list(gammas(model, groups).values())).mean())
    train = TrainConfig(seed=seed, batch_size=settings["batch_size"])
    ctx = Context(data=data, train=train, stage=approach, seed=seed)
    ctx.fit(model, settings["sparsity_epochs"], phase="sparsity", lr=settings["sparsity_lr"],
            hooks=Hooks(after_backward=[hook]))
    refresh_bn_stats(model, data)
    sparse = {"accuracy": evaluate(model, data, "test")["accuracy"],
              "sparsity": sparsity_of(gammas(model, groups), threshold)}

    t_match = time.perf_counter()
    top = TP_MAX_RATIO if approach == "torch_pruning" else 1.0
    channels = sum(g.size for g in (slimmable(model, data.input_shape)
                                    if approach == "torch_pruning" else groups))
    # Folding moves biases, never shapes: MACs are probed without it.
    with one_thread():
        matches, probes = match_ratios(
            lambda r: _macs(pruned_copy(model, approach, r, data, groups, lam, False), data),
            [round(t * base_row["macs"]) for t in settings["targets"]], top, 1 / channels)
    match_seconds = time.perf_counter() - t_match
    smallest = min(m for _, m in probes)

    points, done = [], {}
    for target, m in zip(settings["targets"], matches, strict=True):
        if m["ratio"] not in done:  # two unreachable targets share the smallest model
            small = pruned_copy(model, approach, m["ratio"], data, groups, lam)
            before = evaluate(small, data, "test")["accuracy"]
            ft = Context(data=data, train=train, stage=approach, seed=seed)
            ft.fit(small, settings["finetune_epochs"], phase="finetune", lr=settings["lr"])
            test = evaluate(small, data, "test")
            done[m["ratio"]] = {
                "accuracy_before_finetune": before, "accuracy": test["accuracy"],
                "balanced_accuracy": test["balanced_accuracy"],
                "params_vs_base": count_params(small)[0] / base_row["params"]}
        points.append({"target": target, "prune_ratio": m["ratio"], "status": m["status"],
                       "macs": m["macs"], "macs_vs_base": m["macs"] / base_row["macs"],
                       **done[m["ratio"]]})
    row = {"approach": approach, "seed": seed, "groups": len(groups), "channels": channels,
           "sparsity_accuracy": sparse["accuracy"], "sparsity": sparse["sparsity"],
           "smallest_macs_vs_base": smallest / base_row["macs"], "points": points,
           "probes": probes,
           "within_one_point": within_one_point(points, base_row["accuracy"]),
           "match_seconds": match_seconds, "seconds": time.perf_counter() - t0}
    log(f"  {approach}: sparsity {sparse['sparsity']:.2f}, " + ", ".join(
        f"{p['target']:g}x -> {p['macs_vs_base']:.3f}x {p['status']} "
        f"{p['accuracy_before_finetune']:.4f} -> {p['accuracy']:.4f}" for p in points)
        + f" (smallest {row['smallest_macs_vs_base']:.3f}x; {row['seconds']:.0f} s)")
    return row, model


def run(settings: dict, cache: Path, log=print) -> dict:
    data = digits(settings.get("train_limit"))
    depths = {}
    for depth in settings["depths"]:
        bases, runs = [], []
        for seed in settings["seeds"]:
            # The training subset is part of the cache key: a tiny base never passes for a
            # full one.
            spec = BaseSpec(model=depth, model_kw={"width": settings["width"]}, data="digits",
                            data_kw={"train_limit": settings.get("train_limit")},
                            train=TrainConfig(epochs=settings["base_epochs"],
                                              lr=settings["base_lr"], seed=seed,
                                              batch_size=settings["batch_size"]))
            t0 = time.perf_counter()
            base, trained = get_base(spec, data, cache, log=log)
            base_model = base.build(data.device)
            base_row = {"seed": seed, "accuracy": evaluate(base_model, data, "test")["accuracy"],
                        "macs": _macs(base_model, data), "params": count_params(base_model)[0],
                        "trained": trained, "seconds": time.perf_counter() - t0}
            bases.append(base_row)
            log(f"{depth} seed {seed}: base accuracy {base_row['accuracy']:.4f}, "
                f"{base_row['macs'] / 1e6:.2f} M MACs")
            sparse = {}
            for approach in APPROACHES:
                row, sparse[approach] = slim(approach, base_model, base_row, data, settings,
                                             seed, log)
                runs.append(row)
            # Torch-Pruning's regularize adds reg * sign(gamma) to every BN's gradient, as our
            # subgradient does on every group's BNs: the two sparsity-trained models should be
            # the same, so any difference between (g) and (b) comes from the pruning.
            g, b = sparse["groups"].state_dict(), sparse["torch_pruning"].state_dict()
            runs[-1]["max_weight_difference_to_groups"] = max(
                float((g[k].float() - b[k].float()).abs().max()) for k in g)
        depths[depth] = {"bases": bases, "runs": runs, "summary": summarize(bases, runs)}
    return {"settings": settings, "test_images": len(data.test), "depths": depths}


def summarize(bases: list[dict], runs: list[dict]) -> dict:
    out: dict = {"base_accuracy": spread([b["accuracy"] for b in bases]),
                 "base_macs": bases[0]["macs"]}
    for approach in APPROACHES:
        rs = [r for r in runs if r["approach"] == approach]
        targets = [p["target"] for p in rs[0]["points"]]
        per_target = {}
        for i, t in enumerate(targets):
            ps = [r["points"][i] for r in rs]
            per_target[str(t)] = {
                "accuracy": spread([p["accuracy"] for p in ps]),
                "accuracy_before_finetune": spread([p["accuracy_before_finetune"] for p in ps]),
                "macs_vs_base": spread([p["macs_vs_base"] for p in ps]),
                "status": [p["status"] for p in ps]}
        close = [r["within_one_point"] for r in rs]
        found = [c["macs_vs_base"] for c in close if c is not None]
        out[approach] = {
            "targets": per_target,
            "sparsity_accuracy": spread([r["sparsity_accuracy"] for r in rs]),
            "sparsity": spread([r["sparsity"] for r in rs]),
            "smallest_macs_vs_base": spread([r["smallest_macs_vs_base"] for r in rs]),
            "within_one_point": {"seeds": len(found), "of": len(rs),
                                 "macs_vs_base": spread(found) if found else None,
                                 "per_seed": [c and c["macs_vs_base"] for c in close]},
            "seconds": spread([r["seconds"] for r in rs])}
    return out


def _pct(s: dict) -> str:
    return f"{100 * s['mean']:.2f} % ± {100 * s['std']:.2f}"


def markdown(doc: dict) -> str:
    s = doc["settings"]
    limit = f" (first {s['train_limit']} training images)" if s.get("train_limit") else ""
    lines = [
        "# Network Slimming on ResNets: every group, first conv only, Torch-Pruning",
        "",
        f"Digits{limit}, width {s['width']}, batches of {s['batch_size']}, seeds "
        f"{', '.join(map(str, s['seeds']))}; per seed one base model ({s['base_epochs']} "
        f"epochs at lr {s['base_lr']}). Each approach: {s['sparsity_epochs']} sparsity epochs "
        f"at lr {s['sparsity_lr']} with lambda {s['lambda']:g} from the base weights, BN "
        f"statistics re-measured, the prune ratio bisected so the pruned copy's MACs come "
        f"closest to each target (within {MACS_TOLERANCE:.0%} counts as reached), then "
        f"{s['finetune_epochs']} fine-tuning epochs at lr {s['lr']}. (g) ranks every "
        f"dependency group, residual streams included, by mean |gamma| under one global "
        f"threshold and folds removed channels' constant output into the next layer; (a) does "
        f"the same on the uncoupled groups only (the first conv of each block); (b) is "
        f"Torch-Pruning {TP_VERSION}'s BNScalePruner (global, BNScaleImportance: mean |gamma| "
        f"over a group's BNs divided by the group's mean, no folding). Accuracy: test split "
        f"({doc['test_images']} images), mean ± sd over seeds, the achieved MACs in brackets. "
        f"Near-zero scale factors: |gamma| below {SPARSE_REL:.0%} of the base model's mean.",
    ]
    for depth, d in doc["depths"].items():
        m = d["summary"]
        lines += [
            "",
            f"## {depth}",
            "",
            f"Base: {_pct(m['base_accuracy'])}, {m['base_macs'] / 1e6:.2f} M MACs.",
            "",
            "| | " + " | ".join(APPROACHES.values()) + " |",
            "|---" * (len(APPROACHES) + 1) + "|",
        ]
        targets = list(m["groups"]["targets"])
        for t in targets:
            cells = []
            for a in APPROACHES:
                c = m[a]["targets"][t]
                mark = ""
                if "unreachable" in c["status"]:
                    mark = "unreachable, smallest: "
                elif "not matched" in c["status"]:
                    mark = f"{c['status'].count('not matched')} not matched: "
                cells.append(f"{mark}{_pct(c['accuracy'])} ({c['macs_vs_base']['mean']:.3f}x)")
            lines.append(f"| {float(t):g}x base MACs | " + " | ".join(cells) + " |")
        lines.append("| after sparsity training, unpruned | " + " | ".join(
            _pct(m[a]["sparsity_accuracy"]) for a in APPROACHES) + " |")
        lines.append("| near-zero scale factors after sparsity training | " + " | ".join(
            f"{m[a]['sparsity']['mean']:.2f}" for a in APPROACHES) + " |")
        for t in targets:
            lines.append(f"| before fine-tuning, {float(t):g}x | " + " | ".join(
                _pct(m[a]["targets"][t]["accuracy_before_finetune"]) for a in APPROACHES) + " |")
        lines.append("| smallest MACs reachable | " + " | ".join(
            f"{m[a]['smallest_macs_vs_base']['mean']:.3f}x" for a in APPROACHES) + " |")
        cells = []
        for a in APPROACHES:
            w = m[a]["within_one_point"]
            if w["macs_vs_base"] is None:
                cells.append(f"none (0 of {w['of']} seeds)")
            else:
                cells.append(f"{1 / w['macs_vs_base']['mean']:.2f}x fewer MACs "
                             f"({w['macs_vs_base']['mean']:.3f}x; {w['seeds']} of {w['of']} "
                             f"seeds)")
        lines.append("| within one point of base: fewest MACs | " + " | ".join(cells) + " |")
        lines.append("| wall time per seed (s) | " + " | ".join(
            f"{m[a]['seconds']['mean']:.0f} ± {m[a]['seconds']['std']:.0f}"
            for a in APPROACHES) + " |")
        diff = max(r.get("max_weight_difference_to_groups", 0.0) for r in d["runs"])
        lines += ["", f"Largest weight difference between (g)'s and (b)'s sparsity-trained "
                      f"models: {diff:.3g}."]
    lines += ["", f"Total run time: {doc['total_seconds']:.0f} s.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    started = Run(__file__, argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="a seconds-long smoke run")
    ap.add_argument("--seeds", type=int, nargs="+", help="seeds (default 0 1 2)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on the shared 2-core machine a second "
                         "thread made epochs erratic, 1.4 s to 30 s, whenever another "
                         "process held a core)")
    ap.add_argument("--out", type=Path, default=DOCS, help="where the JSON and Markdown go")
    add_cache_option(ap)
    args = ap.parse_args(argv)
    settings = dict(DEFAULTS, **(TINY if args.tiny else {}))
    if args.seeds is not None:
        settings["seeds"] = args.seeds
    cache = cache_dir(args)
    torch.set_num_threads(max(1, args.threads))
    t0 = time.perf_counter()
    result = run(settings, cache, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    result["total_seconds"] = time.perf_counter() - t0
    name = "resnet-tiny" if args.tiny else "resnet"
    doc = started.write(name, result, markdown(result), args.out)
    print(json.dumps({d: v["summary"] for d, v in doc["depths"].items()}, indent=2))
    return doc


if __name__ == "__main__":
    main()
