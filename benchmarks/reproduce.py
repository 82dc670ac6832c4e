"""One command per seed note: the seed's experiment at its own scale, as a study, with the
seed's reported numbers beside the ones measured here at the same moment of the method.

    python -m benchmarks.reproduce 003 --root /data/cifar10 --address auto   # a cluster
    python -m benchmarks.reproduce 000 --root /data/CUB_200_2011 --weights vgg16_bn.pth
    python -m benchmarks.reproduce 001 --root /tmp/cifar --tiny              # minutes, a CPU

Each seed names a shipped spec (studies/specs) and the points the seed ran (parameter
values, and for RePr one data setting). The points of one data setting become one study:
the spec with those points enqueued (``sampler: random``, ``trials`` = the points), each
run ``--seeds`` times (``repeats``), written as ``reproduce-<seed>[-<data>].yaml`` into
``--out`` and run with ``prune-study run`` (``--address`` joins a Ray cluster). Run the
command again after an interruption and it resumes the study. ``--tiny`` shrinks models,
epochs and images so that a CPU runs it in minutes, for the tests; ``--set KEY=VALUE``
changes the generated spec as ``run --set`` does. Writes ``reproduce-<seed>.{json,md}``:
per point the mean (and sd over the seeds) of each column.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import re
import statistics
import sys
from collections.abc import Callable
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


def _round1(key: str) -> Callable[[dict], float | None]:
    """A column read from TransTailor's first round (``transtailor.rounds``)."""
    def read(row: dict) -> float | None:
        rounds = row.get("transtailor.rounds") or []
        return rounds[0].get(key) if rounds and isinstance(rounds[0], dict) else None
    return read


def _first_reinit(row: dict) -> float | None:
    """Validation accuracy right after RePr's first re-initialisation."""
    values = row.get("repr.reinit_val_accuracy_per_cycle") or []
    return values[0] if values else None


def _alpha_step(pick: Callable[[list[dict]], dict | None]) -> Callable[[dict], float | None]:
    """Validation accuracy at one alpha step of the branch schedule's last pass (the
    whole network's when every layer goes at once)."""
    def read(row: dict) -> float | None:
        steps = row.get("branch.val_accuracy_per_step") or []
        last = [s for s in steps if s.get("pass") == steps[-1].get("pass")] if steps else []
        step = pick(last) if last else None
        return step.get("val_accuracy") if step else None
    return read


@dataclass(frozen=True)
class Seed:
    title: str
    spec: str
    columns: tuple[str, ...]
    points: tuple[Point, ...]
    # columns computed from a run's row: the moments inside a method the seed reports
    derived: dict[str, Callable[[dict], float | None]] = field(default_factory=dict)


