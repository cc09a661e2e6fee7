"""Instructions per awaited call, counted by valgrind's callgrind: load-independent figures.

The machine the benchmarks run on is shared and noisy; an instruction count is not. Each
contender runs in a process of its own under callgrind, once for the warm-up alone and
once for the warm-up and N more calls, each inside a C function nothing else calls
(``sys.call_tracing`` and ``operator.call``); the difference of their inclusive counts,
divided by N, is what one ``await f(1)`` costs. Instruction counts are not times (a
cache miss or a clock read in a VM weighs more than its instructions), so they guide
work on the hot path; the bars are judged by ``python -m benchmarks``.

    python -m benchmarks.instructions                  # every contender, 2,000 calls each
    python -m benchmarks.instructions --calls 5000 ttl bare

Needs ``valgrind`` and ``callgrind_annotate`` on PATH, and the ``bench`` extra for the
peers. ``PYTHONHASHSEED`` is set to 0 so that set and dict probes repeat exactly.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import operator
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from benchmarks import _peers

CONTENDERS = ("plain", "ttl", "bare", "async-lru", "singleflight")


async def _aone(x: Any) -> Any:
    return x


def _contender(name: str) -> Callable[..., Any]:
    if name == "plain":
        return _aone
    if name == "ttl":
        return _peers.coalesce_ttl()(_aone)
    if name == "bare":
        return _peers.coalesce_bare()(_aone)
    if name == "async-lru":
        return _peers.async_lru_ttl()(_aone)
    if name == "singleflight":
        return _peers.singleflight_async()(_aone)
    raise SystemExit(f"unknown contender {name!r}; choose from {', '.join(CONTENDERS)}")


def _inner(name: str, calls: int) -> None:
    """Run under callgrind: warm up, then the two measured regions."""
    f = _contender(name)

    async def run(n: int) -> None:
        await f(1)
        for _ in range(n):
            await f(1)

    gc.disable()
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(run(10))  # the interpreter specialises the path first
        sys.call_tracing(loop.run_until_complete, (run(0),))
        operator.call(loop.run_until_complete, run(calls))
    finally:
        loop.close()


def _inclusive(report: str, function: str) -> int:
    for line in report.splitlines():
        if re.search(rf":{function}( \[|$)", line):
            return int(line.split()[0].replace(",", ""))
    raise SystemExit(f"callgrind_annotate did not list {function}: is it a CPython build?")


def count(name: str, calls: int) -> int:
    """Instructions per ``await f(1)`` of ``name``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-m",
                "benchmarks.instructions",
                "--inner",
                name,
                "--calls",
                str(calls),
            ],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        report = subprocess.run(
            ["callgrind_annotate", "--threshold=100", "--inclusive=yes", out],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    return (_inclusive(report, "_operator_call") - _inclusive(report, "sys_call_tracing")) // calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.instructions", description=__doc__)
    parser.add_argument("contenders", nargs="*", default=list(CONTENDERS), metavar="NAME")
    parser.add_argument("--calls", type=int, default=2000, help="calls counted (default 2000)")
    parser.add_argument("--inner", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inner:
        _inner(args.inner, args.calls)
        return 0
    version = ".".join(map(str, sys.version_info[:3]))
    print(f"Instructions per `await f(1)` on CPython {version}, {args.calls} calls each:")
    for name in args.contenders:
        print(f"  {name:<14}{count(name, args.calls):>8,}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
