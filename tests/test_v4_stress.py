"""V4 (with S1, S3, S12, S17): 16 threads x many keys x many bursts, on every interpreter.

Written for free-threaded CPython (3.13t), where nothing serialises the threads, and
run on every interpreter CI has. Each burst starts behind a barrier; the counters the
library reports must add up to what the functions saw, exactly.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import cachetools
import pytest
from _core_support import WAIT, eventually
from freezegun import freeze_time

from coalesce import singleflight

THREADS = 16
KEYS = 48
BURSTS = 12
HOT_BURSTS = 200  # the race this guards against showed once in 200 bursts
ROUNDS = 1000


def _in_threads(body: Callable[[int], None], n: int = THREADS) -> None:
    """Run ``body(index)`` in ``n`` threads; re-raise the first failure (bounded joins)."""
    errors: list[BaseException] = []

    def target(index: int) -> None:
        try:
            body(index)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 3)
    assert not any(thread.is_alive() for thread in threads), "a stress thread hung"
    if errors:
        raise errors[0]


def _rotated(index: int, keys: list[Any]) -> list[Any]:
    """Each thread walks the keys from its own starting point, so flights overlap."""
    start = index * len(keys) // THREADS
    return keys[start:] + keys[:start]


def _deep(depth: int, fn: Callable[..., Any], *args: Any) -> Any:
    """Call ``fn`` a few frames down: freezegun gives real time near a thread's entry."""
    return _deep(depth - 1, fn, *args) if depth else fn(*args)