SEEDS: dict[str, Seed] = {
    "000": Seed(
        "TransTailor on CUB-200-2011, VGG-16 (BN) from ImageNet weights", "vgg16-cub200.yaml",
        ("transtailor.start_val_accuracy", "round 1: alpha as drawn",
         "round 1: pruned, before fine-tuning", "round 1: fine-tuned", "accuracy",
         "balanced_accuracy", "macs", "transtailor.filters_removed_share",
         "transtailor.rounds_accepted"),
        (Point("alpha from random values (version 1)", {"transtailor.alpha_init": "random"},
               "about 3 % once alpha was randomised: the model lost what it knew"),
         Point("alpha from ones, beta into the weights (version 2)",
               {"transtailor.alpha_init": "ones", "transtailor.fold": "beta"},
               "below 1 % after alpha became beta; fine-tuning did not recover the "
               "original accuracy"),
         Point("alpha from ones, alpha into the weights (this project's default)",
               {"transtailor.alpha_init": "ones", "transtailor.fold": "alpha"})),
        derived={"round 1: alpha as drawn": _round1("init_score"),
                 "round 1: pruned, before fine-tuning": _round1("pruned_score"),
                 "round 1: fine-tuned": _round1("score")}),
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
        ("accuracy", "params", "factorize.dof_params", "nonzero_params", "macs", "ops",
         "size_bytes"),
        (Point("base network", {"pipeline": "none"}, "the table's first line"),
         Point("orthogonal factorization, every conv",
               {"pipeline": "factorize", "factorize.variant": "orthogonal",
                "factorize.layers": 13, "factorize.only": "conv"},
               "an m x n matrix keeps about m(n+1)/2 values: the dof_params column (the "
               "weights stay stored in full, so params does not change)"),
         Point("separable filters, every conv",
               {"pipeline": "factorize", "factorize.variant": "separable",
                "factorize.layers": 13, "factorize.only": "conv"}),
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
        ("accuracy", "repr.train_accuracy", "repr.plain_accuracy", "repr.plain_train_accuracy",
         "cycle 1: right after re-initialisation (val)"),
        (Point("RePr", {"repr.drop": "overlapping", "repr.zero_next": True},
               "seed: 74.05 % against 77.84 % plain; paper: 76.4 % against 72.1 %"),
         Point("next layer's channels not zeroed", {"repr.drop": "overlapping",
                                                    "repr.zero_next": False},
               "a clear drop after each re-initialisation"),
         Point("most orthogonal filters dropped", {"repr.drop": "orthogonal",
                                                   "repr.zero_next": True},
               "the control (plain training) did well; the inverted ranking did not"),
         Point("no random crop", {"repr.drop": "overlapping", "repr.zero_next": True},
               "training accuracy near 100 %, test about 60 %, falling after pruning",
               data={"augment": False})),
        derived={"cycle 1: right after re-initialisation (val)": _first_reinit}),
    "004": Seed(
        "Parallel-branch pruning on CIFAR-10, VGG-16, 75 % of each layer",
        "branch-cifar10.yaml",
        ("first alpha step (val)", "alpha nearest 0.4 (val)", "alpha 0 (val)",
         "branch.merged_accuracy", "accuracy", "base_accuracy", "macs", "params"),
        (Point("alpha 0.9, 0.8, ..., 0, every layer at once",
               {"branch.alpha_schedule": "linear", "branch.order": "all",
                "branch.epochs_per_step": 1},
               "92 % before; 84 % down to alpha 0.4, then below 45 %, 10 % at alpha 0"),
         Point("halving alpha, every layer at once",
               {"branch.alpha_schedule": "step", "branch.order": "all",
                "branch.epochs_per_step": 1}),
         Point("alpha 0.9, ..., 0, one layer after another",
               {"branch.alpha_schedule": "linear", "branch.order": "sequential",
                "branch.epochs_per_step": 1}, "the seed's plan for the next week")),
        # The seed reports accuracy along the schedule and after merging, without
        # fine-tuning: merged_accuracy is that moment; accuracy is after fine-tuning.
        derived={"first alpha step (val)": _alpha_step(lambda s: s[0]),
                 "alpha nearest 0.4 (val)": _alpha_step(
                     lambda s: min(s, key=lambda x: abs(x["alpha"] - 0.4))),
                 "alpha 0 (val)": _alpha_step(lambda s: s[-1])}),
}

# --tiny: what a CPU runs in seconds. Models shrink, every epoch count becomes 1.
_TINY_MODELS = {"vgg16_bn": {"name": "vgg11", "width": 0.0625},
                "vgg16": {"name": "vgg11", "width": 0.0625}}
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


def _default(key: str):
    from prune_core.methods import get_method

    stage, _, name = key.partition(".")
    return get_method(stage).param(name).default


