"""O1, SPEC 6: ``python -m coalesce demo --otel`` prints the instruments after the stampede."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip(
    "opentelemetry.sdk.metrics",
    reason="the OpenTelemetry tests need the SDK: "
    "pip install 'python-coalesce[otel]' opentelemetry-sdk",
)

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str, code: str | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m coalesce ARGS`` (or ``python -c CODE``) on this tree, bounded in time."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "coalesce"]
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def _row(stdout: str, function: str) -> list[str]:
    """The cells of the instruments table's row for ``function``."""
    (line,) = [line for line in stdout.splitlines() if line.startswith(f"| {function} ")]
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_o1_demo_otel_prints_the_instruments_after_the_stampede() -> None:
    """O1: ``demo --otel`` prints each demo function's instruments, as the stampede ran."""
    result = _run("demo", "--otel")
    assert result.returncode == 0, result.stderr
    assert "| scenario" in result.stdout  # the demo's own table comes first
    out = result.stdout
    assert "coalesce.calls by coalesce.result" in out
    # Columns: function, hit, stale, joined, executed, ok, error, cancelled, in_flight,
    # size, duration. 50 callers at once (one executes, the others join: the demo's own
    # table says how many); with ttl=, a second wave of 50 hits.
    for kind in ("threads", "asyncio"):
        for variant, calls, size in (
            ("@singleflight", 50, "0"),
            ("@singleflight(ttl=60)", 100, "1"),
        ):
            cells = _row(out, f"report ({kind}, {variant})")
            hit, stale, joined, executed, ok, error, cancelled = map(int, cells[1:8])
            assert hit + stale + joined + executed == calls, cells
            assert (ok, error, cancelled, stale) == (executed, 0, 0, 0), cells
            assert cells[8:10] == ["0", size], cells
            assert cells[10].startswith(f"{executed} x "), cells
            if variant != "@singleflight":
                assert hit >= 50, cells  # the second wave, after the first has landed


def test_o1_demo_otel_without_the_sdk_says_what_to_install() -> None:
    """O1: without opentelemetry-sdk, ``demo --otel`` says what to install, in one line."""
    code = (
        "import sys; sys.modules['opentelemetry.sdk'] = None\n"  # as if it were not installed
        "from coalesce.__main__ import main\n"
        "raise SystemExit(main(sys.argv[1:]))\n"
    )
    result = _run("demo", "--otel", code=code)
    assert result.returncode == 1
    assert result.stdout == "", "the demo must not run before the SDK is checked"
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].endswith('pip install "python-coalesce[otel]" opentelemetry-sdk')
