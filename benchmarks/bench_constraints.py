"""Constrained against unconstrained TPE: the hypervolume of the trials within a constraint.

The same study runs twice per sampler seed, with the same TPE sampler, seed, space and
trial budget: once with the constraint ``accuracy_drop <= 0.02`` told to the sampler
(the spec's ``constraints``), once without. Both arms are scored by one rule after the
fact: a trial is feasible when it finished and meets the constraint (the rule of
``studies.samplers.Constraints``, the one the sampler is told), and the feasible
hypervolume is that of the feasible trials against the study's default reference (the
base model, as in the report). Per run it records the feasible hypervolume after each
trial, the number of feasible trials and the wall time; per arm the mean and spread, and
the ratio of the constrained arm's mean feasible hypervolume to the unconstrained one's.

The study is magnitude pruning on digits (studies/specs/magnitude.yaml), run through
``prune-study``'s own runner on a local Ray, with bench_search's cap on fine-tuning
(``--space`` replaces it). All runs share one base model, trained before any run is timed.

    python -m benchmarks.bench_constraints            # 2 arms x 3 seeds x 30 trials
    python -m benchmarks.bench_constraints --tiny     # seconds: the test runs this
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import DOCS, Run, add_cache_option, cache_dir, spread
from benchmarks.bench_search import DEFAULT_SPACE, SPEC, run_one, space_overrides

CONSTRAINTS = {"accuracy_drop": {"max": 0.02}}
ARMS = ("unconstrained", "constrained")
SAMPLER = "tpe"
# --tiny's space (replaced by --space): global unstructured pruning of 5 % or 60 %,
# survivors kept, no fine-tuning. On the 2-epoch base the first keeps its accuracy and the
# second falls to chance, so a few trials land on both sides of the constraint.
TINY_SPACE = ("magnitude.mode=unstructured", "magnitude.scope=global",
              "magnitude.ratio={choices: [0.05, 0.6]}", "magnitude.reinit=keep",
              "magnitude.finetune_epochs=0")


def feasible_mask(df, bounds: dict) -> list[bool]:
    """Per trial row: finished (status ok) and within every bound of ``bounds``."""
    from analysis.constraints import Bounds

    rule = Bounds(bounds)
    return [row["status"] == "ok" and not rule.broken(row)
            for row in df.to_dict("records")]


def feasible_hypervolume_curve(study_dir: Path, bounds: dict) -> tuple[list[float], int]:
    """Hypervolume after each trial, in trial order, of the trials within ``bounds`` only
    (against the study's default reference), and how many trials are within them."""
    from analysis import pareto, results

    info = results.study_info(study_dir)
    df = results.load(study_dir)
    # The study's own constraints (if any) are replaced by ``bounds``: both arms are
    # scored by the same rule, whatever their sampler was told.
    df["feasible"] = feasible_mask(df, bounds)
    values = results.objective_values(df, info.objectives)
    curve = pareto.hypervolume_by_trial(values, results.study_reference(info, df)).tolist()
    return curve, int(df["feasible"].sum())


def run_arm(spec, arm: str, seed: int, storage: Path, classes: int, log) -> dict:
    """One study of ``arm`` (constrained or not) with TPE seed ``seed`` under ``storage/arm``."""
    if arm not in ARMS:
        raise ValueError(f"arm {arm!r}; allowed: {', '.join(ARMS)}")
    if arm == "constrained":
        spec = spec.with_overrides(constraints=CONSTRAINTS)
    run = run_one(spec, SAMPLER, seed, storage / arm, classes, log)
    study_dir = storage / arm / f"{SAMPLER}-{seed}"
    curve, feasible = feasible_hypervolume_curve(study_dir, CONSTRAINTS)
    everything, _ = feasible_hypervolume_curve(study_dir, {})
    return {"arm": arm, "seed": seed, "study_dir": str(study_dir.resolve()),
            "trials": len(curve), "finished": run["finished"], "failed": run["failed"],
            "feasible": feasible, "feasible_hypervolume": curve[-1] if curve else 0.0,
            "curve": curve, "hypervolume": everything[-1] if everything else 0.0,
            "collapsed": run["collapsed"], "seconds": run["seconds"]}


def summarise(runs: list[dict]) -> dict:
    """Per arm: mean and spread of the feasible hypervolume, the feasible trials, the
    hypervolume of all finished trials and the wall time; and the constrained/unconstrained
    ratio of the mean feasible hypervolume (None when the unconstrained mean is 0)."""
    arms = {}
    for arm in ARMS:
        mine = [r for r in runs if r["arm"] == arm]
        if mine:
            arms[arm] = {"runs": len(mine), **{
                key: spread([float(r[key]) for r in mine])
                for key in ("feasible_hypervolume", "feasible", "hypervolume", "seconds")}}
    ref = arms.get("unconstrained", {}).get("feasible_hypervolume", {}).get("mean")
    mean = arms.get("constrained", {}).get("feasible_hypervolume", {}).get("mean")
    return {"arms": arms, "ratio": mean / ref if ref and mean is not None else None}


def link_cache(storage: Path, shared: Path) -> None:
    """Point ``storage/_cache`` at the shared base cache, so one base serves every run."""
    shared.mkdir(parents=True, exist_ok=True)
    storage.mkdir(parents=True, exist_ok=True)
    if not (storage / "_cache").exists():
        (storage / "_cache").symlink_to(shared.resolve(), target_is_directory=True)


def markdown(spec, doc: dict, changed: dict) -> str:
    """The benchmark's table and what it measured, as Markdown."""
    import yaml

    table, trials = doc["summary"]["arms"], doc["trials"]

    def flow(v) -> str:  # one line of YAML, as a spec would write it
        return yaml.safe_dump(v, default_flow_style=True, sort_keys=False) \
            .removesuffix("...\n").strip()

    changes = ", ".join(f"`{k}: {flow(v)}`" for k, v in changed.items())
    rule = ", ".join(f"`{c} <= {b['max']:g}`" if set(b) == {"max"} else f"`{c}` in {b}"
                     for c, b in CONSTRAINTS.items())
    ratio = doc["summary"]["ratio"]
    seeds = " 0" if doc["seeds"] == 1 else f"s 0 to {doc['seeds'] - 1}"
    before, after = doc["load_average"]["before"], doc["load_average"]["after"]
    lines = [
        "# Constrained search: TPE told the constraint against TPE not told",
        "",
        f"Study `{doc['spec']}` ({spec.methods_label} on {spec.data}, {spec.model}), "
        f"{trials} trials per run" + (f" with {changes}" if changes else "")
        + f", objectives {', '.join(f'{k} {v}' for k, v in spec.objectives.items())}, "
        f"the {SAMPLER} sampler with seed{seeds} in both arms, trials "
        f"{spec.resources['cpu']:g} CPU each on a local Ray. The constrained arm's spec has "
        f"`constraints: {flow(CONSTRAINTS)}`, "
        "told to the sampler; the unconstrained arm's has none. Both arms are scored alike: "
        f"a trial is feasible when it finished with {rule}; the feasible hypervolume counts "
        "only those, against the base model (see docs/report.md). Cells: mean ± sample "
        "standard deviation [min, max] over seeds.",
        "",
        "| arm | runs | feasible hypervolume | feasible trials | hypervolume, all trials "
        "| minutes per study |",
        "|---|---|---|---|---|---|",
    ]

    def show(s: dict, digits: int) -> str:
        return (f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f} "
                f"[{s['min']:.{digits}f}, {s['max']:.{digits}f}]")

    for arm, v in table.items():
        lines.append(f"| {arm} | {v['runs']} | {show(v['feasible_hypervolume'], 4)} | "
                     f"{show(v['feasible'], 1)} of {trials} | {show(v['hypervolume'], 4)} | "
                     f"{v['seconds']['mean'] / 60:.1f} |")
    lines += [
        "",
        "Constrained / unconstrained, mean feasible hypervolume: "
        + (f"**{ratio:.2f}x**." if ratio is not None else "undefined (no feasible trial "
           "in the unconstrained arm)."),
        "",
        "Feasible hypervolume after each trial, per run:",
        "",
        "| arm | seed | feasible trials | " + " | ".join(
            str(i) for i in _marks(trials)) + " |",
        "|---|---|---|" + "---|" * len(_marks(trials)),
    ]
    for r in doc["runs"]:
        lines.append(f"| {r['arm']} | {r['seed']} | {r['feasible']} | " + " | ".join(
            f"{r['curve'][i - 1]:.4f}" for i in _marks(trials)) + " |")
    if changed == space_overrides(list(DEFAULT_SPACE)):
        lines += ["", "Fine-tuning is capped as in bench_search (the spec itself allows 0 to 8 "
                      "epochs) to keep six studies of 30 trials short on 2 cores; fewer epochs "
                      "make the constraint harder to meet, in both arms."]
    lines += [
        "",
        f"Wall time of the whole run {doc['seconds'] / 60:.1f} min (base model training "
        "excluded from the per-study minutes); the machine is shared, so minutes depend on "
        f"its load: load average (1, 5, 15 min) {before} before, {after} after, on "
        f"{os.cpu_count()} logical CPUs; the arms alternate per seed, so load drift hits "
        "both alike. A seed fixes TPE's random start-up trials, which both arms share; "
        "after them, with two trials running at once, TPE's next suggestion depends on "
        "which trials have finished, so the finishing order (and with it the load) changes "
        "the later trials: a rerun of the same command gives other hypervolumes and "
        "feasible counts.",
    ]
    return "\n".join(lines)


