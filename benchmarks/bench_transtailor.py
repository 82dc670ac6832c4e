"""TransTailor against plain "fine-tune then prune" at equal MACs, on digits-split.

The base model W^{s*}_f is a VGG trained on the source task (digits 0-4) and then
fine-tuned to the target task (digits 5-9); it is trained once and cached by content
hash. For each arm (a variant of TransTailor's parameters, ``ARMS``) and seed the
``transtailor`` method prunes it (target-aware filter pruning), and a plain control
starts again from the same base: it removes the
filters of smallest L1 norm, one uniform share per layer (as ``magnitude`` does with
``mode=structured, n=1``), that share found by bisection so that its MACs equal
TransTailor's within 2 %, and it is fine-tuned for as many epochs as TransTailor
trained in all (alpha and fine-tuning epochs), with TransTailor's learning rates and
early-stopping patience. Both are measured on the test split. Writes
``transtailor.json`` and ``transtailor.md``.

    python -m benchmarks.bench_transtailor          # defaults: vgg11 width 0.25, 3 seeds
    python -m benchmarks.bench_transtailor --arms start last   # some arms only
    python -m benchmarks.bench_transtailor --tiny   # seconds: a smoke run for the tests
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

from benchmarks._common import (
    DOCS,
    Run,
    add_cache_option,
    cache_dir,
    first_images,
    spread,
)
from prune_core import data as datasets
from prune_core.baseline import BaseSpec, get_base
from prune_core.data import Data
from prune_core.measure import count_macs, count_params
from prune_core.methods import Context, filter_counts, get_method, total_filters
from prune_core.methods.magnitude import filter_plan
from prune_core.surgery import remove_channels
from prune_core.train import TrainConfig

MACS_TOLERANCE = 0.02  # the plain arm's MACs within 2 % of TransTailor's
TRAIN_PHASES = ("alpha", "finetune")  # report rows that are one training epoch each

# Each arm changes these TransTailor parameters from the settings' ones. "start" is the
# benchmark's first rule (tau against the starting model); "last" is the seed's loop
# (W_o = W_p: tau against the last accepted round); "random" starts alpha uniform in
# [0, 1) as the seed's first version did; "last-random" is that first version whole.
ARMS = {"start": {"tau_reference": "start", "alpha_init": "ones"},
        "last": {"tau_reference": "last", "alpha_init": "ones"},
        "random": {"tau_reference": "start", "alpha_init": "random"},
        "last-random": {"tau_reference": "last", "alpha_init": "random"}}
DEFAULTS = {"model": "vgg11", "width": 0.25, "source_epochs": 15, "transfer_epochs": 10,
            "base_lr": 0.05, "seeds": [0, 1, 2], "tau": 0.02, "step_ratio": 0.1,
            "alpha_epochs": 2, "finetune_epochs": 5, "patience": 3, "max_rounds": 10,
            "arms": list(ARMS)}
TINY = {"width": 0.125, "source_epochs": 1, "transfer_epochs": 1, "seeds": [0],
        "tau": 1.0, "alpha_epochs": 1, "finetune_epochs": 1, "patience": 1, "max_rounds": 1,
        "train_limit": 128, "arms": ["start", "random"]}
# TransTailor parameters taken from the settings; the rest keep the method's defaults.
METHOD_KEYS = ("tau", "step_ratio", "alpha_epochs", "finetune_epochs", "patience", "max_rounds")


def _macs(model: nn.Module, data: Data) -> int:
    return count_macs(model, data.input_shape)[0]


def l1_pruned(model: nn.Module, ratio: float, data: Data) -> nn.Module:
    """A copy without the ``ratio`` share of each conv layer's filters of smallest L1 norm."""
    pruned = copy.deepcopy(model)
    plan = filter_plan(pruned, ratio, 1, data.input_shape)
    plan = {k: v for k, v in plan.items() if v}
    if plan:
        remove_channels(pruned, plan, data.input_shape)
    return pruned


