"""Early stopping with ``mo_asha``: compute saved against hypervolume lost, at an equal
trial budget.

The magnitude study (studies/specs/magnitude.yaml: accuracy max, nonzero_macs min) runs
with TPE and several sampler seeds, once with Tune's default FIFO scheduler (every trial
fine-tunes to the end) and once with ``scheduler: mo_asha``, at the scheduler's defaults
(grace period 1, reduction factor 3, one dominator) unless ``--grace-period``,
``--reduction-factor`` or ``--min-dominators`` say otherwise. Fine-tuning is fixed at
``--finetune-epochs`` (4), so that a trial stopped at a rung saves something while the six
studies fit in about 12 minutes on 2 idle cores. Each run records the epochs its trials
trained (from history.jsonl), their summed epoch seconds, the study's wall time, the
trials stopped, the hypervolume of its finished trials against the base model and the
hypervolume after each trial. All runs share one base model, trained or found before the
first study is timed. Other settings are ranked without training by replaying the rule on
the fifo arm's epoch rows (:func:`replay`).

    python -m benchmarks.bench_early_stop              # 2 arms x 3 seeds x 30 trials
    python -m benchmarks.bench_early_stop --tiny       # seconds: the test runs this
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from benchmarks._common import DOCS, Run, add_cache_option, cache_dir, spread
from benchmarks.bench_search import CHANCE_MARGIN, SPEC, run_one

ARMS = ("fifo", "mo_asha")  # fifo: no scheduler, Tune's default; every trial runs to its end
# The mo_asha arm's scheduler: the defaults, unless the options say otherwise.
MO_ASHA = {"name": "mo_asha", "grace_period": 1, "reduction_factor": 3, "min_dominators": 1}
# Settings replayed on the fifo arm's epoch rows (see replay()).
REPLAYED = [{"grace_period": g, "reduction_factor": rf, "min_dominators": md}
            for g in (1, 2) for rf in (2, 3, 4) for md in (1, 2, 3)]
SAMPLER = "tpe"
MEASURES = ("epochs", "trial_seconds", "wall_seconds", "stopped", "final_hypervolume")


def link_cache(storage: Path, shared: Path) -> None:
    """Point ``<storage>/_cache`` at ``shared``, so every study's base is trained once."""
    shared.mkdir(parents=True, exist_ok=True)
    storage.mkdir(parents=True, exist_ok=True)
    if not (storage / "_cache").exists():
        (storage / "_cache").symlink_to(shared.resolve(), target_is_directory=True)


def trial_compute(study_dir: Path) -> list[dict]:
    """Per trial, in trial order: ``number``, ``trial_id``, ``status``, ``epochs`` (its rows
    in history.jsonl, a resumed step counted once), ``seconds`` (their epoch_seconds),
    ``first_val_accuracy`` (after its first epoch) and ``accuracy`` (final; None unless ok)."""
    from analysis import results

    trials = results.load(study_dir)
    hist = results.history(study_dir)
    by_trial = {k: g for k, g in hist.groupby("trial_id")} if len(hist) else {}
    out = []
    for t in trials.itertuples():
        rows = by_trial.get(t.trial_id)
        out.append({"number": int(t.number), "trial_id": t.trial_id, "status": t.status,
                    "epochs": 0 if rows is None else len(rows),
                    "seconds": 0.0 if rows is None else float(rows["epoch_seconds"].sum()),
                    "first_val_accuracy": None if rows is None
                    else float(rows["val_accuracy"].iloc[0]),
                    "accuracy": float(t.accuracy) if t.status == "ok" else None})
    return out


