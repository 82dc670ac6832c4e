"""The packages import in one direction: no module of prune_core, studies or analysis
imports (at any depth, lazily or not) a module that imports it back."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("prune_core", "studies", "analysis")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = f
    return out


def _imports(tree: ast.AST, known: dict[str, Path], me: str) -> set[str]:
    """Every project module ``tree`` imports, outside ``if TYPE_CHECKING:`` blocks."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            names = []
        found.update(n for n in names if n in known and n != me)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (found := dfs(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := dfs(m)):
            return found
    return None


def test_no_import_cycle():
    mods = _modules()
    graph = {m: _imports(ast.parse(f.read_text()), mods, m) for m, f in mods.items()}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import x.y\n"
                     "def f():\n    import x.z\n")
    assert _imports(tree, {"x.y": Path(), "x.z": Path()}, "me") == {"x.z"}


# Errors that are not reports to the user: a damaged line becomes a warning, and Ctrl-C
# stays a KeyboardInterrupt.
INTERNAL_ERRORS = {"analysis.studydir.Damaged", "studies.runner.StudyInterrupted"}


def test_every_error_derives_from_the_two_kinds_the_command_line_reports():
    import importlib
    import inspect

    from prune_core.errors import InputError, PruneStudyError, StudyFilesError

    found = {}
    for name in _modules():
        module = importlib.import_module(name)
        for cls in vars(module).values():
            if (inspect.isclass(cls) and issubclass(cls, BaseException)
                    and not issubclass(cls, Warning)
                    and cls.__module__ == name):
                found[f"{name}.{cls.__qualname__}"] = cls
    assert len(found) > 15
    strays = sorted(n for n, c in found.items()
                    if not issubclass(c, PruneStudyError) and n not in INTERNAL_ERRORS)
    assert strays == []
    short = {n.rsplit(".", 1)[1]: c for n, c in found.items()}
    for name in ("SpecError", "DataError", "ModelError", "ParamError", "ReportError",
                 "ObjectiveError", "BadInput"):
        assert issubclass(short[name], InputError), name
    for name in ("StudyError", "StudyDirError", "CheckpointError", "LockHeld"):
        assert issubclass(short[name], StudyFilesError), name
    assert not issubclass(short["ClusterError"], InputError | StudyFilesError)


def test_every_public_surface_names_what_its_module_defines():
    import importlib

    checked = 0
    for name in _modules():
        module = importlib.import_module(name)
        public = getattr(module, "__all__", None)
        if public is None:
            continue
        checked += 1
        missing = [n for n in public if not hasattr(module, n)]
        assert not missing, (name, missing)
        assert len(set(public)) == len(public), name
    assert checked >= 30
