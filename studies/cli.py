"""The ``prune-study`` command line.

Exit codes: 0 ok; 2 bad input (spec, arguments, paths, a study another driver holds, a
base model that changed); 1 anything else; 3 ``run``/``resume`` stopped before every
trial of the study ended (resume it); 130 interrupted by Ctrl-C (SIGINT), the study
saved and resumable. ``run`` and ``resume`` exit 0 only when the study is complete.
``--json`` prints exactly one JSON document on stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

from prune_core.errors import InputError, PruneStudyError, StudyFilesError

__all__ = ["BadInput", "build_parser", "EXIT_BAD_INPUT", "EXIT_ERROR", "EXIT_INCOMPLETE",
           "EXIT_INTERRUPTED", "EXIT_OK", "is_bad_input", "main", "versions"]

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT = 0, 1, 2
EXIT_INCOMPLETE = 3  # run/resume ended with trials left to run: `prune-study resume`
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C


class BadInput(InputError):
    """A mistake in the command line's own arguments."""


def log(msg: str) -> None:
    """Print a progress or error line to stderr."""
    print(msg, file=sys.stderr, flush=True)


def emit_json(doc) -> None:
    """Print ``doc`` as indented JSON on stdout."""
    print(json.dumps(doc, indent=2, default=str))


# --------------------------------------------------------------------------- commands


def versions() -> dict:
    """prune-study's version and those of the packages a study's results depend on, read
    from the installed metadata (nothing is imported)."""
    import platform
    from importlib import metadata

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    own = version("prune-study")
    if own is None:  # a checkout that was never installed
        import tomllib
        from pathlib import Path

        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        own = tomllib.loads(pyproject.read_text())["project"]["version"]
    return {"prune_study": own, "python": platform.python_version(),
            **{d.replace("-", "_"): version(d)
               for d in ("torch", "ray", "optuna", "torch-pruning", "torchao")}}


def cmd_version(args) -> int:
    """`prune-study --version`: the package version; with --json the stack's versions too."""
    v = versions()
    if args.json:
        emit_json(v)
    else:
        print(f"prune-study {v['prune_study']}")
    return EXIT_OK


def cmd_models(args) -> int:
    """`prune-study models`: the registered models and their arguments."""
    from prune_core import models

    rows = [{"name": n, "doc": models.model_doc(n), "kwargs": models.model_kwargs(n)}
            for n in models.list_models()]
    if args.json:
        emit_json(rows)
    else:
        for r in rows:
            print(f"{r['name']:<10} {r['doc']}  (args: {', '.join(r['kwargs'])})")
        print()
        print(models.model_source_help())
    return EXIT_OK


def cmd_methods(args) -> int:
    """`prune-study methods`: the registered methods and their parameter tables."""
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
    """`prune-study measure`: params, MACs, ops and bytes of one model."""
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
    """`prune-study trial`: one trial in this process, without Ray."""
    import torch

    from prune_core.trial import run_trial
    from studies.spec import load_spec, parse_overrides

    spec = load_spec(args.spec)
    params = parse_overrides(args.set or [])
    # A study's trial runs on resources.cpu threads; float sums, and so the weights, depend
    # on the thread count, so the same count reproduces the study's trial (and base model).
    torch.set_num_threads(max(1, int(spec.resources["cpu"])))
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