def studies_of(seed_id: str, root: str, *, tiny: bool = False, storage: str | None = None,
               weights: str | None = None, settings: list[str] = (),
               seeds: int = 3) -> list[tuple[dict, list[tuple[Point, dict]]]]:
    """The seed's studies: per data setting, the spec (plain data, as YAML holds it) and
    each point with its parameters as the study runs them."""
    from prune_core.methods import parse_chain
    from studies.spec import apply_settings, parse_spec

    seed = SEEDS[seed_id]
    raw = yaml.safe_load((SPECS / seed.spec).read_text())
    raw["data"] = {**raw["data"], "root": str(root)}
    if weights is not None:
        raw["model"] = {**raw["model"], "weights": str(weights)}
    if tiny:
        raw = _tiny_spec(raw)
    if storage is not None:
        raw["storage"] = storage
    spec = parse_spec(raw, source=seed.spec, rehearse=False)
    chains = spec.chain_names
    groups: dict[str, list[Point]] = {}
    for point in seed.points:
        groups.setdefault(json.dumps(point.data, sort_keys=True), []).append(point)
    out = []
    for data_key, points in groups.items():
        data = json.loads(data_key)
        planned = []
        for point in points:
            chain = point.params.get("pipeline", chains[0])
            stages = {s.name for s in parse_chain(chain)}
            params = {k: v for k, v in {**spec.fixed, **point.params}.items()
                      if k == "pipeline" or k.partition(".")[0] in stages}
            if tiny:
                params = _tiny_params(params)
            planned.append((point, params, stages))
        # Every key a point sets: fixed where all points agree, else the values as choices;
        # a point whose chain has the key but leaves it out runs the method's default.
        keys = list(dict.fromkeys(k for _, p, _ in planned for k in p if k != "pipeline"))
        for _, params, stages in planned:
            for k in keys:
                if k.partition(".")[0] in stages:
                    params.setdefault(k, _default(k))
        space = {}
        for k in keys:
            values = list(dict.fromkeys(json.dumps(p[k]) for _, p, _ in planned if k in p))
            space[k] = json.loads(values[0]) if len(values) == 1 else \
                {"choices": [json.loads(v) for v in values]}
        enqueue = [{k: v for k, v in p.items()
                    if (k == "pipeline" and len(chains) > 1) or isinstance(space.get(k), dict)}
                   for _, p, _ in planned]
        suffix = "".join(f"-{k}-{str(v).lower()}" for k, v in sorted(data.items()))
        study = {**copy.deepcopy(raw), "name": f"reproduce-{seed_id}{suffix}",
                 "data": {**raw["data"], **data}, "space": space,
                 "sampler": {"name": "random", "seed": 0}, "trials": len(planned),
                 "repeats": seeds, "enqueue": enqueue}
        if not any(enqueue):
            study.pop("enqueue")
        study = apply_settings(study, list(settings)) if settings else study
        out.append((study, [(point, params) for point, params, _ in planned]))
    return out


def run(seed_id: str, root: str, *, tiny: bool = False, storage: str | None = None,
        weights: str | None = None, settings: list[str] = (), seeds: int = 3,
        address: str | None = None, out: Path = DOCS, log=print) -> dict:
    """Run (or resume) each of the seed's studies; return ``{seed, title, spec, rows}``."""
    from analysis import results
    from studies.cli import EXIT_INCOMPLETE, EXIT_INTERRUPTED, EXIT_OK
    from studies.cli import main as prune_study
    from studies.spec import parse_spec

    seed = SEEDS[seed_id]
    rows, commands = [], []
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for study, points in studies_of(seed_id, root, tiny=tiny, storage=storage,
                                    weights=weights, settings=settings, seeds=seeds):
        path = out / f"{study['name']}.yaml"
        path.write_text(yaml.safe_dump(study, sort_keys=False))
        study_dir = parse_spec(study, source=str(path), rehearse=False).study_dir
        again = (study_dir / "study.json").exists()
        argv = (["resume", str(study_dir)] if again else ["run", str(path)]) + \
            (["--address", address] if address else [])
        commands.append(f"prune-study {' '.join(argv)}")
        log(f"[{seed_id}] {commands[-1]}")
        code = prune_study(argv)
        if code in (EXIT_INCOMPLETE, EXIT_INTERRUPTED):
            raise SystemExit(f"prune-study {argv[0]} stopped with trials left (exit code "
                             f"{code}); run this command again to resume the study")
        if code != EXIT_OK:
            raise SystemExit(f"prune-study {argv[0]} failed (exit code {code}): see its "
                             "error above")
        runs = results.load(study_dir, runs=True)
        for point, params in points:
            mine = runs[[_same(rec, params) for rec in runs.to_dict("records")]]
            rows.append(_row(seed, point, params, mine.to_dict("records"), study["name"]))
    return {"seed": seed_id, "title": seed.title, "spec": seed.spec, "tiny": tiny,
            "seeds": seeds, "commands": commands, "rows": rows}


def _same(rec: dict, params: dict) -> bool:
    """Whether the run ``rec`` (a row of ``analysis.results.load``) ran ``params``."""
    for k, v in params.items():
        got = rec.get("method") if k == "pipeline" else rec.get(k)
        if k == "pipeline" and got is None:
            continue  # a study of one chain
        if isinstance(v, float) and isinstance(got, int | float):
            if not math.isclose(v, got, rel_tol=1e-9):
                return False
        elif got != v:
            return False
    return True


def _number(v) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) \
        and math.isfinite(v) else None


