"""Per-layer allocation against one global ratio: which layers to prune, searched.

Structured magnitude pruning of a ResNet-20 on digits, accuracy against MACs, through
``prune-study``'s own runner on a local Ray, every arm on one base model:

- ``global-tpe``: one ratio ranked over all groups (``allocation: global``), TPE;
- ``stage-random``, ``stage-tpe``, ``stage-gp``, ``stage-auto``: one ratio per stage
  (``allocation: per_stage``, three ``ratio@`` parameters), each sampler;
- ``stage-auto-warm``: the same with ``warm_start: sensitivity`` (the scan's greedy
  allocations at evenly spaced MAC levels run first);
- ``uniform``: Torch-Pruning's uniform ratio, one trial per MAC level (the ratio
  ``1 - sqrt(level)``, as pruning a conv's inputs and outputs by r leaves ``(1 - r)^2``
  of its MACs);
- ``greedy``: the sensitivity scan's greedy equal-loss allocation per group
  (``allocation: per_group``), one trial per MAC level, with no search.

Each search arm runs ``--trials`` trials for each of ``--seeds`` sampler seeds. The
JSON holds every run's hypervolume after each trial (against the base model); the
Markdown the mean final hypervolume per arm and its ratio to ``stage-random``, the
trials the warm-started arm took to reach random's final hypervolume, and the best
accuracy each arm reached at or below each MAC level beside uniform and greedy.

    python -m benchmarks.bench_allocation              # 5 search arms x 3 seeds x 40 trials
    python -m benchmarks.bench_allocation --tiny       # seconds: the test runs this
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import DOCS, Run, add_cache_option, cache_dir
from benchmarks.bench_search import hypervolume_curve

ARMS = {  # name: (allocation, sampler, warm start)
    "global-tpe": ("global", "tpe", False),
    "stage-random": ("per_stage", "random", False),
    "stage-tpe": ("per_stage", "tpe", False),
    "stage-gp": ("per_stage", "gp", False),
    "stage-auto": ("per_stage", "auto", False),
    "stage-auto-warm": ("per_stage", "auto", True),
}
LEVELS = (0.6, 0.4, 0.25)  # fractions of the base model's MACs
# Every arm's best at a level counts trials up to this much above it: the uniform and greedy
# allocations aim at the level and land near it, on either side.
SLACK = 1.05
RATIO = {"low": 0.0, "high": 0.9}


def base_spec(tiny: bool) -> dict:
    """The study every arm varies: ResNet-20 at 16 px, one fine-tuning epoch."""
    return {
        "name": "allocation", "data": {"name": "digits", "image_size": 16},
        "model": {"name": "resnet20"},
        "baseline": {"epochs": 2 if tiny else 15, "lr": 0.05},
        "methods": "magnitude",
        "space": {"magnitude.mode": "structured", "magnitude.n": 1,
                  "magnitude.finetune_epochs": 1, "magnitude.lr": 0.01,
                  "magnitude.ratio": dict(RATIO)},
        "objectives": {"accuracy": "max", "macs": "min"},
    }


def arm_spec(raw: dict, arm: str, seed: int, trials: int, storage: Path):
    from studies.spec import parse_spec

    allocation, sampler, warm = ARMS[arm]
    raw = {**raw, "name": f"{arm}-{seed}", "storage": str(storage), "trials": trials,
           "sampler": {"name": sampler, "seed": seed},
           "space": {**raw["space"], "magnitude.allocation": allocation}}
    if warm:
        raw["warm_start"] = {"sensitivity": {"levels": 4}}
    return parse_spec(raw)


def points_spec(raw: dict, name: str, allocation: str, points: list[dict], storage: Path):
    """A study that runs exactly ``points`` (enqueued, random sampler)."""
    from studies.spec import parse_spec

    return parse_spec({**raw, "name": name, "storage": str(storage), "trials": len(points),
                       "sampler": {"name": "random", "seed": 0}, "enqueue": points,
                       "space": {**raw["space"], "magnitude.allocation": allocation}})


def finished(study_dir: Path) -> list[dict]:
    """``{"accuracy", "macs"}`` of each finished trial, in trial order."""
    from analysis import results

    df = results.load(study_dir)
    df = df[df["status"] == "ok"]
    return [{"accuracy": float(a), "macs": float(m)} for a, m in zip(df["accuracy"], df["macs"],
                                                                      strict=True)]


def best_at(trials: list[dict], macs: float) -> float | None:
    """The best accuracy among trials at or below ``macs``."""
    fit = [t["accuracy"] for t in trials if t["macs"] <= macs]
    return max(fit) if fit else None


def trials_to_reach(curve: list[float], goal: float) -> int | None:
    """The first trial count whose hypervolume reaches ``goal``."""
    return next((i + 1 for i, hv in enumerate(curve) if hv >= goal - 1e-12), None)


def summarise(runs: list[dict], reference: str = "stage-random") -> dict[str, dict]:
    out: dict[str, dict] = {}
    for arm in dict.fromkeys(r["arm"] for r in runs):
        finals = [r["final_hypervolume"] for r in runs if r["arm"] == arm]
        out[arm] = {"runs": len(finals), "mean": statistics.fmean(finals),
                    "std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
                    "min": min(finals), "max": max(finals)}
    ref = out.get(reference, {}).get("mean")
    for v in out.values():
        v["ratio_to_random"] = v["mean"] / ref if ref else None
    if ref is not None:
        for arm, v in out.items():
            reach = [trials_to_reach(r["curve"], ref) for r in runs if r["arm"] == arm]
            v["trials_to_random_final"] = reach
    return out


def main(argv: list[str] | None = None) -> dict:
    started = Run(__file__, argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arms", default=",".join(ARMS), help="comma-separated search arms")
    p.add_argument("--seeds", type=int, default=3, help="sampler seeds per arm")
    p.add_argument("--trials", type=int, default=40, help="trials per study")
    p.add_argument("--storage", type=Path, default=None,
                   help="where the studies go (default: a temporary directory)")
    p.add_argument("--tiny", action="store_true",
                   help="3 arms x 1 seed x 3 trials on a 2-epoch base, one MAC level")
    p.add_argument("--out", type=Path, default=DOCS, help="where allocation.json / .md go")
    add_cache_option(p)
    args = p.parse_args(argv)
    arms = [a for a in args.arms.split(",") if a]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        raise SystemExit(f"--arms: unknown {', '.join(unknown)}; allowed: {', '.join(ARMS)}")
    levels = LEVELS
    if args.tiny:
        arms, args.seeds, args.trials, levels = (["global-tpe", "stage-random",
                                                  "stage-auto-warm"], 1, 3, LEVELS[:1])
    raw = base_spec(args.tiny)
    storage = args.storage or Path(tempfile.mkdtemp(prefix="bench-allocation-"))
    shared = cache_dir(args).resolve()
    if not (storage / "_cache").exists():  # one base model (and scan) for every arm
        shared.mkdir(parents=True, exist_ok=True)
        storage.mkdir(parents=True, exist_ok=True)
        (storage / "_cache").symlink_to(shared, target_is_directory=True)

    from prune_core.sensitivity import greedy_allocation
    from studies.runner import run_study
    from studies.sensitivity import run_scan

    def log(msg: str) -> None:
        print(f"    {msg}", file=sys.stderr, flush=True)

    runs = []
    for arm in arms:
        for seed in range(args.seeds):
            spec = arm_spec(raw, arm, seed, args.trials, storage)
            print(f"{arm} seed {seed}: {spec.trials} trials", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            run_study(spec, log=log)
            curve = hypervolume_curve(spec.study_dir)
            runs.append({"arm": arm, "seed": seed, "seconds": time.perf_counter() - t0,
                         "final_hypervolume": curve[-1] if curve else 0.0, "curve": curve,
                         "trials": finished(spec.study_dir)})
            print(f"  final hypervolume {runs[-1]['final_hypervolume']:.4f}, "
                  f"{runs[-1]['seconds']:.0f} s", file=sys.stderr, flush=True)

    # the references: uniform ratios and the scan's greedy allocation at each MAC level
    probe = arm_spec(raw, "stage-random", 0, 1, storage)
    scan = run_scan(probe, "magnitude", log=log)
    base_macs = scan["base"]["macs"]
    uniform = points_spec(raw, "uniform", "uniform",
                          [{"magnitude.ratio": round(1 - math.sqrt(lv), 4)} for lv in levels],
                          storage)
    run_study(uniform, log=log)
    greedy_found = [greedy_allocation(scan, lv) for lv in levels]
    greedy_points = [{f"magnitude.ratio@{g}": min(r, RATIO["high"])
                      for g, r in a["ratios"].items()} for a in greedy_found if a is not None]
    if greedy_points:
        greedy = points_spec(raw, "greedy", "per_group", greedy_points, storage)
        run_study(greedy, log=log)
    references = {"uniform": finished(uniform.study_dir),
                  "greedy": finished(greedy.study_dir) if greedy_points else []}

    table = summarise(runs)
    at_levels = {}
    for lv in levels:
        row = {}
        for arm in arms:
            best = [b for r in runs if r["arm"] == arm
                    if (b := best_at(r["trials"], lv * base_macs * SLACK)) is not None]
            row[arm] = statistics.fmean(best) if best else None
        for name, trials in references.items():
            row[name] = best_at(trials, lv * base_macs * SLACK)  # its one trial near the level
        at_levels[f"{lv:g}"] = row
    name = "allocation-tiny" if args.tiny else "allocation"
    warm = table.get("stage-auto-warm", {}).get("trials_to_random_final")
    lines = [
        "# Per-layer allocation: which layers to prune, searched",
        "",
        f"Structured magnitude pruning of ResNet-20 on digits at 16 px (one fine-tuning epoch "
        f"per trial), accuracy against MACs; {args.trials} trials per study, sampler seeds per "
        f"arm: {args.seeds}, on a local Ray; hypervolume against the base model "
        f"(MACs {base_macs:,}). The per-stage arms search "
        f"{sum('ratio@' in k for k in probe.space)} ratio@ parameters, one per stage.",
        "",
        "| arm | runs | final hypervolume, mean | std | min | max | ratio to stage-random "
        "| trials to random's final hypervolume |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm, v in table.items():
        reach = v.get("trials_to_random_final") or []
        lines.append(f"| {arm} | {v['runs']} | {v['mean']:.4f} | {v['std']:.4f} | "
                     f"{v['min']:.4f} | {v['max']:.4f} | "
                     f"{v['ratio_to_random']:.2f} | "
                     f"{', '.join('-' if n is None else str(n) for n in reach)} |")
    lines += ["", f"Best test accuracy at each fraction of the base model's MACs, counting "
              f"every arm's trials up to {100 * (SLACK - 1):.0f} % above it (search arms: "
              "mean over seeds of each run's best; uniform and greedy: their one trial):", "",
              "| MACs | " + " | ".join([*arms, "uniform", "greedy"]) + " |",
              "|---" * (len(arms) + 3) + "|"]
    for lv, row in at_levels.items():
        lines.append(f"| {lv}x | " + " | ".join(
            "-" if row[a] is None else f"{row[a] * 100:.1f} %"
            for a in [*arms, "uniform", "greedy"]) + " |")
    if warm:
        lines += ["", f"The warm-started arm reached stage-random's mean final hypervolume "
                  f"after {', '.join('-' if n is None else str(n) for n in warm)} trials "
                  f"(of {args.trials})."]
    for arm, v in table.items():
        print(f"{arm:>16}: {v['mean']:.4f} +- {v['std']:.4f}  x{v['ratio_to_random'] or 0:.2f}",
              file=sys.stderr)
    return started.write(name, {"arms": table, "runs": runs, "levels": at_levels,
                                "references": references, "base_macs": base_macs,
                                "trials": args.trials, "seeds": args.seeds},
                         "\n".join(lines), args.out)


if __name__ == "__main__":
    main()