def cmd_validate(args) -> int:
    """`prune-study validate`: every mistake in a spec, or what it would run."""
    from studies.samplers import sampler_text
    from studies.spec import SpecError, load_spec

    try:
        spec = load_spec(args.spec)
    except SpecError as e:
        if args.json:
            emit_json({"ok": False, "errors": e.errors})
        else:
            log(f"error: {e}")
        return EXIT_BAD_INPUT
    if args.json:
        emit_json({"ok": True, "errors": [], "name": spec.name, "trials": spec.trials,
                   "repeats": spec.repeats,
                   "methods": spec.methods_label, "objectives": spec.objectives,
                   "sampler": sampler_text(spec),
                   "space": {k: p.to_dict() for k, p in spec.space.items()}})
        return EXIT_OK
    print(f"{args.spec}: ok")
    trials = f"{spec.trials} trials" if spec.repeats == 1 else \
        f"{spec.trials} configurations x {spec.repeats} repeats"
    print(f"  study {spec.name!r}: {trials} of {spec.methods_label} on "
          f"{spec.model} / {spec.data}, {sampler_text(spec)} sampler "
          f"(seed {spec.sampler_seed})")
    print(f"  objectives: {', '.join(f'{k} {m}' for k, m in spec.objectives.items())}")
    for k, p in spec.space.items():
        print(f"  {k}: {_space_text(p)}")
    print(f"  study directory: {spec.study_dir}")
    return EXIT_OK


def _space_text(p) -> str:
    if p.kind == "fixed":
        return f"fixed {p.value!r}"
    if p.kind == "categorical":
        return f"one of {list(p.choices)}"
    return f"{p.kind} in [{p.low:g}, {p.high:g}]" + (" log" if p.log else "")


def _load_run_spec(args):
    from studies.spec import load_spec

    spec = load_spec(args.spec, settings=args.set or ())
    return spec.with_overrides(trials=args.trials, storage=args.storage, name=args.name)


def cmd_run(args) -> int:
    """`prune-study run`: start a study from a spec."""
    from studies.runner import run_study

    return _drive(args, run_study, _load_run_spec(args))


def cmd_resume(args) -> int:
    """`prune-study resume`: continue a study until its trials have ended."""
    from studies.runner import resume_study

    return _drive(args, resume_study, _study_dir(args.study_dir))


def _drive(args, fn, target) -> int:
    """Run or resume; 0 only when the study is complete (every trial ended). Damaged files
    the study's reader skips are reported as one ``warning:`` line each."""
    from analysis.studydir import skipped_files
    from studies.progress import Progress, choose_mode, show
    from studies.runner import StudyInterrupted
    from studies.versions import version_warning

    warning = version_warning()
    if warning:
        log(warning)
    display = Progress(choose_mode(quiet=args.quiet), every=args.progress_every)
    try:
        with show(display), skipped_files(lambda m: display.log(f"warning: {m}")):
            summary = fn(target, address=args.address, log=display.log)
    except StudyInterrupted as e:
        if args.json:
            emit_json(e.summary)
        raise
    if args.json:
        emit_json(summary)
    return EXIT_OK if summary.get("complete") else EXIT_INCOMPLETE


def cmd_status(args) -> int:
    """`prune-study status`: progress, front and failures of a study directory; with
    ``--watch``, redrawn every few seconds until the study is complete."""
    from analysis.results import summary
    from analysis.studydir import skipped_files

    study_dir = _study_dir(args.study_dir)
    if args.watch is not None:
        return _watch_status(study_dir, args.watch, args.json)
    with skipped_files(lambda m: log(f"warning: {m}")) as skipped:
        s = summary(study_dir)
    s["cache"] = _cache_summary(Path(study_dir).parent / "_cache")
    if args.json:
        emit_json({**s, "warnings": skipped})
    else:
        print("\n".join(_status_lines(s, skipped)))
    return EXIT_OK