def share_candidates(model: nn.Module) -> list[float]:
    """One uniform share inside each interval on which every layer's removal count is fixed.

    A layer of ``C`` filters removes ``round(share * C)`` of them, a count that changes
    only where ``share * C`` crosses ``j + 0.5``; between two neighbouring crossings of
    any layer the pruned model, and so its MACs, stay the same.
    """
    cuts = sorted({(j + 0.5) / c for c in filter_counts(model).values() for j in range(c)})
    cuts = [0.0] + [b for b in cuts if b < 1.0] + [1.0]
    return [0.0] + [(a + b) / 2 for a, b in zip(cuts[1:], cuts[2:], strict=False)]


def match_ratio(model: nn.Module, target_macs: int, data: Data, window: float = 0.05) -> dict:
    """The uniform L1 share whose pruned copy's MACs come closest to ``target_macs``.

    MACs fall step-wise as the share grows, so bisection over one share per step
    (``share_candidates``) finds the step that crosses the target, and the closer of
    its two sides is taken. The bisection starts from a bracket ``window`` either side
    of the share a uniform cut of both channel counts would need, ``1 - sqrt(target /
    base)``, and widens it to [0, 1) if that does not hold the target. No training:
    each probe prunes a copy and counts its MACs.
    """
    shares = share_candidates(model)
    probes: dict[int, int] = {}

    def macs_at(i: int) -> int:
        if i not in probes:
            probes[i] = _macs(l1_pruned(model, shares[i], data), data)
        return probes[i]

    def index(share: float) -> int:
        return min(range(len(shares)), key=lambda i: abs(shares[i] - share))

    # find the first share whose MACs are <= target; MACs do not rise along ``shares``
    guess = 1.0 - (min(1.0, target_macs / _macs(model, data))) ** 0.5
    lo, hi = index(guess - window), index(guess + window)
    if lo > 0 and macs_at(lo) <= target_macs:
        lo = 0
    if macs_at(hi) > target_macs:
        lo, hi = hi, len(shares) - 1
        if macs_at(hi) > target_macs:
            lo = hi  # even the largest share leaves more MACs than the target
    while lo < hi:
        mid = (lo + hi) // 2
        if macs_at(mid) <= target_macs:
            hi = mid
        else:
            lo = mid + 1
    best = min((i for i in (lo - 1, lo) if i >= 0), key=lambda i: abs(macs_at(i) - target_macs))
    return {"ratio": shares[best], "macs": macs_at(best),
            "macs_to_target": macs_at(best) / target_macs, "probes": len(probes)}


def _epochs(rows: list[dict]) -> dict[str, int]:
    return {p: sum(1 for r in rows if r.get("phase") == p) for p in TRAIN_PHASES}


def _measure(model: nn.Module, ctx: Context, base: dict) -> dict:
    test = ctx.evaluate(model, "test")
    macs = _macs(model, ctx.data)
    return {"accuracy": test["accuracy"], "balanced_accuracy": test["balanced_accuracy"],
            "val_accuracy": ctx.evaluate(model, "val")["accuracy"],
            "macs": macs, "macs_vs_base": macs / base["macs"],
            "params": count_params(model)[0],
            "filters_removed": 1.0 - total_filters(model) / base["filters"],
            "filters_per_layer": filter_counts(model)}


def _transtailor(method, base, params: dict, data: Data, base_row: dict, seed: int) -> dict:
    rows: list[dict] = []
    ctx = Context(data=data, train=TrainConfig(seed=seed), stage="transtailor", seed=seed,
                  report=rows.append)
    t0 = time.perf_counter()
    model = method(base.build(data.device), params, ctx)
    seconds = time.perf_counter() - t0
    epochs = _epochs(rows)
    alpha = [r for r in rows if r.get("phase") == "alpha"]
    return {"kind": "transtailor", **_measure(model, ctx, base_row),
            "epochs": sum(epochs.values()), "epochs_per_phase": epochs, "epoch_budget": None,
            "rounds_accepted": ctx.results["transtailor.rounds_accepted"],
            "rounds": ctx.results["transtailor.rounds"],
            "start_val_score": ctx.results["transtailor.start_val_accuracy"],
            "filters_removed_reported": ctx.results["transtailor.filters_removed_share"],
            # alpha after the first round's training: does it move off its start?
            "first_alpha": {k: alpha[params["alpha_epochs"] - 1][k]
                            for k in ("alpha_mean", "alpha_min")} if alpha else None,
            "seconds": seconds}


