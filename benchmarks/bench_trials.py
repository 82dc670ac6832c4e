"""Single trials at chosen settings: the tables of docs/results.md and docs/methods/.

Each row is one trial of ``studies/specs/none.yaml`` (VGG-11 at width 0.25 on digits,
the 15-epoch base model) with one chain and a few parameters set, run through
``prune_core.trial.run_trial`` exactly as ``prune-study trial ... --set`` runs it (on
the spec's resources.cpu threads, as a study's trial); unset parameters keep their
defaults. Each group writes trials-<group>.json and .md; rows shared by several
groups run once.

    python -m benchmarks.bench_trials                       # the summary (~6.5 min)
    python -m benchmarks.bench_trials --group magnitude     # one method's table
    python -m benchmarks.bench_trials --group all           # every group (~17 min)
    python -m benchmarks.bench_trials --tiny                # seconds: the test runs this
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from benchmarks._common import DOCS, ROOT, Run, add_cache_option, cache_dir

SPEC = ROOT / "studies" / "specs" / "none.yaml"
SLIM = {"pipeline": "slimming", "slimming.lambda": 0.03}
MAG = {"pipeline": "magnitude"}
FACT = {"pipeline": "factorize"}
# group -> rows (label, trial parameters); the label says what differs from the defaults
GROUPS: dict[str, list[tuple[str, dict]]] = {
    "summary": [
        ("slimming, prune 0.7", {**SLIM, "slimming.prune_ratio": 0.7}),
        ("slimming, prune 0.9", {**SLIM, "slimming.prune_ratio": 0.9}),
        ("slimming, prune 0.3, no fine-tuning", {**SLIM, "slimming.prune_ratio": 0.3,
                                                 "slimming.finetune_epochs": 0}),
        ("slimming, prune 0.3, no fine-tuning, no bias folding",
         {**SLIM, "slimming.prune_ratio": 0.3, "slimming.finetune_epochs": 0,
          "slimming.fold_bias": False}),
        ("slimming, prune 0.5, no fine-tuning", {**SLIM, "slimming.prune_ratio": 0.5,
                                                 "slimming.finetune_epochs": 0}),
        ("slimming, prune 0.5, no fine-tuning, no bias folding",
         {**SLIM, "slimming.prune_ratio": 0.5, "slimming.finetune_epochs": 0,
          "slimming.fold_bias": False}),
        ("magnitude, global 80 % unstructured", {**MAG, "magnitude.ratio": 0.8}),
        ("magnitude, filters (L2) 50 %", {**MAG, "magnitude.mode": "structured",
                                          "magnitude.ratio": 0.5}),
        ("magnitude, filters (L2) 70 %", {**MAG, "magnitude.mode": "structured",
                                          "magnitude.ratio": 0.7}),
        ("factorize, separable, 3 layers, rank 0.5", {**FACT, "factorize.layers": 3}),
        ("factorize, separable, 8 layers, rank 0.25", {**FACT, "factorize.layers": 8,
                                                       "factorize.rank": 0.25}),
        ("quantize, int8 per channel", {"pipeline": "quantize"}),
        ("slimming then quantize, prune 0.7", {"pipeline": "slimming+quantize",
                                               "slimming.lambda": 0.03,
                                               "slimming.prune_ratio": 0.7}),
        ("none, 10 more epochs (the control)", {"pipeline": "none",
                                                "none.finetune_epochs": 10}),
    ],
    "slimming": [
        *[(f"lambda {lam:g}, prune 0.5", {**SLIM, "slimming.lambda": lam})
          for lam in (0.0, 1e-4, 1e-3, 1e-2, 3e-2, 5e-2)],
        ("prune 0.3, no fine-tuning", {**SLIM, "slimming.prune_ratio": 0.3,
                                       "slimming.finetune_epochs": 0}),
        *[(f"prune {r:g}", {**SLIM, "slimming.prune_ratio": r}) for r in (0.7, 0.9, 0.95)],
    ],
    "magnitude": [
        ("unstructured, global 0.8", {**MAG, "magnitude.ratio": 0.8}),
        ("unstructured, layer 0.8", {**MAG, "magnitude.ratio": 0.8, "magnitude.scope": "layer"}),
        ("unstructured, global 0.95", {**MAG, "magnitude.ratio": 0.95}),
        ("unstructured, global 0.8, rewind", {**MAG, "magnitude.ratio": 0.8,
                                              "magnitude.reinit": "rewind"}),
        ("unstructured, global 0.8, random", {**MAG, "magnitude.ratio": 0.8,
                                              "magnitude.reinit": "random"}),
        *[(f"structured (n 2), {r:g}", {**MAG, "magnitude.mode": "structured",
                                        "magnitude.ratio": r}) for r in (0.5, 0.7)],
    ],
    "factorize": [
        ("separable, 3 layers, rank 0.5", {**FACT, "factorize.layers": 3}),
        ("separable, 8 layers, rank 0.25", {**FACT, "factorize.layers": 8,
                                            "factorize.rank": 0.25}),
        *[(f"orthogonal, {n} layers", {**FACT, "factorize.variant": "orthogonal",
                                       "factorize.layers": n}) for n in (2, 4, 8)],
    ],
    "quantize": [
        ("quantize, per channel, 8 batches", {"pipeline": "quantize"}),
        ("quantize, per tensor", {"pipeline": "quantize", "quantize.per_channel": False}),
        ("quantize, first and last layers in float", {"pipeline": "quantize",
                                                      "quantize.keep_float": "first_last"}),
        ("slimming, prune 0.7", {**SLIM, "slimming.prune_ratio": 0.7}),
        ("slimming (prune 0.7) then quantize", {"pipeline": "slimming+quantize",
                                                "slimming.lambda": 0.03,
                                                "slimming.prune_ratio": 0.7}),
        ("magnitude, global 80 % unstructured", {**MAG, "magnitude.ratio": 0.8}),
        ("magnitude (global 80 %) then quantize", {"pipeline": "magnitude+quantize",
                                                   "magnitude.ratio": 0.8}),
    ],
}
COLUMNS = ("accuracy", "params", "macs", "nonzero_macs", "size_bytes")
# Per-method results worth a column when a row has them.
EXTRA = ("slimming.sparsity", "slimming.accuracy_before_finetune",
         "factorize.accuracy_before_finetune", "factorize.dof_params",
         "factorize.stiefel_dof_params")
BULKY = ("slimming.gammas",)  # every scale factor: kept out of the JSON (~20 KB a row)
TINY = {"baseline": {"epochs": 1},
        "params": {"slimming.sparsity_epochs": 1, "slimming.finetune_epochs": 1,
                   "magnitude.finetune_epochs": 1}}


def _key(params: dict) -> str:
    return json.dumps(params, sort_keys=True)


def _flags(params: dict) -> str:
    """The ``prune-study trial`` options that set ``params`` (YAML values: true, not True)."""
    return " ".join(f"--set {k}={v if isinstance(v, str) else json.dumps(v)}"
                    for k, v in params.items())


def run_rows(rows: list[tuple[str, dict]], ts, base, log=print) -> dict[str, dict]:
    """Run each distinct parameter set once; returns rows by their parameters' key."""
    from prune_core.trial import run_trial

    done: dict[str, dict] = {}
    todo = {_key(p): (label, p) for label, p in rows}
    for i, (key, (label, params)) in enumerate(todo.items(), start=1):
        t0 = time.perf_counter()
        row = run_trial({"study": ts, "params": params}, base=base,
                        log=lambda m: log(f"    {m}"))
        done[key] = {k: v for k, v in row.items() if k not in BULKY}
        log(f"[{i}/{len(todo)}] {label}: accuracy {row['accuracy']:.4f}, "
            f"{row['macs'] / 1e6:.2f} M MACs, {row['size_bytes']:,} bytes "
            f"({time.perf_counter() - t0:.0f} s)")
    return done


