"""SPEC section 6: ``python -m coalesce`` as a user meets it, run in a real subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import coalesce

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str, code: str | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m coalesce ARGS`` (or ``python -c CODE``) on this tree, bounded in time."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "coalesce"]
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def test_no_arguments_prints_the_help() -> None:
    """V1: ``python -m coalesce`` alone prints its help, naming the demo, and exits 0."""
    result = _run()
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m coalesce")
    assert "demo" in result.stdout
    assert result.stderr == ""


def test_version() -> None:
    """V1: ``--version`` prints the package's version and exits 0."""
    result = _run("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"coalesce {coalesce.__version__}\n"


@pytest.mark.parametrize("args", [("--help",), ("demo", "--help")], ids=" ".join)
def test_help_is_plain_text(args: tuple[str, ...]) -> None:
    """V1: ``--help`` reads as plain text: no reST or Markdown markup from docstrings."""
    result = _run(*args)
    assert result.returncode == 0, result.stderr
    assert "usage: python -m coalesce" in result.stdout
    markup = re.findall(r"``|:\w+:`|\*\*|`\w", result.stdout)
    assert not markup, f"markup in the help: {markup}\n{result.stdout}"


def test_demo_runs_with_no_options() -> None:
    """SPEC 6: the demo prints its table of executions and exits 0."""
    result = _run("demo")
    assert result.returncode == 0, result.stderr
    assert "| scenario" in result.stdout
    assert "asyncio   @singleflight" in result.stdout


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("not-a-url", "not a Redis URL: 'not-a-url'"),
        ("localhost:6379", "not a Redis URL: 'localhost:6379'"),
        ("unix:///nonexistent/coalesce-test.sock", "cannot reach Redis at unix:///nonexistent/"),
    ],
    ids=["no-scheme", "host-port", "no-server"],
)
def test_demo_checks_the_redis_url_first(url: str, says: str) -> None:
    """R6: ``demo --redis BAD`` says what is wrong in one line, before any demo runs."""
    result = _run("demo", "--redis", url)
    assert result.returncode != 0
    assert result.stdout == "", "the local demo must not run before the URL is checked"
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(says), lines[0]


def test_demo_redis_without_redis_py_says_what_to_install() -> None:
    """V1: without redis-py, ``demo --redis`` names the extra to install, in one line."""
    code = (
        "import sys; sys.modules['redis'] = None\n"  # as if redis-py were not installed
        "from coalesce.__main__ import main\n"
        "raise SystemExit(main(sys.argv[1:]))\n"
    )
    result = _run("demo", "--redis", "redis://localhost:6379/0", code=code)
    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr == (
        'the Redis demo needs redis-py: python -m pip install "python-coalesce[redis]"\n'
    )