def _plain(base, tt: dict, params: dict, data: Data, base_row: dict, seed: int) -> dict:
    """The same base, L1 filters removed to ``tt``'s MACs, then fine-tuned."""
    t0 = time.perf_counter()
    match = match_ratio(base.build(data.device), tt["macs"], data)
    model = l1_pruned(base.build(data.device), match["ratio"], data)
    match_seconds = time.perf_counter() - t0
    rows: list[dict] = []
    ctx = Context(data=data, train=TrainConfig(seed=seed), stage="plain", seed=seed,
                  report=rows.append)
    ctx.fit(model, tt["epochs"], phase="finetune", lr=params["lr"],
            classifier_lr=params["classifier_lr"], patience=params["patience"],
            monitor=params["metric"], classifier_layers=params["classifier_layers"])
    epochs = _epochs(rows)
    return {"kind": "plain", **_measure(model, ctx, base_row),
            "epochs": sum(epochs.values()), "epochs_per_phase": epochs,
            "epoch_budget": tt["epochs"], "l1_ratio": match["ratio"],
            "macs_to_transtailor": match["macs_to_target"],
            "macs_matched": abs(match["macs_to_target"] - 1) <= MACS_TOLERANCE,
            "bisection_probes": match["probes"], "bisection_seconds": match_seconds,
            "seconds": time.perf_counter() - t0}


def run(settings: dict, cache: Path, log=print) -> dict:
    data = first_images(datasets.load("digits-split"), settings.get("train_limit"))
    # The training subset is part of the cache key: a tiny base never passes for a full one.
    spec = BaseSpec(model=settings["model"], model_kw={"width": settings["width"]},
                    data="digits-split", data_kw={"train_limit": settings.get("train_limit")},
                    train=TrainConfig(epochs=settings["source_epochs"], lr=settings["base_lr"],
                                      seed=0),
                    transfer=TrainConfig(epochs=settings["transfer_epochs"],
                                         lr=settings["base_lr"], seed=0))
    base, _ = get_base(spec, data, cache, log=log)
    base_model = base.build(data.device)
    probe = Context(data=data, train=TrainConfig())
    base_test = probe.evaluate(base_model, "test")
    base_row = {"accuracy": base_test["accuracy"],
                "balanced_accuracy": base_test["balanced_accuracy"],
                "val_accuracy": probe.evaluate(base_model, "val")["accuracy"],
                "macs": _macs(base_model, data), "params": count_params(base_model)[0],
                "filters": total_filters(base_model),
                "filters_per_layer": filter_counts(base_model)}
    log(f"base {settings['model']} width {settings['width']}: test accuracy "
        f"{base_row['accuracy']:.4f}, {base_row['macs'] / 1e6:.2f} M MACs")
    method = get_method("transtailor")
    arm_params = {arm: method.resolve({**{k: settings[k] for k in METHOD_KEYS}, **ARMS[arm]})
                  for arm in settings["arms"]}
    runs = []
    for arm, params in arm_params.items():
        for seed in settings["seeds"]:
            tt = {"arm": arm, "seed": seed,
                  **_transtailor(method, base, params, data, base_row, seed)}
            log(f"{arm} seed {seed} transtailor: accuracy {tt['accuracy']:.4f}, MACs "
                f"{tt['macs_vs_base']:.3f} of base, {tt['rounds_accepted']} round(s) "
                f"accepted, {tt['epochs']} epochs ({tt['seconds']:.0f} s)")
            plain = {"arm": arm, "seed": seed,
                     **_plain(base, tt, params, data, base_row, seed)}
            log(f"{arm} seed {seed} plain: accuracy {plain['accuracy']:.4f}, MACs "
                f"{plain['macs_vs_base']:.3f} of base (L1 share {plain['l1_ratio']:.3f}, "
                f"{plain['macs_to_transtailor']:.3f} of TransTailor's), {plain['epochs']} of "
                f"{tt['epochs']} epochs ({plain['seconds']:.0f} s)")
            runs += [tt, plain]
    return {"settings": settings, "method_params": arm_params, "base": base_row,
            "test_images": len(data.test), "runs": runs,
            "summary": {arm: summarize([r for r in runs if r["arm"] == arm])
                        for arm in arm_params}}


