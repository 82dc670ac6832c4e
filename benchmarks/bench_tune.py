"""What Ray Tune and Optuna cost: the same trials through `prune-study run` and a plain loop.

N identical trials (method `none`, a fixed number of fine-tuning epochs from a cached
base model, one CPU thread each) run three ways, each in a fresh process:

- a plain Python loop calling ``prune_core.trial.run_trial`` one trial after another;
- ``prune-study run`` with one trial at a time (``max_concurrent: 1``);
- ``prune-study run`` with two at a time (one CPU each).

Two overhead ratios:

- within a Tune run: the trials' span (first start to last end, one at a time) over the
  time the trials spent computing (``run_trial``'s own clock less the time it spent in
  ``tune.report`` and checkpointing). Both are measured in the same run, so load from
  other processes on the machine slows both alike;
- against the loop: Tune's span over the loop's, and end to end (process start to exit,
  Ray's start included). On a shared machine these move with the load.

    python -m benchmarks.bench_tune            # 4 trials of about 30 s
    python -m benchmarks.bench_tune --tiny     # 2 trials of a few seconds; used by the tests
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks._common import DOCS, ROOT, Run

PRUNE_STUDY = str(Path(sys.executable).with_name("prune-study"))


def spec(name: str, storage: Path, trials: int, epochs: int, base_epochs: int,
         concurrent: int) -> dict:
    return {
        "name": name, "data": "digits", "model": {"name": "vgg11", "width": 0.25},
        "baseline": {"epochs": base_epochs, "lr": 0.05}, "methods": "none",
        "space": {"none.finetune_epochs": epochs, "none.lr": 0.01},
        "objectives": {"accuracy": "max", "macs": "min"},
        "sampler": {"name": "random", "seed": 0}, "trials": trials, "storage": str(storage),
        "resources": {"cpu": 1}, "max_concurrent": concurrent,
    }


def loop_worker(spec_path: str, trials: int) -> None:
    """Run in a fresh process: the trials in a plain loop; prints their timings as JSON."""
    import torch

    from prune_core.trial import run_trial
    from studies.spec import load_spec

    torch.set_num_threads(1)  # as in a trial that asks for one CPU
    s = load_spec(spec_path)
    config = {"study": s.trial_spec().to_dict(), "params": dict(s.fixed)}
    t0 = time.perf_counter()
    rows = [run_trial(config) for _ in range(trials)]
    print(json.dumps({"trials_seconds": time.perf_counter() - t0,
                      "train_seconds": [r["train_seconds"] for r in rows],
                      "accuracy": [r["accuracy"] for r in rows]}))


def timed(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return wall, out.stdout


def tune_run(path: Path, study_dir: Path) -> dict:
    wall, stdout = timed([PRUNE_STUDY, "run", str(path), "--json"])
    summary = json.loads(stdout)
    recs = [json.loads(p.read_text()) for p in (study_dir / "trials").glob("*.json")]
    span = max(r["ended"] for r in recs) - min(r["started"] for r in recs)
    report = sum(r.get("report_seconds", 0.0) for r in recs)
    compute = sum(r["row"]["train_seconds"] for r in recs) - report
    return {"wall_seconds": wall, "trials_seconds": span, "finished": summary["finished"],
            "compute_seconds": compute, "report_seconds": report,
            "trial_seconds": [r["row"]["train_seconds"] for r in recs],
            "accuracy": [r["row"]["accuracy"] for r in recs]}


def main(argv: list[str] | None = None) -> dict:
    started = Run(__file__, argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="2 trials of a few seconds")
    p.add_argument("--trials", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs per trial")
    p.add_argument("--out", type=Path, default=DOCS)
    a = p.parse_args(argv)
    trials = a.trials or (2 if a.tiny else 4)
    epochs = a.epochs if a.epochs is not None else (1 if a.tiny else 12)
    base_epochs = 1 if a.tiny else 15

    with tempfile.TemporaryDirectory(prefix="bench-tune-") as tmp:
        storage = Path(tmp)
        paths = {}
        for name, conc in (("loop", 1), ("tune1", 1), ("tune2", 2)):
            paths[name] = storage / f"{name}.yaml"
            paths[name].write_text(yaml.safe_dump(spec(name, storage, trials, epochs,
                                                       base_epochs, conc)))
        # The base model is trained once here, so no timed run trains it.
        timed([sys.executable, "-c",
               "import sys; from studies.spec import load_spec; "
               "from prune_core.trial import load_data; from prune_core.baseline import "
               "get_base; s = load_spec(sys.argv[1]).trial_spec(); "
               "get_base(s.base_spec(), load_data(s), s.cache_dir, log=lambda m: None)",
               str(paths["loop"])])
        wall, stdout = timed([sys.executable, "-c",
                              "import sys; from benchmarks.bench_tune import loop_worker; "
                              "loop_worker(sys.argv[1], int(sys.argv[2]))",
                              str(paths["loop"]), str(trials)])
        loop = {"wall_seconds": wall, **json.loads(stdout)}
        loop["compute_seconds"] = sum(loop.pop("train_seconds"))
        tune1 = tune_run(paths["tune1"], storage / "tune1")
        tune2 = tune_run(paths["tune2"], storage / "tune2")

    result = {
        "trials": trials, "finetune_epochs": epochs, "cpus_per_trial": 1,
        "loop": loop, "tune_1_concurrent": tune1, "tune_2_concurrent": tune2,
        "overhead_in_run": tune1["trials_seconds"] / tune1["compute_seconds"],
        "overhead_in_run_loop": loop["trials_seconds"] / loop["compute_seconds"],
        "overhead_end_to_end": tune1["wall_seconds"] / loop["wall_seconds"],
        "overhead_trials": tune1["trials_seconds"] / loop["trials_seconds"],
        "seconds_per_trial_loop": loop["trials_seconds"] / trials,
        "throughput_1_per_min": 60 * trials / tune1["trials_seconds"],
        "throughput_2_per_min": 60 * trials / tune2["trials_seconds"],
    }
    result["concurrency_speedup"] = result["throughput_2_per_min"] / \
        result["throughput_1_per_min"]
    load = os.getloadavg()[0]
    outside = tune1["trials_seconds"] - tune1["compute_seconds"]
    md = f"""# Ray Tune + Optuna overhead: `prune-study run` vs a plain loop

