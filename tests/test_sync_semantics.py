"""SPEC section 2 for ``def`` functions under threads: S1-S3, S6, S8, S9, S12, S16, S17."""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Callable
from typing import Any

import cachetools
import pytest
from _core_support import Caller, eventually, start_callers, wait

from coalesce import ReentrantCallError, singleflight

N = 8

# Ways to give a function a result cache, by name, so each test runs against each.
CACHES: dict[str, Callable[[], dict[str, Any]]] = {
    "ttl": lambda: {"ttl": 60},
    "dict": lambda: {"cache": {}},
    "lru": lambda: {"cache": cachetools.LRUCache(maxsize=100)},
    "ttlcache": lambda: {"cache": cachetools.TTLCache(maxsize=100, ttl=60)},
}
ALL_OPTIONS: dict[str, Callable[[], dict[str, Any]]] = {"none": dict, **CACHES}


class _Box:
    """A fresh object per execution, so ``is`` tells executions apart (and weakrefs work)."""

    def __init__(self, value: object) -> None:
        self.value = value


# --------------------------------------------------------------------------- S1


@pytest.mark.parametrize("options", ALL_OPTIONS.values(), ids=ALL_OPTIONS.keys())
def test_s1_threads_share_one_execution(options: Callable[[], dict[str, Any]]) -> None:
    """S1: concurrent threads calling with an equal key share one execution and one object."""
    release = threading.Event()
    runs: list[int] = []

    @singleflight(**options())
    def load(x: int) -> _Box:
        runs.append(x)
        wait(release)
        return _Box(x)

    callers = start_callers(N, load, 1)
    eventually(lambda: load.cache_info().coalesced == N - 1, "every caller to join")
    release.set()
    results = [caller.result() for caller in callers]
    assert runs == [1]
    assert all(result is results[0] for result in results)
    info = load.cache_info()
    assert (info.hits, info.misses, info.coalesced, info.errors, info.in_flight) == (
        0,
        N,
        N - 1,
        0,
        0,
    )


def test_s1_different_keys_run_separately_and_concurrently() -> None:
    """S1: callers with different keys each run their own execution, at the same time."""
    together = threading.Barrier(4)  # only passable if all four executions run at once
    runs: list[int] = []

    @singleflight
    def load(x: int) -> int:
        runs.append(x)
        together.wait(10)
        return x * 10

    callers = [Caller(load, x) for x in range(4)]
    for caller in callers:
        caller.start()
    assert [caller.result() for caller in callers] == [0, 10, 20, 30]
    assert sorted(runs) == [0, 1, 2, 3]
    assert load.cache_info().coalesced == 0


def test_s1_keyword_and_positional_callers_share() -> None:
    """S1: concurrent callers spelling the same arguments differently share the execution."""
    release = threading.Event()
    runs: list[int] = []

    @singleflight
    def load(x: int, y: int = 2) -> _Box:
        runs.append(x)
        wait(release)
        return _Box(x)

    leader = Caller(load, 1)
    leader.start()
    eventually(lambda: load.cache_info().in_flight == 1, "the leader to start")
    others = [Caller(load, x=1), Caller(load, 1, 2), Caller(load, y=2, x=1)]
    for caller in others:
        caller.start()
    eventually(lambda: load.cache_info().coalesced == 3, "every caller to join")
    release.set()
    value = leader.result()
    assert all(caller.result() is value for caller in others)
    assert runs == [1]


@pytest.mark.parametrize("options", CACHES.values(), ids=CACHES.keys())
def test_s1_stampede_on_many_cold_keys_runs_each_once(
    options: Callable[[], dict[str, Any]],
) -> None:
    """S1: many threads stampeding over many cold keys run each key exactly once."""
    runs: list[int] = []
    lock = threading.Lock()

    @singleflight(**options())
    def load(x: int) -> int:
        with lock:
            runs.append(x)
        return x

    keys = list(range(40))
    barrier = threading.Barrier(N)

    def worker() -> list[int]:
        barrier.wait(10)
        return [load(k) for k in keys]

    callers = [Caller(worker) for _ in range(N)]
    for caller in callers:
        caller.start()
    for caller in callers:
        assert caller.result() == keys
    assert sorted(runs) == keys


# --------------------------------------------------------------------------- S2


