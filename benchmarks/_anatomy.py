"""What a TTL hit is made of: the same loop over hand-built hit paths, one piece at a time.

Each row adds one piece to the one above it, so the differences say what each piece costs
on this machine: the call itself, a dictionary lookup, building a one-element tuple key,
reading the clock at call time (S13), counting the hit (S12). coalesce's own wrapper
and ``functools.lru_cache`` are measured in the same repeats for comparison. This is
what bounds P1's stretch bar and P2: no hit can cost less than the pieces it must do.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import random
import time
from collections.abc import Callable
from typing import Any

from benchmarks import _peers
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

_STEPS = (
    ("lookup, bare key", "x", "0.0", "pass"),
    ("+ key as a 1-tuple", "(x,)", "0.0", "pass"),
    ("+ clock read (time.monotonic)", "(x,)", "_time.monotonic()", "pass"),
    ("+ hit counted (count.__next__)", "(x,)", "_time.monotonic()", "_hit()"),
    ("bare key, clock, next(count)", "x", "_time.monotonic()", "_next(_count)"),
    ("bare key, clock, no count", "x", "_time.monotonic()", "pass"),
)


def _path(key: str, clock: str, count: str, *, is_async: bool) -> Callable[..., Any]:
    counter = itertools.count()
    namespace: dict[str, Any] = {
        "_data": {1: (1, float("inf")), (1,): (1, float("inf"))},
        "_time": time,
        "_hit": counter.__next__,
        "_next": next,
        "_count": counter,
    }
    source = (
        "def _factory(_data, _time, _hit, _next, _count):\n"
        f"    {'async ' if is_async else ''}def f(x):\n"
        f"        k = {key}\n"
        "        try:\n"
        "            e = _data[k]\n"
        "        except KeyError:\n"
        "            pass\n"
        "        else:\n"
        f"            if e[1] > {clock}:\n"
        f"                {count}\n"
        "                return e[0]\n"
        "    return f\n"
    )
    scope: dict[str, Any] = {}
    exec(compile(source, "<hit anatomy>", "exec"), scope)
    return scope["_factory"](**namespace)  # type: ignore[no-any-return]


def _one(x: Any) -> Any:
    return x


async def _aone(x: Any) -> Any:
    return x


def anatomy(budget: Budget, rng: random.Random, *, is_async: bool) -> Table:
    """The hit path taken apart, sync or async."""
    kind = "async" if is_async else "sync"
    table = Table(
        key=f"{kind}_hit_anatomy",
        title=f"Anatomy of {'an async' if is_async else 'a sync'} hit "
        f"`{'await ' if is_async else ''}f(1)`",
        unit="CPU ns/call",
        baseline="plain coroutine" if is_async else "plain function",
    )
    functions: dict[str, Callable[..., Any]] = {
        ("plain coroutine" if is_async else "plain function"): _aone if is_async else _one,
    }
    for name, key, clock, count in _STEPS:
        functions[name] = _path(key, clock, count, is_async=is_async)
    try:
        functions["coalesce"] = _peers.coalesce_ttl()(_aone if is_async else _one)
    except ImportError:
        table.notes.append("coalesce: not importable.")
    if not is_async:
        functions["lru_cache"] = functools.lru_cache(maxsize=_peers.MAXSIZE)(_one)

    loop = asyncio.new_event_loop() if is_async else None
    try:
        measures: dict[str, Measure] = {}
        for name, f in functions.items():
            if loop is not None:

                async def warm(f: Callable[..., Any] = f) -> None:
                    await f(1)

                loop.run_until_complete(warm())
                measures[name] = async_loop(f, "f(1)", budget.sample_ns, loop)
            else:
                f(1)
                measures[name] = sync_loop(f, "f(1)", budget.sample_ns)
        interleave(table, measures, budget.repeats, rng, slices=SLICES)
    finally:
        if loop is not None:
            close_loop(loop)
    table.notes.append(
        "Hand-built hit paths. `lookup, bare key` is a dict lookup and an entry read; "
        "`+` rows add one piece each to the row before (a 1-tuple key, the clock read at "
        "call time that S13 requires, a hit counted with `itertools.count().__next__`). "
        "The `bare key` rows key by the argument itself and count with `next()`, or not "
        "at all."
    )
    return table
