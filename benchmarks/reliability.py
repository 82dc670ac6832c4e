"""What the command line does with mistaken specs, mutated specs and damaged study
directories: the table in docs/reliability.md.

    python -m benchmarks.reliability [--fuzz 500] [--out docs]

Every mistake of ``benchmarks.reliability_specs.BAD_SPECS`` goes through
``prune-study validate``; ``--fuzz`` mutated specs too; every damage of
``benchmarks.reliability_dirs.DAMAGES`` through ``status``, ``status --json`` and
``report``. A row is "refused" (exit 2), "accepted" (exit 0) or "crashed" (any other
exit code, or a traceback on stderr).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import sys
import tempfile
from pathlib import Path

import yaml

from benchmarks._common import ROOT, Run
from benchmarks.reliability_specs import BAD_SPECS, fuzz_specs, spec_text


def _validate(path: Path) -> tuple[int, str]:
    from studies import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(["validate", str(path)])
    return rc, err.getvalue()


def _outcome(rc: int, err: str) -> str:
    if rc not in (0, 2) or "Traceback" in err:
        return "crashed"
    return "refused" if rc == 2 else "accepted"


def bad_specs(tmp: Path) -> list[dict]:
    """One row per kind of mistake: outcome, whether the field is named, the message."""
    rows = []
    for kind, bad in BAD_SPECS.items():
        path = tmp / "spec.yaml"
        path.write_bytes(spec_text(kind))
        rc, err = _validate(path)
        # The error lines proper ("  - field: ..."), the one naming the field first.
        lines = [ln.strip()[2:] for ln in err.splitlines() if ln.startswith("  - ")] or \
            [ln.strip() for ln in err.splitlines() if ln.strip()]
        message = next((ln for ln in lines if bad.field in ln), lines[-1] if lines else "")
        rows.append({"kind": kind, "field": bad.field, "exit": rc, "outcome": _outcome(rc, err),
                     "names_field": bad.field in err, "message": message[:160]})
    return rows


def fuzz(tmp: Path, examples: int) -> dict:
    """Mutated specs through ``validate``: counts of each outcome, and the crashes."""
    from hypothesis import HealthCheck, given, settings

    counts: collections.Counter = collections.Counter()
    crashes: list[str] = []

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(spec=fuzz_specs())
    def one(spec):
        path = tmp / "fuzz.yaml"
        path.write_bytes(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True).encode())
        rc, err = _validate(path)
        counts[_outcome(rc, err)] += 1
        if _outcome(rc, err) == "crashed":
            crashes.append(err.strip().splitlines()[-1][:200])

    one()
    return {"examples": sum(counts.values()), **{k: counts[k] for k in
                                                 ("refused", "accepted", "crashed")},
            "crashes": crashes}


def damaged_dirs(tmp: Path, jobs: int = 1) -> list[dict]:
    """One row per kind of damage (``benchmarks.reliability_dirs``)."""
    from benchmarks.reliability_dirs import run_all

    return run_all(tmp, jobs=jobs)


def markdown(specs: list[dict], fuzzed: dict, dirs: list[dict]) -> str:
    tally = collections.Counter(r["outcome"] for r in specs)
    named = sum(r["names_field"] for r in specs)
    lines = [
        "# Reliability: mistaken specs and damaged study directories",
        "",
        "Produced by `python -m benchmarks.reliability`; the tests check the same "
        "catalogues (tests/test_hostile_specs.py, tests/test_damaged_studies.py).",
        "",
        "## Mistaken specs",
        "",
        f"{len(specs)} kinds of mistake through `prune-study validate`: "
        f"{tally['refused']} refused with exit 2, {tally['accepted']} accepted, "
        f"{tally['crashed']} crashed; {named} errors name the field.",
        "",
        "| mistake | exit | outcome | message |",
        "|---|---|---|---|",
    ]
    for r in specs:
        msg = r["message"].replace("|", "\\|")
        lines.append(f"| {r['kind']} | {r['exit']} | {r['outcome']} | {msg} |")
    lines += [
        "",
        "## Mutated specs",
        "",
        f"{fuzzed['examples']} specs made by hypothesis from valid ones (values replaced, "
        "deleted or added anywhere, 1 to 4 times): "
        f"{fuzzed['refused']} refused, {fuzzed['accepted']} accepted, "
        f"{fuzzed['crashed']} crashed (tracebacks seen: {len(fuzzed['crashes'])}).",
    ]
    if dirs:
        from benchmarks.reliability_dirs import markdown as dirs_table

        as_intended = sum(r["ok"] for r in dirs)
        from benchmarks.reliability_dirs import COMMANDS

        tracebacks = sum(any(r[c]["traceback"] for c in COMMANDS) for r in dirs)
        lines += ["", "## Damaged study directories", "",
                  f"{len(dirs)} kinds of damage, each to a fresh copy of a finished study, "
                  "through `prune-study status`, `status --json` and `report` (exit codes; "
                  "damage to a trial file or a history line is skipped with a warning, "
                  "to study.json or base.json exits 2): "
                  f"{as_intended} handled as intended, {tracebacks} with a traceback.", "",
                  dirs_table(dirs).rstrip()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    started = Run(__file__, argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fuzz", type=int, default=500, help="mutated specs to try (default 500)")
    p.add_argument("--jobs", type=int, default=2, help="damaged directories run at a time")
    p.add_argument("--out", type=Path, default=ROOT / "docs",
                   help="where reliability.{json,md} go (default docs/)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print(f"validate: {len(BAD_SPECS)} mistaken specs", file=sys.stderr)
        specs = bad_specs(tmp)
        print(f"validate: {args.fuzz} mutated specs", file=sys.stderr)
        fuzzed = fuzz(tmp, args.fuzz)
        print("status and report: damaged study directories", file=sys.stderr)
        dirs = damaged_dirs(tmp / "dirs", args.jobs)
    result = {"specs": specs, "fuzz": fuzzed, "dirs": dirs}
    md = markdown(specs, fuzzed, dirs)
    print(md)
    return started.write("reliability", result, md, args.out,
                         cmd=f"python -m benchmarks.reliability --fuzz {args.fuzz}")


if __name__ == "__main__":
    main()