@pytest.mark.parametrize("options", ALL_OPTIONS.values(), ids=ALL_OPTIONS.keys())
def test_s2_threads_share_the_same_exception_object(options: Callable[[], dict[str, Any]]) -> None:
    """S2: every thread that shared a failing execution raises the very same exception object."""
    release = threading.Event()
    runs: list[int] = []

    @singleflight(**options())
    def load(x: int) -> int:
        runs.append(x)
        wait(release)
        raise ValueError(f"run {len(runs)}")

    callers = start_callers(N, load, 1)
    eventually(lambda: load.cache_info().coalesced == N - 1, "every caller to join")
    release.set()
    errors = [caller.finish().error for caller in callers]
    assert isinstance(errors[0], ValueError)
    assert all(error is errors[0] for error in errors)
    assert runs == [1]
    info = load.cache_info()
    assert (info.errors, info.in_flight, info.currsize) == (1, 0, 0)


@pytest.mark.parametrize("options", ALL_OPTIONS.values(), ids=ALL_OPTIONS.keys())
def test_s2_errors_are_not_cached(options: Callable[[], dict[str, Any]]) -> None:
    """S2: after a failed flight the next call runs the function again."""
    runs: list[int] = []

    @singleflight(**options())
    def load(x: int) -> int:
        runs.append(x)
        if len(runs) == 1:
            raise ValueError("first run fails")
        return x

    with pytest.raises(ValueError, match="first run fails"):
        load(1)
    assert load(1) == 1
    assert runs == [1, 1]
    assert load.cache_info().errors == 1


# --------------------------------------------------------------------------- S3


@pytest.mark.parametrize("factory", [dict, lambda: cachetools.LRUCache(100)], ids=["dict", "lru"])
def test_s3_no_gap_with_cache_mapping(factory: Callable[[], Any]) -> None:
    """S3: with cache=, a caller arriving while the result is being stored runs nothing."""
    stored = threading.Event()
    leave = threading.Event()
    base = type(factory())

    class Holding(base):  # type: ignore[valid-type,misc]
        def __setitem__(self, key: Any, value: Any) -> None:
            super().__setitem__(key, value)
            stored.set()
            wait(leave, "the late caller")

    cache = Holding() if base is dict else Holding(100)
    runs: list[int] = []

    @singleflight(cache=cache)
    def load(x: int) -> _Box:
        runs.append(x)
        return _Box(x)

    leader = Caller(load, 1)
    leader.start()
    wait(stored)
    late = Caller(load, 1)
    late.start()
    wait(late.calling)
    leave.set()
    assert leader.result() is late.result()
    assert runs == [1]
    assert load.cache_info().hits == 1


# --------------------------------------------------------------------------- S6


def test_s6_miss_on_other_key_does_not_wait() -> None:
    """S6: a call for another key starts its own execution while a flight is blocked."""
    release = threading.Event()
    entered = threading.Event()

    @singleflight(ttl=60)
    def load(x: str) -> str:
        if x == "slow":
            entered.set()
            wait(release)
        return x

    slow = Caller(load, "slow")
    slow.start()
    wait(entered)
    assert load("other") == "other"
    release.set()
    assert slow.result() == "slow"


# --------------------------------------------------------------------------- S8


@pytest.mark.parametrize("abort", [KeyboardInterrupt, SystemExit])
@pytest.mark.parametrize("options", ALL_OPTIONS.values(), ids=ALL_OPTIONS.keys())
def test_s8_abort_hands_the_run_to_exactly_one_waiter(
    abort: type[BaseException], options: Callable[[], dict[str, Any]]
) -> None:
    """S8: the leader's caller gets the abort; one waiter re-runs; the rest share its outcome."""
    entered = [threading.Event(), threading.Event()]
    proceed = [threading.Event(), threading.Event()]
    runs: list[int] = []
    lock = threading.Lock()

    @singleflight(**options())
    def load(x: int) -> _Box:
        with lock:
            n = len(runs)
            runs.append(threading.get_ident())
        entered[min(n, 1)].set()
        wait(proceed[min(n, 1)])
        if n == 0:
            raise abort()
        return _Box(n)

    leader = Caller(load, 1)
    leader.start()
    wait(entered[0])
    waiters = [Caller(load, 1) for _ in range(4)]
    for caller in waiters:
        caller.start()
    eventually(lambda: load.cache_info().coalesced == 4, "waiters to join")
    proceed[0].set()
    wait(entered[1], "a waiter to take over")
    assert isinstance(leader.finish().error, abort)
    assert len(runs) == 2
    assert runs[1] in {caller.ident for caller in waiters}
    late = [Caller(load, 1) for _ in range(3)]
    for caller in late:
        caller.start()
    eventually(lambda: load.cache_info().coalesced == 7, "late callers to join the re-run")
    proceed[1].set()
    values = [caller.result() for caller in waiters + late]
    assert all(value is values[0] for value in values)
    assert values[0].value == 1
    assert len(runs) == 2
    info = load.cache_info()
    assert info.hits + info.misses == 8
    assert (info.misses, info.in_flight) == (8, 0)


