"""Search efficiency of Optuna's samplers on one study, at an equal trial budget.

The same study runs with every sampler and several sampler seeds, through
``prune-study``'s own runner on a local Ray. For each run it records the
hypervolume after each trial (the study's default reference: the base model), then
reports the mean and spread of the final hypervolume per sampler, the ratio of each
sampler's mean to random search's, and how many trials each spent in the space's
collapsed region (accuracy at chance). All runs share one base model.

The default study is magnitude pruning on digits (studies/specs/magnitude.yaml):
six parameters, four of them categorical, accuracy against non-zero MACs. Much of
that space is a trap: re-initialised survivors need more fine-tuning than the
benchmark allows, so a sampler that learns pays fewer trials there. Fine-tuning is
capped at 2 epochs so 12 studies of 30 trials fit in minutes on 2 cores.

    python -m benchmarks.bench_search                 # 4 samplers x 3 seeds x 30 trials
    python -m benchmarks.bench_search --spec studies/specs/quickstart.yaml --trials 12 \
        --space slimming.sparsity_epochs=2 --space slimming.finetune_epochs=2
    python -m benchmarks.bench_search --tiny          # seconds: the test runs this
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import DOCS, Run, add_cache_option, cache_dir

SPEC = Path(__file__).resolve().parent.parent / "studies" / "specs" / "magnitude.yaml"
SAMPLERS = ("random", "tpe", "nsga2", "gp")
# The default study's overrides (replaced by --space): short fine-tuning keeps trials cheap.
DEFAULT_SPACE = ("magnitude.finetune_epochs={low: 0, high: 2}",)
CHANCE_MARGIN = 0.05  # a trial within this of chance accuracy (1 / classes) has collapsed


def space_overrides(items: list[str]) -> dict:
    """``NAME=YAML`` pairs as spec space entries: ``magnitude.lr=0.01``,
    ``magnitude.ratio={low: 0.5, high: 0.9}``."""
    import yaml

    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise SystemExit(f"--space {item!r}: expected NAME=VALUE, e.g. magnitude.lr=0.01 "
                             "or 'magnitude.ratio={low: 0.5, high: 0.9}'")
        out[name.strip()] = yaml.safe_load(value)
    return out


def hypervolume_curve(study_dir: Path) -> list[float]:
    """Hypervolume after each trial, in trial order, against the study's base model."""
    from analysis import pareto, results

    info = results.study_info(study_dir)
    df = results.load(study_dir)
    values = results.objective_values(df, info.objectives)
    return pareto.hypervolume_by_trial(values, results.study_reference(info, df)).tolist()


def collapsed_trials(study_dir: Path, classes: int) -> int:
    """Finished trials whose accuracy is within CHANCE_MARGIN of chance (1 / classes)."""
    from analysis import results

    acc = results.load(study_dir)["accuracy"].dropna()
    return int((acc <= 1.0 / classes + CHANCE_MARGIN).sum())


def run_one(spec, sampler: str, seed: int, storage: Path, classes: int, log) -> dict:
    from studies.runner import run_study

    name = f"{sampler}-{seed}"
    s = spec.with_overrides(name=name, storage=str(storage),
                            sampler={"name": sampler, "seed": seed})
    t0 = time.perf_counter()
    summary = run_study(s, log=log)
    curve = hypervolume_curve(s.study_dir)
    return {"sampler": sampler, "seed": seed, "seconds": time.perf_counter() - t0,
            "final_hypervolume": curve[-1] if curve else 0.0, "curve": curve,
            "collapsed": collapsed_trials(s.study_dir, classes),
            "finished": summary["finished"], "failed": summary["failed"]}


def summarise(runs: list[dict]) -> dict[str, dict]:
    """Mean, spread (sample standard deviation, min, max) and ratio to random per sampler."""
    out: dict[str, dict] = {}
    for sampler in dict.fromkeys(r["sampler"] for r in runs):
        mine = [r for r in runs if r["sampler"] == sampler]
        finals = [r["final_hypervolume"] for r in mine]
        out[sampler] = {
            "runs": len(finals), "mean": statistics.fmean(finals),
            "std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
            "min": min(finals), "max": max(finals),
            "collapsed_mean": statistics.fmean(r["collapsed"] for r in mine),
            "minutes_mean": statistics.fmean(r["seconds"] for r in mine) / 60,
        }
    ref = out.get("random", {}).get("mean")
    for v in out.values():
        v["ratio_to_random"] = v["mean"] / ref if ref else None
    return out


