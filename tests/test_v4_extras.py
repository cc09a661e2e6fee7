"""V4: the core suite installs and runs from the project's own ``test-core`` extra.

Free-threaded CPython has no wheel of pydantic-core (which fastapi pulls), so the
extra that the core and freshness tests need must not hold the middleware stack,
and the core test files must not import it.
"""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# What only the Redis and middleware tests need.
MIDDLEWARE_STACK = {"redis", "uvicorn", "httpx", "waitress", "starlette", "fastapi"}


def _extras() -> dict[str, set[str]]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg", encoding="utf-8")
    section = config["options.extras_require"]
    return {
        name: {re.split(r"[<>=!~;\[ ]", line.strip(), maxsplit=1)[0].lower() for line in lines}
        for name, value in section.items()
        if (lines := [line for line in value.splitlines() if line.strip()])
    }


def test_v4_test_core_extra_is_the_core_of_test() -> None:
    """V4: ``test`` holds all of ``test-core``; ``test-core`` holds no middleware package."""
    extras = _extras()
    assert {"pytest", "pytest-timeout", "freezegun", "time-machine"} <= extras["test-core"]
    assert extras["test-core"] <= extras["test"]
    assert not extras["test-core"] & MIDDLEWARE_STACK
    assert extras["test"] >= MIDDLEWARE_STACK


def test_v4_core_suite_is_selected_by_its_imports() -> None:
    """V4: CI's core suite holds the core, freshness and stress tests, not Redis or HTTP ones."""
    listed = subprocess.run(
        [sys.executable, str(ROOT / ".ci" / "core_tests.py")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    names = {Path(path).name for path in listed}
    core = {
        "test_api.py",
        "test_sync_semantics.py",
        "test_async_semantics.py",
        "test_groups.py",
        "test_errors.py",
        "test_keys.py",
        "test_regressions.py",
        "test_freshness.py",
        "test_v4_stress.py",
        "test_v4_extras.py",
    }
    assert core <= names
    assert not names & {"test_redis.py", "test_asgi.py", "test_wsgi.py", "test_docs_examples.py"}
