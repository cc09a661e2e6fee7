"""The hit path on free-threaded CPython (SPEC V4): coalesce beside lru_cache and dict.get.

Indicative, not a bar: one warm key, timed in one run for three callables,

- ``coalesce``: ``@singleflight(ttl=60)``, a hit (no lock: one dict lookup, one clock
  read, one counter step);
- ``lru_cache``: ``@functools.lru_cache``, a hit (C; no TTL);
- ``dict.get``: ``cache.get(1)`` on a plain ``dict``, the floor of any cache lookup;

first in one thread (nanoseconds per call, median of interleaved slices), then in
several threads at once (calls per second, all threads together), which shows
whether hits scale without the GIL. Needs only the standard library and coalesce, so
it runs where the bench extra does not install::

    PYTHON_GIL=0 python -m benchmarks.freethreaded_hits            # about 30 s
    PYTHON_GIL=0 python -m benchmarks.freethreaded_hits --quick    # about 5 s

(from the repository's root). At the end it checks that coalesce counted every hit
of every thread: its counters are exact without the GIL too (S12).
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import statistics
import sys
import sysconfig
import threading
import time
import timeit
from collections.abc import Callable
from typing import Any

from coalesce import singleflight


def _one(x: Any) -> Any:
    return x


def _callables() -> dict[str, Callable[[Any], Any]]:
    cache = {1: 1}
    built: dict[str, Callable[[Any], Any]] = {
        "coalesce": singleflight(ttl=60)(_one),
        "lru_cache": functools.lru_cache(maxsize=None)(_one),
        "dict.get": cache.get,
    }
    for f in built.values():
        f(1)  # warm: the first call of a cache is its miss
    return built


def _per_call_ns(
    built: dict[str, Callable[[Any], Any]], slices: int, number: int
) -> dict[str, float]:
    """Median ns per call over ``slices`` slices, the callables interleaved slice by slice."""
    timers = {
        name: timeit.Timer("f(1); f(1); f(1); f(1); f(1)", globals={"f": f})
        for name, f in built.items()
    }
    samples: dict[str, list[float]] = {name: [] for name in built}
    for _ in range(slices):
        for name, timer in timers.items():
            samples[name].append(timer.timeit(number) / (number * 5) * 1e9)
    return {name: statistics.median(values) for name, values in samples.items()}


def _throughput(f: Callable[[Any], Any], threads: int, calls: int) -> float:
    """Calls per second of ``threads`` threads each making ``calls`` hits, started together."""
    barrier = threading.Barrier(threads + 1)
    done: list[float] = []

    def worker() -> None:
        barrier.wait(30)
        for _ in range(calls // 5):
            f(1)
            f(1)
            f(1)
            f(1)
            f(1)
        done.append(time.perf_counter())

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for thread in pool:
        thread.start()
    barrier.wait(30)
    start = time.perf_counter()
    for thread in pool:
        thread.join(120)
    if len(done) != threads:
        raise RuntimeError("a benchmark thread did not finish")
    return threads * calls / (max(done) - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter samples")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 2, help="threads for the second table"
    )
    args = parser.parse_args(argv)
    slices, number, calls, rounds = (
        (7, 20_000, 100_000, 3) if args.quick else (21, 50_000, 400_000, 5)
    )

    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    free = sysconfig.get_config_var("Py_GIL_DISABLED") == 1
    print(f"Python {sys.version.split()[0]} on {sys.platform}, {os.cpu_count()} CPUs")
    print(f"free-threaded build: {free}; GIL enabled now: {gil}")
    if not free or gil:
        print("note: not a free-threaded run (build with --disable-gil, run with PYTHON_GIL=0)")

    built = _callables()
    gc_was = gc.isenabled()
    gc.disable()
    try:
        ns = _per_call_ns(built, slices, number)
        rates: dict[str, dict[int, float]] = {name: {} for name in built}
        for _ in range(rounds):  # interleaved rounds, the best of each kept
            for name, f in built.items():
                for n in (1, args.threads):
                    rate = _throughput(f, n, calls)
                    rates[name][n] = max(rates[name].get(n, 0.0), rate)
    finally:
        if gc_was:
            gc.enable()

    print()
    print("| hit of one warm key | ns per call, 1 thread | vs lru_cache | vs dict.get |")
    print("|---|---:|---:|---:|")
    for name, value in ns.items():
        print(
            f"| {name} | {value:.1f} | {value / ns['lru_cache']:.2f}x "
            f"| {value / ns['dict.get']:.2f}x |"
        )
    print()
    n = args.threads
    print(f"| hit of one warm key | calls/s, 1 thread | calls/s, {n} threads | scaling |")
    print("|---|---:|---:|---:|")
    for name, by_threads in rates.items():
        one, many = by_threads[1], by_threads[n]
        print(f"| {name} | {one / 1e6:.2f} M | {many / 1e6:.2f} M | {many / one:.2f}x |")
    info = built["coalesce"].cache_info()  # type: ignore[attr-defined]
    expected = slices * number * 5 + rounds * (1 + n) * (calls // 5 * 5)
    print()
    print(f"coalesce counted {info.hits} hits and {info.misses} miss; {expected} hits were made")
    if (info.hits, info.misses) != (expected, 1):
        raise SystemExit("coalesce's counters are not exact: see above")


if __name__ == "__main__":
    main()
