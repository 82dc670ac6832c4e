"""Seed 002's comparison table on digits: every compressor's best trade-off.

One small study per method (and per prune-then-quantize chain) on the same base
model (VGG-11 at width 0.25 on digits), each through ``prune-study``'s runner
with the same objectives: accuracy up, non-zero MACs and bytes down. The table has
the base model first, then each study's knee point (analysis.pareto.knee) with
params, non-zero params, bytes, ops, MACs, accuracy, and the wall time of the
study. The full report of all studies is written beside it.

    python -m benchmarks.bench_methods              # 8 studies x 6 trials
    python -m benchmarks.bench_methods --tiny       # the test runs this
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import DOCS, Run

OBJECTIVES = {"accuracy": "max", "nonzero_macs": "min", "size_bytes": "min"}
BASE = {"data": "digits", "model": {"name": "vgg11", "width": 0.25},
        "baseline": {"epochs": 15, "lr": 0.05}}
FT = {"low": 1, "high": 4}  # fine-tuning epochs searched by every method
# label -> (chain, space): ranges wide enough to reach the point where accuracy falls
STUDIES: dict[str, tuple[list[str], dict]] = {
    "slimming": (["slimming"], {
        "slimming.lambda": {"low": 0.003, "high": 0.05, "log": True},
        "slimming.prune_ratio": {"low": 0.3, "high": 0.95},
        "slimming.sparsity_epochs": {"low": 2, "high": 5}, "slimming.finetune_epochs": FT}),
    "magnitude (unstructured)": (["magnitude"], {
        "magnitude.mode": "unstructured", "magnitude.scope": "global",
        "magnitude.ratio": {"low": 0.5, "high": 0.98}, "magnitude.finetune_epochs": FT}),
    "magnitude (filters)": (["magnitude"], {
        "magnitude.mode": "structured", "magnitude.ratio": {"low": 0.2, "high": 0.9},
        "magnitude.finetune_epochs": FT}),
    "factorize (separable)": (["factorize"], {
        "factorize.variant": "separable", "factorize.layers": {"low": 1, "high": 8},
        "factorize.rank": {"low": 0.1, "high": 1.0, "log": True},
        "factorize.finetune_epochs": FT}),
    "quantize": (["quantize"], {"quantize.calibration_batches": {"low": 2, "high": 16},
                                "quantize.per_channel": {"choices": [True, False]}}),
    "branch": (["branch"], {
        "branch.keep_ratio": {"low": 0.2, "high": 0.9}, "branch.steps": {"low": 2, "high": 4},
        "branch.epochs_per_step": 1, "branch.finetune_epochs": {"low": 0, "high": 2}}),
    "slimming + quantize": (["slimming", "quantize"], {
        "slimming.lambda": {"low": 0.003, "high": 0.05, "log": True},
        "slimming.prune_ratio": {"low": 0.3, "high": 0.95},
        "slimming.sparsity_epochs": {"low": 2, "high": 5}, "slimming.finetune_epochs": FT}),
    "magnitude + quantize": (["magnitude", "quantize"], {
        "magnitude.mode": "structured", "magnitude.ratio": {"low": 0.2, "high": 0.9},
        "magnitude.finetune_epochs": FT}),
}
COLUMNS = ("params", "nonzero_params", "size_bytes", "ops", "macs", "nonzero_macs",
           "accuracy")


def study_spec(label: str, storage: Path, trials: int, tiny: bool):
    from studies.spec import parse_spec

    chain, space = STUDIES[label]
    if tiny:  # one fine-tuning epoch, a 2-epoch base: checks the plumbing, not the numbers
        space = {k: (1 if k.endswith(("finetune_epochs", "sparsity_epochs")) else v)
                 for k, v in space.items()}
        if "branch.steps" in space:
            space["branch.steps"] = 2
    name = label.replace(" + ", "-").replace(" (", "-").replace(")", "").replace(" ", "-")
    return parse_spec({
        **BASE, "baseline": {"epochs": 2, "lr": 0.05} if tiny else BASE["baseline"],
        "name": name, "storage": str(storage), "methods": chain, "space": space,
        "objectives": OBJECTIVES, "sampler": {"name": "tpe", "seed": 0}, "trials": trials,
    })


def knee_row(study_dir: Path) -> dict | None:
    """The study's knee trial as a row of the comparison table."""
    from analysis import results

    summary = results.summary(study_dir)
    if summary["knee"] is None:
        return None
    df = results.load(study_dir).set_index("trial_id")
    row = df.loc[summary["knee"]["trial_id"]]
    out = {c: float(row[c]) for c in COLUMNS}
    out["params_searched"] = {k: (row[k].item() if hasattr(row[k], "item") else row[k])
                              for k in df.attrs["params"] if k in row and row[k] == row[k]}
    out["train_seconds"] = float(df["train_seconds"].sum())
    return out


