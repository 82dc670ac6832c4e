"""Check that the numbers in the docs come from the data the docs cite, and that the data is
newer than the code it measures.

    python -m tools.docs_check            # exit 1 with one line per problem, 0 when clean
    python -m tools.docs_check --verbose  # also every number checked and what it matched

**Numbers.** In README.md, docs/results.md and docs/benchmarks.md, every block (a paragraph,
a table row, a list item) that states a measured number must cite the data it comes from,
and the number must be found there. A block cites what it links to (a ``.json`` or ``.csv``,
or a benchmark's ``.md`` whose ``.json`` lies beside it) and the benchmarks it names
(``python -m benchmarks.bench_x``, ``bench_x.py``: the JSON files whose ``command`` ran
that module); a block in docs/results.md also cites what its section's first block cites.
A number cited with ``commit abc1234`` beside it (an earlier run) is looked for in the cited
files as they were at that commit too.

A measured number is one with a decimal point (``0.952``, ``13.5 min``), a percentage or a
ratio (``98 %``, ``4x``), or an integer written with thousands separators (``2,321,960``).
Plain integers (``3 seeds``, ``30 trials``), scientific notation (``3e-2``: a setting),
code in backticks, link targets, and numbers that follow ``floor``, ``target``, ``at
least`` or ``expected`` (what was asked, not measured) are not checked. A number is found
when some number in the cited data, or some ratio or difference of two of them, rounds to
it at the precision it is written with, as a fraction or percentage, in seconds, minutes
or milliseconds, in thousands or millions. Ratios and differences of any two values are
allowed, so a wrong ratio can go unnoticed where the data is large; a number that appears
nowhere in the data (a typo, a number from an earlier run, one never measured) cannot.

**Freshness.** ``MEASURED_CODE`` below names, for each module that writes data the docs
cite, the files its numbers depend on (the module itself included; a path may be a folder
or a glob). A JSON file written by such a module (its ``command`` says which) is stale when
one of those files changed in a commit after the last commit of the JSON itself: rerun the
module. A change that cannot move a number does not count: Python compared as syntax trees
without docstrings, comments, annotations and layout, YAML as the data it holds. Data
written by a module missing from the table is a problem too, and so is stale data, unless
its module is in ``PENDING_RERUN`` with the reason it awaits a rerun (printed, not failed;
an entry whose data is fresh again fails, so the list cannot outlive the reruns). The
check needs the repository's history (a full clone).
"""

from __future__ import annotations

import argparse
import ast
import csv
import json
import math
import re
import subprocess
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DOCS = ("README.md", "docs/results.md", "docs/benchmarks.md")
DATA_DIRS = ("docs", "docs/benchmarks", "docs/images")

# A number: grouped thousands, a decimal, or an integer; a sign; an optional unit after it.
_NUMBER = re.compile(
    r"(?<![\w.\-+/:#])(?P<sign>[-+−])?(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+\.\d+|\d+)"
    r"(?P<unit>\s?(?:%|x\b|M\b|MB\b|GB\b|ms\b|s\b|min\b|minutes\b|seconds\b|points\b))?"
    r"(?![\w.]\d|[\w\-])")
_CODE = re.compile(r"`[^`]*`")
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_COMMIT = re.compile(r"\bcommit\s+([0-9a-f]{7,40})\b")
_BENCH = re.compile(r"\bbenchmarks\.(\w+)|\b(bench_\w+|reliability|zoo)\.py\b")
_ASKED = re.compile(r"(floor|target|at least|expected|asked for|under the issue's|over the)"
                    r"[^.;,()]{0,12}$", re.I)


@dataclass
class Block:
    doc: str
    line: int
    text: str
    cites: set[str] = field(default_factory=set)
    commits: list[str] = field(default_factory=list)


def _git(*args: str, root: Path = ROOT) -> str | None:
    out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL)
    return out.stdout if out.returncode == 0 else None


# ---- the data ----------------------------------------------------------------------------

def _leaves(obj) -> list[float]:
    out: list[float] = []
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, dict):
            stack.extend(o.values())
        elif isinstance(o, list):
            stack.extend(o)
        elif isinstance(o, bool) or o is None:
            continue
        elif isinstance(o, (int, float)):
            if math.isfinite(o):
                out.append(float(o))
        elif isinstance(o, str) and len(o) < 2000:
            out.extend(_numbers_in_text(o))
    return out