{trials} identical trials: method `none`, {epochs} fine-tuning epoch(s) of VGG-11 (width
0.25) on digits from a cached base model, one CPU thread per trial; each way in a fresh
process.

| way | wall, process start to exit (s) | trials, first start to last end (s) |
|---|---|---|
| plain loop over `run_trial` | {loop['wall_seconds']:.1f} | {loop['trials_seconds']:.1f} |
| `prune-study run`, 1 trial at a time | {tune1['wall_seconds']:.1f} | \
{tune1['trials_seconds']:.1f} |
| `prune-study run`, 2 at a time | {tune2['wall_seconds']:.1f} | {tune2['trials_seconds']:.1f} |

- one trial in the loop: **{result['seconds_per_trial_loop']:.1f} s**
- within the Tune run, trials' span over their computing time: \
**{result['overhead_in_run']:.3f}x** ({outside:.1f} s of {tune1['trials_seconds']:.1f} s outside
  the trials' computation, of which {tune1['report_seconds']:.1f} s reporting and checkpointing
  each epoch; the same measure for the loop: {result['overhead_in_run_loop']:.3f}x)
- Tune's span over the loop's: {result['overhead_trials']:.3f}x; end to end, with Ray's start
  and shutdown: {result['overhead_end_to_end']:.3f}x
- throughput: {result['throughput_1_per_min']:.2f} trials/min at 1 concurrent,
  {result['throughput_2_per_min']:.2f} at 2: **{result['concurrency_speedup']:.2f}x**

Load average {load:.1f} on {os.cpu_count()} cores when the run ended: other processes on a
shared machine slow every way; compare ratios between runs at a similar load. The
in-run ratio compares times taken side by side in the same run, so it holds under load;
it starts at the first trial's start, after Ray has started its worker (that start is
in the end-to-end wall time). With more runnable processes than cores, two concurrent
trials only take a larger share of a saturated machine, so the 2-against-1 throughput
means something only on an otherwise idle machine.
"""
    return started.write("tune", result, md, a.out)


if __name__ == "__main__":
    doc = main()
    print(json.dumps({k: v for k, v in doc.items() if not isinstance(v, dict)}, indent=2))