def _status_lines(s: dict, skipped: list[str]) -> list[str]:
    out = [f"study {s['name']}: {s['finished']} of {s.get('requested') or '?'} trials "
           f"finished, {s['running']} running, {s['failed']} failed"
           + "".join(f", {s[k]} {k}" for k in ("pending", "stopped", "timeout") if s.get(k))
           + ("" if s["trials"] or skipped else " (no trial files yet)")]
    ended = sum(s.get(k, 0) for k in ("finished", "failed", "timeout", "stopped"))
    out.append(f"  {ended} of {s.get('requested') or '?'} trials ended: ok, failed, timed-out "
               "and scheduler-stopped trials count toward the study's trials (a trial lost "
               "with a killed driver is replaced)")
    if s.get("repeats"):
        out.append(f"  configurations: {s['configurations_ok']} of {s['configurations']} with "
                   f"all {s['repeats']} repeats ok; the front and the best values are their "
                   "means")
    hv = s.get("hypervolume")
    unit = "configurations" if s.get("repeats") else "trials"
    out.append(f"  front: {s['front_size']} {unit}"
               + (f", hypervolume {hv:.6g}" if hv is not None else ""))
    for k, v in (s.get("best") or {}).items():
        out.append(f"  best {k} ({s['objectives'][k]}): {v:.6g}")
    kept = s.get("kept_models") or {}
    if kept.get("count"):
        out.append(f"  kept models: {kept['count']} in {s['path']}/models, "
                   f"{kept['bytes'] / 2**20:.1f} MiB (prune-study export takes one away)")
    cache = s.get("cache")
    if cache:
        shown = [("base model(s)", cache["base"]), ("dataset(s)", cache["data"])]
        if cache["sensitivity"]["count"]:
            shown.append(("sensitivity scan(s)", cache["sensitivity"]))
        out.append(f"  cache {cache['path']}: " + ", ".join(
            f"{v['count']} {k} {v['bytes'] / 2**20:.1f} MiB" for k, v in shown)
            + " (prune-study cache list|clear)")
    if skipped:
        out.append(f"  {len(skipped)} damaged file(s) or line(s) skipped (warnings on stderr)")
    return out


def _cache_summary(cache_dir: Path) -> dict | None:
    """The storage's cache: where, and how many base models and datasets of what size."""
    from studies.caches import totals

    return {"path": str(cache_dir), **totals(cache_dir)} if cache_dir.is_dir() else None


def _watch_status(study_dir, every: float, as_json: bool) -> int:
    """`status --watch`: the status and the running trials, redrawn every ``every`` seconds
    (in place on a terminal, as timestamped blocks otherwise, one JSON line each with
    --json) until the study is complete or Ctrl-C."""
    import time

    from analysis.results import summary, trial_states
    from analysis.studydir import skipped_files
    from studies.progress import choose_mode, line, renderable, study_view

    mode = "lines" if as_json else choose_mode(stream=sys.stdout)
    live = None
    if mode == "live":
        from rich.console import Console, Group
        from rich.live import Live
        from rich.text import Text

        live = Live(console=Console(), auto_refresh=False, transient=False)
        live.start()
    try:
        while True:
            with skipped_files(lambda _m: None) as skipped:
                s = summary(study_dir)
                records = trial_states(study_dir)
            view = study_view(records, name=s["name"], requested=s["requested"],
                              front={"front_size": s["front_size"],
                                     "hypervolume": s["hypervolume"] if s["finished"]
                                     else None})
            c = view["counts"]
            done = bool(s["requested"]) and view["ended"] >= s["requested"] \
                and not c["running"] + c["pending"]
            if as_json:
                print(json.dumps({**s, "running_trials": view["running"],
                                  "eta_s": view["eta_s"], "warnings": skipped},
                                 default=str), flush=True)
            elif live is not None:
                live.update(Group(Text("\n".join(_status_lines(s, skipped))),
                                  Text(""), renderable(view)), refresh=True)
            else:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                print(f"{stamp} " + "\n".join(_status_lines(s, skipped)) + f"\n  {line(view)}",
                      flush=True)
            if done:
                return EXIT_OK
            time.sleep(every)
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        if live is not None:
            live.stop()


def cmd_report(args) -> int:
    """`prune-study report`: figures, tables and report.html of one or several studies."""
    dirs = [_study_dir(d) for d in args.study_dirs]
    try:
        from analysis.report import ReportError, write_report
    except ImportError as e:
        log(f"error: `report` needs the analysis package (analysis.report.write_report), "
            f"which is not available here: {e}")
        return EXIT_ERROR
    from pathlib import Path

    from analysis.studydir import skipped_files

    out = Path(args.output) if args.output else dirs[0] / "report"
    try:
        with skipped_files(lambda m: log(f"warning: {m}")) as skipped:
            path = write_report(dirs, out)
    except ReportError as e:
        raise BadInput(f"{e}" + (" (-o names the folder to write the report into)"
                                 if args.output else "")) from e
    log(f"report: {path}")
    if args.json:
        emit_json(_report_document(path, dirs, skipped))
    else:
        print(path)
    return EXIT_OK


