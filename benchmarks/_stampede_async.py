"""Async stampede (P3): many coroutines ask for a cold key at once; it must run once.

Every execution parks on a per-key gate, so all the callers are waiting before it ends. The
clock runs from creating the caller tasks to the last of them returning; the floor is the
same number of tasks awaiting one bare shared ``asyncio.Future`` per key.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

from benchmarks import _peers
from benchmarks._method import Budget, Table, close_loop, cpu_ns, interleave

FLOOR = "bare Future (floor)"
SLOW_PEERS_UP_TO = 1000  # callers; past this, the sleep-polling peers are left out
Factory = Callable[[], _peers.Decorator]


def _factories(callers: int) -> dict[str, Factory]:
    found: dict[str, Factory] = {
        "coalesce": _peers.coalesce_ttl,
        "coalesce (no ttl)": _peers.coalesce_bare,
        "async-lru": _peers.async_lru_ttl,
        "cachebox": _peers.cachebox_ttl,
        "coalescer": _peers.coalescer_async,
        "singleflight": _peers.singleflight_async,
    }
    if callers <= SLOW_PEERS_UP_TO:
        # Both wait by sleeping, so they cost the run seconds per repeat at 10,000 callers.
        found["cashews (lock=True)"] = lambda: _peers.cashews_memory(lock=True)
        found["aiocache (cached_stampede)"] = lambda: _peers.aiocache_memory(stampede=True)
    return found


class _Run:
    """One stampede: ``keys`` cold keys, ``waiters`` callers each, one fresh decoration."""

    def __init__(self, keys: int, waiters: int) -> None:
        self.keys = keys
        self.waiters = waiters
        self.most = 0  # the most executions any key saw in any one repeat
        self.wrong = 0

    async def run(self, factory: Factory | None) -> float:
        loop = asyncio.get_running_loop()
        gates: list[asyncio.Future[None]] = [loop.create_future() for _ in range(self.keys)]
        executions: Counter[int] = Counter()

        async def work(key: int) -> int:
            executions[key] += 1
            await gates[key]
            return key

        async def floor(key: int) -> None:
            await gates[key]

        f: Callable[[int], Any] = floor if factory is None else factory()(work)
        keys = self.keys
        t0 = cpu_ns()
        tasks = [loop.create_task(f(i % keys)) for i in range(keys * self.waiters)]
        await asyncio.sleep(0)
        for gate in gates:
            gate.set_result(None)
        results = await asyncio.gather(*tasks)
        elapsed = cpu_ns() - t0
        if factory is not None:
            self.wrong += sum(1 for i, r in enumerate(results) if r != i % keys)
            self.most = max([self.most, *executions.values()])
        return elapsed / len(tasks)


def stampede(budget: Budget, rng: random.Random, *, keys: int, waiters: int) -> Table:
    """``keys`` cold keys x ``waiters`` coroutines, each contender decorated anew per repeat."""
    label = (
        f"{waiters:,} coroutines on one cold key"
        if keys == 1
        else (f"{keys} cold keys x {waiters} coroutines")
    )
    table = Table(
        key=f"async_stampede_{keys}x{waiters}",
        title=f"Async stampede: {label}",
        unit="CPU ns/waiter",
        baseline=FLOOR,
        extra_columns=("executions per key", "wrong results"),
    )
    runs: dict[str, _Run] = {}
    factories: dict[str, Factory | None] = {FLOOR: None}
    for name, make in _factories(keys * waiters).items():
        try:
            make()
        except ImportError as exc:
            table.notes.append(f"{name}: skipped, not installed ({exc.name}).")
            continue
        factories[name] = make

    loop = asyncio.new_event_loop()
    try:
        measures: dict[str, Callable[[], float]] = {}
        for name, factory in factories.items():
            run = runs[name] = _Run(keys, waiters)

            def measure(run: _Run = run, factory: Factory | None = factory) -> float:
                return loop.run_until_complete(asyncio.wait_for(run.run(factory), 60))

            measures[name] = measure
        interleave(
            table,
            measures,
            budget.stampede_repeats,
            rng,
            slices=budget.stampede_slices,
            collect_each=True,
        )
    finally:
        close_loop(loop)

    for name, run in runs.items():
        if name == FLOOR or name in table.errors:
            continue
        table.extra[name] = {"executions per key": str(run.most), "wrong results": str(run.wrong)}
    table.notes.append(
        "CPU time of the event loop's thread, from creating the callers to the last result, "
        "per caller. executions per key: the most any key ran in one repeat (1 means no "
        "stampede)."
    )
    if keys * waiters <= SLOW_PEERS_UP_TO:
        table.notes.append(
            "cashews with `lock=True` waits by polling every 0.1 s, and aiocache's "
            "`cached_stampede` through a lock with a timeout: their callers also wait "
            "longer than the CPU time shows. Both are measured here only, with 1,000 callers."
        )
    return table


def max_executions(table: Table, name: str) -> float | None:
    """The most executions one key saw in one repeat, for the no-stampede check."""
    cell = table.extra.get(name, {}).get("executions per key")
    return None if cell is None else float(cell)
