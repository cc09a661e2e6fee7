"""How every number is taken: interleaved repeats in shuffled order, medians, medians of ratios.

On a small, noisy machine the absolute time of one contender drifts from second to second
(other processes, frequency scaling, the cache of the shared core). Comparing contenders
measured minutes apart would compare those drifts. So every repeat measures every contender
once, in a freshly shuffled order, and a ratio is taken inside each repeat before the median
over repeats is taken: the drift common to one repeat cancels out.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import random
import statistics
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

#: Calls written out per loop iteration, so the loop's own cost is spread thin.
UNROLL = 10

#: The clock of single-threaded timings: CPU time of the measuring thread, so time the
#: machine gives to other processes while a sample runs is not charged to it.
cpu_ns = time.thread_time_ns

Measure = Callable[[], float]


def is_ours(name: str) -> bool:
    """True for coalesce's own rows ("coalesce", "coalesce (no ttl)"), not for "coalescer"."""
    return name == "coalesce" or name.startswith("coalesce ")


@dataclass(frozen=True, slots=True)
class Budget:
    """How long a run may take: repeats per scenario and time per timed sample."""

    repeats: int
    sample_ns: int
    stampede_repeats: int
    thread_repeats: int
    quick: bool
    stampede_slices: int = 1  # stampedes run per contender per repeat; the fastest is kept


FULL = Budget(
    repeats=21,
    sample_ns=20_000_000,
    stampede_repeats=5,
    thread_repeats=5,
    quick=False,
    stampede_slices=2,
)
QUICK = Budget(repeats=5, sample_ns=4_000_000, stampede_repeats=2, thread_repeats=3, quick=True)


@dataclass(slots=True)
class Table:
    """One scenario's results: per-contender samples (one per repeat) and extra columns."""

    key: str
    title: str
    unit: str
    samples: dict[str, list[float]] = field(default_factory=dict)
    baseline: str | None = None
    extra: dict[str, dict[str, str]] = field(default_factory=dict)
    extra_columns: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)

    def median(self, name: str) -> float:
        return statistics.median(self.samples[name])

    def has(self, *names: str) -> bool:
        return all(self.samples.get(name) for name in names)

    def ratio(self, name: str, other: str) -> float:
        """Median over repeats of ``name / other`` taken within each repeat."""
        pairs = zip(self.samples[name], self.samples[other], strict=True)
        return statistics.median(a / b for a, b in pairs)

    def overhead_ratio(self, name: str, other: str, base: str) -> float:
        """Median over repeats of ``(name - base) / (other - base)``: a ratio of overheads."""
        triples = zip(self.samples[name], self.samples[other], self.samples[base], strict=True)
        return statistics.median((a - c) / (b - c) for a, b, c in triples)

    def overhead(self, name: str, base: str) -> float:
        """Median over repeats of ``name - base``."""
        pairs = zip(self.samples[name], self.samples[base], strict=True)
        return statistics.median(a - b for a, b in pairs)

    def spread(self, name: str) -> float:
        """Half the interquartile range, as a fraction of the median (0.02 means +-2%)."""
        values = self.samples[name]
        if len(values) < 4:
            return (max(values) - min(values)) / 2 / statistics.median(values)
        q1, _, q3 = statistics.quantiles(values, n=4)
        return (q3 - q1) / 2 / statistics.median(values)


def interleave(
    table: Table,
    measures: Mapping[str, Measure],
    repeats: int,
    rng: random.Random,
    *,
    slices: int = 1,
    collect_each: bool = False,
) -> None:
    """Run every measure once per repeat, in a new shuffled order each time, into ``table``.

    With ``slices`` above 1, a repeat is cut finer: each measure runs ``slices`` times, every
    slice in a new order, and the repeat's value is the fastest slice. On a shared machine
    noise only ever adds time (another process takes the core for a while), so the fastest
    slice is the one least disturbed; the median over repeats then guards against a
    repeat that was disturbed throughout. The garbage collector runs before each repeat
    and, when ``slices`` is 1 or ``collect_each`` is set, before each measure too (a
    stampede leaves much behind); it is paused while a measure runs. A measure that
    raises is dropped from the rest of the run and its error kept in ``table.errors``;
    the caller decides whether that matters.
    """
    live = dict(measures)
    for name in live:
        table.samples.setdefault(name, [])
    for _ in range(repeats):
        best = dict.fromkeys(live, float("inf"))
        gc.collect()
        for _ in range(slices):
            order = list(live)
            rng.shuffle(order)
            for name in order:
                if name not in live:
                    continue
                if slices == 1 or collect_each:
                    gc.collect()
                enabled = gc.isenabled()
                gc.disable()
                try:
                    best[name] = min(best[name], live[name]())
                except Exception as exc:
                    table.errors[name] = f"{type(exc).__name__}: {exc}"
                    del live[name]
                finally:
                    if enabled:
                        gc.enable()
        for name in live:
            table.samples[name].append(best[name])
    for name in table.errors:
        table.samples.pop(name, None)


SLICES = 8  # slices per repeat for the loop-timed scenarios (hits, dedup-only calls)


def _compile_loop(call: str, *, is_async: bool) -> Callable[..., Any]:
    """Build ``run(n, f)``: ``n`` iterations of ``UNROLL`` copies of ``call``, timed in ns."""
    statement = f"await {call}" if is_async else call
    body = "\n".join(f"        {statement}" for _ in range(UNROLL))
    prefix = "async def" if is_async else "def"
    source = (
        f"{prefix} run(n, f, _repeat=_repeat, _now=_now):\n"
        "    it = _repeat(None, n)\n"
        "    t0 = _now()\n"
        "    for _ in it:\n"
        f"{body}\n"
        "    return _now() - t0\n"
    )
    namespace: dict[str, Any] = {"_repeat": itertools.repeat, "_now": cpu_ns}
    exec(compile(source, f"<benchmark loop {call}>", "exec"), namespace)
    return namespace["run"]  # type: ignore[no-any-return]


def _calibrate(run: Callable[[int], int], sample_ns: int) -> int:
    """Pick the iteration count that makes one sample last about ``sample_ns``."""
    run(50)  # warm: first calls fill caches, specialise bytecode
    n = 50
    while True:
        elapsed = run(n)
        if elapsed >= sample_ns // 8 or n >= 10_000_000:
            break
        n *= 4
    return max(1, round(n * sample_ns / max(elapsed, 1)))


def sync_loop(f: Callable[..., Any], call: str, sample_ns: int) -> Measure:
    """A measure of ns per ``call`` (source text calling ``f``), one slice of ``sample_ns``."""
    loop = _compile_loop(call, is_async=False)

    def run(n: int) -> int:
        return int(loop(n, f))

    n = _calibrate(run, sample_ns // SLICES)
    return lambda: run(n) / (n * UNROLL)


def async_loop(
    f: Callable[..., Any], call: str, sample_ns: int, event_loop: asyncio.AbstractEventLoop
) -> Measure:
    """A measure of ns per ``await call``, one coroutine awaiting in a loop on ``event_loop``."""
    loop = _compile_loop(call, is_async=True)

    def run(n: int) -> int:
        coro: Coroutine[Any, Any, int] = loop(n, f)
        return event_loop.run_until_complete(coro)

    n = _calibrate(run, sample_ns // SLICES)
    return lambda: run(n) / (n * UNROLL)


def close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what the peers left running on ``loop`` (expiry sweepers, lock waiters), close it."""
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()