def _cell(value, base=None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value <= 1.0:
        return f"{value:.4f}"
    text = f"{value / 1e6:.2f} M" if value >= 1e6 else f"{int(value):,}"
    if base and value != base:
        text += f" ({value / base:.3g}x)"
    return text


def table(rows: list[tuple[str, dict]], results: dict[str, dict], base: dict) -> list[str]:
    extra = [c for c in EXTRA if any(c in results[_key(p)] for _, p in rows)]
    head = ["trial", *COLUMNS, *extra, "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
             "| base model | " + " | ".join(_cell(base.get(c)) for c in COLUMNS)
             + " |" + " - |" * (len(extra) + 1)]
    for label, p in rows:
        r = results[_key(p)]
        cells = [_cell(r.get(c), base.get(c)) for c in COLUMNS]
        cells += [_cell(r.get(c)) for c in extra]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {r['train_seconds']:.0f} |")
    return lines


def main(argv: list[str] | None = None) -> dict:
    """Measure the group(s); returns the last group's document (each has its own file)."""
    started = Run(__file__, argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--group", default="summary", choices=[*GROUPS, "all"],
                   help="which table to measure (default: summary, the one in docs/results.md)")
    p.add_argument("--tiny", action="store_true",
                   help="a 1-epoch base, 1-epoch stages, first 3 rows of the group")
    p.add_argument("--out", type=Path, default=DOCS, help="where trials-<group>.* go")
    add_cache_option(p)
    args = p.parse_args(argv)
    import torch

    from prune_core.baseline import get_base
    from prune_core.trial import load_data
    from studies.spec import load_spec

    groups = list(GROUPS) if args.group == "all" else [args.group]
    spec = load_spec(SPEC)
    chosen = {g: GROUPS[g] for g in groups}
    if args.tiny:
        spec = spec.with_overrides(baseline={**spec.source["baseline"], **TINY["baseline"]})
        # short stages where a row leaves the epochs at their defaults
        chosen = {g: [(label, {**{k: v for k, v in TINY["params"].items()
                                  if k.split(".")[0] in params["pipeline"]}, **params})
                      for label, params in rows[:3]] for g, rows in chosen.items()}
    ts = replace(spec.trial_spec(), cache_dir=str(cache_dir(args)))
    torch.set_num_threads(max(1, int(spec.resources["cpu"])))  # as `prune-study trial`
    base, _ = get_base(ts.base_spec(), load_data(ts), ts.cache_dir, log=print)
    results = run_rows([r for rows in chosen.values() for r in rows], ts, base)

    intro = (f"Each row is one trial of `studies/specs/none.yaml` ({ts.model} at width "
             f"{ts.model_kw.get('width', 1)} on {ts.data}, a {ts.baseline['epochs']}-epoch "
             "base) with the parameters in the label set and the rest at their defaults "
             f"(`prune-study methods`), seed {ts.seed}, on "
             f"{torch.get_num_threads()} thread(s) as a study's trial. Ratios are to the "
             "base model; `seconds` is the trial's training time.")
    for g, rows in chosen.items():
        lines = [f"# Single trials: {g}", "", intro, "", *table(rows, results, base.row), "",
                 "`prune-study trial studies/specs/none.yaml` options per row:", ""]
        lines += [f"- {label}: `{_flags(params)}`" for label, params in rows]
        doc = {"group": g, "base": base.row,
               "rows": [{"label": label, "params": params, "row": results[_key(params)]}
                        for label, params in rows]}
        name = f"trials-{g}-tiny" if args.tiny else f"trials-{g}"
        saved = started.write(name, doc, "\n".join(lines), args.out)
    return saved


if __name__ == "__main__":
    main()
