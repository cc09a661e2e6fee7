"""``python -m coalesce demo``: the cache stampede, replayed, without and with coalesce.

N callers ask for the same slow result at the same moment: first with threads, then
with asyncio; each time without ``@singleflight``, with it, and with ``ttl=`` (a
second wave of callers arriving after the first has finished). The table shows how
many times the slow function really ran.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import singleflight

__all__ = ("main",)

CALLERS = 50
WORK_SECONDS = 0.1
CONNECTIONS = 5  # the database serves this many queries at once


class _Row:
    __slots__ = ("calls", "coalesced", "executions", "hits", "label", "seconds")

    def __init__(self, label: str) -> None:
        self.label = label
        self.executions = 0
        self.calls = 0
        self.coalesced = 0
        self.hits = 0
        self.seconds = 0.0


# With --otel: where the demo's functions are kept alive until the instruments are read
# (a function that is garbage-collected leaves them; see _demo_otel).
_KEEP: list[list[Any]] = []


def _decorate(report: Callable[..., Any], variant: str, label: str) -> Any:
    if variant == "plain":
        return report
    report.__qualname__ = f"report ({label.split()[0]}, {variant})"  # its coalesce.function
    fn = singleflight(report) if variant == "@singleflight" else singleflight(ttl=60)(report)
    for kept in _KEEP:
        kept.append(fn)
    return fn


def _measure(row: _Row, fn: Any, waves: int, run: Callable[[], None]) -> _Row:
    """Time ``run`` (all the waves) and fill the row from the function's counters."""
    start = time.perf_counter()
    run()
    row.seconds = time.perf_counter() - start
    row.calls = CALLERS * waves
    if hasattr(fn, "cache_info"):
        info = fn.cache_info()
        row.coalesced, row.hits = info.coalesced, info.hits
    return row


def _thread_wave(call: Callable[[], Any], callers: int) -> None:
    barrier = threading.Barrier(callers)

    def caller() -> None:
        barrier.wait(timeout=30)
        call()

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)


def _threads(variant: str, waves: int) -> _Row:
    row = _Row(f"threads   {variant}")
    lock = threading.Lock()
    database = threading.BoundedSemaphore(CONNECTIONS)

    def report(day: int) -> str:
        with lock:
            row.executions += 1
        with database:
            time.sleep(WORK_SECONDS)  # a slow query
        return f"report for day {day}"

    fn = _decorate(report, variant, row.label)

    def run() -> None:
        for _ in range(waves):
            _thread_wave(lambda: fn(7), CALLERS)

    return _measure(row, fn, waves, run)


def _asyncio(variant: str, waves: int) -> _Row:
    row = _Row(f"asyncio   {variant}")
    database: asyncio.Semaphore | None = None

    async def report(day: int) -> str:
        assert database is not None
        row.executions += 1
        async with database:
            await asyncio.sleep(WORK_SECONDS)  # a slow query
        return f"report for day {day}"

    fn = _decorate(report, variant, row.label)

    async def run() -> None:
        nonlocal database
        database = asyncio.Semaphore(CONNECTIONS)
        for _ in range(waves):
            await asyncio.gather(*(fn(7) for _ in range(CALLERS)))

    return _measure(row, fn, waves, lambda: asyncio.run(run()))


def _table(rows: Sequence[_Row]) -> str:
    head = ("scenario", "executions", "calls", "coalesced", "hits", "wall time")
    body = [
        (
            r.label,
            str(r.executions),
            str(r.calls),
            str(r.coalesced),
            str(r.hits),
            f"{r.seconds:.2f} s",
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in (head, *body)) for i in range(len(head))]

    def fmt(line: Sequence[str]) -> str:
        cells = [line[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(line[1:], widths[1:], strict=True)
        ]
        return "| " + " | ".join(cells) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(head), rule, *(fmt(line) for line in body)])


def demo() -> None:
    """Print the stampede table (section 6 of the contract)."""
    print(
        f"{CALLERS} callers ask for the same report at the same moment; "
        f"the report is one {WORK_SECONDS:.1f} s query to a database that serves "
        f"{CONNECTIONS} queries at a time.\n"
        "With ttl=, a second wave of callers arrives after the first has finished.\n"
    )
    rows = []
    for variant, waves in (("plain", 1), ("@singleflight", 1), ("@singleflight(ttl=60)", 2)):
        rows.append(_threads(variant, waves))
    for variant, waves in (("plain", 1), ("@singleflight", 1), ("@singleflight(ttl=60)", 2)):
        rows.append(_asyncio(variant, waves))
    print(_table(rows))
    print(
        "\nexecutions: times the slow function really ran; coalesced: calls that joined "
        "an execution already in flight; hits: calls answered from the cache."
    )


DESCRIPTION = f"""\
coalesce: one execution per key for def and async def, with TTL caching.

demo replays a cache stampede: {CALLERS} callers ask for the same slow result at the
same moment, with threads and with asyncio, without and with @singleflight, and a
table shows how many times the slow function really ran."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (bad input exits through SystemExit)."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="python -m coalesce",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"coalesce {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo_parser = commands.add_parser(
        "demo",
        help="replay the cache stampede, without and with coalesce",
        description="Replay the cache stampede, without and with coalesce; runs in "
        "seconds and needs no services.",
    )
    demo_parser.add_argument(
        "--redis",
        metavar="URL",
        help="also show several processes sharing one execution through this Redis "
        "(e.g. redis://localhost:6379/0 or unix:///tmp/redis.sock); it is checked "
        "before the demo starts",
    )
    demo_parser.add_argument(
        "--otel",
        action="store_true",
        help="publish the demo's functions with coalesce.otel.instrument() and print what "
        "the OpenTelemetry instruments say after the stampede (needs opentelemetry-sdk)",
    )
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "demo":
        if args.redis:
            from ._demo_redis import check_redis

            check_redis(args.redis)  # a bad URL fails in one line, before the local demo
        otel = None
        if args.otel:
            from ._demo_otel import OtelDemo, check_sdk

            check_sdk()  # a missing SDK fails in one line, before the demo
            otel = OtelDemo()
            _KEEP.append(otel.functions)
        try:
            demo()
        finally:
            _KEEP.clear()
        if otel is not None:
            print()
            print(otel.table())
        if args.redis:
            from ._demo_redis import run_redis_demo

            print()
            run_redis_demo(args.redis)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