def test_s8_repeated_aborts_each_hand_over_once() -> None:
    """S8: if the re-run aborts too, another single waiter runs it, and nobody hangs."""
    runs: list[int] = []
    lock = threading.Lock()
    entered = threading.Event()
    release = threading.Event()

    @singleflight
    def load(x: int) -> str:
        with lock:
            n = len(runs)
            runs.append(n)
        if n == 0:
            entered.set()
            wait(release)
        if n < 3:
            raise KeyboardInterrupt
        return "done"

    leader = Caller(load, 1)
    leader.start()
    wait(entered)
    waiters = [Caller(load, 1) for _ in range(6)]
    for caller in waiters:
        caller.start()
    eventually(lambda: load.cache_info().coalesced == 6, "waiters to join")
    release.set()
    outcomes = [caller.finish() for caller in [leader, *waiters]]
    aborted = [c for c in outcomes if isinstance(c.error, KeyboardInterrupt)]
    done = [c for c in outcomes if c.error is None]
    assert len(aborted) == 3
    assert len(done) == 4
    assert all(c.value == "done" for c in done)
    assert runs == [0, 1, 2, 3]
    assert load.cache_info().in_flight == 0


def test_s8_rerun_error_is_shared_by_the_remaining_waiters() -> None:
    """S8: when the waiter's re-run raises an Exception, the other waiters share that error."""
    runs: list[int] = []
    lock = threading.Lock()
    entered = threading.Event()
    release = threading.Event()

    @singleflight
    def load(x: int) -> int:
        with lock:
            n = len(runs)
            runs.append(n)
        if n == 0:
            entered.set()
            wait(release)
            raise SystemExit(3)
        raise LookupError(f"re-run {n}")

    leader = Caller(load, 1)
    leader.start()
    wait(entered)
    waiters = [Caller(load, 1) for _ in range(4)]
    for caller in waiters:
        caller.start()
    eventually(lambda: load.cache_info().coalesced == 4, "waiters to join")
    release.set()
    assert isinstance(leader.finish().error, SystemExit)
    errors = [caller.finish().error for caller in waiters]
    assert isinstance(errors[0], LookupError)
    assert all(error is errors[0] for error in errors)
    assert runs == [0, 1]


def test_s8_abort_without_waiters_leaves_nothing_in_flight() -> None:
    """S8: an abort with nobody waiting leaves no flight; the next call runs afresh."""
    runs: list[int] = []

    @singleflight(ttl=60)
    def load(x: int) -> int:
        runs.append(x)
        if len(runs) == 1:
            raise KeyboardInterrupt
        return x

    with pytest.raises(KeyboardInterrupt):
        load(1)
    assert load.cache_info().in_flight == 0
    assert load(1) == 1
    assert load(1) == 1
    assert runs == [1, 1]
    info = load.cache_info()
    assert (info.hits, info.misses) == (1, 2)


# --------------------------------------------------------------------------- S9


@pytest.mark.parametrize("options", ALL_OPTIONS.values(), ids=ALL_OPTIONS.keys())
def test_s9_reentrant_call_raises_at_once(options: Callable[[], dict[str, Any]]) -> None:
    """S9: calling the same key from inside its own execution raises ReentrantCallError."""
    seen: list[BaseException] = []

    @singleflight(**options())
    def load(x: int) -> int:
        if x == 1:
            try:
                load(1)
            except ReentrantCallError as exc:
                seen.append(exc)
            return load(2) + 1  # another key from inside is fine
        return x

    done = Caller(load, 1)
    done.start()
    assert done.result() == 3
    assert len(seen) == 1
    assert isinstance(seen[0], RuntimeError)


def test_s9_reentrant_call_propagates_to_callers() -> None:
    """S9: an unhandled ReentrantCallError is the execution's error, shared like any other."""

    @singleflight
    def load(x: int) -> int:
        return load(x)

    with pytest.raises(ReentrantCallError):
        load(1)
    assert load.cache_info().in_flight == 0


def test_s9_other_thread_waits_instead_of_raising() -> None:
    """S9: only the executing thread is refused; another thread simply joins the flight."""
    release = threading.Event()
    entered = threading.Event()

    @singleflight
    def load(x: int) -> str:
        entered.set()
        wait(release)
        return "ok"

    leader = Caller(load, 1)
    leader.start()
    wait(entered)
    other = Caller(load, 1)
    other.start()
    eventually(lambda: load.cache_info().coalesced == 1, "the other thread to join")
    release.set()
    assert leader.result() == other.result() == "ok"


