"""Hardening of the core (issue 19): hostile keys, storing failures, maxsize and leaks.

Each test names its SPEC item. Keys here break the rules on purpose: an ``__eq__`` or
``__hash__`` that raises once, a hash that changes. Whatever they do, no flight may be
left behind: the call raises, the next call works, and nothing stays in flight.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import weakref
from typing import Any

import pytest
from _core_support import WAIT, Caller, await_bounded, wait

from coalesce import singleflight


class Boom(Exception):
    """What a hostile key's ``__eq__`` or ``__hash__`` raises."""


class Budget:
    """Counts a key's comparisons (or hashes) and raises at the ``fail_at``-th one."""

    def __init__(self) -> None:
        self.count = 0
        self.fail_at = 0  # 0: never

    def tick(self) -> None:
        self.count += 1
        if self.count == self.fail_at:
            raise Boom(f"comparison {self.count}")

    def arm(self, n: int) -> None:
        self.count = 0
        self.fail_at = n

    def disarm(self) -> None:
        self.fail_at = 0


class Touchy:
    """Keys that all hash alike (so they are compared), whose ``__eq__``/``__hash__`` may raise."""

    def __init__(self, name: str, eq: Budget, hashes: Budget) -> None:
        self.name = name
        self.eq = eq
        self.hashes = hashes

    def __hash__(self) -> int:
        self.hashes.tick()
        return 7

    def __eq__(self, other: object) -> bool:
        self.eq.tick()
        return isinstance(other, Touchy) and self.name == other.name

    def __repr__(self) -> str:
        return f"Touchy({self.name})"