def _keyed(obj, key: str = "") -> list[tuple[str, float]]:
    """(the key a number sits under, the number) for every number in ``obj``."""
    if isinstance(obj, dict):
        return [kv for k, v in obj.items() for kv in _keyed(v, str(k))]
    if isinstance(obj, list):
        return [kv for v in obj for kv in _keyed(v, key)]
    if isinstance(obj, (int, float)) and not isinstance(obj, bool) and math.isfinite(obj):
        return [(key, float(obj))]
    return []


def _against_base(obj) -> list[float]:
    """Ratios of like quantities to a reference: each number under a key divided by a number
    under the same key inside a ``base`` (or ``baseline``) entry, and the inverse, which the
    docs state as ``0.309x the base's MACs`` or ``10.2x fewer MACs``."""
    stack, bases = [obj], {}
    while stack:
        o = stack.pop()
        if isinstance(o, dict):
            for k, v in o.items():
                if re.fullmatch(r"(\w+_)?base(line)?", str(k)):
                    for key, b in _keyed(v, str(k)):
                        if b:
                            bases.setdefault(key, set()).add(b)
                else:
                    stack.append(v)
        elif isinstance(o, list):
            stack.extend(o)
    out = []
    for key, v in _keyed(obj):
        for b in bases.get(key, ()):
            out.append(v / b)
            if v:
                out.append(b / v)
    return out


def _numbers_in_text(text: str) -> list[float]:
    out = []
    for m in re.finditer(r"[-+]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?", text):
        try:
            out.append(float(m.group().replace(",", "")))
        except ValueError:
            pass
    return out


def _values_of(text: str, suffix: str) -> list[float]:
    if suffix == ".json":
        return _leaves(json.loads(text))
    if suffix == ".csv":
        out = []
        for row in csv.reader(text.splitlines()):
            for cell in row:
                try:
                    v = float(cell)
                except ValueError:
                    out.extend(_numbers_in_text(cell))
                else:
                    if math.isfinite(v):
                        out.append(v)
        return out
    return _numbers_in_text(text)


