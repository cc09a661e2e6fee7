"""Batches (SPEC P9): coalesce's ``collect=0`` beside aiodataloader and strawberry's DataLoader.

Two measurements, in one run:

- **gather**: 1,000 concurrent ``user(id)`` calls on distinct ids, cold, with
  ``collect=0, max_batch=100`` (coalesce) and ``max_batch_size=100`` (the two
  dataloaders), each over the same trivial batch function. It checks that each makes
  10 batch calls, and times the CPU cost per id (``time.process_time``, whole gather
  included: 1,000 resolver tasks, each awaiting one load as a GraphQL resolver does,
  the batching, the batch calls, the answers),
  interleaving the three repeat by repeat; the bar is the median, over repeats, of
  coalesce's cost over each peer's (at most 1.0).
- **join**: one batch call of 100 ids, of which 50 are cached and 25 are in flight
  (``user(id)`` executions held open): the batch function must be called once, with
  the 25 others.

Run from the repository's root (needs the ``bench`` extra: aiodataloader and
strawberry-graphql)::

    python -m benchmarks.batches            # about 10 s
    python -m benchmarks.batches --quick    # about 2 s

The exit status is 1 when a count is wrong (not when a ratio misses its bar).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from benchmarks._method import Budget, Table
from coalesce import singleflight

N = 1000
MAX_BATCH = 100


def _coalesce_case() -> tuple[Callable[[int], Awaitable[Any]], list[int]]:
    calls: list[int] = []

    @singleflight(key="user_id", ttl=60, maxsize=None)
    async def user(user_id: int) -> int:
        return user_id

    @user.batch(max_batch=MAX_BATCH, collect=0)
    async def users(ids: list[int]) -> Mapping[int, int]:
        calls.append(len(ids))
        return {i: i for i in ids}

    return user, calls


def _aiodataloader_case() -> tuple[Callable[[int], Awaitable[Any]], list[int]]:
    from aiodataloader import DataLoader

    calls: list[int] = []

    async def load(ids: list[int]) -> list[int]:
        calls.append(len(ids))
        return list(ids)

    loader: Any = DataLoader(load, max_batch_size=MAX_BATCH)
    return loader.load, calls


def _strawberry_case() -> tuple[Callable[[int], Awaitable[Any]], list[int]]:
    from strawberry.dataloader import DataLoader

    calls: list[int] = []

    async def load(ids: list[int]) -> list[int]:
        calls.append(len(ids))
        return list(ids)

    loader: DataLoader[int, int] = DataLoader(load_fn=load, max_batch_size=MAX_BATCH)
    return loader.load, calls


CASES: dict[str, Callable[[], tuple[Callable[[int], Awaitable[Any]], list[int]]]] = {
    "coalesce (collect=0)": _coalesce_case,
    "aiodataloader": _aiodataloader_case,
    "strawberry DataLoader": _strawberry_case,
}


async def _gather_once(
    make: Callable[[], tuple[Callable[[int], Awaitable[Any]], list[int]]],
) -> tuple[float, list[int]]:
    load, calls = make()
    ids = range(N)

    async def resolver(i: int) -> Any:  # each load awaited by a coroutine of its own
        return await load(i)

    gc.collect()
    start = time.process_time()
    values = await asyncio.gather(*(resolver(i) for i in ids))
    spent = time.process_time() - start
    assert list(values) == list(ids), "wrong answers"
    return spent, calls


async def _gather(repeats: int) -> tuple[dict[str, list[float]], dict[str, list[int]]]:
    """Per-id CPU costs (seconds) and the batch calls made, of each contender installed."""
    batch_calls: dict[str, list[int]] = {}
    cases = {}
    for name, make in CASES.items():  # warm-up: imports, first-call costs
        try:
            batch_calls[name] = (await _gather_once(make))[1]
        except ImportError:
            continue
        cases[name] = make
    costs: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, make in cases.items():
            spent, _ = await _gather_once(make)
            costs[name].append(spent / N)
    return costs, batch_calls


async def _join() -> tuple[list[list[int]], int]:
    """100 ids: 50 cached, 25 in flight, 25 others; returns the batch calls and singles run."""
    held = asyncio.Event()
    all_started = asyncio.Event()
    batch_started = asyncio.Event()
    singles: list[int] = []
    batches: list[list[int]] = []

    @singleflight(key="user_id", ttl=60)
    async def user(user_id: int) -> int:
        singles.append(user_id)
        if len(singles) == 75:
            all_started.set()
        if user_id >= 50:
            await held.wait()
        return user_id

    @user.batch()
    async def users(ids: list[int]) -> Mapping[int, int]:
        batches.append(list(ids))
        batch_started.set()
        return {i: i for i in ids}

    await asyncio.gather(*(user(i) for i in range(50)))  # 0-49 cached
    flying = [asyncio.ensure_future(user(i)) for i in range(50, 75)]  # 50-74 in flight
    await all_started.wait()
    batch = asyncio.ensure_future(users(range(100)))
    await batch_started.wait()
    held.set()
    found = await batch
    await asyncio.gather(*flying)
    assert found == {i: i for i in range(100)}, "wrong answers"
    return batches, len(singles)


OURS = "coalesce (collect=0)"
EXPECTED = [MAX_BATCH] * (N // MAX_BATCH)  # the batch calls' sizes: 10 x 100
PEERS = ("aiodataloader", "strawberry DataLoader")
TABLE_KEY = "batches"


def table(budget: Budget, rng: random.Random) -> Table:
    """P9 for ``python -m benchmarks``: CPU ns per id beside the peers, the batch calls
    made, and the join check as a note (``rng`` unused: the order is fixed)."""
    del rng
    result = Table(
        key=TABLE_KEY,
        title=f"Batches (P9): {N:,} concurrent loads of distinct ids, max batch {MAX_BATCH}",
        unit="CPU ns/id",
        extra_columns=("batch calls",),
    )
    costs, batch_calls = asyncio.run(_gather(budget.repeats * 2))
    for name in CASES:
        if name in costs:
            result.samples[name] = [cost * 1e9 for cost in costs[name]]
            result.extra[name] = {"batch calls": str(len(batch_calls[name]))}
    for name in PEERS:
        if name not in costs:
            result.notes.append(f"{name}: skipped, not installed.")
    if batch_calls[OURS] != EXPECTED:
        result.errors[OURS] = f"batch calls of sizes {batch_calls[OURS]}, not 10 x 100"
    batches, singles = asyncio.run(_join())
    sizes = [len(batch) for batch in batches]
    result.notes.append(
        f"Join: one batch of 100 ids, 50 cached and 25 in flight, made {len(batches)} batch "
        f"call(s) of {sizes} ids (right: one call of the 25 others); user() ran {singles} times"
    )
    if batches != [list(range(75, 100))]:
        result.errors[OURS] = f"the join batch calls were {batches}, not one call with ids 75-99"
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.batches", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few repeats (rough)")
    parser.add_argument("--repeats", type=int, default=None, help="repeats (default 60, quick 10)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (10 if args.quick else 60)
    problems: list[str] = []

    print(
        f"Python {sys.version.split()[0]}; {N} concurrent loads of distinct ids, "
        f"max batch {MAX_BATCH}"
    )
    costs, batch_calls = asyncio.run(_gather(repeats))
    print(f"\n{'':24} {'batch calls':>12} {'CPU us per id (median)':>24}")
    for name in costs:
        print(
            f"{name:24} {len(batch_calls[name]):>12} {statistics.median(costs[name]) * 1e6:>24.2f}"
        )
    if batch_calls[OURS] != EXPECTED:
        problems.append(f"coalesce made batch calls of sizes {batch_calls[OURS]}, not 10 x 100")
    ours = costs[OURS]
    print(f"\nP9, coalesce's CPU cost per id over each peer's (median of {repeats} ratios):")
    for peer in PEERS:
        if peer not in costs:
            print(f"  vs {peer:22} skipped, not installed")
            continue
        ratio = statistics.median(a / b for a, b in zip(ours, costs[peer], strict=True))
        verdict = "ok" if ratio <= 1.0 else "MISSED"
        print(f"  vs {peer:22} {ratio:5.2f}x  (bar: at most 1.0x) {verdict}")

    batches, singles = asyncio.run(_join())
    others = list(range(75, 100))
    print(
        "\nJoin: a batch of 100 ids, 50 cached and 25 in flight: "
        f"{len(batches)} batch call(s), with {len(batches[0]) if batches else 0} ids "
        f"({'the 25 others' if batches == [others] else 'WRONG'}); user() ran {singles} times"
    )
    if batches != [others]:
        problems.append(f"the join batch calls were {batches}, not one call with ids 75-99")
    for problem in problems:
        print(f"ERROR: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