def summarize(runs: list[dict]) -> dict:
    """One arm's spread over seeds, per kind, and TransTailor - plain per seed."""
    kinds = {kind: sorted((r for r in runs if r["kind"] == kind), key=lambda r: r["seed"])
             for kind in ("transtailor", "plain")}
    summary: dict = {}
    for kind, rs in kinds.items():
        summary[kind] = {k: spread([r[k] for r in rs]) for k in
                         ("accuracy", "balanced_accuracy", "macs_vs_base", "filters_removed",
                          "epochs", "seconds")}
    summary["transtailor"]["rounds_accepted"] = spread(
        [r["rounds_accepted"] for r in kinds["transtailor"]])
    pairs = list(zip(kinds["transtailor"], kinds["plain"], strict=True))
    for key in ("accuracy", "balanced_accuracy"):
        diff = [t[key] - p[key] for t, p in pairs]
        summary[f"difference_{key}"] = {**spread(diff), "per_seed": diff,
                                        "transtailor_better": sum(d > 0 for d in diff),
                                        "transtailor_worse": sum(d < 0 for d in diff),
                                        "ties": sum(d == 0 for d in diff)}
    summary["macs_to_transtailor"] = spread([p["macs_to_transtailor"] for _, p in pairs])
    summary["all_macs_matched"] = all(p["macs_matched"] for _, p in pairs)
    return summary


def _pct(s: dict) -> str:
    return f"{100 * s['mean']:.2f} % ({100 * s['std']:.2f})"