def _report_document(page, dirs, skipped: list[str]) -> dict:
    """What `report --json` prints: the files written, and per study its counts, front size,
    hypervolume and the front's trials with the command that exports each."""
    from analysis.results import export_command, load, summary

    studies = []
    for d in dirs:
        s = summary(d)
        df = load(d)
        columns = [c for c in ("trial_id", "number", "method", *s["objectives"]) if c in df]
        front = df[df["on_front"]][columns].to_dict("records")
        for row in front:
            row["export"] = export_command(d, row["trial_id"])
        studies.append({**s, "front": front})
    folder = page.parent
    return {"report": str(page), "folder": str(folder),
            "files": sorted(str(p) for p in folder.iterdir() if p.is_file()),
            "studies": studies, "warnings": skipped}


def cmd_export(args) -> int:
    """`prune-study export`: one trial's model, written and checked in its formats."""
    from studies.export import export_trial, select_trial

    bounds = {c: getattr(args, f"max_{c}") for c in ("macs", "params", "latency_ms")
              if getattr(args, f"max_{c}") is not None}
    if args.pick == "cheapest" and args.max_drop is None:
        raise BadInput("--pick cheapest needs --max-drop (the accuracy the model may lose "
                       "against the base, e.g. 0.01 for one point)")
    if args.pick == "best" and not bounds:
        raise BadInput("--pick best needs a bound: --max-macs N, --max-params N or "
                       "--max-latency-ms MS")
    if args.max_drop is not None and args.pick != "cheapest":
        raise BadInput("--max-drop goes with --pick cheapest")
    if bounds and args.pick != "best":
        raise BadInput(f"--max-{next(iter(bounds)).replace('_', '-')} goes with --pick best")
    if args.max_drop is not None and not 0 <= args.max_drop <= 1:
        raise BadInput(f"--max-drop {args.max_drop}: expected an accuracy fraction in [0, 1] "
                       "(0.01 is one point)")
    study_dir = _study_dir(args.study_dir)
    selection = select_trial(study_dir, trial=args.trial, pick=args.pick,
                             max_drop=args.max_drop, bounds=bounds, cost=args.cost)
    rec = selection.record
    log(f"exporting trial {rec.get('number')} ({rec['trial_id']}), {selection.why}")
    card = export_trial(study_dir, args.output, selection, force=args.force,
                        rebuild=args.rebuild, onnx=not args.no_onnx, log=log)
    if args.json:
        emit_json(card)
        return EXIT_OK
    for c in card["checks"]:
        log(f"  {'ok' if c['ok'] else 'FAILED'}: {c['name']}: {c['detail']}")
    for name, f in card["files"].items():
        log(f"  {name}: " + (f"{f['bytes']:,} bytes" if "bytes" in f else f["missing"]))
    print(args.output)
    return EXIT_OK


