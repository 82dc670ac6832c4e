"""docs/architecture.md names every module, and names none that is gone.

Every ``.py`` file under prune_core, studies, analysis, benchmarks and tools (recursively)
must appear on the page as its repository-relative path in backticks, e.g.
```prune_core/groups.py```. All ``__init__.py`` files are skipped: the page may name
them (it names the two that hold code), but need not. Every backticked ``*.py`` path the
page names must exist, so a removed or renamed module is noticed too.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "architecture.md"
PACKAGES = ("prune_core", "studies", "analysis", "benchmarks", "tools")
# A path in backticks: no spaces, no wildcards, ending in .py.
_NAMED = re.compile(r"`([\w./-]+\.py)`")


def _modules() -> list[str]:
    return sorted(f.relative_to(ROOT).as_posix()
                  for pkg in PACKAGES for f in (ROOT / pkg).rglob("*.py")
                  if f.name != "__init__.py")


def test_the_page_names_every_module():
    modules = _modules()
    assert len(modules) > 50  # the packages were found
    text = PAGE.read_text()
    missing = [m for m in modules if f"`{m}`" not in text]
    assert not missing, (f"{len(missing)} module(s) not named in docs/architecture.md "
                         f"(add a line for each): {', '.join(missing)}")


def test_every_module_the_page_names_exists():
    named = sorted(set(_NAMED.findall(PAGE.read_text())))
    assert len(named) > 50
    gone = [p for p in named if not (ROOT / p).is_file()]
    assert not gone, (f"docs/architecture.md names {len(gone)} file(s) that do not exist "
                      f"(remove or rename them): {', '.join(gone)}")
