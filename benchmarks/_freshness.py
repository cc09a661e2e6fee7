"""Freshness (issue 5, F1): what a caller sees right after expiry, with and without ``stale=``.

The function takes ``WORK`` seconds. A result is stored, the clock is let past ``ttl``,
then either one caller is timed (its latency) or a burst of callers arrives at once (the
executions it causes; one is right: a single recomputation, waited for or in the background).
"""

from __future__ import annotations

import asyncio
import inspect
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from benchmarks._method import Budget, Table

TTL = 0.05
STALE = 60.0
WORK = 0.002
BURST_THREADS = 32
BURST_TASKS = 100
SETTLE = 0.05  # seconds to let a background refresh land before counting executions


def supported() -> bool:
    """True once the decorator takes ``stale=`` (F1)."""
    try:
        from coalesce import singleflight
    except ImportError:
        return False
    return "stale" in inspect.signature(singleflight).parameters


#: The variants: no ``stale=``, with it, and a reference that does not expire at all
#: (its latency is that of a plain hit after the same pause, on this machine).
MODES = ("no stale", f"stale={STALE:g}", "reference: a fresh hit")


def _decorate(mode: str, work: Callable[..., Any]) -> Any:
    from coalesce import singleflight

    options: dict[str, Any] = {"ttl": TTL}
    if mode == MODES[1]:
        options["stale"] = STALE
    elif mode == MODES[2]:
        options["ttl"] = 3600.0
    return singleflight(**options)(work)


def _sync_round(mode: str, burst: bool) -> tuple[float, int]:
    executions = 0
    lock = threading.Lock()

    def work(x: int) -> int:
        nonlocal executions
        with lock:
            executions += 1
        time.sleep(WORK)
        return x

    f = _decorate(mode, work)
    f(1)
    time.sleep(TTL * 1.5)
    executions = 0
    if not burst:
        t0 = time.perf_counter_ns()
        f(1)
        latency = (time.perf_counter_ns() - t0) / 1000
        time.sleep(SETTLE)
        return latency, executions
    barrier = threading.Barrier(BURST_THREADS, timeout=30)

    def caller() -> None:
        barrier.wait()
        f(1)

    threads = [threading.Thread(target=caller, daemon=True) for _ in range(BURST_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    time.sleep(SETTLE)
    return 0.0, executions


async def _async_round(mode: str, burst: bool) -> tuple[float, int]:
    executions = 0

    async def work(x: int) -> int:
        nonlocal executions
        executions += 1
        await asyncio.sleep(WORK)
        return x

    f = _decorate(mode, work)
    await f(1)
    await asyncio.sleep(TTL * 1.5)
    executions = 0
    if not burst:
        t0 = time.perf_counter_ns()
        await f(1)
        latency = (time.perf_counter_ns() - t0) / 1000
        await asyncio.sleep(SETTLE)
        return latency, executions
    await asyncio.wait_for(asyncio.gather(*(f(1) for _ in range(BURST_TASKS))), 30)
    await asyncio.sleep(SETTLE)
    return 0.0, executions


def freshness(budget: Budget, rng: random.Random) -> Table:
    """Latency of the first call after expiry and executions of a burst at expiry."""
    rounds = 3 if budget.quick else 7
    table = Table(
        key="freshness",
        title=f"Right after expiry (ttl={TTL:g} s, the function takes {WORK * 1000:g} ms)",
        unit="µs, first call after expiry",
        extra_columns=("executions, burst at expiry",),
    )
    with_stale = supported()
    variants = [
        (kind, mode)
        for kind in ("def", "async def")
        for mode in (MODES if with_stale else (MODES[0], MODES[2]))
    ]
    latencies: dict[str, list[float]] = {}
    bursts: dict[str, int] = {}
    for _ in range(rounds):
        rng.shuffle(variants)
        for kind, mode in variants:
            name = f"coalesce {kind}, {mode}"
            for burst in (False, True) if mode != MODES[2] else (False,):
                if kind == "def":
                    latency, executions = _sync_round(mode, burst)
                else:
                    latency, executions = asyncio.run(_async_round(mode, burst))
                if burst:
                    bursts[name] = max(bursts.get(name, 0), executions)
                else:
                    latencies.setdefault(name, []).append(latency)
    for name in sorted(latencies):
        table.samples[name] = latencies[name]
        table.extra[name] = {"executions, burst at expiry": str(bursts.get(name, "-"))}
    if not with_stale:
        table.notes.append("The decorator has no `stale=` yet: only the rows without it are run.")
    table.notes.append(
        "The reference rows never expire: their latency is a plain hit after the same "
        "pause, which on a virtual machine is far above a hit in a tight loop (cold caches)."
    )
    table.notes.append(
        f"Burst: {BURST_THREADS} threads or {BURST_TASKS} coroutines call the expired key at "
        "once; executions is the most in one round (1 is right)."
    )
    return table