def markdown(doc: dict) -> str:
    s, b = doc["settings"], doc["base"]
    p = next(iter(doc["method_params"].values()))
    limit = (f" (first {s['train_limit']} training images of each task)"
             if s.get("train_limit") else "")
    arms = ", ".join(f"`{a}` ({', '.join(f'{k} {v}' for k, v in ARMS[a].items())})"
                     for a in doc["method_params"])
    lines = [
        "# TransTailor against plain fine-tune-then-prune at equal MACs (digits-split)",
        "",
        f"Base W^(s*)_f: {s['model']} width {s['width']}, trained {s['source_epochs']} epochs on "
        f"digits 0-4 and fine-tuned {s['transfer_epochs']} epochs to digits 5-9 (lr "
        f"{s['base_lr']}, seed 0){limit}: test accuracy {b['accuracy']:.4f}, balanced "
        f"{b['balanced_accuracy']:.4f}, {b['macs'] / 1e6:.2f} M MACs, {b['filters']} filters. "
        f"TransTailor: tau {p['tau']} on val {p['metric']}, step_ratio {p['step_ratio']}, at "
        f"most {p['max_rounds']} rounds of {p['alpha_epochs']} alpha epoch(s) (lr "
        f"{p['alpha_lr']}) and up to {p['finetune_epochs']} fine-tuning epochs (lr {p['lr']}, "
        f"classifier layers ({p['classifier_layers']}) {p['classifier_lr']}, patience "
        f"{p['patience']}). Arms: {arms}. Plain: the same base, the "
        f"filters of smallest L1 norm removed with one share per layer chosen by bisection "
        f"so its MACs match TransTailor's (within {MACS_TOLERANCE:.0%} where possible), then "
        f"fine-tuned with TransTailor's rates and patience for as many epochs as TransTailor "
        f"trained in all (the budget; early stopping may end it sooner). The seed drives "
        f"training order and alpha only; the base is the same for all seeds. Accuracies on "
        f"the test split ({doc['test_images']} images); seconds are wall time on a shared "
        f"machine.",
        "",
        "| arm | rounds accepted | filters removed | MACs vs base | TransTailor test accuracy "
        "| plain L1 at its MACs | TransTailor - plain | better / worse / tied |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm, m in doc["summary"].items():
        tt, da = m["transtailor"], m["difference_accuracy"]
        rounds = sorted({r["rounds_accepted"] for r in doc["runs"]
                         if r["arm"] == arm and r["kind"] == "transtailor"})
        removed = tt["filters_removed"]["mean"]
        lines.append(
            f"| {arm} | {', '.join(map(str, rounds))} | {100 * removed:.1f} % "
            f"| {tt['macs_vs_base']['mean']:.3f} | {_pct(tt['accuracy'])} | "
            f"{_pct(m['plain']['accuracy'])} | {100 * da['mean']:+.2f} ({100 * da['std']:.2f}) | "
            f"{da['transtailor_better']} / {da['transtailor_worse']} / {da['ties']} |")
    lines += [
        "",
        "Mean (sd) over seeds; the difference is in points of test accuracy, per seed.",
        "",
        "| arm | seed | kind | test accuracy | balanced accuracy | MACs vs base "
        "| filters removed | epochs trained | alpha after round 1, mean / min "
        "| val score per round (* rejected) | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["runs"]:
        if r["kind"] == "transtailor":
            epochs = (f"{r['epochs']} ({r['epochs_per_phase']['alpha']} alpha + "
                      f"{r['epochs_per_phase']['finetune']} fine-tune; "
                      f"{r['rounds_accepted']} of {len(r['rounds'])} rounds accepted)")
            macs = f"{r['macs_vs_base']:.3f}"
            path = f"start {r['start_val_score']:.3f}: " + ", ".join(
                f"{x['score']:.3f}{'' if x['accepted'] else '*'}" for x in r["rounds"]
                if "score" in x)
            alpha = r["first_alpha"]
            alpha = f"{alpha['alpha_mean']:.3f} / {alpha['alpha_min']:.3f}" if alpha else ""
        else:
            epochs = f"{r['epochs']} of {r['epoch_budget']}"
            macs = (f"{r['macs_vs_base']:.3f} ({r['macs_to_transtailor']:.3f} of TransTailor's"
                    f"{'' if r['macs_matched'] else ', not matched'}; L1 share "
                    f"{r['l1_ratio']:.3f})")
            path = alpha = ""
        lines.append(f"| {r['arm']} | {r['seed']} | {r['kind']} | {r['accuracy']:.4f} | "
                     f"{r['balanced_accuracy']:.4f} | {macs} | {r['filters_removed']:.3f} | "
                     f"{epochs} | {alpha} | {path} | {r['seconds']:.0f} |")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    started = Run(__file__, argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="a seconds-long smoke run")
    ap.add_argument("--seeds", type=int, nargs="+", help="seeds (default 0 1 2)")
    ap.add_argument("--arms", nargs="+", choices=list(ARMS),
                    help=f"TransTailor variants (default {' '.join(DEFAULTS['arms'])})")
    ap.add_argument("--tau", type=float, help="TransTailor's largest val accuracy drop")
    ap.add_argument("--out", type=Path, default=DOCS)
    add_cache_option(ap)
    args = ap.parse_args(argv)
    settings = dict(DEFAULTS, **(TINY if args.tiny else {}))
    for key in ("seeds", "tau", "arms"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    cache = cache_dir(args)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    t0 = time.perf_counter()
    result = run(settings, cache, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    result["total_seconds"] = time.perf_counter() - t0
    doc = started.write("transtailor", result, markdown(result), args.out)
    print(json.dumps(doc["summary"], indent=2))
    return doc


if __name__ == "__main__":
    main()