def _marks(trials: int) -> list[int]:
    """Trial numbers at which the curve table shows the hypervolume: about six, ending at
    the last."""
    step = max(1, trials // 6)
    return sorted({*range(step, trials + 1, step), trials})


def main(argv: list[str] | None = None) -> dict:
    started = Run(__file__, argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3, help="sampler seeds per arm")
    p.add_argument("--trials", type=int, default=30, help="trials per study")
    p.add_argument("--space", action="append", metavar="NAME=YAML",
                   help="replace one entry of the study's space (repeatable); default: "
                        f"{' '.join(DEFAULT_SPACE)}; with --tiny, {' '.join(TINY_SPACE)}")
    p.add_argument("--storage", type=Path, default=None,
                   help="where the studies go (default: a temporary directory)")
    p.add_argument("--tiny", action="store_true",
                   help="1 seed x 4 trials per arm on a 2-epoch base")
    p.add_argument("--out", type=Path, default=DOCS,
                   help="where constraints.json / .md go")
    add_cache_option(p)
    args = p.parse_args(argv)
    if args.seeds < 1 or args.trials < 1:
        raise SystemExit(f"--seeds {args.seeds}, --trials {args.trials}: both must be >= 1")

    from prune_core.data import load as load_data
    from studies.runner import connect, ensure_base
    from studies.spec import load_spec

    spec = load_spec(SPEC)
    default = TINY_SPACE if args.tiny else DEFAULT_SPACE
    changed = space_overrides(args.space if args.space is not None else list(default))
    overrides: dict = {"trials": args.trials,
                       "space": {**spec.source.get("space", {}), **changed}}
    if args.tiny:
        args.seeds = 1
        overrides.update(trials=4, baseline={"epochs": 2})
    spec = spec.with_overrides(**overrides)  # checks the space: a bad --space fails here
    classes = load_data(spec.data, **spec.data_kw).num_classes
    storage = args.storage or Path(tempfile.mkdtemp(prefix="bench-constraints-"))
    shared = cache_dir(args)
    for arm in ARMS:
        link_cache(storage / arm, shared)

    def log(msg: str) -> None:
        print(f"    {msg}", file=sys.stderr, flush=True)

    load_before = [round(v, 2) for v in os.getloadavg()]
    t0 = time.perf_counter()
    # The base is trained (or found) once here, so no run's wall time includes it.
    connect(None, log)
    ensure_base(spec.with_overrides(storage=str(storage / ARMS[0])), log)
    runs = []
    for seed in range(args.seeds):
        for arm in ARMS:  # alternating, so a change in the machine's load hits both arms
            print(f"{arm} {SAMPLER} seed {seed}: {spec.trials} trials", file=sys.stderr,
                  flush=True)
            r = run_arm(spec, arm, seed, storage, classes, log)
            runs.append(r)
            print(f"  feasible hypervolume {r['feasible_hypervolume']:.4f}, {r['feasible']} "
                  f"of {r['trials']} trials feasible, {r['seconds']:.0f} s", file=sys.stderr,
                  flush=True)
    seconds = time.perf_counter() - t0
    load_after = [round(v, 2) for v in os.getloadavg()]
    summary = summarise(runs)
    name = "constraints-tiny" if args.tiny else "constraints"
    doc = {"spec": SPEC.name, "sampler": SAMPLER, "constraints": CONSTRAINTS,
           "space_overrides": changed, "trials": spec.trials, "seeds": args.seeds,
           "summary": summary, "runs": runs, "seconds": seconds,
           "load_average": {"before": load_before, "after": load_after}}
    for arm, v in summary["arms"].items():
        h = v["feasible_hypervolume"]
        print(f"{arm:>13}: {h['mean']:.4f} +- {h['std']:.4f}, "
              f"{v['feasible']['mean']:.1f} feasible", file=sys.stderr)
    print(f"ratio constrained/unconstrained: {summary['ratio']}", file=sys.stderr)
    return started.write(name, doc, markdown(spec, doc, changed), args.out)


if __name__ == "__main__":
    main()
