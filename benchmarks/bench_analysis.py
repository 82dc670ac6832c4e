"""`prune-study status` and `report` on studies of 1,000 to 100,000 trials.

A study on a cluster runs thousands of cheap trials, and ``status --watch`` re-reads it
every few seconds. This builds synthetic study directories (copies of the trial files of
``tests/study_factory.make_study``, written as studies/record.py's Recorder writes them,
with other ids, numbers and measurements, and their history lines) and runs the two
commands end to end, each in a child process, timing its wall time and reading its peak
resident memory (``ru_maxrss`` of the child). ``status`` runs three times per size: with
no trial index (cold: every trial file parsed, the index written), with the index
current (warm, the case of ``status --watch``), and with the study read-only and no index
(every file parsed, nothing written). Each number is set against its floor: ``status``
under 2 s and 300 MB, ``report`` under 15 s, at 10,000 trials.

    python -m benchmarks.bench_analysis                        # 1,000 and 10,000 trials
    python -m benchmarks.bench_analysis --sizes 1000 10000 100000
    python -m benchmarks.bench_analysis --tiny                 # seconds: the test runs this
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import DOCS, ROOT, Run

SIZES = (1_000, 10_000)
TINY_SIZES = (60,)
# The floors set for this work, at 10,000 trials: seconds and MB of peak memory.
FLOORS = {"status_seconds": 2.0, "status_mb": 300.0, "report_seconds": 15.0}
FLOOR_SIZE = 10_000
# The template study: every method of the factory, some trials of each status.
TEMPLATE = {"methods": ("slimming", "magnitude", "branch", "repr", "slimming+quantize"),
            "ok": 40, "failed": 3, "running": 2, "pending": 1}
TEST_IMAGES = 359  # the digits test split: gives every accuracy its interval


def _templates(tmp: Path) -> tuple[Path, list[dict], dict[str, list[dict]]]:
    """The factory's study (its study.json and base.json are reused as they are), its trial
    documents in number order and its history lines by trial id."""
    from tests.study_factory import make_study

    path = make_study(tmp, "template", **TEMPLATE, resumed=False)
    docs = sorted((json.loads(p.read_text()) for p in (path / "trials").glob("*.json")),
                  key=lambda d: d["number"])
    lines: dict[str, list[dict]] = {}
    for line in (path / "history.jsonl").read_text().splitlines():
        doc = json.loads(line)
        lines.setdefault(doc["trial_id"], []).append(doc)
    return path, docs, lines


def _vary(row: dict, base: dict, rng: np.random.Generator) -> dict:
    """A result row like ``row`` with other accuracy and costs, in their valid ranges."""
    acc = float(np.clip(row["accuracy"] + rng.normal(0, 0.01), 0.05, 1.0))
    scale = float(rng.uniform(0.6, 1.4))
    out = {**row, "accuracy": acc, "balanced_accuracy": max(0.0, acc - 0.001),
           "accuracy_drop": base["accuracy"] - acc, "test_images": TEST_IMAGES}
    for key in ("params", "nonzero_params", "macs", "nonzero_macs", "ops", "size_bytes"):
        out[key] = int(row[key] * scale * rng.uniform(0.95, 1.05))
    out["compression"] = base["params"] / out["params"]
    out["speedup"] = base["macs"] / out["macs"]
    out["train_seconds"] = float(rng.uniform(5, 40))
    return out


def build_study(root: Path, trials: int, seed: int = 0) -> Path:
    """A study directory of ``trials`` trial files under ``root`` (reused when it holds one
    of that size already); returns its path."""
    path = root / f"study-{trials}"
    done = path / ".complete"
    if done.exists():
        return path
    shutil.rmtree(path, ignore_errors=True)
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        template, docs, history = _templates(Path(tmp))
        (path / "trials").mkdir(parents=True)
        for name in ("study.json", "base.json", "spec.yaml"):
            shutil.copy(template / name, path / name)
        study = json.loads((template / "study.json").read_text())
        study["trials"] = trials
        (path / "study.json").write_text(json.dumps(study, indent=1))
        base = json.loads((template / "base.json").read_text())
        with open(path / "history.jsonl", "w") as hist:
            for number in range(trials):
                doc = docs[number % len(docs)]
                trial_id = f"{number:08x}"
                new = {**doc, "trial_id": trial_id, "number": number}
                if doc["status"] == "ok":
                    new["row"] = _vary(doc["row"], base, rng)
                (path / "trials" / f"{trial_id}.json").write_text(
                    json.dumps(new, indent=1))
                for line in history.get(doc["trial_id"], []):
                    hist.write(json.dumps({**line, "trial_id": trial_id}) + "\n")
    done.touch()
    return path


# --------------------------------------------------------------------------- measuring


def baseline_tree(ref: str, into: Path) -> Path:
    """The ``analysis`` and ``studies`` packages of git revision ``ref``, extracted under
    ``into`` (the code to compare with); SystemExit when git cannot give them."""
    into.mkdir(parents=True, exist_ok=True)
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "analysis",
                                  "studies"], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        raise SystemExit(f"--baseline {ref}: cannot extract its code with git archive: "
                         f"{getattr(e, 'stderr', b'') or e}") from e
    return into


def timed(args: list[str], cwd: Path, log: Path) -> dict:
    """Run ``python -m studies.cli ARGS`` in ``cwd`` (whose packages it imports first): its
    wall time, peak resident memory (its own ``ru_maxrss``) and exit status."""
    cmd = [sys.executable, "-m", "studies.cli", *args]
    with open(log, "ab") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=out)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} (in {cwd}) exited {proc.returncode}; see {log}")
    return {"seconds": round(seconds, 3), "max_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 3),
            "load_1min": round(os.getloadavg()[0], 2)}


def _without_index(study: Path) -> None:
    from analysis.studydir import INDEX

    (study / INDEX).unlink(missing_ok=True)


def measure(study: Path, code: Path, label: str, warm: int, log: Path, report_to: Path,
            say=print) -> list[dict]:
    """status (cold, then ``warm`` times with the index), and report, with the code of
    ``code``; one row per (command, mode)."""
    trials = len(os.listdir(study / "trials"))
    rows = []

    def row(command: str, mode: str, runs: list[dict]) -> None:
        best = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]  # the median run
        rows.append({"trials": trials, "code": label, "command": command, "mode": mode,
                     **best, "runs": runs})
        say(f"  {label:>8} {command} {mode:<9} {best['seconds']:7.2f} s "
            f"{best['max_rss_mb']:7.1f} MB")

    _without_index(study)
    row("status", "cold", [timed(["status", str(study)], code, log)])
    row("status", "warm", [timed(["status", str(study)], code, log) for _ in range(warm)])
    row("report", "", [timed(["report", str(study), "-o", str(report_to)], code, log)])
    _without_index(study)
    return rows


def floors(rows: list[dict]) -> list[dict]:
    """Each measurement at FLOOR_SIZE trials of this code against its floor: the ratio of
    the floor to the number (above 1: under the floor by that factor)."""
    out = []
    for r in rows:
        if r["trials"] != FLOOR_SIZE or r["code"] != "this":
            continue
        key = f"{r['command']}_seconds"
        checks = [(key, r["seconds"])]
        if r["command"] == "status":
            checks.append(("status_mb", r["max_rss_mb"]))
        for name, value in checks:
            out.append({"command": r["command"], "mode": r["mode"], "what": name,
                        "value": value, "floor": FLOORS[name],
                        "floor_over_value": round(FLOORS[name] / value, 2),
                        "met": value < FLOORS[name]})
    return out


# --------------------------------------------------------------------------- output


def markdown(doc: dict) -> str:
    rows = doc["rows"]
    sizes = doc["sizes"]
    codes = ["this"] + (["baseline"] if doc["baseline"] else [])
    lines = ["# `status` and `report` at the scale of a cluster's studies", "",
             f"Synthetic studies of {', '.join(f'{n:,}' for n in sizes)} trials: copies of the "
             "trial files of `tests/study_factory.make_study` (every method, about 87 % "
             "finished, the rest failed, running or pending), with other ids and "
             "measurements, and their history lines. Each command runs end to end "
             "(`python -m studies.cli ...`) in a child process; seconds are wall time, MB its "
             "peak resident memory. `status` cold: no trial index, so every trial file is "
             "parsed (and the index written); warm: the index is current (the case of "
             f"`status --watch`), median of {doc['warm_runs']} runs. "
             + (f"`baseline` is the code of `{doc['baseline']}` ({doc['baseline_commit']}), "
                "run on the same directories in the same run, just before or after this "
                "code's runs of the same size (a code without the trial index finds in its "
                "warm runs only the files in the page cache)."
                if doc["baseline"] else ""), "",
             "| trials | files | code | status cold | status warm | report |",
             "|---:|---:|---|---:|---:|---:|"]
    for n in sizes:
        for code in codes:
            got = {(r["command"], r["mode"]): r for r in rows
                   if r["trials"] == n and r["code"] == code}
            if not got:
                continue

            def cell(key, got=got):
                r = got.get(key)
                return f"{r['seconds']:.2f} s, {r['max_rss_mb']:.0f} MB" if r else ""

            mb = doc["files_mb"].get(str(n), "")
            lines.append(f"| {n:,} | {mb} MB | {code} | {cell(('status', 'cold'))} | "
                         f"{cell(('status', 'warm'))} | {cell(('report', ''))} |")
    if doc["speedups"]:
        lines += ["", "Baseline time / this code's time:", "",
                  "| trials | status cold | status warm | report |", "|---:|---:|---:|---:|"]
        for n, s in doc["speedups"].items():
            lines.append(f"| {int(n):,} | {s['status cold']:.1f}x | {s['status warm']:.1f}x | "
                         f"{s['report']:.1f}x |")
    if doc["floors"]:
        lines += ["", f"Against the floors at {FLOOR_SIZE:,} trials (floor / measured: above 1 "
                  "is under the floor by that factor):", "",
                  "| command | measure | measured | floor | floor / measured | met |",
                  "|---|---|---:|---:|---:|---|"]
        for f in doc["floors"]:
            unit = "MB" if f["what"].endswith("_mb") else "s"
            what = f"{f['command']} {f['mode']}".strip()
            lines.append(f"| {what} | {unit} | {f['value']:g} | {f['floor']:g} | "
                         f"{f['floor_over_value']:.2f} | {'yes' if f['met'] else 'no'} |")
    lines += ["", f"Load average (1 min) at each measurement: "
              f"{min(r['load_1min'] for r in rows):.2f} to "
              f"{max(r['load_1min'] for r in rows):.2f} on {os.cpu_count()} logical CPUs. "
              f"Whole run {doc['seconds'] / 60:.1f} min, building the studies included."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    started = Run(__file__, argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=None,
                   help=f"trials per study (default: {' '.join(map(str, SIZES))})")
    p.add_argument("--warm", type=int, default=3, help="warm status runs per size")
    p.add_argument("--baseline", metavar="GIT_REF", default=None,
                   help="also run the analysis code of this git revision (e.g. HEAD)")
    p.add_argument("--work", type=Path, default=None,
                   help="where the studies are built and kept for reuse (default: a "
                        "temporary directory, removed)")
    p.add_argument("--tiny", action="store_true", help=f"{TINY_SIZES[0]} trials only")
    p.add_argument("--out", type=Path, default=DOCS, help="where analysis.json / .md go")
    args = p.parse_args(argv)
    sizes = args.sizes or (list(TINY_SIZES) if args.tiny else list(SIZES))
    if min(sizes) < 1 or args.warm < 1:
        raise SystemExit(f"--sizes {sizes}, --warm {args.warm}: all must be >= 1")
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-analysis-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        codes = {"this": ROOT}
        if args.baseline:
            codes["baseline"] = baseline_tree(args.baseline, work / "baseline-code")
        rows, files_mb = [], {}
        for n in sizes:
            print(f"{n:,} trials: building", file=sys.stderr, flush=True)
            study = build_study(work, n)
            files_mb[str(n)] = round(sum(e.stat().st_size for e in os.scandir(
                study / "trials")) / 2**20, 1)
            for label, code in codes.items():
                rows += measure(study, code, label, args.warm, work / "commands.log",
                                work / f"report-{label}-{n}",
                                say=lambda m: print(m, file=sys.stderr, flush=True))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    speedups = {}
    if args.baseline:
        for n in sizes:
            def sec(code, command, mode, n=n):
                return next(r["seconds"] for r in rows if r["trials"] == n and
                            r["code"] == code and r["command"] == command and r["mode"] == mode)
            speedups[str(n)] = {
                "status cold": round(sec("baseline", "status", "cold") / sec("this", "status",
                                                                              "cold"), 2),
                "status warm": round(sec("baseline", "status", "warm") / sec("this", "status",
                                                                              "warm"), 2),
                "report": round(sec("baseline", "report", "") / sec("this", "report", ""), 2)}
    commit = None
    if args.baseline:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.baseline],
                                capture_output=True, text=True).stdout.strip() or None
    doc = {"sizes": sizes, "warm_runs": args.warm, "baseline": args.baseline,
           "baseline_commit": commit,
           "files_mb": files_mb, "floors_set": FLOORS, "floor_size": FLOOR_SIZE,
           "rows": rows, "speedups": speedups, "floors": floors(rows),
           "seconds": round(time.perf_counter() - t0, 1)}
    for f in doc["floors"]:
        print(f"{f['command']} {f['mode']} {f['what']}: {f['value']:g} against {f['floor']:g} "
              f"(floor / measured {f['floor_over_value']:.2f})", file=sys.stderr)
    name = "analysis-tiny" if args.tiny else "analysis"
    return started.write(name, doc, markdown(doc), args.out)


if __name__ == "__main__":
    main()