def _fractions(text: str, flag: str, not_numbers: str, out_of_range: str) -> tuple:
    """Comma-separated numbers strictly between 0 and 1, or BadInput naming ``flag``."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise BadInput(f"{flag} {text!r}: {not_numbers}") from None
    if not all(0 < v < 1 for v in values):
        raise BadInput(f"{flag} {text!r}: {out_of_range}")
    return values


def cmd_sensitivity(args) -> int:
    """`prune-study sensitivity`: each channel group's accuracy as its channels go."""
    from studies.sensitivity import method_of, run_scan, table, write_outputs
    from studies.spec import load_spec

    ratios = _fractions(args.ratios, "--ratios", "expected comma-separated shares of a "
                        "group's channels, e.g. 0.1,0.3,0.5", "every share must lie between 0 "
                        "and 1 (0.5 removes half of a group's channels)")
    macs = ("expected comma-separated fractions of the base model's MACs between 0 and 1, "
            "e.g. 0.5,0.25")
    targets = _fractions(args.target_macs, "--target-macs", macs, macs) \
        if args.target_macs else ()
    spec = load_spec(args.spec, settings=args.set or ())
    try:
        method = method_of(spec, args.method)
    except ValueError as e:
        raise BadInput(str(e)) from None
    doc = run_scan(spec, method, tuple(sorted(set(ratios))), address=args.address, log=log)
    if targets:
        from prune_core.sensitivity import greedy_allocation

        doc["allocations"] = [greedy_allocation(doc, t) or {"target": t, "ratios": None}
                              for t in targets]
    out = Path(args.output) if args.output else spec.study_dir
    data_path, figure = write_outputs(doc, out)
    if args.json:
        emit_json({**doc, "json": str(data_path), "figure": str(figure)})
        return EXIT_OK
    print(table(doc))
    print(f"validation accuracy lost, in points, after removing each share of one group's "
          f"channels (base {doc['base']['val_accuracy']:.3f}, no fine-tuning)")
    for a in doc.get("allocations", []):
        if a["ratios"] is None:
            print(f"{a['target']:g}x the MACs: out of reach even at the largest shares "
                  f"scanned ({max(doc['ratios']):g} of every group)")
            continue
        shares = ", ".join(f"{g} {r:g}" for g, r in a["ratios"].items() if r)
        print(f"{a['target']:g}x the MACs (predicted {a['predicted_macs'] / 1e6:.3g} M, "
              f"each group losing at most {a['epsilon'] * 100:.1f} points before "
              f"fine-tuning): {shares or 'nothing to remove'}")
    print(f"{data_path}\n{figure}")
    return EXIT_OK


def cmd_cache(args) -> int:
    """`prune-study cache list|clear`: the storage's cached base models and datasets."""
    from studies import caches

    cache_dir = Path(args.storage).expanduser() / "_cache"
    kinds = tuple(args.kind or caches.KINDS)
    if not cache_dir.is_dir() and not args.json:
        print(f"{cache_dir} does not exist: nothing is cached there yet (is --storage the "
              "storage your studies ran in?)")
        return EXIT_OK
    if args.action == "clear":
        rows = caches.clear(cache_dir, kinds, args.older_than)
    else:
        rows = [r for r in caches.items(cache_dir) if r["kind"] in kinds]
    if args.json:
        emit_json({"cache": str(cache_dir), "action": args.action, "entries": rows})
        return EXIT_OK
    verb = "removed" if args.action == "clear" else "holds"
    total = sum(r["bytes"] for r in rows)
    print(f"{cache_dir} {verb} {len(rows)} entr{'y' if len(rows) == 1 else 'ies'}, "
          f"{total / 2**20:.1f} MiB")
    for r in rows:
        age = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["modified"]))
        print(f"  {r['kind']:4}  {r['bytes'] / 2**20:9.1f} MiB  {age}  {r['name']}: "
              f"{r['detail']}")
    return EXIT_OK


def _study_dir(path: str):
    from pathlib import Path

    from analysis.studydir import StudyDirError, study_path

    d = Path(path).expanduser()
    try:
        study_path(d)
    except StudyDirError as e:
        raise BadInput(str(e)) from e
    return d.resolve()


# --------------------------------------------------------------------------- parser


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.1 <= value <= 86400:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of seconds in "
                                         "[0.1, 86400]")
    return value


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> float:
    """``90``, ``30m``, ``12h`` or ``7d`` as seconds."""
    unit = text[-1:] if text[-1:] in _UNITS else "s"
    try:
        value = float(text[:-1] if text[-1:] in _UNITS else text) * _UNITS[unit]
    except ValueError:
        value = math.nan
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a duration such as 90, 30m, "
                                         "12h or 7d")
    return value