def draw(runs: list[dict], path: Path, title: str) -> None:
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
    ax.set_title(f"{title} (band: min-max over seeds)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    started = Run(__file__, argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", type=Path, default=SPEC,
                   help="study spec to search (default: studies/specs/magnitude.yaml)")
    p.add_argument("--samplers", default=",".join(SAMPLERS), help="comma-separated")
    p.add_argument("--seeds", type=int, default=3, help="sampler seeds per sampler")
    p.add_argument("--trials", type=int, default=30, help="trials per study")
    p.add_argument("--space", action="append", metavar="NAME=YAML",
                   help="replace one entry of the spec's space (repeatable); default for the "
                        f"default spec: {' '.join(DEFAULT_SPACE)}")
    p.add_argument("--storage", type=Path, default=None,
                   help="where the studies go (default: a temporary directory)")
    p.add_argument("--tiny", action="store_true",
                   help="2 samplers x 1 seed x 2 trials on a 2-epoch base")
    p.add_argument("--out", type=Path, default=DOCS, help="where search.json / .md / .png go")
    add_cache_option(p)
    args = p.parse_args(argv)
    import yaml

    from prune_core.data import load as load_data
    from studies.spec import load_spec

    spec = load_spec(args.spec)
    samplers = [s for s in args.samplers.split(",") if s]
    unknown = sorted(set(samplers) - set(SAMPLERS))
    if unknown:
        raise SystemExit(f"--samplers: unknown {', '.join(unknown)}; "
                         f"allowed: {', '.join(SAMPLERS)}")
    fixes = args.space if args.space is not None else (
        list(DEFAULT_SPACE) if args.spec.resolve() == SPEC else [])
    changed = space_overrides(fixes)
    space = {**spec.source.get("space", {}), **changed}
    overrides: dict = {"trials": args.trials, "space": space}
    if args.tiny:
        samplers, args.seeds = ["random", "nsga2"], 1
        overrides.update(trials=2, baseline={"epochs": 2})
    spec = spec.with_overrides(**overrides)  # checks the space: a bad --space fails here
    classes = load_data(spec.data, **spec.data_kw).num_classes
    storage = args.storage or Path(tempfile.mkdtemp(prefix="bench-search-"))
    shared = cache_dir(args).resolve()
    if not (storage / "_cache").exists():
        # Every study of a storage keeps its base in <storage>/_cache: point it at the
        # shared cache, so the base is trained once across runs and benchmarks.
        shared.mkdir(parents=True, exist_ok=True)
        storage.mkdir(parents=True, exist_ok=True)
        (storage / "_cache").symlink_to(shared, target_is_directory=True)

    def log(msg: str) -> None:
        print(f"    {msg}", file=sys.stderr, flush=True)

    runs = []
    for sampler in samplers:
        for seed in range(args.seeds):
            print(f"{sampler} seed {seed}: {spec.trials} trials", file=sys.stderr, flush=True)
            runs.append(run_one(spec, sampler, seed, storage, classes, log))
            r = runs[-1]
            print(f"  final hypervolume {r['final_hypervolume']:.4f}, {r['collapsed']} trials "
                  f"collapsed, {r['seconds']:.0f} s", file=sys.stderr, flush=True)
    table = summarise(runs)
    name = "search-tiny" if args.tiny else "search"
    args.out.mkdir(parents=True, exist_ok=True)
    draw(runs, args.out / f"{name}.png", f"{spec.methods_label} on {spec.data}")
    changes = ", ".join(f"`{k}: {yaml.safe_dump(v, default_flow_style=True).strip()}`"
                        for k, v in changed.items())
    lines = [
        "# Search efficiency: samplers at an equal trial budget",
        "",
        f"Study `{args.spec.name}` ({spec.methods_label} on {spec.data}, {spec.model}), "
        f"{spec.trials} trials per run"
        + (f" with {changes}" if changes else "")
        + f", objectives {', '.join(f'{k} {v}' for k, v in spec.objectives.items())}, "
        f"{args.seeds} sampler seeds each, trials {spec.resources['cpu']:g} CPU each on a "
        "local Ray. Hypervolume against the base model (see docs/report.md); collapsed: "
        f"trials at chance accuracy (within {CHANCE_MARGIN:g} of 1/{classes}).",
        "",
        "| sampler | runs | final hypervolume, mean | std | min | max | ratio to random "
        "| collapsed trials, mean | minutes per study |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s, v in table.items():
        ratio = f"{v['ratio_to_random']:.2f}" if v["ratio_to_random"] else "-"
        lines.append(f"| {s} | {v['runs']} | {v['mean']:.4f} | {v['std']:.4f} | "
                     f"{v['min']:.4f} | {v['max']:.4f} | {ratio} | "
                     f"{v['collapsed_mean']:.1f} of {spec.trials} | {v['minutes_mean']:.1f} |")
    lines += ["", f"![hypervolume against trials]({name}.png)"]
    for s, v in table.items():
        print(f"{s:>7}: {v['mean']:.4f} +- {v['std']:.4f}  x{v['ratio_to_random'] or 0:.2f} "
              f"of random, {v['collapsed_mean']:.1f} collapsed", file=sys.stderr)
    return started.write(name, {"spec": args.spec.name, "space_overrides": changed,
                                "samplers": table, "runs": runs,
                                "trials": spec.trials, "seeds": args.seeds},
                         "\n".join(lines), args.out)


if __name__ == "__main__":
    main()