class _Runs:
    """What the decorated function saw: executions per key, and overlaps of one key."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.executions: Counter[Any] = Counter()
        self.running: Counter[Any] = Counter()
        self.overlaps: list[Any] = []

    def enter(self, key: Any) -> None:
        with self.lock:
            self.executions[key] += 1
            self.running[key] += 1
            if self.running[key] > 1:
                self.overlaps.append(key)

    def leave(self, key: Any) -> None:
        with self.lock:
            self.running[key] -= 1

    def total(self) -> int:
        with self.lock:
            return sum(self.executions.values())


def test_v4_one_leader_per_key_among_16_threads() -> None:
    """V4/S1: 16 threads racing on one cold key elect one leader, burst after burst."""
    runs = _Runs()
    barrier = threading.Barrier(THREADS)

    @singleflight
    def hot(burst: int) -> object:
        runs.enter(burst)
        # The leader holds until all 16 callers are counted (itself and 15 joiners).
        eventually(lambda: hot.cache_info().misses >= THREADS * (burst + 1), "16 callers")
        runs.leave(burst)
        return object()

    results: dict[int, list[object]] = {burst: [] for burst in range(HOT_BURSTS)}

    def body(index: int) -> None:
        for burst in range(HOT_BURSTS):
            barrier.wait(WAIT)
            results[burst].append(hot(burst))

    _in_threads(body)
    assert runs.executions == Counter(range(HOT_BURSTS))  # each burst's key exactly once
    assert runs.overlaps == []
    for shared in results.values():
        assert len(shared) == THREADS
        assert all(value is shared[0] for value in shared)
    info = hot.cache_info()
    assert (info.hits, info.misses, info.coalesced, info.errors, info.in_flight) == (
        0,
        THREADS * HOT_BURSTS,
        (THREADS - 1) * HOT_BURSTS,
        0,
        0,
    )


def test_v4_pure_coalescing_counters_add_up() -> None:
    """V4/S12: without a cache, misses - coalesced is the executions run; no key overlaps."""
    runs = _Runs()
    barrier = threading.Barrier(THREADS)
    keys = list(range(KEYS))

    @singleflight
    def load(key: int) -> int:
        runs.enter(key)
        time.sleep(0)  # let other threads run while this key is in flight
        runs.leave(key)
        return key * 2

    def body(index: int) -> None:
        for _ in range(BURSTS):
            barrier.wait(WAIT)
            for key in _rotated(index, keys):
                assert load(key) == key * 2

    _in_threads(body)
    info = load.cache_info()
    calls = THREADS * KEYS * BURSTS
    assert runs.overlaps == []  # never two executions of one key at once
    assert info.hits == 0
    assert info.misses == calls
    assert info.misses - info.coalesced == runs.total()
    assert (info.errors, info.in_flight, info.currsize) == (0, 0, 0)


# The caches a burst runs against: the built-in store (hits take no lock, S6) and
# users' mappings, which only the guard protects (S17): neither a dict nor a
# cachetools cache is safe to share between free threads on its own.
STORES: dict[str, Callable[[], dict[str, Any]]] = {
    "ttl": lambda: {"ttl": 3600, "maxsize": None},
    "ttl-bounded": lambda: {"ttl": 3600, "maxsize": KEYS},
    "dict": lambda: {"cache": {}},
    "ttlcache": lambda: {"cache": cachetools.TTLCache(maxsize=KEYS, ttl=3600)},
    "lru": lambda: {"cache": cachetools.LRUCache(maxsize=KEYS)},
}


@pytest.mark.parametrize("options", STORES.values(), ids=STORES.keys())
def test_v4_cached_each_key_once_per_burst(options: Callable[[], dict[str, Any]]) -> None:
    """V4/S3/S12: with a cache, every key of a burst runs once; hits + misses == calls."""
    runs = _Runs()
    barrier = threading.Barrier(THREADS)

    @singleflight(**options())
    def load(key: tuple[int, int]) -> tuple[int, int]:
        runs.enter(key)
        runs.leave(key)
        return key

    def body(index: int) -> None:
        for burst in range(BURSTS):
            keys = [(burst, k) for k in range(KEYS)]  # fresh keys: each burst is cold
            barrier.wait(WAIT)
            for key in _rotated(index, keys):
                assert load(key) == key

    _in_threads(body)
    info = load.cache_info()
    calls = THREADS * KEYS * BURSTS
    assert runs.executions == Counter({(b, k): 1 for b in range(BURSTS) for k in range(KEYS)})
    assert runs.overlaps == []
    assert info.hits + info.misses == calls
    assert info.misses - info.coalesced == KEYS * BURSTS
    assert (info.errors, info.in_flight) == (0, 0)
    # The last burst's results are all still kept (older ones may have been evicted).
    assert info.currsize >= KEYS
    assert all(load.cache[(BURSTS - 1, k)] == (BURSTS - 1, k) for k in range(KEYS))


def test_v4_expiry_never_drops_a_result_just_stored() -> None:
    """V4/S13: bursts after every result expired: the fresh ones stored meanwhile all stay."""
    runs = _Runs()
    barrier = threading.Barrier(THREADS)
    keys = list(range(KEYS))
    generation = itertools.count()

    with freeze_time("2026-03-01") as frozen:

        @singleflight(ttl=10, maxsize=None)
        def load(key: int) -> tuple[int, int]:
            runs.enter(key)
            runs.leave(key)
            return key, next(generation)

        def body(index: int) -> None:
            for _ in range(BURSTS):
                if barrier.wait(WAIT) == 0:
                    frozen.tick(11)  # every result stored so far has expired
                barrier.wait(WAIT)
                for key in _rotated(index, keys):
                    _deep(6, load, key)
                barrier.wait(WAIT)
                # Expired entries were dropped while fresh ones were stored: every
                # key of this burst is a hit now, in every thread.
                before = runs.total()
                for key in keys:
                    _deep(6, load, key)
                barrier.wait(WAIT)
                assert runs.total() == before

        _in_threads(body)
    info = load.cache_info()
    assert runs.executions == Counter(dict.fromkeys(keys, BURSTS))
    assert runs.overlaps == []
    assert info.hits + info.misses == THREADS * KEYS * BURSTS * 2
    assert info.misses - info.coalesced == KEYS * BURSTS
    assert (info.errors, info.in_flight) == (0, 0)


@pytest.mark.parametrize("cached", [False, True], ids=["coalescing", "ttl"])
def test_v4_async_loops_in_16_threads(cached: bool) -> None:
    """V4/S10/S12: 16 event loops in 16 threads share one registry and cache exactly."""
    runs = _Runs()
    barrier = threading.Barrier(THREADS)
    per_loop: Counter[tuple[int, int, int]] = Counter()
    lock = threading.Lock()

    async def work(key: tuple[int, int]) -> tuple[int, int]:
        me = threading.get_ident()
        with lock:
            per_loop[(me, *key)] += 1
        runs.enter(key)
        runs.leave(key)
        await asyncio.sleep(0)  # suspend, so this loop's second call joins
        return key

    load = singleflight(ttl=3600, maxsize=None)(work) if cached else singleflight(work)

    def body(index: int) -> None:
        async def bursts() -> None:
            for burst in range(BURSTS):
                keys = [(burst, k) for k in range(KEYS)]
                barrier.wait(WAIT)
                calls = [load(key) for key in _rotated(index, keys) for _ in range(2)]
                assert await asyncio.wait_for(asyncio.gather(*calls), WAIT) == [
                    key for key in _rotated(index, keys) for _ in range(2)
                ]

        asyncio.run(bursts())

    _in_threads(body)
    info = load.cache_info()
    calls = THREADS * KEYS * BURSTS * 2
    assert max(per_loop.values()) == 1  # one execution per key per loop at most
    assert info.hits + info.misses == calls
    assert info.misses - info.coalesced == runs.total()
    assert (info.errors, info.in_flight) == (0, 0)
    if cached:
        # Every key ran at least once and at most once per loop.
        assert set(runs.executions) == {(b, k) for b in range(BURSTS) for k in range(KEYS)}
    else:
        # No cache: each loop runs each key of each burst exactly once.
        assert runs.total() == THREADS * KEYS * BURSTS
        assert info.coalesced == THREADS * KEYS * BURSTS


def test_v4_forget_from_other_threads_racing_a_loop() -> None:
    """V4/S12: forget() from two other threads racing a loop's flights: counters add up."""
    runs = _Runs()
    stop = threading.Event()
    forgot = itertools.count()

    @singleflight
    async def load(key: int) -> int:
        runs.enter(key)
        await asyncio.sleep(0)
        runs.leave(key)
        return key

    def forgetter() -> None:
        while not stop.is_set():
            load.forget(0)
            next(forgot)

    async def calls() -> None:
        for _ in range(ROUNDS):
            # The later callers join the first's flight, unless it was forgotten.
            outcome = await asyncio.wait_for(asyncio.gather(load(0), load(0), load(0)), WAIT)
            assert outcome == [0, 0, 0]

    threads = [threading.Thread(target=forgetter, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        asyncio.run(calls())
    finally:
        stop.set()
        for thread in threads:
            thread.join(WAIT)
    info = load.cache_info()
    assert next(forgot) > 0
    assert info.misses == 3 * ROUNDS
    assert info.misses - info.coalesced == runs.total()
    assert (info.errors, info.in_flight) == (0, 0)


@pytest.mark.parametrize("cached", [False, True], ids=["coalescing", "ttl"])
def test_v4_cache_clear_from_another_thread_racing_loops(cached: bool) -> None:
    """V4/S18: cache_clear() in a loop of its own thread, while 4 event loops run flights."""
    stop = threading.Event()
    clears = itertools.count()

    async def work(key: int) -> int:
        if key % 2:
            await asyncio.sleep(0)  # half the executions suspend, half end in one step
        return key

    load = singleflight(ttl=3600)(work) if cached else singleflight(work)

    def clearer() -> None:
        while not stop.is_set():
            load.cache_clear()
            next(clears)

    def body(index: int) -> None:
        async def calls() -> None:
            for _ in range(ROUNDS // 4):
                keys = list(range(8))
                outcome = await asyncio.wait_for(
                    asyncio.gather(*(load(k) for k in keys for _ in range(2))), WAIT
                )
                assert outcome == [k for k in keys for _ in range(2)]

        asyncio.run(calls())

    thread = threading.Thread(target=clearer, daemon=True)
    thread.start()
    try:
        _in_threads(body, 4)
    finally:
        stop.set()
        thread.join(WAIT)
    # (cache_clear() resets the counters, so only what is left can be checked.)
    assert next(clears) > 0
    assert load.cache_info().in_flight == 0
    # Nothing was left registered: a new call runs (and, cached, is then a hit).
    load.cache_clear()  # the last clear above may have come before the last calls
    assert asyncio.run(load(3)) == 3
    assert asyncio.run(load(3)) == 3
    info = load.cache_info()
    assert (info.hits, info.misses, info.in_flight) == ((1, 1, 0) if cached else (0, 2, 0))
