"""``--profile``: where coalesce's time goes in the scenario of each missed bar.

cProfile charges time to functions, so it shows which of coalesce's own functions (and
which builtins they call) a call path spends its time in; its own overhead inflates
small functions alike, so read it for shares, not for nanoseconds. The garbage
collector is paused while profiling, as in the timed runs.
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import io
import pstats
from collections.abc import Callable
from typing import Any

from benchmarks import _peers

CALLS = 100_000


def _one(x: Any) -> Any:
    return x


async def _aone(x: Any) -> Any:
    return x


def _sync_calls(decorator: _peers.Decorator) -> Callable[[], None]:
    f = decorator(_one)
    f(1)

    def run() -> None:
        for _ in range(CALLS):
            f(1)

    return run


def _async_calls(decorator: _peers.Decorator) -> Callable[[], None]:
    f = decorator(_aone)

    async def loop(n: int) -> None:
        for _ in range(n):
            await f(1)

    asyncio.run(loop(1))
    return lambda: asyncio.run(loop(CALLS))


def _stampede() -> None:
    async def main() -> None:
        gate = asyncio.Event()

        async def work(key: int) -> int:
            await gate.wait()
            return key

        f = _peers.coalesce_ttl()(work)
        tasks = [asyncio.ensure_future(f(1)) for _ in range(10_000)]
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(*tasks)

    asyncio.run(main())


#: Bar -> what to profile for it.
TARGETS: dict[str, tuple[str, Callable[[], Callable[[], None]]]] = {
    "P1": ("sync hit f(1) with ttl", lambda: _sync_calls(_peers.coalesce_ttl())),
    "P2": ("async hit await f(1) with ttl", lambda: _async_calls(_peers.coalesce_ttl())),
    "P3": ("10,000 coroutines on one cold key", lambda: _stampede),
    "P5 sync": ("dedup-only sync f(1)", lambda: _sync_calls(_peers.coalesce_bare())),
    "P5 async": ("dedup-only async await f(1)", lambda: _async_calls(_peers.coalesce_bare())),
}


def profile(target: str, top: int = 14) -> str:
    """cProfile one target's loop; the top functions by their own time, as text."""
    what, build = TARGETS[target]
    run = build()
    profiler = cProfile.Profile()
    gc.collect()
    gc.disable()  # as in the timed runs: a collection would be charged to whoever allocated
    try:
        profiler.enable()
        run()
        profiler.disable()
    finally:
        gc.enable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    return f"--- profile for {target}: {what} ---\n{out.getvalue().strip()}\n"


def target_of(bar: str, what: str) -> str | None:
    """The profile target for a failed check, or None when there is none to run."""
    if bar == "P5":
        return "P5 async" if "async" in what else "P5 sync"
    return bar if bar in TARGETS else None