def _row(seed: Seed, point: Point, params: dict, runs: list[dict], study: str) -> dict:
    """The point's row: each column's mean over the runs that finished ok, its sd, and
    how many ran and finished."""
    ok = [r for r in runs if r["status"] == "ok"]
    row = {"point": point.label, "reported": point.reported, "study": study,
           "runs": len(runs), "ok": len(ok), "params": params,
           "base_accuracy": next((r.get("base_accuracy") for r in ok), None)}
    for column in seed.columns:
        read = seed.derived.get(column, lambda r, c=column: r.get(c))
        values = [v for v in (_number(read(r)) for r in ok) if v is not None]
        row[column] = statistics.fmean(values) if values else None
        row[f"{column} sd"] = statistics.stdev(values) if len(values) > 1 else None
    return row


def _cell(column: str, v, sd=None) -> str:
    if v is None:
        return "-"
    if re.search(r"accuracy|share|sparsity|round 1", column):
        text = f"{100 * v:.2f} %" + (f" ± {100 * sd:.2f}" if sd is not None else "")
    elif column in ("params", "nonzero_params", "macs", "ops", "size_bytes") or \
            column.endswith("dof_params"):
        text = f"{v / 1e6:.3g} M" + (f" ± {sd / 1e6:.2g}" if sd else "")
    else:
        text = f"{v:.3g}" + (f" ± {sd:.2g}" if sd else "")
    return text


def markdown(result: dict) -> str:
    seed = SEEDS[result["seed"]]
    cols = seed.columns
    lines = [f"# Seed {result['seed']}: {result['title']}", "",
             f"Spec `studies/specs/{result['spec']}`"
             + (", at `--tiny` scale (a smoke run, not a reproduction)" if result["tiny"]
                else "") + f". Each point ran with {result['seeds']} seed(s) as one study "
             "configuration; cells are the mean over the runs that finished (± their sd). "
             "`reported` is what the seed's note says. Studies:", "",
             *[f"    {c}" for c in result["commands"]], "",
             "| point | runs ok | " + " | ".join(cols) + " | reported |",
             "|---|---|" + "---|" * (len(cols) + 1)]
    for r in result["rows"]:
        cells = [_cell(c, r.get(c), r.get(f"{c} sd")) for c in cols]
        lines.append(f"| {r['point']} | {r['ok']} of {r['runs']} | " + " | ".join(cells)
                     + f" | {r['reported'] or '-'} |")
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
    p.add_argument("--weights", type=Path,
                   help="pretrained weights file for the spec's model (model.weights; seed "
                        "000 starts from torchvision's ImageNet VGG-16 BN weights)")
    p.add_argument("--seeds", type=int, default=3,
                   help="runs of each point, each with its own seed (the study's repeats; "
                        "default 3)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="change the generated spec as `prune-study run --set` does "
                        "(baseline.epochs=30, resources.gpu=1); repeatable")
    p.add_argument("--address", help="run the studies on a Ray cluster (host:port or auto)")
    p.add_argument("--tiny", action="store_true", help="minutes on a CPU: a smoke run")
    p.add_argument("--storage", help="where the studies and the base model cache go "
                                     "(default: the spec's)")
    p.add_argument("--out", type=Path, default=DOCS,
                   help="where the generated specs and reproduce-<seed>.{json,md} go")
    args = p.parse_args(argv)
    if not Path(args.root).expanduser().is_dir():
        p.error(f"--root {args.root!r} is not a directory")
    if args.weights is not None and not args.weights.expanduser().is_file():
        p.error(f"--weights {str(args.weights)!r} is not a file")
    if not 1 <= args.seeds <= 100:
        p.error(f"--seeds {args.seeds}: allowed 1 to 100")
    result = run(args.seed, str(Path(args.root).expanduser().resolve()), tiny=args.tiny,
                 storage=args.storage, settings=args.set, seeds=args.seeds,
                 weights=str(args.weights.expanduser().resolve()) if args.weights else None,
                 address=args.address, out=args.out,
                 log=lambda m: print(m, file=sys.stderr, flush=True))
    md = markdown(result)
    print(md)
    # The data root is this machine's path: the command names its place instead.
    return started.write(f"reproduce-{args.seed}", result, md, args.out,
                         cmd=f"python -m benchmarks.reproduce {args.seed} --root <data root>"
                         + (" --tiny" if args.tiny else ""))


if __name__ == "__main__":
    main()