def _progress_options(s) -> None:
    s.add_argument("--quiet", action="store_true",
                   help="no progress display and no line per trial; warnings, errors and the "
                   "closing line only")
    s.add_argument("--progress-every", type=_seconds, default=30.0, metavar="SECONDS",
                   help="when the output is not a terminal (a pipe, a file, CI): a progress "
                   "line at most every SECONDS (default 30); on a terminal a live display "
                   "shows the base model's epochs, then each running trial's stage and "
                   "epoch, the front and an ETA")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    p = argparse.ArgumentParser(
        prog="prune-study",
        description="Hyperparameter studies over neural-network compression methods, "
        "on one machine or a Ray cluster, read as Pareto fronts of size, operations "
        "and accuracy.",
        epilog="Start with: prune-study run studies/specs/quickstart.yaml, then "
        "prune-study report runs/quickstart. Exit codes: 0 ok (run/resume: the study is "
        "complete), 2 bad input (also: another driver holds the study, its base model "
        "changed), 1 other errors, 3 run/resume stopped with trials left (resume it), 130 "
        "interrupted by Ctrl-C (resume it).",
    )
    p.add_argument("-V", "--version", action="store_true",
                   help="print prune-study's version (with --json: also those of Python, "
                   "torch, ray, optuna, torch-pruning and torchao) and exit")
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser(
        "models", help="list the models in the registry, and how to use torchvision:, timm: "
        "and import: models")
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

    s = sub.add_parser(
        "trial", help="run one trial of a spec without Ray and print its row",
        description="Run one trial of the spec in this process, on resources.cpu threads "
        "as a study's trial runs, and print its result row. The base model comes from "
        "<storage>/_cache, or is trained and cached there.")
    s.add_argument("spec", help="study spec (YAML)")
    s.add_argument("--set", action="append", metavar="STAGE.PARAM=VALUE",
                   help="a parameter value (repeatable); unset parameters take defaults")
    s.add_argument("--json", action="store_true", help="print the row as one JSON document")
    s.set_defaults(fn=cmd_trial)

    s = sub.add_parser(
        "sensitivity", help="each channel group's validation accuracy as its channels are "
        "removed, without fine-tuning (a heat map)",
        description="Scan the spec's base model (trained once and cached, as a study "
        "does) one channel group at a time: remove each share of the group's channels as "
        "the method ranks them (slimming: BatchNorm scales, with its bias folding; "
        "magnitude and transtailor: filter L1 norms), with coupled channels together, and "
        "measure validation accuracy and MACs without fine-tuning. Groups run in parallel "
        "as Ray tasks; the scan is cached in <storage>/_cache/sensitivity by base model, "
        "method and ratios. Writes sensitivity-<method>.json and a heat map "
        "sensitivity-<method>.png into the study directory (or --output).")
    s.add_argument("spec", help="study spec (YAML)")
    s.add_argument("--method", help="slimming, magnitude or transtailor (default: the "
                   "first of them in the spec's methods)")
    s.add_argument("--ratios", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9",
                   help="shares of a group's channels to remove (default 0.1 to 0.9)")
    s.add_argument("--target-macs", metavar="FRACTIONS",
                   help="also print, for each fraction of the base MACs (e.g. 0.5,0.25), "
                   "the per-group shares the greedy equal-loss rule picks from the scan")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a spec field, e.g. baseline.epochs=5 (repeatable)")
    s.add_argument("--address", help="join a running Ray cluster instead of a local Ray")
    s.add_argument("-o", "--output", help="directory for the JSON and the heat map "
                   "(default: the study directory, <storage>/<name>)")
    s.add_argument("--json", action="store_true", help="print the scan as one JSON document")
    s.set_defaults(fn=cmd_sensitivity)

    s = sub.add_parser("validate", help="check a spec and print every error (exit 2); "
                       "starts nothing")
    s.add_argument("spec", help="study spec (YAML)")
    s.add_argument("--json", action="store_true",
                   help='print {"ok", "errors", ...} as one JSON document')
    s.set_defaults(fn=cmd_validate)

    s = sub.add_parser(
        "run", help="run a study on a local Ray, or on a cluster with --address",
        description="Validate the spec, train (or reuse) the base model, and run the trials "
        "on Ray Tune with the spec's Optuna sampler. The study directory is "
        "<storage>/<name>; the driver holds <study>/driver.lock while it runs (a second "
        "driver is refused, exit 2). With --address, RAY_AUTH_MODE=token must be set (Ray "
        "2.60 clusters started with `ray start` use token authentication). Exit 0 when "
        "every trial ended, 3 if it stopped with trials left, 130 on Ctrl-C; resume it "
        "then.")
    s.add_argument("spec", help="study spec (YAML)")
    s.add_argument("--address", help="join a running Ray cluster (host:port of the head, or "
                   "'auto'); default: start a local Ray")
    s.add_argument("--trials", type=int, help="number of trials (overrides the spec)")
    s.add_argument("--storage", help="storage directory or URI (overrides the spec)")
    s.add_argument("--name", help="study name (overrides the spec)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="fix a search-space parameter (slimming.lr=0.01) or override a spec "
                   "field (baseline.epochs=3, sampler.name=nsga2); repeatable, values are "
                   "YAML; checked like the spec and saved in the study's spec.yaml, so "
                   "resume uses the same values")
    _progress_options(s)
    s.add_argument("--json", action="store_true", help="print the final summary as JSON")
    s.set_defaults(fn=cmd_run)

    s = sub.add_parser(
        "resume", help="continue a study whose driver stopped",
        description="Restore the Ray Tune experiment of a study: ended trials are kept, "
        "unfinished ones continue from their last checkpoint, and the sampler continues "
        "with its saved history, until the spec's number of trials has ended (ok, failed, "
        "timed out or stopped by the scheduler all count). A complete study is left alone "
        "(exit 0; no Ray, no training); a base model whose weights differ from the study's "
        "is refused (exit 2). Resume only directories you created: resuming unpickles the "
        "Tune and searcher state stored in them.")
    s.add_argument("study_dir", help="the study directory, <storage>/<name>")
    s.add_argument("--address", help="join a running Ray cluster instead of a local Ray")
    _progress_options(s)
    s.add_argument("--json", action="store_true", help="print the final summary as JSON")
    s.set_defaults(fn=cmd_resume)

    s = sub.add_parser("status", help="trials finished / running / failed, front size, "
                       "hypervolume (reads files only; works while a study runs)")
    s.add_argument("study_dir", help="the study directory, <storage>/<name>")
    s.add_argument("--watch", nargs="?", const=5.0, type=_seconds, metavar="SECONDS",
                   help="redraw every SECONDS (default 5) until the study is complete or "
                   "Ctrl-C, with each running trial's stage and epoch and an ETA: for a "
                   "study another process runs")
    s.add_argument("--json", action="store_true",
                   help="print one JSON document (with --watch: one JSON line per redraw)")
    s.set_defaults(fn=cmd_status)

    s = sub.add_parser(
        "cache", help="list or clear the cached base models and decoded datasets",
        description="A storage's cache (<storage>/_cache) holds the trained base models, by "
        "a hash of everything that determines them, and the datasets decoded once per node "
        "into uint8 files that every trial maps (data/). Both are rebuilt on their next use "
        "once cleared; clearing never disturbs a running trial.")
    s.add_argument("action", choices=("list", "clear"))
    s.add_argument("--storage", default="runs",
                   help="the storage directory whose _cache to use (default: runs)")
    s.add_argument("--kind", choices=("base", "data", "sensitivity"), action="append",
                   help="only base models, datasets or sensitivity scans (repeatable; "
                   "default: all)")
    s.add_argument("--older-than", type=_duration, metavar="DURATION",
                   help="clear: only entries not modified for this long (e.g. 7d, 12h, 30m)")
    s.add_argument("--json", action="store_true", help="print one JSON document")
    s.set_defaults(fn=cmd_cache)

    s = sub.add_parser(
        "export", help="write one trial's model (torch.export, ONNX, safetensors) and check it",
        description="Take one finished trial's compressed model out of a study, into OUT: "
        "model.pt2 (torch.export; loads with torch.export.load and nothing of this project), "
        "model.onnx (batch dimension dynamic; needs the [onnx] extra), weights.safetensors + "
        "architecture.json (prune_core.load_compressed rebuilds the module for further "
        "fine-tuning), model-card.md and card.json. Each artifact is loaded back and run on "
        "the study's test split: a float model must predict exactly what the trial's model "
        "did and score the row's accuracy, an int8 one stay within the row's 95 % interval, "
        "ONNX Runtime agree with torch, and the MACs recounted from the graph equal the row's; "
        "a mismatch exits 1 naming the check. Uses the model the trial kept, or runs the "
        "trial again from the cached base model when none was kept. Reads the study "
        "directory only, so it works while a study runs.",
        epilog="Examples: prune-study export runs/quickstart --pick knee -o knee/; "
        "prune-study export runs/quickstart --pick cheapest --max-drop 0.01 -o small/; "
        "prune-study export runs/quickstart --pick best --max-macs 2e6 -o fast/; "
        "prune-study export runs/quickstart --trial 7 -o t7/")
    s.add_argument("study_dir", help="the study directory, <storage>/<name>")
    s.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="folder to write into (new or empty, or --force)")
    which = s.add_mutually_exclusive_group(required=True)
    which.add_argument("--trial", metavar="ID", help="a trial id or number")
    which.add_argument("--pick", choices=("knee", "cheapest", "best"),
                       help="knee: the front's knee point; cheapest: the lowest --cost within "
                       "--max-drop of the base's accuracy; best: the most accurate within "
                       "--max-macs/--max-params/--max-latency-ms")
    s.add_argument("--max-drop", type=float, metavar="FRACTION",
                   help="with --pick cheapest: accuracy the model may lose (0.01: one point)")
    s.add_argument("--cost", choices=("macs", "params", "latency_ms"), default="macs",
                   help="with --pick cheapest: the cost to minimise (default macs)")
    s.add_argument("--max-macs", type=float, metavar="N", help="with --pick best")
    s.add_argument("--max-params", type=float, metavar="N", help="with --pick best")
    s.add_argument("--max-latency-ms", type=float, metavar="MS", help="with --pick best")
    s.add_argument("--force", action="store_true", help="write into a non-empty OUT")
    s.add_argument("--rebuild", action="store_true",
                   help="run the trial again instead of using the model it kept")
    s.add_argument("--no-onnx", action="store_true", help="skip model.onnx")
    s.add_argument("--json", action="store_true", help="print the model card as JSON")
    s.set_defaults(fn=cmd_export)

    s = sub.add_parser("report", help="figures, tables and report.html for one or several "
                       "studies (several compare them)")
    s.add_argument("study_dirs", nargs="+", metavar="STUDY_DIR", help="study directories")
    s.add_argument("-o", "--output", help="output directory (default: <first study>/report)")
    s.add_argument("--json", action="store_true",
                   help="print one JSON document: the files written, and per study its "
                   "trial counts, front size, hypervolume and front trials with their "
                   "export commands")
    s.set_defaults(fn=cmd_report)

    return p


def is_bad_input(e: BaseException) -> bool:
    """True for the errors that report a mistake in the user's input or files (exit 2)."""
    return isinstance(e, InputError | StudyFilesError | FileNotFoundError)


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code (0 ok, 1 error, 2 bad input, 3 trials left, 130
    Ctrl-C)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None and not args.version:
        parser.error("the following arguments are required: COMMAND "
                     "(prune-study --help lists them)")
    try:
        return cmd_version(args) if args.version else args.fn(args)
    except KeyboardInterrupt:
        log("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # stdout closed early (prune-study ... | head): nothing left to say, and nothing
        # left to flush into the closed pipe at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as e:
        if is_bad_input(e) or isinstance(e, PruneStudyError):
            log(f"error: {e}")
            return EXIT_BAD_INPUT if is_bad_input(e) else EXIT_ERROR
        log(traceback.format_exc().rstrip())
        log(f"error: {type(e).__name__}: {e}")
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
