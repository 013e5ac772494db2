"""Fail when a module of the package is over 400 lines or a function over 60 (``make lint`` runs this).

Long code is usually several things at once; these limits keep each module and function to one. A
function that is a data table (an argparse table, a list of cases) may be longer when its ``def`` line
ends with ``# long: <why>``.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_MODULE = 400
MAX_FUNCTION = 60


def problems(root: Path) -> list[str]:
    """``path:line: what`` for every module and function over its limit under ``root``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        lines = path.read_text().splitlines()
        if len(lines) > MAX_MODULE:
            found.append(f"{path}:1: module has {len(lines)} lines (limit {MAX_MODULE})")
        for node in ast.walk(ast.parse("\n".join(lines), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION and "# long:" not in lines[node.lineno - 1]:
                    found.append(
                        f"{path}:{node.lineno}: {node.name}() has {length} lines (limit {MAX_FUNCTION})"
                    )
    return found


def main() -> int:
    """Check the package folder given (default ``vafusion``); print the problems, exit 1 if any."""
    found = problems(Path(sys.argv[1] if len(sys.argv) > 1 else "vafusion"))
    print("\n".join(found) if found else "sizes ok")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
