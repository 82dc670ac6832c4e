"""Search efficiency of Optuna's samplers on one study, at an equal trial budget.

The same study (Network Slimming on digits: the quickstart, with short epochs so
many studies fit in minutes) runs with every sampler and several sampler seeds,
through ``prune-study``'s own runner on a local Ray. For each run it records the
hypervolume after each trial (the study's default reference: the base model), then
reports the mean and spread of the final hypervolume per sampler and the ratio of
each sampler's mean to random search's. All runs share one base model.

    python benchmarks/bench_search.py                 # 4 samplers x 3 seeds x 12 trials
    python benchmarks/bench_search.py --tiny          # seconds: the test runs this
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import DOCS, write_results  # noqa: E402

SPEC = Path(__file__).resolve().parent.parent / "studies" / "specs" / "quickstart.yaml"
SAMPLERS = ("random", "tpe", "nsga2", "gp")


def hypervolume_curve(study_dir: Path) -> list[float]:
    """Hypervolume after each trial, in trial order, against the study's base model."""
    from analysis import pareto, results

    info = results.study_info(study_dir)
    df = results.load(study_dir)
    values = results.objective_values(df, info.objectives)
    return pareto.hypervolume_by_trial(values, results.study_reference(info, df)).tolist()


def run_one(spec, sampler: str, seed: int, storage: Path, log) -> dict:
    from studies.runner import run_study

    name = f"{sampler}-{seed}"
    s = spec.with_overrides(name=name, storage=str(storage),
                            sampler={"name": sampler, "seed": seed})
    t0 = time.perf_counter()
    summary = run_study(s, log=log)
    curve = hypervolume_curve(s.study_dir)
    return {"sampler": sampler, "seed": seed, "seconds": time.perf_counter() - t0,
            "final_hypervolume": curve[-1] if curve else 0.0, "curve": curve,
            "finished": summary["finished"], "failed": summary["failed"]}


def summarise(runs: list[dict]) -> dict[str, dict]:
    """Mean, spread (sample standard deviation, min, max) and ratio to random per sampler."""
    out: dict[str, dict] = {}
    for sampler in dict.fromkeys(r["sampler"] for r in runs):
        finals = [r["final_hypervolume"] for r in runs if r["sampler"] == sampler]
        out[sampler] = {
            "runs": len(finals), "mean": statistics.fmean(finals),
            "std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
            "min": min(finals), "max": max(finals),
        }
    ref = out.get("random", {}).get("mean")
    for v in out.values():
        v["ratio_to_random"] = v["mean"] / ref if ref else None
    return out


def draw(runs: list[dict], path: Path) -> None:
    """Mean hypervolume against trial number per sampler, with the min-max band."""
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd
    import seaborn as sns
    from matplotlib import pyplot as plt

    rows = [{"sampler": r["sampler"], "seed": r["seed"], "trial": i + 1, "hypervolume": hv}
            for r in runs for i, hv in enumerate(r["curve"])]
    df = pd.DataFrame(rows)
    sns.set_theme(style="whitegrid", context="paper")
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=150)
    sns.lineplot(df, x="trial", y="hypervolume", hue="sampler", errorbar=("pi", 100), ax=ax)
    ax.set_xlabel("trials finished")
    ax.set_ylabel("hypervolume (base model = reference)")
    ax.set_title("Search efficiency on the quickstart study (band: min-max over seeds)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", type=Path, default=SPEC, help="study spec to search")
    p.add_argument("--samplers", default=",".join(SAMPLERS), help="comma-separated")
    p.add_argument("--seeds", type=int, default=3, help="sampler seeds per sampler")
    p.add_argument("--trials", type=int, default=12, help="trials per study")
    p.add_argument("--sparsity-epochs", type=int, default=2,
                   help="fixes slimming.sparsity_epochs to keep trials short")
    p.add_argument("--finetune-epochs", type=int, default=2,
                   help="fixes slimming.finetune_epochs to keep trials short")
    p.add_argument("--storage", type=Path, default=None,
                   help="where the studies go (default: a temporary directory)")
    p.add_argument("--tiny", action="store_true", help="2 samplers x 1 seed x 2 trials")
    p.add_argument("--out", type=Path, default=DOCS, help="where search.json / .md / .png go")
    args = p.parse_args(argv)
    from studies.spec import load_spec

    spec = load_spec(args.spec)
    samplers = [s for s in args.samplers.split(",") if s]
    space = dict(spec.source.get("space", {}))
    space["slimming.sparsity_epochs"] = args.sparsity_epochs
    space["slimming.finetune_epochs"] = args.finetune_epochs
    overrides: dict = {"trials": args.trials, "space": space}
    if args.tiny:
        samplers, args.seeds = ["random", "nsga2"], 1
        overrides.update(trials=2, baseline={"epochs": 2})
        space["slimming.sparsity_epochs"] = space["slimming.finetune_epochs"] = 1
    spec = spec.with_overrides(**overrides)
    storage = args.storage or Path(tempfile.mkdtemp(prefix="bench-search-"))

    def log(msg: str) -> None:
        print(f"    {msg}", file=sys.stderr, flush=True)

    runs = []
    for sampler in samplers:
        for seed in range(args.seeds):
            print(f"{sampler} seed {seed}: {spec.trials} trials", file=sys.stderr, flush=True)
            runs.append(run_one(spec, sampler, seed, storage, log))
            r = runs[-1]
            print(f"  final hypervolume {r['final_hypervolume']:.4f} in {r['seconds']:.0f} s",
                  file=sys.stderr, flush=True)
    table = summarise(runs)
    name = "search-tiny" if args.tiny else "search"
    args.out.mkdir(parents=True, exist_ok=True)
    draw(runs, args.out / f"{name}.png")
    lines = [
        "# Search efficiency: samplers at an equal trial budget",
        "",
        f"Study `{spec.name}` ({args.spec.name}: {spec.methods_label} on {spec.data}, "
        f"{spec.model}), {spec.trials} trials per run, objectives "
        f"{', '.join(f'{k} {v}' for k, v in spec.objectives.items())}, "
        f"{args.seeds} sampler seeds each. Hypervolume against the base model (see "
        "docs/report.md).",
        "",
        "| sampler | runs | final hypervolume, mean | std | min | max | ratio to random |",
        "|---|---|---|---|---|---|---|",
    ]
    for s, v in table.items():
        ratio = f"{v['ratio_to_random']:.2f}" if v["ratio_to_random"] else "-"
        lines.append(f"| {s} | {v['runs']} | {v['mean']:.4f} | {v['std']:.4f} | "
                     f"{v['min']:.4f} | {v['max']:.4f} | {ratio} |")
    lines += ["", f"![hypervolume against trials]({name}.png)"]
    for s, v in table.items():
        print(f"{s:>7}: {v['mean']:.4f} +- {v['std']:.4f}  x{v['ratio_to_random'] or 0:.2f} "
              "of random", file=sys.stderr)
    return write_results(name, {"samplers": table, "runs": runs,
                                "trials": spec.trials, "seeds": args.seeds},
                         "\n".join(lines), args.out)


if __name__ == "__main__":
    main()
