"""What every benchmark stores beside its numbers, and how it writes them.

Each benchmark is a module run from the repository root, ``python -m benchmarks.<name>``,
whose ``main(argv=None)`` returns the JSON document it wrote (the last one, for a run
that writes several). ``write_results(name, result, markdown, out_dir, cmd=...)`` writes
``<name>.json`` (the result plus ``environment()`` and the command) and ``<name>.md``
(the given Markdown plus the same facts), so each number sits next to what produced it.
"""

from __future__ import annotations

import json
import shlex
import statistics
import sys
from pathlib import Path

from prune_core.environment import environment

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks"


def command(script: str | Path, argv: list[str] | None = None) -> str:
    """``python -m benchmarks.<name> ARGS``: the command that reproduces this run from the
    repository root. ``script`` is the benchmark's ``__file__``; ``argv`` defaults to this
    process's arguments (a benchmark called as a function passes its own)."""
    module = f"benchmarks.{Path(script).stem}"
    return shlex.join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)])


def write_results(name: str, result: dict, markdown: str, out_dir: Path = DOCS, *,
                  cmd: str) -> dict:
    """Write ``<name>.json`` and ``<name>.md`` into ``out_dir``; return the JSON document
    (what every benchmark's ``main`` returns). ``cmd`` is :func:`command`'s line."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {**result, "command": cmd, "environment": environment()}
    (out_dir / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    env = doc["environment"]
    facts = "\n".join(f"- {k}: {v}" for k, v in env.items())
    md = f"{markdown.rstrip()}\n\nReproduce with:\n\n```\n{doc['command']}\n```\n\n{facts}\n"
    (out_dir / f"{name}.md").write_text(md)
    return doc


def spread(values: list[float]) -> dict:
    """Mean, standard deviation (0 for one value), minimum and maximum."""
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def first_images(data, n: int | None):
    """``data`` with only its first ``n`` training images (of the source task too, for a
    transfer dataset); all of them when ``n`` is None."""
    from dataclasses import replace

    from prune_core.data import Split

    if not n:
        return data
    source = data.source and first_images(data.source, n)
    return replace(data, train=Split(data.train.x[:n], data.train.y[:n]), source=source)


def digits(train_limit: int | None = None):
    """The embedded digits data; with ``train_limit``, only its first training images."""
    from prune_core import data as datasets

    return first_images(datasets.load("digits"), train_limit)


def add_cache_option(parser) -> None:
    parser.add_argument("--cache", help="base model cache (default: runs/_cache; with --tiny, "
                                        "_cache under --out)")


def cache_dir(args) -> Path:
    """Where a benchmark keeps its base models: ``--cache``, or the shared runs/_cache; a
    ``--tiny`` run keeps its small bases beside its output instead."""
    if args.cache:
        return Path(args.cache)
    return Path(args.out) / "_cache" if args.tiny else ROOT / "runs" / "_cache"


def base_vgg(settings: dict, data, cache: Path, log=print):
    """The benchmarks' shared base model: a CIFAR VGG trained on ``data`` (cached by content
    hash under ``cache``; the training subset is part of the key, so a tiny base never
    passes for a full one)."""
    from prune_core.baseline import BaseSpec, get_base
    from prune_core.train import TrainConfig

    spec = BaseSpec(model=settings["model"], model_kw={"width": settings["width"]},
                    data="digits", data_kw={"train_limit": settings.get("train_limit")},
                    train=TrainConfig(epochs=settings["base_epochs"], lr=0.05))
    return get_base(spec, data, cache, log=log)[0]
