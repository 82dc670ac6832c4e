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
import threading
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


def machine_load(before: float | None, after: float | None, others: float | None = None,
                 cpus: int | None = None) -> dict:
    """``load_before``, ``load_after``, ``others_running`` and ``busy``.

    ``busy`` is true when other work competed for the cores a benchmark timed: the load
    before the run exceeded one runnable process per core (``cpus``, default
    ``os.cpu_count()``), or other processes kept more than OTHERS_LIMIT threads runnable on
    average during it (``others``, from :class:`OtherWork`). The load after the run is
    kept for the record but does not decide: it counts the benchmark's own trials, and one
    that fills every core ends near the core count on an idle machine. Where ``others``
    was not sampled (not Linux), the load after decides as the load before does."""
    cpus = cpus or os.cpu_count() or 1
    late = others > OTHERS_LIMIT if others is not None else after is not None and after > cpus
    return {"load_before": before, "load_after": after, "others_running": others,
            "busy": (before is not None and before > cpus) or late}


def busy_note(load: dict, cpus: int | None = None) -> str | None:
    """The sentence a busy run's Markdown carries (None for a quiet run)."""
    if not load["busy"]:
        return None
    cpus = cpus or os.cpu_count() or 1
    what = [f"load {v:.1f} {when}" for when, v in (("before the run", load["load_before"]),
                                                    ("after it", load["load_after"]))
            if v is not None and v > cpus]
    if load.get("others_running") is not None and load["others_running"] > OTHERS_LIMIT:
        what.append(f"{load['others_running']:.1f} runnable threads of other processes on "
                    "average during it")
    return (f"Taken on a busy machine ({', '.join(what)}; {cpus} cores): timings are "
            "indicative only.")


# Other processes' runnable threads, averaged over a run, above which it counts as busy:
# half a core taken from the benchmark.
OTHERS_LIMIT = 0.5


def _state_and_parent(stat: str) -> tuple[str, int]:
    """A /proc stat line's state letter and parent pid (the name before them may hold
    spaces and parentheses, so the fields are read after its last ``)``)."""
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def process_table() -> dict[int, tuple[int, int]]:
    """Every process on the machine: pid -> (parent pid, its threads in state R, running or
    waiting for a core). Empty where /proc cannot be read."""
    table: dict[int, tuple[int, int]] = {}
    for d in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not d.name.isdigit():
            continue
        try:
            _, parent = _state_and_parent((d / "stat").read_text())
            running = sum(_state_and_parent(t.read_text())[0] == "R"
                          for t in d.glob("task/*/stat"))
        except (OSError, IndexError, ValueError):
            continue  # ended while the table was read
        table[int(d.name)] = (parent, running)
    return table


def running_outside(table: dict[int, tuple[int, int]], system: int, root: int) -> int:
    """``system`` runnable threads less those of ``root`` and its descendants in ``table``."""
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    own, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        own += table.get(pid, (0, 0))[1]
    return max(0, system - own)


def others_running(root: int | None = None) -> int | None:
    """Runnable threads on the machine that are not in ``root``'s process tree (default:
    this process; a local Ray's workers are its descendants): ``procs_running`` of
    /proc/stat less the tree's threads in state R. None where /proc cannot be read."""
    try:
        with open("/proc/stat") as f:
            system = int(next(line for line in f if line.startswith("procs_running")).split()[1])
    except (OSError, StopIteration, ValueError):
        return None
    return running_outside(process_table(), system, os.getpid() if root is None else root)


class OtherWork:
    """:func:`others_running`, sampled every ``interval`` seconds by a daemon thread from
    its creation until :meth:`stop`, which returns the mean (None without samples)."""

    def __init__(self, interval: float = 2.0):
        self.samples: list[int] = []
        self._stop = threading.Event()
        threading.Thread(target=self._sample, args=(interval,), daemon=True).start()

    def _sample(self, interval: float) -> None:
        while not self._stop.wait(interval):
            n = others_running()
            if n is None:
                return
            self.samples.append(n)

    def stop(self) -> float | None:
        self._stop.set()
        return round(statistics.fmean(self.samples), 2) if self.samples else None


class Run:
    """One benchmark run from its start: the command line that reproduces it, the load when
    it started and the other work during it (:class:`OtherWork`). Create it first thing in
    ``main``; ``write`` stores them with the results, and the load when they were written."""

    def __init__(self, script: str | Path, argv: list[str] | None = None):
        self.command = command(script, argv)
        self.load_before = load_1min()
        self.others = OtherWork()

    def write(self, name: str, result: dict, markdown: str, out_dir: Path = DOCS, *,
              cmd: str | None = None) -> dict:
        """:func:`write_results` with this run's command (or ``cmd``), starting load and
        the other processes' mean runnable threads since it started."""
        return write_results(name, result, markdown, out_dir, cmd=cmd or self.command,
                             load_before=self.load_before, others=self.others.stop())


def write_results(name: str, result: dict, markdown: str, out_dir: Path = DOCS, *,
                  cmd: str, load_before: float | None, others: float | None = None) -> dict:
    """Write ``<name>.json`` and ``<name>.md`` into ``out_dir``; return the JSON document
    (what every benchmark's ``main`` returns). ``cmd`` is :func:`command`'s line,
    ``load_before`` the 1-minute load when the run started and ``others`` the other
    processes' mean runnable threads during it (:class:`Run` keeps them)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    load = machine_load(load_before, load_1min(), others)
    doc = {**result, **load, "command": cmd, "environment": environment()}
    (out_dir / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    env = doc["environment"]
    facts = "\n".join(f"- {k}: {v}" for k, v in env.items())
    facts += f"\n- load before and after the run: {load['load_before']}, {load['load_after']}"
    if others is not None:
        facts += f"\n- runnable threads of other processes during the run, mean: {others}"
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