@cache
def _values(root: Path, path: str, commit: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Every number in the data file at ``path`` (now, or at ``commit``), sorted, and the
    ratios to their references (:func:`_against_base`)."""
    if commit is None:
        text = (root / path).read_text()
    else:
        text = _git("show", f"{commit}:{path}", root=root)
        if text is None:
            return np.array([]), np.array([])
    values = np.unique(np.array(_values_of(text, Path(path).suffix), dtype=float))
    ratios = _against_base(json.loads(text)) if path.endswith(".json") else []
    return values, np.unique(np.array(ratios, dtype=float))


_UNIT_SCALES = {
    "%": (100.0, 1.0), "points": (100.0, 1.0), "x": (1.0,), "M": (1e-6,),
    "MB": (1e-6, 2.0 ** -20), "GB": (1e-9, 2.0 ** -30), "s": (1.0,), "seconds": (1.0,),
    "ms": (1.0, 1e3), "min": (1 / 60, 1.0), "minutes": (1 / 60, 1.0), "": (1.0, 100.0),
}


def _near(values: np.ndarray, lo: float, hi: float) -> float | None:
    i = np.searchsorted(values, min(lo, hi), side="left")
    return float(values[i]) if i < len(values) and values[i] <= max(lo, hi) else None


def _found(x: float, decimals: int, unit: str, data: tuple[np.ndarray, np.ndarray]
           ) -> str | None:
    """How ``x`` (written with ``decimals`` decimals and ``unit``) comes out of the data:
    a value at a scale the unit allows, the inverse of one for a ratio (``10.2x fewer``),
    or the ratio of a value to its reference (:func:`_against_base`)."""
    values, ratios = data
    tol = 0.5 * 10 ** -decimals * (1 + 1e-9) + 1e-12
    for s in _UNIT_SCALES.get(unit, (1.0,)):
        v = _near(values, (x - tol) / s, (x + tol) / s)
        if v is not None:
            return f"{v:g}" + (f" * {s:g}" if s != 1 else "")
    if unit == "x" and abs(x) > tol:
        v = _near(values, 1 / (x + tol), 1 / (x - tol)) if x - tol > 0 else None
        if v is not None:
            return f"1 / {v:g}"
    if unit in ("x", "", "%"):
        for s in ((1.0,) if unit == "x" else (1.0, 100.0)):
            v = _near(ratios, (x - tol) / s, (x + tol) / s)
            if v is not None:
                return f"{v:g} of the base" + (f" * {s:g}" if s != 1 else "")
    return None


def _derived(x: float, decimals: int, unit: str, stated: list[float], signed: bool
             ) -> str | None:
    """How ``x`` comes out of two other numbers stated in the same block: a ratio (as is or
    as a percentage), or for a signed number or one in points a difference (as is or in
    points)."""
    tol = 0.5 * 10 ** -decimals * (1 + 1e-9) + 1e-12
    for a in stated:
        for b in stated:
            if b and unit in ("x", "", "%", "points"):
                for s in ((1.0,) if unit == "x" else (1.0, 100.0)):
                    if abs(a / b * s - x) <= tol:
                        return f"{a:g} / {b:g}" + (f" * {s:g}" if s != 1 else "")
            if signed or unit == "points":
                for s in (1.0, 100.0):
                    if abs((a - b) * s - x) <= tol or abs((a - b) * s + x) <= tol:
                        return f"{a:g} - {b:g}" + (f" * {s:g}" if s != 1 else "")
    return None


# ---- the docs ----------------------------------------------------------------------------

def _blocks(root: Path, doc: str) -> list[Block]:
    """The doc's paragraphs, table rows and list items, each with the files it cites."""
    lines = (root / doc).read_text().splitlines()
    blocks: list[Block] = []
    cur: list[str] = []
    start = 0
    fenced = False

    def flush():
        if cur:
            blocks.append(Block(doc, start + 1, " ".join(cur)))
            cur.clear()

    for n, line in enumerate(lines):
        s = line.strip()
        if s.startswith("```"):
            flush()
            fenced = not fenced
            continue
        if fenced:  # code: only a benchmark's command cites anything
            if "python -m " in s:
                blocks.append(Block(doc, n + 1, s))
            continue
        if s.startswith(("#", "|", "<!--")):  # a line each; a table's rule line is none
            flush()
            if not re.fullmatch(r"\|[-| :]+\|", s):
                blocks.append(Block(doc, n + 1, s))
            continue
        if not s or re.match(r"[-*] |\d+\. ", s):  # a blank line ends a block, an item
            flush()                                  # starts one
            if not s:
                continue
        if not cur:
            start = n
        cur.append(s)
    flush()
    return blocks


def _producers(root: Path) -> dict[str, list[str]]:
    """``{benchmark module name: [data files whose command ran it]}``."""
    out: dict[str, list[str]] = {}
    for d in DATA_DIRS:
        for f in sorted((root / d).glob("*.json")):
            try:
                data = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            commands = [data.get("command", "")] if isinstance(data, dict) else []
            if isinstance(data, dict) and isinstance(data.get("runs"), list):  # merged runs
                commands += [r.get("command", "") for r in data["runs"] if isinstance(r, dict)]
            m = re.search(r"-m benchmarks\.(\w+)|tools\.(\w+)", " ".join(map(str, commands)))
            if m:
                out.setdefault(m.group(1) or m.group(2), []).append(
                    str(f.relative_to(root)))
    return out


def _cites(root: Path, block: Block, producers: dict[str, list[str]]) -> set[str]:
    cites = set()
    base = (root / block.doc).parent
    for target in _LINK.findall(block.text):
        target = target.split("#")[0]
        if not target or "://" in target:
            continue
        p = (base / target).resolve()
        if p.suffix in (".json", ".csv") and p.is_file():
            cites.add(str(p.relative_to(root)))
        elif p.suffix == ".md" and p.with_suffix(".json").is_file():
            cites.add(str(p.with_suffix(".json").relative_to(root)))
        elif p.suffix == ".md" and p.name == "report.md":
            cites.update(str(q.relative_to(root)) for q in p.parent.glob("*.csv"))
    for m in _BENCH.finditer(block.text):
        name = m.group(1) or (m.group(2) or "")
        cites.update(producers.get(name, []))
    return cites


def _checked_numbers(text: str):
    """(token, value, decimals) of every measured number in ``text``."""
    plain = _LINK.sub("]", _CODE.sub(" ", text))
    plain = re.sub(r"<!--.*?-->", " ", plain)
    for m in _NUMBER.finditer(plain):
        num, unit = m.group("num"), (m.group("unit") or "").strip()
        grouped, decimal = "," in num, "." in num
        if not (grouped or decimal or unit in ("%", "x")):
            continue
        before = plain[max(0, m.start() - 40):m.start()]
        if _ASKED.search(before):
            continue
        if re.search(r"\d[eE]$", plain[max(0, m.start() - 2):m.start()]) or \
                re.match(r"[eE][-+]?\d", plain[m.end("num"):m.end("num") + 3]):
            continue
        value = float(num.replace(",", ""))
        if m.group("sign") in ("-", "−"):
            value = -value
        decimals = len(num.split(".")[1]) if decimal else 0
        yield m.group(0).strip(), value, decimals, unit, bool(m.group("sign"))


def _all_numbers(text: str):
    """(token, value, decimals) of every number in ``text``, checked or not."""
    for m in _NUMBER.finditer(_LINK.sub("]", _CODE.sub(" ", text))):
        num = m.group("num")
        value = float(num.replace(",", "")) * (-1 if m.group("sign") in ("-", "−") else 1)
        yield m.group(0), value, len(num.split(".")[1]) if "." in num else 0


def check_numbers(root: Path = ROOT, verbose: bool = False) -> list[str]:
    producers = _producers(root)
    problems = []
    for doc in DOCS:
        if not (root / doc).is_file():
            continue
        blocks = _blocks(root, doc)
        section_of: list[int] = []  # each block's section: the index of its heading
        section_cites: dict[int, set[str]] = {}
        for i, b in enumerate(blocks):
            b.cites = _cites(root, b, producers)
            b.commits = _COMMIT.findall(b.text)
            head = i if b.text.startswith("#") else (section_of[-1] if section_of else -1)
            section_of.append(head)
            if b.cites and head not in section_cites:
                section_cites[head] = set(b.cites)
        for i, b in enumerate(blocks):
            # in results.md a section's first citation (its command or link) covers the
            # section, heading included
            cites = b.cites | (section_cites.get(section_of[i], set())
                               if doc == "docs/results.md" else set())
            numbers = list(_checked_numbers(b.text))
            if not numbers:
                continue
            if not cites:
                if doc != "README.md":
                    problems.append(f"{doc}:{b.line}: {', '.join(n[0] for n in numbers[:4])}"
                                    " stated with no data cited (link the JSON or CSV it "
                                    "comes from, or name the benchmark)")
                continue
            pool = _values_pool(root, sorted(cites), b.commits)
            stated = [1.0] + [v for _, v, _ in _all_numbers(b.text)]
            for token, value, decimals, unit, signed in numbers:
                others = list(stated)
                others.remove(value)  # not from itself
                how = next((h for h in (_found(value, decimals, unit, v) for v in pool) if h),
                           None) or _derived(value, decimals, unit, others, signed)
                if how is None:
                    problems.append(f"{doc}:{b.line}: {token!r} is in none of "
                                    f"{', '.join(sorted(cites))}"
                                    + (f" (nor at commit {', '.join(b.commits)})"
                                       if b.commits else ""))
                elif verbose:
                    print(f"{doc}:{b.line}: {token} = {how}")
    return problems


def _values_pool(root: Path, cites: list[str], commits: list[str]) -> list[np.ndarray]:
    pool = [_values(root, c, None) for c in cites]
    pool += [_values(root, c, k) for k in commits for c in cites]
    return pool


# ---- freshness -------------------------------------------------------------------------

_M = "prune_core/methods/"
# The code each data-writing module's numbers depend on. Recording (benchmarks/_common.py)
# and the Markdown layout are left out: changing them changes no measured number.
MEASURED_CODE: dict[str, tuple[str, ...]] = {
    "bench_allocation": ("benchmarks/bench_allocation.py", "benchmarks/bench_search.py",
                         _M + "magnitude.py", _M + "_allocation.py", "prune_core/sensitivity.py",
                         "studies/sensitivity.py", "studies/samplers.py", "studies/search.py"),
    "bench_analysis": ("benchmarks/bench_analysis.py", "analysis/results.py",
                       "analysis/report.py", "analysis/studydir.py", "analysis/pareto.py"),
    "bench_branch": ("benchmarks/bench_branch.py", _M + "branch.py", "prune_core/train.py"),
    "bench_constraints": ("benchmarks/bench_constraints.py", "benchmarks/bench_search.py",
                          "studies/samplers.py", "studies/specs/magnitude.yaml",
                          _M + "magnitude.py", _M + "_filters.py"),
    "bench_data": ("benchmarks/bench_data.py", "prune_core/data.py",
                   "prune_core/_data_cache.py", "prune_core/_tensor_data.py"),
    "bench_early_stop": ("benchmarks/bench_early_stop.py", "benchmarks/bench_search.py",
                         "studies/schedulers.py", "studies/specs/magnitude.yaml",
                         _M + "magnitude.py", _M + "_filters.py"),
    "bench_export": ("benchmarks/bench_export.py", "prune_core/deploy.py",
                     "prune_core/measure.py", _M + "_filters.py", "prune_core/surgery.py"),
    "bench_gpu": ("benchmarks/bench_gpu.py", "prune_core/_tensor_data.py",
                  "prune_core/train.py"),
    "bench_lab": ("benchmarks/bench_lab.py", "benchmarks/bench_trials.py",
                  "studies/specs/none.yaml", "prune_core/trial.py", "prune_core/measure.py",
                  _M + "magnitude.py", _M + "_filters.py", _M + "factorize.py",
                  _M + "quantize.py"),
    "bench_latency": ("benchmarks/bench_latency.py", "prune_core/measure.py",
                      _M + "magnitude.py", _M + "_filters.py", _M + "quantize.py"),
    "bench_methods": ("benchmarks/bench_methods.py", _M + "slimming.py", _M + "magnitude.py",
                      _M + "_filters.py", _M + "factorize.py", _M + "quantize.py",
                      _M + "branch.py", _M + "_chain.py"),
    "bench_repr": ("benchmarks/bench_repr.py", _M + "repr.py", "prune_core/train.py"),
    "bench_resnet": ("benchmarks/bench_resnet.py", _M + "slimming.py", "prune_core/groups.py",
                     "prune_core/models.py"),
    "bench_search": ("benchmarks/bench_search.py", "studies/samplers.py",
                     "studies/specs/magnitude.yaml", _M + "magnitude.py", _M + "_filters.py"),
    "bench_slimming": ("benchmarks/bench_slimming.py", _M + "slimming.py"),
    "bench_transtailor": ("benchmarks/bench_transtailor.py", _M + "transtailor.py",
                          _M + "magnitude.py", _M + "_filters.py"),
    "bench_trials": ("benchmarks/bench_trials.py", "studies/specs/none.yaml",
                     "prune_core/trial.py", _M + "slimming.py", _M + "magnitude.py",
                     _M + "_filters.py", _M + "factorize.py", _M + "quantize.py"),
    "bench_tune": ("benchmarks/bench_tune.py", "studies/trainable.py", "studies/runner.py",
                   "prune_core/trial.py"),
    "reliability": ("benchmarks/reliability.py", "benchmarks/reliability_specs.py",
                    "benchmarks/reliability_dirs.py", "benchmarks/_damage.py",
                    "studies/spec.py", "studies/_check_model.py", "studies/_check_run.py",
                    "studies/space.py", "analysis/studydir.py"),
    "zoo": ("benchmarks/zoo.py", "studies/_check_model.py", "prune_core/rehearsal.py",
            "prune_core/groups.py", _M),
    "quickstart_front": ("tools/quickstart_front.py", "studies/specs/quickstart.yaml",
                         _M + "slimming.py", "prune_core/trial.py", "prune_core/train.py"),
}


class _Plain(ast.NodeTransformer):
    """Drops what cannot change a number: docstrings, type annotations and the imports
    made for them (``typing``, ``if TYPE_CHECKING:``)."""

    def visit_AnnAssign(self, node):  # noqa: N802 (ast's naming)
        self.generic_visit(node)
        if node.value is None:
            return None
        return ast.Assign(targets=[node.target], value=node.value, lineno=node.lineno)

    def visit_arg(self, node):  # noqa: N802
        node.annotation = None
        return node

    def visit_If(self, node):  # noqa: N802 (imports for type checkers only)
        test = node.test
        if getattr(test, "id", getattr(test, "attr", None)) == "TYPE_CHECKING":
            return node.orelse or None
        return self.generic_visit(node)

    def visit_ImportFrom(self, node):  # noqa: N802
        return None if node.module == "typing" else node

    def _body(self, node):
        self.generic_visit(node)
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
        if hasattr(node, "returns"):
            node.returns = None
        return node

    visit_Module = visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _body


def _meaning(root: Path, commit: str, path: str) -> str | None:
    """``path`` at ``commit`` as far as a measurement can tell: a Python module's syntax
    tree without docstrings, comments, annotations or layout; a YAML file's data; other
    files as they are. None where the file does not exist there."""
    text = _git("show", f"{commit}:{path}", root=root)
    if text is None:
        return None
    try:
        if path.endswith(".py"):
            return ast.dump(_Plain().visit(ast.parse(text)))
        if path.endswith((".yaml", ".yml")):
            import yaml

            return json.dumps(yaml.safe_load(text), sort_keys=True)
    except (SyntaxError, ValueError, ImportError):
        pass
    return text

# Benchmarks whose data is known stale and awaits a rerun on an idle machine, with why it
# has not been rerun yet. The docs say so where they quote them; an entry whose data is
# fresh again is a problem, so the list cannot outlive the reruns.
_ALLOCATION = ("per-layer allocation added to slimming, magnitude and transtailor; each "
               "method's default allocation runs the code it ran before")
PENDING_RERUN: dict[str, str] = {
    "bench_analysis": "the readers take constraints from analysis/constraints.py and result "
                      "columns from prune_core/columns.py",
    "bench_early_stop": _ALLOCATION,
    "bench_lab": _ALLOCATION,
    "bench_latency": _ALLOCATION,
    "bench_methods": _ALLOCATION,
    "bench_resnet": _ALLOCATION,
    "bench_search": _ALLOCATION,
    "bench_slimming": _ALLOCATION,
    "bench_transtailor": _ALLOCATION,
    "bench_trials": _ALLOCATION,
    "quickstart_front": _ALLOCATION,
    "zoo": _ALLOCATION,
    "bench_tune": "studies/runner.py passes its log to the searcher (warm_start: sensitivity)",
    "reliability": "the spec checks take allocation, ratio@ parameters and warm_start: "
                   "sensitivity",
}


def check_fresh(root: Path = ROOT, pending: dict[str, str] | None = None,
                verbose: list[str] | None = None) -> list[str]:
    """One line per stale data file, per module missing from ``MEASURED_CODE`` and per
    entry of ``pending`` (default ``PENDING_RERUN``) whose data is fresh after all. Stale
    data of a pending module is listed in ``verbose`` instead, where given."""
    pending = PENDING_RERUN if pending is None else pending
    problems: list[str] = []
    if _git("rev-parse", "--is-shallow-repository", root=root) not in ("false\n",):
        return ["the freshness check needs the repository's history: run it in a full "
                "clone (git fetch --unshallow)"]
    for name, files in sorted(_producers(root).items()):
        code = MEASURED_CODE.get(name)
        if code is None:
            problems.append(f"{files[0]}: written by {name!r}, which has no entry in "
                            "MEASURED_CODE (tools/docs_check.py): name the files its "
                            "numbers depend on")
            continue
        missing = [c for c in code if not any(root.glob(c.rstrip("/")))]
        if missing:
            problems.append(f"tools/docs_check.py: MEASURED_CODE[{name!r}] names "
                            f"{', '.join(missing)}, which does not exist")
        present = [c for c in code if c not in missing]
        stale = []
        for f in files:
            last = (_git("log", "-1", "--format=%H", "--", f, root=root) or "").strip()
            if not last:
                problems.append(f"{f}: not committed yet")
                continue
            changed = [c for c in (_git("diff", "--name-only", last, "HEAD", "--", *present,
                                        root=root) or "").split()
                       if _meaning(root, last, c) != _meaning(root, "HEAD", c)]
            if changed:
                package = "tools" if name == "quickstart_front" else "benchmarks"
                stale.append(f"{f}: older than {', '.join(changed)} (changed since "
                             f"commit {last[:7]}): rerun python -m {package}.{name}")
        if name in pending:
            if not stale:
                problems.append(f"tools/docs_check.py: PENDING_RERUN names {name!r}, whose "
                                "data is fresh: remove it from the list")
            elif verbose is not None:
                verbose.extend(f"pending ({pending[name]}): {line}" for line in stale)
        else:
            problems.extend(stale)
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Check that the docs' numbers are in the data they cite, and that each "
                    "benchmark's data is newer than the code it measures.")
    p.add_argument("--verbose", action="store_true",
                   help="print every number checked and how it was found")
    p.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    waiting: list[str] = []
    problems = check_numbers(a.root, a.verbose) + check_fresh(a.root, verbose=waiting)
    for line in waiting:
        print(line, file=sys.stderr)
    for line in problems:
        print(line)
    print(f"{len(problems)} problem(s)" if problems else "docs check: clean",
          file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