def measure(study_dir: Path, run: dict, classes: int) -> dict:
    """``run`` (from bench_search.run_one) with the study's compute, its trials stopped, and
    its trials at chance after their first epoch (within CHANCE_MARGIN of 1 / classes) and
    how many of those finished above it."""
    per_trial = trial_compute(study_dir)
    chance = 1.0 / classes + CHANCE_MARGIN
    first_at_chance = [t for t in per_trial if t["first_val_accuracy"] is not None
                       and t["first_val_accuracy"] <= chance]
    cumulative, total = [], 0
    for t in per_trial:
        total += t["epochs"]
        cumulative.append(total)
    stopped = [t for t in per_trial if t["status"] == "stopped"]
    at: dict[int, int] = {}
    for t in stopped:
        at[t["epochs"]] = at.get(t["epochs"], 0) + 1
    return {"study": str(study_dir), "seed": run["seed"],
            "epochs": total, "trial_seconds": sum(t["seconds"] for t in per_trial),
            "wall_seconds": run["seconds"], "stopped": len(stopped),
            "stopped_at_epochs": {str(k): at[k] for k in sorted(at)},
            "ok": sum(t["status"] == "ok" for t in per_trial), "failed": run["failed"],
            "final_hypervolume": run["final_hypervolume"], "curve": run["curve"],
            "cumulative_epochs": cumulative, "first_epoch_at_chance": len(first_at_chance),
            "recovered": sum(t["accuracy"] is not None and t["accuracy"] > chance
                             for t in first_at_chance)}


def hypervolume_within(run: dict, epochs: float) -> float:
    """Hypervolume of ``run`` after its last trial that ended within ``epochs`` in total."""
    hv = 0.0
    for spent, value in zip(run["cumulative_epochs"], run["curve"], strict=True):
        if spent > epochs:
            break
        hv = value
    return hv


