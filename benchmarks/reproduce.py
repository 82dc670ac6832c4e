"""One command per seed note: the seed's own experiment at its own scale, through the
study specs, with the seed's reported numbers beside the ones measured here.

    python -m benchmarks.reproduce 003 --root /data/cifar10          # a GPU machine
    python -m benchmarks.reproduce 000 --root /data/CUB_200_2011
    python -m benchmarks.reproduce 001 --root /tmp/cifar --tiny      # seconds, any data

Each seed names a shipped spec (studies/specs) and the points the seed ran (parameter
values, and for RePr one data setting); every point is one trial of that spec, run in
this process on the spec's device with the base model cached in ``<storage>/_cache``.
``--tiny`` shrinks models, epochs and images so the whole chain runs in seconds on a
CPU, for the tests. Writes ``reproduce-<seed>.{json,md}`` into ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from benchmarks._common import DOCS, ROOT, Run

SPECS = ROOT / "studies" / "specs"


@dataclass(frozen=True)
class Point:
    """One configuration a seed ran, and what the seed reported for it."""

    label: str
    params: dict
    reported: str = ""
    data: dict = field(default_factory=dict)  # data settings of this point (augment)


@dataclass(frozen=True)
class Seed:
    title: str
    spec: str
    columns: tuple[str, ...]
    points: tuple[Point, ...]


SEEDS: dict[str, Seed] = {
    "000": Seed(
        "TransTailor on CUB-200-2011, VGG-16 (BN) from ImageNet weights", "vgg16-cub200.yaml",
        ("accuracy", "balanced_accuracy", "macs", "transtailor.filters_removed_share",
         "transtailor.rounds_accepted"),
        (Point("alpha from random values (version 1)", {"transtailor.alpha_init": "random"},
               "about 3 % once alpha was randomised: the model lost what it knew"),
         Point("alpha from ones (version 2)", {"transtailor.alpha_init": "ones"},
               "below 1 % after alpha became beta; fine-tuning did not recover the "
               "original accuracy"))),
    "001": Seed(
        "Network Slimming on CIFAR-10, VGG", "vgg19-cifar10-slimming.yaml",
        ("accuracy", "slimming.accuracy_before_finetune", "slimming.sparsity", "params", "macs"),
        (Point("lambda 0, 50 % pruned", {"slimming.lambda": 0.0, "slimming.prune_ratio": 0.5,
                                         "slimming.finetune_epochs": 20},
               "no sparsity: the scale factors keep their spread"),
         Point("lambda 1e-4, 50 % pruned", {"slimming.lambda": 1e-4,
                                            "slimming.prune_ratio": 0.5,
                                            "slimming.finetune_epochs": 20},
               "10.0 % before fine-tuning, 92.6 % after 20 epochs"),
         Point("lambda 1e-4, 90 % pruned", {"slimming.lambda": 1e-4,
                                            "slimming.prune_ratio": 0.9,
                                            "slimming.finetune_epochs": 20},
               "10.0 % before fine-tuning, 87.1 % after 20 epochs"),
         Point("lambda 1e-2, 50 % pruned", {"slimming.lambda": 1e-2,
                                            "slimming.prune_ratio": 0.5,
                                            "slimming.finetune_epochs": 20},
               "sparsity reached 100 % and training accuracy stayed very low"))),
    "002": Seed(
        "The course lab's table on CIFAR-10, VGG-16", "course-lab-cifar10.yaml",
        ("accuracy", "params", "nonzero_params", "macs", "ops", "size_bytes"),
        (Point("base network", {"pipeline": "none"}, "the table's first line"),
         Point("orthogonal factorization, every conv",
               {"pipeline": "factorize", "factorize.variant": "orthogonal",
                "factorize.layers": 13}, "an m x n matrix keeps about m(n+1)/2 values"),
         Point("separable filters, every conv",
               {"pipeline": "factorize", "factorize.variant": "separable",
                "factorize.layers": 13}),
         *(Point(f"L1 weight pruning, {scope}, {ratio:.0%}",
                 {"pipeline": "magnitude", "magnitude.mode": "unstructured",
                  "magnitude.scope": scope, "magnitude.ratio": ratio, "magnitude.n": 1})
           for ratio in (0.5, 0.9) for scope in ("layer", "global")),
         *(Point(f"L{n} filter pruning, 30 %",
                 {"pipeline": "magnitude", "magnitude.mode": "structured",
                  "magnitude.scope": "layer", "magnitude.ratio": 0.3, "magnitude.n": n})
           for n in (1, 2)),
         Point("int8", {"pipeline": "quantize"}))),
    "003": Seed(
        "RePr on CIFAR-10, C3(32), 100 epochs, S1 = 20, S2 = 10", "repr-cifar10.yaml",
        ("accuracy", "repr.plain_accuracy"),
        (Point("RePr", {"repr.drop": "overlapping", "repr.zero_next": True},
               "seed: 74.05 % against 77.84 % plain; paper: 76.4 % against 72.1 %"),
         Point("next layer's channels not zeroed", {"repr.drop": "overlapping",
                                                    "repr.zero_next": False},
               "a clear drop after each re-initialisation"),
         Point("most orthogonal filters dropped", {"repr.drop": "orthogonal",
                                                   "repr.zero_next": True},
               "did well against the control"),
         Point("no random crop", {"repr.drop": "overlapping", "repr.zero_next": True},
               "training accuracy near 100 %, test about 60 %, falling after pruning",
               data={"augment": False}))),
    "004": Seed(
        "Parallel-branch pruning on CIFAR-10, VGG-16, 75 % of each layer",
        "branch-cifar10.yaml", ("accuracy", "base_accuracy", "macs", "params"),
        (Point("alpha 0.9, 0.8, ..., 0, every layer at once",
               {"branch.alpha_schedule": "linear", "branch.order": "all",
                "branch.epochs_per_step": 1},
               "92 % before; 84 % down to alpha 0.4, then below 45 %, 10 % at alpha 0"),
         Point("halving alpha, every layer at once",
               {"branch.alpha_schedule": "step", "branch.order": "all",
                "branch.epochs_per_step": 1}),
         Point("alpha 0.9, ..., 0, one layer after another",
               {"branch.alpha_schedule": "linear", "branch.order": "sequential",
                "branch.epochs_per_step": 1}, "the seed's plan for the next week"))),
}

# --tiny: what a CPU runs in seconds. Models shrink, every epoch count becomes 1.
_TINY_MODELS = {"vgg16_bn": {"name": "vgg11", "width": 0.0625}}
_TINY_PARAMS = {"repr.epochs": 2, "repr.s1": 1, "repr.s2": 1, "repr.cycles": 1,
                "branch.steps": 2, "transtailor.max_rounds": 1, "factorize.layers": 1}


def _tiny_spec(raw: dict) -> dict:
    raw = copy.deepcopy(raw)
    model = raw["model"] if isinstance(raw["model"], dict) else {"name": raw["model"]}
    model = {k: v for k, v in model.items() if k != "weights"}
    if model["name"] in _TINY_MODELS:
        model = dict(_TINY_MODELS[model["name"]])
    elif "width" in model:
        model["width"] = 0.0625
    elif "k" in model:
        model["k"] = 4
    raw["model"] = model
    if raw["data"].get("name") == "cub200":
        raw["data"]["image_size"] = 32
    raw["baseline"] = {**raw.get("baseline", {}), "epochs": 1, "patience": None}
    raw["baseline"] = {k: v for k, v in raw["baseline"].items() if v is not None}
    raw["device"], raw["resources"] = "cpu", {"cpu": 1}
    return raw


def _tiny_params(params: dict) -> dict:
    out = {k: (1 if k.endswith("epochs") else v) for k, v in params.items()}
    out.update({k: v for k, v in _TINY_PARAMS.items() if k in out or k.split(".")[0] in
                {p.split(".")[0] for p in params}})
    return out


def run(seed_id: str, root: str, *, tiny: bool = False, storage: str | None = None,
        log=print) -> dict:
    """Run every point of a seed; return ``{seed, title, spec, rows}``."""
    from prune_core.methods import parse_chain
    from prune_core.trial import run_trial
    from studies.spec import parse_spec

    seed = SEEDS[seed_id]
    raw = yaml.safe_load((SPECS / seed.spec).read_text())
    raw["data"] = {**raw["data"], "root": str(root)}
    if tiny:
        raw = _tiny_spec(raw)
    if storage is not None:
        raw["storage"] = storage
    rows = []
    for point in seed.points:
        spec = parse_spec({**raw, "data": {**raw["data"], **point.data}},
                          source=f"{seed.spec} ({point.label})")
        chain = point.params.get("pipeline", spec.chain_names[0])
        stages = {s.name for s in parse_chain(chain)}
        params = {k: v for k, v in {**spec.fixed, **point.params}.items()
                  if k == "pipeline" or k.partition(".")[0] in stages}
        if tiny:
            params = _tiny_params(params)
        log(f"[{seed_id}] {point.label}: {params}")
        row = run_trial({"study": spec.trial_spec().to_dict(), "params": params},
                        log=lambda m: log(f"  {m}"))
        rows.append({"point": point.label, "reported": point.reported, "status": row["status"],
                     "base_accuracy": row.get("base_accuracy"),
                     **{c: row.get(c) for c in seed.columns}, "params": params})
    return {"seed": seed_id, "title": seed.title, "spec": seed.spec, "tiny": tiny,
            "rows": rows}


def _cell(column: str, v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and re.search(r"accuracy|share|sparsity", column):
        return f"{100 * v:.2f} %"
    if isinstance(v, int | float) and column in ("params", "nonzero_params", "macs", "ops",
                                                   "size_bytes"):
        return f"{v / 1e6:.3g} M"
    return str(v)


def markdown(result: dict) -> str:
    seed = SEEDS[result["seed"]]
    cols = seed.columns
    lines = [f"# Seed {result['seed']}: {result['title']}", "",
             f"Spec `studies/specs/{result['spec']}`"
             + (", at `--tiny` scale (a smoke run, not a reproduction)" if result["tiny"]
                else "") + ". Each row is one trial; `reported` is what the seed's note says.",
             "", "| point | " + " | ".join(cols) + " | reported |",
             "|---|" + "---|" * (len(cols) + 1)]
    for r in result["rows"]:
        cells = [_cell(c, r.get(c)) for c in cols]
        lines.append(f"| {r['point']} | " + " | ".join(cells) + f" | {r['reported'] or '-'} |")
    base = next((r["base_accuracy"] for r in result["rows"] if r.get("base_accuracy")), None)
    if base is not None:
        lines += ["", f"Base model: {100 * base:.2f} % test accuracy."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    started = Run(__file__, argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="seeds: " + "; ".join(f"{k} {s.title}"
                                                             for k, s in SEEDS.items()))
    p.add_argument("seed", choices=sorted(SEEDS), help="the seed note (../shared/seeds/NNN_*)")
    p.add_argument("--root", required=True,
                   help="the dataset's folder on this machine (the spec's data.root)")
    p.add_argument("--tiny", action="store_true", help="seconds on a CPU: a smoke run")
    p.add_argument("--storage", help="storage for the base model cache (default: the spec's)")
    p.add_argument("--out", type=Path, default=DOCS, help="where reproduce-<seed>.{json,md} go")
    args = p.parse_args(argv)
    if not Path(args.root).expanduser().is_dir():
        p.error(f"--root {args.root!r} is not a directory")
    result = run(args.seed, str(Path(args.root).expanduser().resolve()), tiny=args.tiny,
                 storage=args.storage, log=lambda m: print(m, file=sys.stderr, flush=True))
    md = markdown(result)
    print(md)
    # The data root is this machine's path: the command names its place instead.
    return started.write(f"reproduce-{args.seed}", result, md, args.out,
                         cmd=f"python -m benchmarks.reproduce {args.seed} --root <data root>"
                         + (" --tiny" if args.tiny else ""))


if __name__ == "__main__":
    main()
