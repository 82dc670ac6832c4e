"""What every benchmark stores beside its numbers, and how it writes them.

Each benchmark is a module run from the repository root, ``python -m benchmarks.<name>``,
whose ``main(argv=None)`` returns the JSON document it wrote (the last one, for a run
that writes several). ``main`` starts with ``started = Run(__file__, argv)`` and ends with
``started.write(name, result, markdown, out_dir)``, which writes ``<name>.json`` (the
result plus the command, ``environment()``, the load before and after the run and a
``busy`` flag) and ``<name>.md`` (the given Markdown plus the same facts), so each number
sits next to what produced it and a timing taken on a loaded machine says so.
"""

from __future__ import annotations

import json
import os
import shlex
import statistics
import sys
from pathlib import Path

from prune_core.environment import environment, load_average

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks"


def command(script: str | Path, argv: list[str] | None = None) -> str:
    """``python -m benchmarks.<name> ARGS``: the command that reproduces this run from the
    repository root. ``script`` is the benchmark's ``__file__``; ``argv`` defaults to this
    process's arguments (a benchmark called as a function passes its own)."""
    module = f"benchmarks.{Path(script).stem}"
    return shlex.join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)])


def load_1min() -> float | None:
    """The 1-minute load average: runnable processes, averaged (None where there is none)."""
    load = load_average()
    return load[0] if load else None


def machine_load(before: float | None, after: float | None, cpus: int | None = None) -> dict:
    """``load_before``, ``load_after`` and ``busy``: true when either load exceeds one
    runnable process per core (``cpus``, default ``os.cpu_count()``), that is when other
    work competed for the cores a benchmark timed."""
    cpus = cpus or os.cpu_count() or 1
    return {"load_before": before, "load_after": after,
            "busy": any(v is not None and v > cpus for v in (before, after))}


def busy_note(load: dict, cpus: int | None = None) -> str | None:
    """The sentence a busy run's Markdown carries (None for a quiet run)."""
    if not load["busy"]:
        return None
    worst = max(v for v in (load["load_before"], load["load_after"]) if v is not None)
    return (f"Taken on a busy machine (load {worst:.1f} on {cpus or os.cpu_count() or 1} "
            "cores): timings are indicative only.")


class Run:
    """One benchmark run from its start: the command line that reproduces it and the load
    when it started. Create it first thing in ``main``; ``write`` stores both with the
    results, and the load when they were written."""

    def __init__(self, script: str | Path, argv: list[str] | None = None):
        self.command = command(script, argv)
        self.load_before = load_1min()

    def write(self, name: str, result: dict, markdown: str, out_dir: Path = DOCS, *,
              cmd: str | None = None) -> dict:
        """:func:`write_results` with this run's command (or ``cmd``) and starting load."""
        return write_results(name, result, markdown, out_dir, cmd=cmd or self.command,
                             load_before=self.load_before)


def write_results(name: str, result: dict, markdown: str, out_dir: Path = DOCS, *,
                  cmd: str, load_before: float | None) -> dict:
    """Write ``<name>.json`` and ``<name>.md`` into ``out_dir``; return the JSON document
    (what every benchmark's ``main`` returns). ``cmd`` is :func:`command`'s line,
    ``load_before`` the 1-minute load when the run started (:class:`Run` keeps both)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    load = machine_load(load_before, load_1min())
    doc = {**result, **load, "command": cmd, "environment": environment()}
    (out_dir / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    env = doc["environment"]
    facts = "\n".join(f"- {k}: {v}" for k, v in env.items())
    facts += f"\n- load before and after the run: {load['load_before']}, {load['load_after']}"
    md = _with_note(markdown.rstrip(), busy_note(load))
    md = f"{md}\n\nReproduce with:\n\n```\n{doc['command']}\n```\n\n{facts}\n"
    (out_dir / f"{name}.md").write_text(md)
    return doc


def _with_note(markdown: str, note: str | None) -> str:
    """``markdown`` with ``note`` as a bold paragraph under its title (first, with none)."""
    if note is None:
        return markdown
    title, _, rest = markdown.partition("\n")
    if not title.startswith("# "):
        title, rest = "", markdown
    return "\n\n".join(p for p in (title, f"**{note}**", rest.strip("\n")) if p)


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