def smallest_close_row(study_dir: Path, base_accuracy: float, within: float) -> dict | None:
    """The trial with the fewest non-zero MACs (then bytes) whose accuracy is at most
    ``within`` below the base model's; None where no trial came that close."""
    from analysis import results

    df = results.load(study_dir)
    close = df[(df["status"] == "ok") & (df["accuracy"] >= base_accuracy - within)]
    if close.empty:
        return None
    row = close.sort_values(["nonzero_macs", "size_bytes"]).iloc[0]
    return {c: float(row[c]) for c in COLUMNS}


def main(argv: list[str] | None = None) -> dict:
    started = Run(__file__, argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=6, help="trials per method study")
    p.add_argument("--only", default="", help="comma-separated labels (default: all)")
    p.add_argument("--storage", type=Path, default=None, help="default: a temporary directory")
    p.add_argument("--tiny", action="store_true", help="2 studies x 2 trials, tiny epochs")
    p.add_argument("--out", type=Path, default=DOCS, help="where methods.{json,md} go")
    p.add_argument("--within", type=float, default=0.01,
                   help="second table: the cheapest trial at most this far below the base "
                        "accuracy (default 0.01, one point)")
    args = p.parse_args(argv)
    labels = [s for s in args.only.split(",") if s] or list(STUDIES)
    unknown = sorted(set(labels) - set(STUDIES))
    if unknown:
        p.error(f"--only: unknown {', '.join(unknown)}; choose from {', '.join(STUDIES)}")
    if args.tiny:
        labels, args.trials = ["slimming + quantize", "magnitude (unstructured)"], 2
    storage = args.storage or Path(tempfile.mkdtemp(prefix="bench-methods-"))
    from analysis.report import write_report
    from studies.runner import run_study

    def log(msg: str) -> None:
        print(f"    {msg}", file=sys.stderr, flush=True)

    rows: dict[str, dict] = {}
    close: dict[str, dict | None] = {}
    dirs, base = [], None
    for label in labels:
        spec = study_spec(label, storage, args.trials, args.tiny)
        print(f"{label}: {args.trials} trials", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        run_study(spec, log=log)
        wall = time.perf_counter() - t0
        dirs.append(spec.study_dir)
        row = knee_row(spec.study_dir)
        if row is not None:
            rows[label] = {**row, "wall_seconds": wall}
        if base is None:
            from analysis import results

            base = results.study_info(spec.study_dir).base
        close[label] = smallest_close_row(spec.study_dir, base["accuracy"], args.within)
    report_dir = args.out / ("methods-tiny-report" if args.tiny else "methods-report")
    write_report(dirs, report_dir)
    lines = [
        "# Compression methods on digits: each method's best trade-off",
        "",
        f"VGG-11 (width 0.25) on digits, one study of {args.trials} trials per method "
        "(TPE), objectives accuracy max, non-zero MACs min, bytes min; each row is the "
        "study's knee point (the front point nearest the ideal one). Time is the whole "
        "study's wall time, base model excluded (it is cached and shared).",
        "",
        "| method | params | non-zero params | bytes | ops | MACs | non-zero MACs | "
        "accuracy | study time |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| base model | {base['params']:,} | {base['nonzero_params']:,} | "
        f"{base['size_bytes']:,} | {base['ops']:,} | {base['macs']:,} | "
        f"{base['nonzero_macs']:,} | {base['accuracy']:.2%} | |",
    ]
    for label, r in rows.items():
        lines.append(
            f"| {label} | {r['params']:,.0f} | {r['nonzero_params']:,.0f} | "
            f"{r['size_bytes']:,.0f} | {r['ops']:,.0f} | {r['macs']:,.0f} | "
            f"{r['nonzero_macs']:,.0f} | {r['accuracy']:.2%} | {r['wall_seconds']:.0f} s |")
    lines += ["", f"The cheapest trial of each study within {args.within:.0%} of the base "
              "accuracy (fewest non-zero MACs, then fewest bytes); where none came that "
              "close, the row says so:", "",
              "| method | non-zero params | bytes | non-zero MACs | MACs vs base | "
              "bytes vs base | accuracy |", "|---|---|---|---|---|---|---|"]
    for label, r in close.items():
        lines.append(f"| {label} | none within {args.within:.0%} | | | | | |" if r is None else
                     f"| {label} | {r['nonzero_params']:,.0f} | {r['size_bytes']:,.0f} | "
                     f"{r['nonzero_macs']:,.0f} | {r['nonzero_macs'] / base['macs']:.3f} | "
                     f"{r['size_bytes'] / base['size_bytes']:.3f} | {r['accuracy']:.2%} |")
    lines += ["", "Parameters of each knee point:", ""]
    lines += [f"- {label}: {r['params_searched']}" for label, r in rows.items()]
    lines += ["", f"Full report of these studies: [{report_dir.name}/report.md]"
                  f"({report_dir.name}/report.md)"]
    print("\n".join(lines), file=sys.stderr)
    name = "methods-tiny" if args.tiny else "methods"
    return started.write(name, {"base": base, "methods": rows, "trials": args.trials,
                                "within": args.within, "closest": close},
                         "\n".join(lines), args.out)


if __name__ == "__main__":
    main()