def _in_thread(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` in another thread (bounded): a wedged key would hang it."""
    caller = Caller(fn, *args)
    caller.start()
    return caller.result()


def _hostile_rounds(kind: str, which: str) -> int:
    """Fail the n-th comparison (or hash) of a call, for n = 1, 2, ... until one passes.

    Around the hostile call, one key is cached ("a") and one is in flight ("c"), both
    colliding with it, so the store and the registry both compare it. After each
    failure, the next call of that key (from this thread and from another) must work.
    Returns how many failing rounds there were.
    """
    eq, hashes = Budget(), Budget()
    budget = eq if which == "eq" else hashes
    hold = threading.Event()
    held = threading.Event()
    runs: list[str] = []

    def key(name: str) -> Touchy:
        return Touchy(name, eq, hashes)

    failures = 0
    if kind == "sync":

        @singleflight(ttl=60)
        def f(k: Touchy) -> str:
            if k.name == "c":
                held.set()
                wait(hold, "the test to release c")
            runs.append(k.name)
            return k.name

        assert f(key("a")) == "a"
        holder = Caller(f, key("c"))
        holder.start()
        wait(held, "c in flight")
        for n in range(1, 200):
            budget.arm(n)
            try:
                value = f(key("b"))
            except Exception:  # Boom, or what the store or a dict made of it
                failures += 1
                budget.disarm()
                assert f.cache_info().in_flight == 1  # only c
                assert _in_thread(f, key("b")) == "b"  # another thread: no hang
                assert f(key("b")) == "b"  # this thread: no false ReentrantCallError
                assert f.cache_info().in_flight == 1
                f.invalidate(key("b"))
                continue
            budget.disarm()
            assert value == "b"
            break
        hold.set()
        assert holder.result() == "c"
        assert f.cache_info().in_flight == 0
        f.invalidate(key("b"))
        assert f.cache_info().currsize == 2  # a and c: no tombstone counted or left
        return failures

    @singleflight(ttl=60)
    async def g(k: Touchy) -> str:
        if k.name == "c":
            held.set()
            await asyncio.wait_for(release.wait(), WAIT)
        runs.append(k.name)
        return k.name

    release: asyncio.Event

    async def main() -> int:
        nonlocal release
        release = asyncio.Event()
        fails = 0
        assert await g(key("a")) == "a"
        holder = asyncio.ensure_future(g(key("c")))
        await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, held.wait), WAIT)
        for n in range(1, 200):
            budget.arm(n)
            try:
                value = await await_bounded(g(key("b")))
            except Exception:
                fails += 1
                budget.disarm()
                assert g.cache_info().in_flight == 1
                assert await await_bounded(g(key("b"))) == "b"
                assert g.cache_info().in_flight == 1
                g.invalidate(key("b"))
                continue
            budget.disarm()
            assert value == "b"
            break
        release.set()
        assert await await_bounded(holder) == "c"
        assert g.cache_info().in_flight == 0
        g.invalidate(key("b"))
        assert g.cache_info().currsize == 2
        return fails

    return asyncio.run(main())


def test_s1_eq_raising_once_leaves_no_flight(kind: str) -> None:
    """S1/S16: an __eq__ raising anywhere in a call leaves no flight; the next call works."""
    assert _hostile_rounds(kind, "eq") > 0  # some comparison did fail


def test_s1_hash_raising_once_leaves_no_flight(kind: str) -> None:
    """S1/S16: a __hash__ raising anywhere in a call leaves no flight; the next call works."""
    assert _hostile_rounds(kind, "hash") > 0


class Shifty:
    """A key whose hash can change (it breaks Python's hash contract)."""

    def __init__(self, h: int) -> None:
        self.h = h

    def __hash__(self) -> int:
        return self.h

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Shifty) and other.h == self.h


@pytest.mark.parametrize("options", [{}, {"ttl": 60}])
def test_s16_key_whose_hash_changes_never_hangs(kind: str, options: dict[str, Any]) -> None:
    """S16: a key whose hash changes in flight leaves no flight for later calls to wait on."""
    runs: list[int] = []
    if kind == "sync":

        @singleflight(**options)
        def f(k: Shifty) -> int:
            runs.append(k.h)
            k.h += 1000  # the hash changes while it is in flight
            return len(runs)

        k = Shifty(1)
        f(k)
        assert f.cache_info().in_flight == 0
        # Neither the old hash nor the new one finds a flight to wait on.
        assert _in_thread(f, Shifty(1)) >= 1
        assert _in_thread(f, Shifty(1001)) >= 1
        assert f.cache_info().in_flight == 0
        ref = weakref.ref(k)
        f.cache_clear()
        del k
        gc.collect()
        assert ref() is None
        return

    @singleflight(**options)
    async def g(k: Shifty) -> int:
        await asyncio.sleep(0)
        runs.append(k.h)
        k.h += 1000
        return len(runs)

    async def main() -> None:
        k = Shifty(1)
        await await_bounded(g(k))
        assert g.cache_info().in_flight == 0
        assert await await_bounded(g(Shifty(1))) >= 1
        assert await await_bounded(g(Shifty(1001))) >= 1
        assert g.cache_info().in_flight == 0
        ref = weakref.ref(k)
        g.cache_clear()
        del k
        gc.collect()
        assert ref() is None

    asyncio.run(main())


# --------------------------------------------------------------------------- F4


def test_f4_storing_failure_is_not_kept_as_the_error(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """F4: a cache_if that raises is the callers' error, logged, never kept as the function's."""
    runs: list[int] = []
    refuse = [True]

    def cache_if(result: int) -> bool:
        if refuse[0]:
            raise Boom("cache_if failed")
        return True

    if kind == "sync":

        @singleflight(ttl=60, error_ttl=60, cache_if=cache_if)
        def f(x: int) -> int:
            runs.append(x)
            return x * 2

        call = f
    else:

        @singleflight(ttl=60, error_ttl=60, cache_if=cache_if)
        async def g(x: int) -> int:
            runs.append(x)
            return x * 2

        def call(x: int) -> int:
            return asyncio.run(g(x))

        f = g  # type: ignore[assignment]

    with caplog.at_level(logging.ERROR, logger="coalesce"):
        with pytest.raises(Boom):
            call(1)
    assert "storing its result failed" in caplog.text
    assert runs == [1]
    refuse[0] = False
    assert call(1) == 2  # the storing failure was not kept: the function runs again
    assert runs == [1, 1]
    assert call(1) == 2  # and now its result is kept
    assert runs == [1, 1]
    assert f.cache_info().in_flight == 0


# --------------------------------------------------------------------------- maxsize


def test_s20_maxsize_counts_only_stored_results(kind: str) -> None:
    """S20/maxsize: keys in flight are not results; one landing while maxsize others run is kept."""
    runs: list[int] = []
    started = threading.Event()
    release = threading.Event()
    waiting: list[int] = []

    if kind == "sync":

        @singleflight(ttl=60, maxsize=2)
        def f(x: int) -> int:
            runs.append(x)
            if x >= 10:
                waiting.append(x)
                if len(waiting) == 2:
                    started.set()
                wait(release, "the test to release the slow keys")
            return x

        slow = [Caller(f, 10), Caller(f, 11)]
        for caller in slow:
            caller.start()
        wait(started, "two keys in flight")
        assert f(1) == 1
        assert f(1) == 1  # kept, though two keys were in flight
        assert runs.count(1) == 1
        release.set()
        assert [c.result() for c in slow] == [10, 11]
        assert f.cache_info().currsize == 2  # the bound holds for results
        return

    @singleflight(ttl=60, maxsize=2)
    async def g(x: int) -> int:
        runs.append(x)
        if x >= 10:
            await asyncio.wait_for(gate.wait(), WAIT)
        return x

    gate: asyncio.Event

    async def main() -> None:
        nonlocal gate
        gate = asyncio.Event()
        slow = [asyncio.ensure_future(g(10)), asyncio.ensure_future(g(11))]
        for _ in range(100):
            if g.cache_info().in_flight == 2:
                break
            await asyncio.sleep(0)
        assert g.cache_info().in_flight == 2
        assert await g(1) == 1
        assert await g(1) == 1
        assert runs.count(1) == 1
        gate.set()
        assert await await_bounded(asyncio.gather(*slow)) == [10, 11]
        assert g.cache_info().currsize == 2

    asyncio.run(main())


# --------------------------------------------------------------------------- S16


class Result:
    """A result that can be weakly referenced."""

    def __init__(self, n: int) -> None:
        self.n = n


def test_s16_replaced_and_invalidated_results_are_freed(kind: str) -> None:
    """S16: after invalidate() or a replacement, the eviction order keeps no old result alive."""
    made: list[weakref.ref[Result]] = []
    if kind == "sync":

        @singleflight(ttl=60, maxsize=100)
        def f(x: int) -> Result:
            r = Result(x)
            made.append(weakref.ref(r))
            return r

        call: Any = f
    else:

        @singleflight(ttl=60, maxsize=100)
        async def g(x: int) -> Result:
            r = Result(x)
            made.append(weakref.ref(r))
            return r

        def call(x: int) -> Result:
            return asyncio.run(g(x))

        f = g  # type: ignore[assignment]

    for n in range(5):  # records ahead of the one replaced, so it is not at the front
        call(n)
    call(9)
    f.invalidate(9)
    call(9)  # a new result for 9
    f.cache[9] = Result(99)  # replaced by hand
    gc.collect()
    assert made[5]() is None  # invalidated
    assert made[6]() is None  # replaced
    assert f.cache[9].n == 99
    assert all(ref() is not None for ref in made[:5])
