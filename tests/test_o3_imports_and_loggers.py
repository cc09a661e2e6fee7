"""O3: ``import coalesce`` never imports OpenTelemetry; every logger is under ``coalesce``.

No OpenTelemetry package is needed here: this file belongs to the core suite.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "coalesce"


def test_o3_import_coalesce_never_imports_opentelemetry() -> None:
    """O3: importing coalesce (and its core modules) and calling a function loads no OTel."""
    script = """
import asyncio, sys
import coalesce
import coalesce.asgi, coalesce.wsgi
from coalesce import singleflight

@singleflight(ttl=10)
def load(x):
    return x

@singleflight(ttl=10)
async def aload(x):
    return x

load(1); load(1); asyncio.run(aload(1))
print(sorted(name for name in sys.modules if name.split(".")[0] == "opentelemetry"))
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=True,
    )
    assert done.stdout.strip() == "[]", done.stdout


def _logger_names() -> dict[str, list[str]]:
    """Every ``logging.getLogger(...)`` argument in the package, by file."""
    names: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "getLogger"
            ):
                where = f"{path.name}:{node.lineno}: getLogger() takes a literal name here"
                assert len(node.args) == 1, where
                assert isinstance(node.args[0], ast.Constant), where
                names.setdefault(path.name, []).append(str(node.args[0].value))
    return names


def test_o3_every_logger_is_under_coalesce() -> None:
    """O3: each logger the package makes is ``coalesce`` or a child of it, by a literal name."""
    found = [name for names in _logger_names().values() for name in names]
    assert found, "the package logs somewhere"
    for name in found:
        assert name == "coalesce" or name.startswith("coalesce."), name


def test_o3_nothing_logs_to_the_root_logger() -> None:
    """O3: no module calls ``logging.warning()`` and friends, which log to the root logger."""
    root_calls = {"debug", "info", "warning", "warn", "error", "exception", "critical", "log"}
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "logging"
            ):
                assert node.func.attr not in root_calls, f"{path.name}:{node.lineno}"


def test_o3_the_docs_list_every_logger() -> None:
    """O3: docs/observability.md names every logger the package logs to."""
    page = (ROOT / "docs" / "observability.md").read_text(encoding="utf-8")
    for names in _logger_names().values():
        for name in names:
            assert f"| `{name}` |" in page, f"docs/observability.md does not list {name}"