# --------------------------------------------------------------------------- S12


def test_s12_counters_exact_under_thread_concurrency() -> None:
    """S12: under many threads every call is one hit or one miss, and sizes are exact."""
    runs: list[int] = []
    lock = threading.Lock()

    @singleflight(ttl=60, maxsize=100)
    def load(x: int) -> int:
        with lock:
            runs.append(x)
        return x

    barrier = threading.Barrier(N)
    per_thread = 300

    def worker() -> None:
        barrier.wait(10)
        for i in range(per_thread):
            load(i % 25)

    callers = [Caller(worker) for _ in range(N)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.result()
    info = load.cache_info()
    assert info.hits + info.misses == N * per_thread
    assert info.misses - info.coalesced == len(runs) == 25
    assert (info.errors, info.in_flight, info.currsize, info.maxsize) == (0, 0, 25, 100)


def test_s12_in_flight_counts_running_executions() -> None:
    """S12: in_flight is the number of executions running now, forgotten ones included."""
    release = threading.Event()
    entered = threading.Barrier(3)

    @singleflight
    def load(x: int) -> int:
        entered.wait(10)
        wait(release)
        return x

    callers = [Caller(load, 1), Caller(load, 2)]
    for caller in callers:
        caller.start()
    entered.wait(10)
    assert load.cache_info().in_flight == 2
    assert load.forget(1) is True
    assert load.cache_info().in_flight == 2  # forgotten, but still running
    release.set()
    assert [caller.result() for caller in callers] == [1, 2]
    info = load.cache_info()
    assert (info.in_flight, info.currsize, info.maxsize) == (0, 0, None)


def test_s12_errors_count_failed_executions_not_callers() -> None:
    """S12: errors counts executions that raised, once per execution however many shared it."""
    release = threading.Event()

    @singleflight
    def load(x: int) -> int:
        wait(release)
        raise ValueError(x)

    callers = start_callers(4, load, 1)
    eventually(lambda: load.cache_info().coalesced == 3, "callers to join")
    release.set()
    assert all(isinstance(caller.finish().error, ValueError) for caller in callers)
    info = load.cache_info()
    assert (info.misses, info.coalesced, info.errors) == (4, 3, 1)


def test_s12_cache_clear_resets_counters() -> None:
    """S12: cache_clear() empties the cache and resets every counter."""

    @singleflight(ttl=60)
    def load(x: int) -> int:
        if x < 0:
            raise ValueError(x)
        return x

    load(1)
    load(1)
    with pytest.raises(ValueError):
        load(-1)
    info = load.cache_info()
    assert (info.hits, info.misses, info.errors, info.currsize) == (1, 2, 1, 1)
    load.cache_clear()
    assert tuple(load.cache_info()) == (0, 0, 0, 0, 0, 0, 1024)
    load(1)
    assert load.cache_info().misses == 1


def test_s12_cache_clear_keeps_in_flight_of_running_execution() -> None:
    """S12: cache_clear() while an execution runs resets counters but in_flight stays exact."""
    release = threading.Event()
    entered = threading.Event()

    @singleflight(ttl=60)
    def load(x: int) -> int:
        entered.set()
        wait(release)
        return x

    leader = Caller(load, 1)
    leader.start()
    wait(entered)
    load.cache_clear()
    assert load.cache_info().in_flight == 1
    release.set()
    assert leader.result() == 1
    assert load.cache_info().in_flight == 0


# --------------------------------------------------------------------------- S16


@pytest.mark.parametrize("options", ALL_OPTIONS.values(), ids=ALL_OPTIONS.keys())
def test_s16_no_references_left_after_threads_return(options: Callable[[], dict[str, Any]]) -> None:
    """S16: after every caller returned, nothing keeps the arguments alive and no flight remains."""
    release = threading.Event()

    class Arg:
        def __hash__(self) -> int:
            return 1

        def __eq__(self, other: object) -> bool:
            return isinstance(other, Arg)

    @singleflight(**options())
    def load(arg: Arg) -> _Box:
        wait(release)
        return _Box(arg)

    arg = Arg()
    arg_ref = weakref.ref(arg)
    callers = start_callers(4, load, arg)
    eventually(lambda: load.cache_info().coalesced == 3, "callers to join")
    release.set()
    result_ref = weakref.ref(callers[0].result())
    for caller in callers:
        caller.finish()
    del callers, caller, arg
    gc.collect()
    assert load.cache_info().in_flight == 0
    if load.cache is None:
        assert result_ref() is None
        assert arg_ref() is None
    else:
        assert result_ref() is not None  # the cached result is the one thing kept
        load.cache_clear()
        gc.collect()
        assert result_ref() is None
        assert arg_ref() is None


def test_s16_no_references_left_after_errors() -> None:
    """S16: after a shared failure, neither the arguments nor the exception are kept."""
    release = threading.Event()

    class Arg:
        pass

    class Failure(Exception):
        pass

    @singleflight(key=lambda arg: "k")
    def load(arg: Arg) -> None:
        wait(release)
        raise Failure(arg)

    arg = Arg()
    arg_ref = weakref.ref(arg)
    callers = start_callers(3, load, arg)
    eventually(lambda: load.cache_info().coalesced == 2, "callers to join")
    release.set()
    error_ref = weakref.ref(callers[0].finish().error)  # type: ignore[arg-type]
    for caller in callers:
        caller.finish()
    del callers, caller, arg
    gc.collect()
    assert error_ref() is None
    assert arg_ref() is None


# --------------------------------------------------------------------------- S17


@pytest.mark.parametrize(
    "factory",
    [
        dict,
        lambda: cachetools.LRUCache(maxsize=16),
        lambda: cachetools.LFUCache(maxsize=16),
        lambda: cachetools.TTLCache(maxsize=16, ttl=60),
    ],
    ids=["dict", "lru", "lfu", "ttlcache"],
)
def test_s17_user_mapping_stays_consistent_under_threads(factory: Callable[[], Any]) -> None:
    """S17: a dict or cachetools cache passed as cache= stays consistent under many threads."""
    cache = factory()

    @singleflight(cache=cache)
    def load(x: int) -> int:
        return x * 2

    barrier = threading.Barrier(N)

    def worker(offset: int) -> None:
        barrier.wait(10)
        for i in range(400):
            k = (i * 7 + offset) % 60
            assert load(k) == k * 2
            if i % 50 == 0:
                load.invalidate(k)

    callers = [Caller(worker, offset) for offset in range(N)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.result()
    assert all(cache[k] == k * 2 for k in list(cache))  # one parameter: the key is its value
    maxsize = getattr(cache, "maxsize", None)
    if maxsize is not None:
        assert len(cache) <= maxsize
        assert load.cache_info().currsize == cache.currsize
    info = load.cache_info()
    assert info.hits + info.misses == N * 400


def test_s17_functions_sharing_a_mapping_share_one_guard() -> None:
    """S17: two functions given one mapping stay consistent when hammered together."""
    cache = cachetools.LRUCache(maxsize=32)

    @singleflight(cache=cache)
    def double(x: int) -> int:
        return x * 2

    @singleflight(cache=cache)
    def double_too(x: int) -> int:
        return x * 2

    barrier = threading.Barrier(N)

    def worker(offset: int) -> None:
        barrier.wait(10)
        fn = double if offset % 2 else double_too
        for i in range(400):
            k = (i * 5 + offset) % 80
            assert fn(k) == k * 2

    callers = [Caller(worker, offset) for offset in range(N)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.result()
    assert len(cache) <= 32
    assert cache.currsize == len(cache)
    assert all(cache[k] == k * 2 for k in list(cache))  # one parameter: the key is its value


def test_s17_shared_guard_is_held_around_every_mapping_touch() -> None:
    """S17: a mapping shared by two functions is never touched by both at the same moment."""
    inside = threading.Semaphore(1)
    overlaps: list[str] = []

    class Watched(dict):  # type: ignore[type-arg]
        def _enter(self, what: str) -> bool:
            if inside.acquire(blocking=False):
                return True
            overlaps.append(what)
            return False

        def __getitem__(self, key: Any) -> Any:
            entered = self._enter("get")
            try:
                return super().__getitem__(key)
            finally:
                if entered:
                    inside.release()

        def __setitem__(self, key: Any, value: Any) -> None:
            entered = self._enter("set")
            try:
                super().__setitem__(key, value)
            finally:
                if entered:
                    inside.release()

        def __delitem__(self, key: Any) -> None:
            entered = self._enter("del")
            try:
                super().__delitem__(key)
            finally:
                if entered:
                    inside.release()

    cache = Watched()

    @singleflight(cache=cache)
    def one(x: int) -> int:
        return x

    @singleflight(cache=cache)
    def two(x: int) -> int:
        return x

    barrier = threading.Barrier(N)

    def worker(offset: int) -> None:
        barrier.wait(10)
        fn = one if offset % 2 else two
        for i in range(300):
            fn((i + offset) % 40)
            if i % 30 == 0:
                fn.invalidate((i + offset) % 40)

    callers = [Caller(worker, offset) for offset in range(N)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.result()
    assert overlaps == []
