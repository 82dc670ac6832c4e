"""The README's quickstart paragraph and figure, regenerated from a finished study.

    make demo                                   # runs the quickstart study and its report
    python -m tools.quickstart_front runs/quickstart

Rewrites the text between ``<!-- quickstart-front -->`` and ``<!-- /quickstart-front -->``
in README.md from the study's own files: the base model's accuracy and, on the front,
the point with the fewest MACs within 2 points of the base and the one within 5 points;
then copies the study report's front figure (``<study>/report/pareto-front.png``) to
docs/images/quickstart-pareto.png and writes the numbers, with this command, to
docs/images/quickstart-front.json, which the paragraph links to (tools/docs_check.py checks
the paragraph against it). Exit 2, naming what is missing, when the study or its report is
not there.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- quickstart-front -->", "<!-- /quickstart-front -->"
LINK = " ([numbers](docs/images/quickstart-front.json))"
WITHIN = (0.02, 0.05)  # accuracy drops the paragraph reports the cheapest front point for


def front_points(study_dir: Path) -> dict:
    """The numbers the paragraph states, from the study's trial files and base.json."""
    from analysis.results import load

    df = load(study_dir)
    base = json.loads((study_dir / "base.json").read_text())
    ok = df[df["status"] == "ok"]
    front = ok[ok["on_front"]]
    points = []
    for drop in WITHIN:
        close = front[front["accuracy"] >= base["accuracy"] - drop]
        if len(close):
            best = close.sort_values(["macs", "accuracy"], ascending=[True, False]).iloc[0]
            points.append({"within": drop, "accuracy": float(best["accuracy"]),
                           "fewer_macs": base["macs"] / float(best["macs"]),
                           "trial": int(best["number"])})
    return {"base_accuracy": base["accuracy"], "base_macs": base["macs"], "trials": len(df),
            "ok": len(ok), "front": len(front), "points": points}


def paragraph(p: dict) -> str:
    """The README's sentence for :func:`front_points`'s numbers."""
    said = [f"{q['accuracy']:.1%} accuracy at {q['fewer_macs']:.1f}x fewer MACs (the cheapest "
            f"front point within {q['within'] * 100:.0f} points of the base)"
            for q in p["points"]]
    found = " and ".join(said) if said else "no front point within 5 points of the base"
    return (f"The front of the quickstart study (`make demo` from a fresh clone on 2 CPU "
            f"cores, {p['trials']} trials, {p['ok']} ok, {p['front']} on the front): against "
            f"the {p['base_accuracy']:.1%} base model, slimming keeps {found}, and accuracy "
            "falls as the prune ratio rises:").replace("%", " %") + LINK


def rewrite(readme: str, text: str) -> str:
    """``readme`` with the text between the markers replaced (markers kept)."""
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    if not pattern.search(readme):
        raise ValueError(f"README has no {START} ... {END} block")
    return pattern.sub(lambda _m: f"{START}\n{text}\n{END}", readme, count=1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study_dir", type=Path, help="the finished quickstart study")
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    ap.add_argument("--figure", type=Path, default=ROOT / "docs/images/quickstart-pareto.png",
                    help="where the front figure goes; its numbers go beside it, "
                         "quickstart-front.json")
    a = ap.parse_args(argv)
    report_fig = a.study_dir / "report" / "pareto-front.png"
    for need, how in ((a.study_dir / "base.json", "run the study first (make demo)"),
                      (report_fig, f"write its report first: prune-study report {a.study_dir}")):
        if not need.is_file():
            print(f"error: {need} is missing; {how}", file=sys.stderr)
            return 2
    points = front_points(a.study_dir)
    text = textwrap.fill(paragraph(points), width=88, break_on_hyphens=False)
    a.readme.write_text(rewrite(a.readme.read_text(), text))
    a.figure.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(report_fig, a.figure)
    points["command"] = f"python -m tools.quickstart_front {a.study_dir}"
    a.figure.with_name("quickstart-front.json").write_text(json.dumps(points, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
