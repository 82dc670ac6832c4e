"""Which packages two pip-tools lock files pin differently.

    python tools/lock_diff.py OLD.lock NEW.lock

Prints one line per package that was added, removed or moved to another version (with
``<- minor`` where the major or minor part changed), then a count; exit 0 either way.
Standard library only: it runs before any venv exists.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


def pins(path: str | Path) -> dict[str, str]:
    """``{normalised name: version}`` of every ``name==version`` line of a lock file."""
    out = {}
    for line in Path(path).read_text().splitlines():
        m = _PIN.match(line.strip())
        if m:
            out[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return out


def _minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


def diff(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """One line per package whose pin differs between ``old`` and ``new``."""
    lines = []
    for name in sorted(old.keys() | new.keys()):
        a, b = old.get(name), new.get(name)
        if a == b:
            continue
        if a is None:
            lines.append(f"+ {name} {b}")
        elif b is None:
            lines.append(f"- {name} {a}")
        else:
            flag = "  <- minor" if _minor(a) != _minor(b) else ""
            lines.append(f"  {name} {a} -> {b}{flag}")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    lines = diff(pins(args[0]), pins(args[1]))
    for line in lines:
        print(line)
    print(f"{len(lines)} package(s) differ between {args[0]} and {args[1]}"
          if lines else f"{args[1]} pins the same versions as {args[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
