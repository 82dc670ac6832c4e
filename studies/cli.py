"""The ``prune-study`` command line.

Exit codes: 0 ok, 2 bad input (spec, arguments, paths), 1 anything else.
``--json`` prints exactly one JSON document on stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT = 0, 1, 2


class BadInput(Exception):
    """A user mistake: reported in one message, exit code 2."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def emit_json(doc) -> None:
    print(json.dumps(doc, indent=2, default=str))


# --------------------------------------------------------------------------- commands


def cmd_models(args) -> int:
    from prune_core import models

    rows = [{"name": n, "doc": models.model_doc(n), "kwargs": models.model_kwargs(n)}
            for n in models.list_models()]
    if args.json:
        emit_json(rows)
    else:
        for r in rows:
            print(f"{r['name']:<10} {r['doc']}  (args: {', '.join(r['kwargs'])})")
    return EXIT_OK


def cmd_methods(args) -> int:
    from prune_core.methods import get_method, list_methods

    rows = []
    for name in list_methods():
        m = get_method(name)
        rows.append({"name": name, "doc": m.doc, "seed": m.seed, "terminal": m.terminal,
                     "params": [p.to_dict() for p in m.params]})
    if args.json:
        emit_json(rows)
        return EXIT_OK
    for r in rows:
        print(f"{r['name']}: {r['doc']}")
        for p in r["params"]:
            search = p["search"] or {}
            rng = (f"search {search['choices']}" if "choices" in search else
                   f"search [{search.get('low')}, {search.get('high')}]"
                   + (" log" if search.get("log") else "") if search else "")
            print(f"    {r['name']}.{p['name']:<22} default {p['default']!r:<10} "
                  f"{p['domain']}  {rng}\n        {p['doc']}")
    return EXIT_OK


def cmd_measure(args) -> int:
    from prune_core import measure, models

    try:
        shape = measure.parse_shape(args.input)
    except ValueError as e:
        raise BadInput(str(e)) from e
    kw = {"width": args.width} if args.width is not None else {}
    try:
        model = models.build(args.model, num_classes=args.num_classes, **kw)
    except models.ModelError as e:
        raise BadInput(str(e)) from e
    row = {"model": args.model, "input": list(shape), "num_classes": args.num_classes, **kw,
           **measure.measure(model, shape, with_latency=args.latency)}
    if args.json:
        emit_json(row)
    else:
        print(f"{args.model} at {args.input}: {row['params'] / 1e6:.2f} M params, "
              f"{row['macs'] / 1e6:.1f} M MACs, {row['ops'] / 1e6:.1f} M ops, "
              f"{row['size_bytes'] / 2**20:.2f} MiB")
    return EXIT_OK


def cmd_trial(args) -> int:
    from prune_core.trial import run_trial
    from studies.spec import load_spec, parse_overrides

    spec = load_spec(args.spec)
    params = parse_overrides(args.set or [])
    row = run_trial({"study": spec.trial_spec().to_dict(), "params": params},
                    lambda m, _ck=None: log(_progress(m)), log=log)
    if args.json:
        emit_json(row)
    else:
        for k, v in row.items():
            if k != "channels":
                print(f"{k:<36} {v}")
    return EXIT_OK


def _progress(m: dict) -> str:
    if m.get("checkpoint"):
        return f"  checkpoint at step {m['step']}"
    if m.get("final"):
        return f"  done: accuracy {m['accuracy']:.4f}, {m['macs'] / 1e6:.2f} M MACs"
    keys = ("train_loss", "train_accuracy", "val_accuracy", "sparsity", "alpha")
    vals = " ".join(f"{k}={m[k]:.4g}" for k in keys if isinstance(m.get(k), float))
    return f"  [{m.get('stage')}/{m.get('phase')}] epoch {m.get('epoch')}: {vals}"


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="prune-study",
        description="Hyperparameter studies over neural-network compression methods, "
        "on one machine or a Ray cluster, read as Pareto fronts of size, operations "
        "and accuracy.",
        epilog="Start with: prune-study run studies/specs/quickstart.yaml, then "
        "prune-study report runs/quickstart. Exit codes: 0 ok, 2 bad input, 1 other errors.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("models", help="list the models in the registry")
    s.add_argument("--json", action="store_true", help="print one JSON document")
    s.set_defaults(fn=cmd_models)

    s = sub.add_parser("methods", help="list the methods with their parameters and domains")
    s.add_argument("--json", action="store_true", help="print one JSON document")
    s.set_defaults(fn=cmd_methods)

    s = sub.add_parser("measure", help="params, MACs, ops and bytes of a registry model")
    s.add_argument("model", help="a name from `prune-study models`")
    s.add_argument("--input", default="3x32x32", help="input shape CxHxW (default 3x32x32)")
    s.add_argument("--num-classes", type=int, default=10, help="classifier outputs (default 10)")
    s.add_argument("--width", type=float, default=None, help="width multiplier (CIFAR models)")
    s.add_argument("--latency", action="store_true", help="also time batch-1 CPU inference")
    s.add_argument("--json", action="store_true", help="print one JSON document")
    s.set_defaults(fn=cmd_measure)

    s = sub.add_parser("trial", help="run one trial of a spec without Ray and print its row")
    s.add_argument("spec", help="study spec (YAML)")
    s.add_argument("--set", action="append", metavar="STAGE.PARAM=VALUE",
                   help="a parameter value (repeatable); unset parameters take defaults")
    s.add_argument("--json", action="store_true", help="print the row as one JSON document")
    s.set_defaults(fn=cmd_trial)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return p


# Commands defined in other modules register themselves here (run, resume, status, report...).
_EXTRA_COMMANDS: list[Callable] = []


def main(argv: list[str] | None = None) -> int:
    from prune_core.baseline import CheckpointError
    from prune_core.data import DataError
    from prune_core.methods import ParamError
    from prune_core.models import ModelError

    parser = build_parser()
    args = parser.parse_args(argv)
    bad = (BadInput, DataError, ParamError, ModelError, CheckpointError, FileNotFoundError)
    try:
        spec_error = _spec_error()
        return args.fn(args)
    except bad + spec_error as e:
        log(f"error: {e}")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        log("interrupted")
        return EXIT_ERROR


def _spec_error() -> tuple[type[BaseException], ...]:
    try:
        from studies.spec import SpecError
    except ImportError:
        return ()
    return (SpecError,)


if __name__ == "__main__":
    sys.exit(main())
