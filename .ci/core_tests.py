"""Print the test files of the core suite: those the ``test-core`` extra can run.

A test file belongs to it when everything it imports (directly, or through the
``tests/_*.py`` helpers it imports) is the standard library, ``coalesce`` itself (not
``coalesce.redis``), or a package of ``test-core`` (or of the library's own
requirements). The Redis and middleware tests import redis, httpx, starlette... and
so stay out; files that import what they test at run time (the documentation's
examples) are left out by name. CI runs the files printed here on free-threaded
CPython (SPEC V4), where the middleware stack does not install.

Usage: ``python .ci/core_tests.py`` (one path per line, relative to the repository).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"

# Import names of test-core's packages and of install_requires (setup.cfg).
ALLOWED = {"pytest", "_pytest", "freezegun", "time_machine", "cachetools", "coalesce"}
# coalesce modules that import an optional dependency.
NOT_CORE_MODULES = {"coalesce.redis", "coalesce._demo_redis", "coalesce.otel"}
# Files that need an optional dependency at run time, which no import shows: the
# documentation's examples (fastapi, redis, ...) and the CLI's demo --redis checks.
NOT_CORE_FILES = {"test_docs_examples.py", "test_cli.py"}


def _imports(path: Path) -> set[str]:
    """Absolute module names ``path`` imports, including ``pytest.importorskip`` ones."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "importorskip"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value)
    return names


def _is_core(path: Path, seen: set[Path]) -> bool:
    seen.add(path)
    for name in _imports(path):
        top = name.partition(".")[0]
        if name in NOT_CORE_MODULES:
            return False
        helper = TESTS / f"{top}.py"
        if top.startswith("_") and helper.exists():
            if helper not in seen and not _is_core(helper, seen):
                return False
            continue
        if top in sys.stdlib_module_names or top in ALLOWED or top == "__future__":
            continue
        return False
    return True


def core_files() -> list[Path]:
    return [
        path
        for path in sorted(TESTS.glob("test_*.py"))
        if path.name not in NOT_CORE_FILES and _is_core(path, set())
    ]


if __name__ == "__main__":
    for path in core_files():
        print(path.relative_to(ROOT))