def replay(study_dir: Path, settings: dict, columns: dict[str, str]) -> dict:
    """mo_asha's rule replayed on the epoch rows of a study that ran without a scheduler,
    in the order it wrote them: ``epochs`` the trials would have trained, ``stopped`` and
    ``hypervolume`` of the trials it would have let finish. The sampler's reaction is not
    replayed (a study with mo_asha samples its later trials after seeing stopped ones), so
    this ranks settings cheaply; the mo_asha arm measures one for real."""
    from ray.tune.schedulers import TrialScheduler

    from analysis import pareto, results
    from studies.schedulers import MOASHA

    rule = MOASHA(columns=columns, **settings)
    stopped: set[str] = set()
    epochs = 0
    for line in (study_dir / "history.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["trial_id"] in stopped:
            continue
        epochs += 1
        if rule.judge(row["trial_id"], row["step"], row) == TrialScheduler.STOP:
            stopped.add(row["trial_id"])
    info = results.study_info(study_dir)
    df = results.load(study_dir)
    values = results.objective_values(df, info.objectives).astype(float)
    values[df["trial_id"].isin(stopped).to_numpy()] = float("nan")
    curve = pareto.hypervolume_by_trial(values, results.study_reference(info, df))
    return {"epochs": epochs, "stopped": len(stopped),
            "hypervolume": float(curve[-1]) if len(curve) else 0.0}


def replay_all(fifo_runs: list[dict], columns: dict[str, str]) -> list[dict]:
    """Every REPLAYED setting on every fifo run: epochs and final hypervolume as ratios of
    the fifo runs' (summed epochs over summed epochs, mean over mean), per setting."""
    epochs = sum(r["epochs"] for r in fifo_runs)
    hv = statistics.fmean(r["final_hypervolume"] for r in fifo_runs)
    out = []
    for settings in REPLAYED:
        mine = [replay(Path(r["study"]), settings, columns) for r in fifo_runs]
        out.append({**settings, "runs": mine,
                    "epochs": sum(m["epochs"] for m in mine) / epochs if epochs else None,
                    "hypervolume": statistics.fmean(m["hypervolume"] for m in mine) / hv
                    if hv else None})
    return out


def summarise(runs: dict[str, list[dict]]) -> dict:
    """Mean and spread of every measure per arm; mo_asha's means over fifo's."""
    arms = {arm: {m: spread([float(r[m]) for r in mine]) for m in MEASURES}
            for arm, mine in runs.items()}
    fifo, moa = arms["fifo"], arms["mo_asha"]

    def ratio(m: str) -> float | None:
        return moa[m]["mean"] / fifo[m]["mean"] if fifo[m]["mean"] else None

    spent = moa["epochs"]["mean"]
    return {"arms": arms, "ratios": {"epochs": ratio("epochs"),
                                     "trial_seconds": ratio("trial_seconds"),
                                     "wall_seconds": ratio("wall_seconds"),
                                     "final_hypervolume": ratio("final_hypervolume")},
            # the fifo arm's hypervolume had it stopped at mo_asha's mean compute
            "fifo_hypervolume_at_mo_asha_epochs": spread(
                [hypervolume_within(r, spent) for r in runs["fifo"]])}


class CurveData(NamedTuple):
    """Hypervolume against cumulative epochs trained, one step line per run."""

    arm: list[str]
    seed: list[int]
    epochs: list[int]
    hypervolume: list[float]


def curve_data(runs: dict[str, list[dict]]) -> CurveData:
    """The figure's points: each run starts at (0, 0) and steps at every trial's end."""
    data = CurveData([], [], [], [])
    for arm, mine in runs.items():
        for r in mine:
            for x, y in zip([0, *r["cumulative_epochs"]], [0.0, *r["curve"]], strict=True):
                data.arm.append(arm)
                data.seed.append(r["seed"])
                data.epochs.append(x)
                data.hypervolume.append(y)
    return data


def draw(data: CurveData, path: Path, title: str) -> None:
    """One step line per run, coloured by arm."""
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd
    import seaborn as sns
    from matplotlib import pyplot as plt

    df = pd.DataFrame(data._asdict())
    sns.set_theme(style="whitegrid", context="paper")
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=150)
    sns.lineplot(df, x="epochs", y="hypervolume", hue="arm", units="seed", estimator=None,
                 drawstyle="steps-post", ax=ax, hue_order=list(ARMS))
    ax.set_xlabel("epochs trained, all trials so far")
    ax.set_ylabel("hypervolume (base model = reference)")
    ax.set_title(f"{title} (one line per sampler seed)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _yaml(value) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False).strip()


def _load(values: tuple[float, ...]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def markdown(doc: dict, spec, name: str) -> str:
    """The result as a page: settings, the table per arm, the ratios, load and figure."""
    s, arms = doc["summary"], doc["summary"]["arms"]

    def cell(arm: str, m: str, fmt: str) -> str:
        v = arms[arm][m]
        return (f"{v['mean']:{fmt}} ± {v['std']:{fmt}} "
                f"({v['min']:{fmt}} to {v['max']:{fmt}})")

    full = doc["finetune_epochs"] * doc["trials"]
    lines = [
        "# Early stopping: mo_asha against running every trial to its end",
        "",
        f"Study `{SPEC.name}` ({spec.methods_label} on {spec.data}, {spec.model}), objectives "
        f"{', '.join(f'{k} {v}' for k, v in spec.objectives.items())}, the {SAMPLER} sampler, "
        f"{doc['trials']} trials per run, {doc['seeds']} sampler "
        f"seed{'s' if doc['seeds'] != 1 else ''} per arm, trials "
        f"{spec.resources['cpu']:g} CPU each on a local Ray. Fine-tuning is fixed at "
        f"`magnitude.finetune_epochs: {doc['finetune_epochs']}` (the spec searches "
        f"{_yaml(doc['searched_finetune_epochs'])}), "
        f"so a run without a scheduler trains {full} epochs"
        + (f" and the base model {spec.baseline['epochs']} epochs" if doc["tiny"] else "")
        + f". `scheduler: {_yaml(doc['scheduler'])}`: rungs at epochs "
        f"{', '.join(str(r) for r in doc['rungs'])}. fifo: no scheduler.",
        "",
        "Per arm, mean ± sample standard deviation (min to max) over seeds. Epochs: every "
        "trial's epoch rows in history.jsonl, summed. Trial seconds: their `epoch_seconds`, "
        "summed; wall: the study from start to end. Hypervolume: the `ok` trials only (a "
        "stopped trial has no final measurement), against the base model.",
        "",
        "| arm | epochs trained | trial seconds | wall seconds | trials stopped "
        "| final hypervolume |",
        "|---|---|---|---|---|---|",
    ]
    for arm in ARMS:
        lines.append(f"| {arm} | {cell(arm, 'epochs', '.1f')} | "
                     f"{cell(arm, 'trial_seconds', '.0f')} | {cell(arm, 'wall_seconds', '.0f')} "
                     f"| {cell(arm, 'stopped', '.1f')} | "
                     f"{cell(arm, 'final_hypervolume', '.4f')} |")
    r = s["ratios"]
    at = s["fifo_hypervolume_at_mo_asha_epochs"]
    lines += [
        "",
        f"mo_asha over fifo, ratio of the means: epochs trained **{r['epochs']:.2f}x**, "
        f"final hypervolume **{r['final_hypervolume']:.2f}x**, trial seconds "
        f"{r['trial_seconds']:.2f}x, wall {r['wall_seconds']:.2f}x. Without a scheduler, "
        f"the hypervolume after the trials that ended within mo_asha's mean compute "
        f"({arms['mo_asha']['epochs']['mean']:.0f} epochs) was {at['mean']:.4f} ± "
        f"{at['std']:.4f}.",
        "",
        "Per sampler seed. At chance after epoch 1: trials whose validation accuracy after "
        f"their first epoch was within {CHANCE_MARGIN:g} of chance, the rung-1 point "
        "mo_asha judges them by; recovered: of those, the trials that finished above it.",
        "",
        "| seed | fifo epochs | mo_asha epochs | stopped (at epoch: count) | fifo hypervolume "
        "| mo_asha hypervolume | fifo: at chance after epoch 1, recovered "
        "| mo_asha: the same |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f, m in zip(doc["runs"]["fifo"], doc["runs"]["mo_asha"], strict=True):
        at_epochs = ", ".join(f"{k}: {v}" for k, v in m["stopped_at_epochs"].items()) or "-"
        lines.append(f"| {f['seed']} | {f['epochs']} | {m['epochs']} | {m['stopped']} "
                     f"({at_epochs}) | {f['final_hypervolume']:.4f} | "
                     f"{m['final_hypervolume']:.4f} | {f['first_epoch_at_chance']}, "
                     f"{f['recovered']} | {m['first_epoch_at_chance']}, {m['recovered']} |")
    lines += [
        "",
        "## Other settings, replayed",
        "",
        "mo_asha's rule replayed on the fifo arm's epoch rows, in the order the studies wrote "
        "them: the epochs the trials would have trained and the final hypervolume of those it "
        "would have let finish, as ratios of the fifo arm's (summed epochs, mean "
        "hypervolume). This costs no training but leaves out the sampler's reaction: with "
        "the scheduler, TPE samples its later trials after seeing stopped ones, which the "
        "mo_asha arm above measures for its one setting.",
        "",
        "| grace_period | reduction_factor | min_dominators | epochs | final hypervolume "
        "| trials stopped per seed |",
        "|---|---|---|---|---|---|",
    ]
    for r in doc["replay"]:
        mark = "**" if all(r[k] == doc["scheduler"][k] for k in
                           ("grace_period", "reduction_factor", "min_dominators")) else ""
        lines.append(f"| {mark}{r['grace_period']}{mark} | {mark}{r['reduction_factor']:g}"
                     f"{mark} | {mark}{r['min_dominators']}{mark} | {r['epochs']:.2f}x | "
                     f"{r['hypervolume']:.3f}x | "
                     f"{', '.join(str(m['stopped']) for m in r['runs'])} |")
    lines += [
        "",
        f"The {2 * doc['seeds']} studies took {doc['seconds'] / 60:.0f} minutes at the load "
        "below.",
        "",
        f"Load average (1, 5, 15 min) before the runs: {_load(doc['load_average_before'])}; "
        f"after: {_load(doc['load_average_after'])}, on {os.cpu_count()} logical CPUs. "
        "Hypervolume, epochs trained and trials stopped do not depend on the load: every "
        "trial's training is seeded, so the same parameters give the same epoch rows at any "
        "speed. They can shift only through the order in which the two concurrent trials "
        "end (which trials TPE has seen when it samples the next one, which trial reaches a "
        "rung first). The seconds grow with the load.",
        "",
        f"![hypervolume against epochs trained]({name}.png)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    started = Run(__file__, argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=30, help="trials per study")
    p.add_argument("--seeds", type=int, default=3, help="sampler seeds per arm")
    p.add_argument("--finetune-epochs", type=int, default=4,
                   help="magnitude.finetune_epochs, fixed for every trial (default 4)")
    p.add_argument("--storage", type=Path, default=None,
                   help="where the studies go (default: a temporary directory)")
    p.add_argument("--tiny", action="store_true",
                   help="1 seed x 4 trials, 2 fine-tuning epochs, on a 2-epoch base")
    p.add_argument("--out", type=Path, default=DOCS,
                   help="where early_stop.json / .md / .png go")
    for key, kind in (("grace_period", int), ("reduction_factor", float),
                      ("min_dominators", int)):
        p.add_argument(f"--{key.replace('_', '-')}", type=kind, default=MO_ASHA[key],
                       help=f"the mo_asha arm's {key} (default {MO_ASHA[key]})")
    add_cache_option(p)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    for flag, v in (("--trials", args.trials), ("--seeds", args.seeds),
                    ("--finetune-epochs", args.finetune_epochs),
                    ("--grace-period", args.grace_period),
                    ("--min-dominators", args.min_dominators)):
        if v < 1:
            raise SystemExit(f"{flag}: {v} is not valid; allowed: an integer >= 1")
    if args.reduction_factor <= 1:
        raise SystemExit(f"--reduction-factor: {args.reduction_factor:g} is not valid; "
                         "allowed: a number > 1")
    scheduler = {"name": "mo_asha", "grace_period": args.grace_period,
                 "reduction_factor": args.reduction_factor,
                 "min_dominators": args.min_dominators}
    if scheduler["reduction_factor"] == int(scheduler["reduction_factor"]):
        scheduler["reduction_factor"] = int(scheduler["reduction_factor"])
    from prune_core.data import load as load_data
    from studies.spec import load_spec

    spec = load_spec(SPEC)
    searched = spec.source["space"]["magnitude.finetune_epochs"]
    overrides: dict = {"trials": args.trials}
    if args.tiny:
        args.seeds, args.finetune_epochs = 1, 2
        overrides.update(trials=4, baseline={"epochs": 2})
    overrides["space"] = {**spec.source.get("space", {}),
                          "magnitude.finetune_epochs": args.finetune_epochs}
    spec = spec.with_overrides(**overrides)
    classes = load_data(spec.data, **spec.data_kw).num_classes
    storage = args.storage or Path(tempfile.mkdtemp(prefix="bench-early-stop-"))
    shared = cache_dir(args)

    def log(msg: str) -> None:
        print(f"    {msg}", file=sys.stderr, flush=True)

    from studies.runner import connect, ensure_base

    link_cache(storage / ARMS[0], shared)
    connect(None, log)
    ensure_base(spec.with_overrides(storage=str(storage / ARMS[0])), log)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    runs: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for seed in range(args.seeds):
        for arm in ARMS:
            arm_spec = spec.with_overrides(scheduler=scheduler if arm == "mo_asha" else None)
            link_cache(storage / arm, shared)
            print(f"{arm} seed {seed}: {spec.trials} trials", file=sys.stderr, flush=True)
            run = run_one(arm_spec, SAMPLER, seed, storage / arm, classes, log)
            runs[arm].append(measure(storage / arm / f"{SAMPLER}-{seed}", run, classes))
            r = runs[arm][-1]
            print(f"  {r['epochs']} epochs, {r['stopped']} stopped, final hypervolume "
                  f"{r['final_hypervolume']:.4f}, {r['wall_seconds']:.0f} s",
                  file=sys.stderr, flush=True)
    seconds = time.perf_counter() - t0
    from studies.schedulers import MOASHA, stand_ins

    settings = {k: v for k, v in scheduler.items() if k != "name"}
    rungs = [r for r in MOASHA(columns={}, **settings).rungs if r <= args.finetune_epochs]
    name = "early_stop-tiny" if args.tiny else "early_stop"
    doc = {"spec": SPEC.name, "sampler": SAMPLER, "trials": spec.trials, "seeds": args.seeds,
           "finetune_epochs": args.finetune_epochs, "searched_finetune_epochs": searched,
           "tiny": args.tiny, "scheduler": scheduler,
           "rungs": rungs, "storage": str(storage), "seconds": seconds,
           "load_average_before": [round(v, 2) for v in load_before],
           "load_average_after": [round(v, 2) for v in os.getloadavg()],
           "summary": summarise(runs), "runs": runs,
           "replay": replay_all(runs["fifo"], stand_ins(spec.objectives))}
    args.out.mkdir(parents=True, exist_ok=True)
    draw(curve_data(runs), args.out / f"{name}.png", f"{spec.methods_label} on {spec.data}")
    for arm, v in doc["summary"]["arms"].items():
        print(f"{arm:>8}: {v['epochs']['mean']:.1f} epochs, hypervolume "
              f"{v['final_hypervolume']['mean']:.4f} +- {v['final_hypervolume']['std']:.4f}",
              file=sys.stderr)
    return started.write(name, doc, markdown(doc, spec, name), args.out)


if __name__ == "__main__":
    main()
