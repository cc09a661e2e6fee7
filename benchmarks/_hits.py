"""Hits (P1, P2) and dedup-only calls without contention (P5): the cost of one warm call."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

from benchmarks import _otel, _peers
from benchmarks._method import (
    SLICES,
    Budget,
    Measure,
    Table,
    async_loop,
    close_loop,
    interleave,
    sync_loop,
)

Factory = Callable[[], _peers.Decorator]


def _one(x: Any) -> Any:
    return x


def _three(x: Any, y: Any, z: Any = None) -> Any:
    return x


async def _aone(x: Any) -> Any:
    return x


async def _athree(x: Any, y: Any, z: Any = None) -> Any:
    return x


def _build(
    factories: dict[str, Factory], fn: Callable[..., Any], table: Table
) -> dict[str, Callable[..., Any]]:
    """Decorate ``fn`` with every factory whose peer is installed; note the ones that fail."""
    built: dict[str, Callable[..., Any]] = {}
    for name, factory in factories.items():
        try:
            built[name] = factory()(fn)
        except ImportError as exc:
            table.notes.append(f"{name}: skipped, not installed ({exc.name}).")
        except Exception as exc:
            table.errors[name] = f"{type(exc).__name__}: {exc}"
    return built


def _sync_hit_factories(*, keywords: bool) -> dict[str, Factory]:
    return {
        "coalesce": _peers.coalesce_ttl,
        "cachetools": _peers.cachetools_plain,
        "cachetools+lock": _peers.cachetools_lock,
        "cachetools+condition": _peers.cachetools_condition,
        "cachebox": _peers.cachebox_ttl,
        "lru_cache": _peers.lru_cache,
        "dogpile.cache": lambda: _peers.dogpile_memory(keywords=keywords),
    }


def _measure_sync(
    table: Table, functions: dict[str, Callable[..., Any]], call: str, budget: Budget
) -> dict[str, Measure]:
    measures: dict[str, Measure] = {}
    for name, f in functions.items():
        try:
            f_result = eval(call, {"f": f})  # warm: the first call is the miss
            del f_result
            measures[name] = sync_loop(f, call, budget.sample_ns)
        except Exception as exc:
            table.errors[name] = f"{type(exc).__name__}: {exc}"
    return measures


def sync_hit(budget: Budget, rng: random.Random, *, keywords: bool) -> Table:
    """Sync hit: a warm key called in a tight loop, ``f(1)`` or ``f(1, 2, z=3)``."""
    call = "f(1, 2, z=3)" if keywords else "f(1)"
    fn = _three if keywords else _one
    table = Table(
        key="sync_hit_kw" if keywords else "sync_hit",
        title=f"Sync hit `{call}` with ttl",
        unit="CPU ns/call",
        baseline="coalesce",
    )
    functions = {"plain function": fn, **_build(_sync_hit_factories(keywords=keywords), fn, table)}
    instrumented = _otel.add_row(table, functions, _peers.coalesce_ttl, fn)  # P11
    measures = _otel.wrap(_measure_sync(table, functions, call, budget), instrumented)
    interleave(table, measures, budget.repeats, rng, slices=SLICES)
    _otel.note(table, functions, instrumented)
    table.notes.append(
        "`plain function` is the undecorated function: the floor no cache can go under."
    )
    if keywords:
        table.notes.append(
            "dogpile.cache is given `kwarg_function_key_generator`: its default refuses keywords."
        )
    return table


def _async_hit_factories() -> dict[str, Factory]:
    return {
        "coalesce": _peers.coalesce_ttl,
        "async-lru": _peers.async_lru_ttl,
        "cachebox": _peers.cachebox_ttl,
        "cashews": _peers.cashews_memory,
        "aiocache": _peers.aiocache_memory,
    }


def _measure_async(
    table: Table,
    functions: dict[str, Callable[..., Any]],
    call: str,
    budget: Budget,
    loop: asyncio.AbstractEventLoop,
) -> dict[str, Measure]:
    measures: dict[str, Measure] = {}
    for name, f in functions.items():
        try:

            async def warm(f: Callable[..., Any] = f) -> None:
                await eval(call, {"f": f})

            loop.run_until_complete(warm())
            measures[name] = async_loop(f, call, budget.sample_ns, loop)
        except Exception as exc:
            table.errors[name] = f"{type(exc).__name__}: {exc}"
    return measures


def async_hit(budget: Budget, rng: random.Random) -> Table:
    """Async hit: one coroutine awaiting a warm key ``f(1)`` in a loop."""
    table = Table(key="async_hit", title="Async hit `await f(1)` with ttl", unit="CPU ns/call")
    table.baseline = "coalesce"
    functions = {"plain coroutine": _aone, **_build(_async_hit_factories(), _aone, table)}
    instrumented = _otel.add_row(table, functions, _peers.coalesce_ttl, _aone)  # P11
    loop = asyncio.new_event_loop()
    try:
        measures = _otel.wrap(_measure_async(table, functions, "f(1)", budget, loop), instrumented)
        interleave(table, measures, budget.repeats, rng, slices=SLICES)
    finally:
        close_loop(loop)
    _otel.note(table, functions, instrumented)
    table.notes.append("`plain coroutine` is `await f(1)` on the undecorated `async def`.")
    return table


def sync_dedup(budget: Budget, rng: random.Random) -> Table:
    """Dedup only, no contention: ``f(1)`` through a flight registry that is always empty."""
    table = Table(
        key="sync_dedup", title="Dedup only, uncontended, sync `f(1)`", unit="CPU ns/call"
    )
    table.baseline = "coalesce"
    factories: dict[str, Factory] = {
        "coalesce": _peers.coalesce_bare,
        "coalescer": _peers.coalescer_sync,
        "singleflight": _peers.singleflight_sync,
    }
    functions = {"plain function": _one, **_build(factories, _one, table)}
    interleave(
        table, _measure_sync(table, functions, "f(1)", budget), budget.repeats, rng, slices=SLICES
    )
    table.notes.append("singleflight (threads) is keyed by `str(args)`: it takes only string keys.")
    return table


def async_dedup(budget: Budget, rng: random.Random) -> Table:
    """Dedup only, no contention: ``await f(1)`` with nobody else asking for the key."""
    table = Table(
        key="async_dedup", title="Dedup only, uncontended, async `await f(1)`", unit="CPU ns/call"
    )
    table.baseline = "coalesce"
    factories: dict[str, Factory] = {
        "coalesce": _peers.coalesce_bare,
        "coalescer": _peers.coalescer_async,
        "singleflight": _peers.singleflight_async,
        "singleflight (call, fixed key)": lambda: _peers.singleflight_async_direct("1"),
    }
    functions = {"plain coroutine": _aone, **_build(factories, _aone, table)}
    loop = asyncio.new_event_loop()
    try:
        measures = _measure_async(table, functions, "f(1)", budget, loop)
        interleave(table, measures, budget.repeats, rng, slices=SLICES)
        table.extra_columns = ("S7 (cancel the first caller)",)
        for name in functions:
            if name not in factories or name in table.errors:
                continue
            table.extra.setdefault(name, {})["S7 (cancel the first caller)"] = (
                loop.run_until_complete(_s7_holds(factories[name]))
            )
    finally:
        close_loop(loop)
    table.notes.append(
        "singleflight (asyncio) is keyed by `str(args)` like a decorator would be; the "
        "`call, fixed key` row is its cheapest use, a constant key and no wrapper."
    )
    table.notes.append(
        "S7 column: two callers share a flight, the first is cancelled, the second must "
        "still get the result from one execution."
    )
    return table


async def _s7_holds(factory: Factory) -> str:
    """Check S7 on a fresh decoration: cancelling the first caller leaves the second served."""
    gate = asyncio.Event()  # an Event, so a cancelled waiter cannot cancel the gate itself
    runs = 0

    async def work(x: int) -> int:
        nonlocal runs
        runs += 1
        await gate.wait()
        return x

    f = factory()(work)
    first = asyncio.ensure_future(f(1))
    second = asyncio.ensure_future(f(1))
    for _ in range(3):
        await asyncio.sleep(0)
    first.cancel()
    for _ in range(3):
        await asyncio.sleep(0)
    gate.set()
    try:
        result = await asyncio.wait_for(second, 5)
    except asyncio.CancelledError:
        return "no: the second caller was cancelled too"
    except TimeoutError:
        return "no: the second caller hung"
    except Exception as exc:
        return f"no: the second caller raised {type(exc).__name__}"
    if result != 1:
        return f"no: the second caller got {result!r}"
    if runs != 1:
        return f"no: {runs} executions"
    return "yes"
