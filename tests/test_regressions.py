"""Cases a review of the core found wrong once; each test names the contract item."""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
import threading
import weakref
from typing import Any

import pytest
from freezegun import freeze_time

from coalesce import Group, singleflight


@pytest.mark.parametrize("key", [("x",), ["x"]], ids=["tuple", "list"])
@pytest.mark.parametrize("typed", [False, True])
def test_s4_a_one_name_key_sequence_keys_every_helper_alike(key: Any, typed: bool) -> None:
    """S4: key=("x",) gives the same key to calls, cache_key(), invalidate() and forget()."""
    runs: list[int] = []

    @singleflight(key=key, ttl=60, typed=typed)
    def load(x: int, y: int = 2) -> int:
        runs.append(x)
        return x * len(runs)

    assert load(7) == 7
    assert load(x=7, y=3) == 7
    assert list(load.cache) == [load.cache_key(7)]
    assert load.invalidate(7) is True
    assert load(7) == 14
    assert runs == [7, 7]


def test_f4_kept_errors_are_bounded_and_let_their_arguments_go() -> None:
    """F4, S16: kept errors obey maxsize and expire, releasing what their tracebacks held."""

    class Arg:
        pass

    @singleflight(ttl=60, error_ttl=5, maxsize=10)
    def fail(arg: Arg) -> None:
        raise ValueError("no")

    alive = []
    with freeze_time("2026-01-01") as frozen:
        for _ in range(50):
            arg = Arg()
            alive.append(weakref.ref(arg))
            with pytest.raises(ValueError, match="no"):
                fail(arg)
            del arg
        gc.collect()
        assert sum(ref() is not None for ref in alive) <= 10
        frozen.tick(6)
        with pytest.raises(ValueError, match="no"):
            fail(Arg())  # keeping a new error drops the expired ones
        gc.collect()
        assert sum(ref() is not None for ref in alive) == 0


def test_f6_invalidate_while_cache_if_runs_wins() -> None:
    """F6: an invalidate() landing while cache_if runs keeps the old result out."""
    deciding = threading.Event()
    decided = threading.Event()
    version = ["old"]

    def keep(result: str) -> bool:
        if result == "old":
            deciding.set()
            assert decided.wait(10)
        return True

    @singleflight(ttl=60, cache_if=keep)
    def read(x: int) -> str:
        return version[0]

    first = threading.Thread(target=read, args=(1,))
    first.start()
    assert deciding.wait(10)
    version[0] = "new"
    read.invalidate(1)
    decided.set()
    first.join(10)
    assert read(1) == "new"


def test_f5_per_result_ttls_evict_expired_before_live() -> None:
    """F5: with a ttl callable, a full cache drops an expired result, not a live one."""

    @singleflight(ttl=lambda result: result[1], maxsize=2)
    def item(name: str, seconds: float) -> tuple[str, float]:
        return (name, seconds)

    with freeze_time("2026-01-01") as frozen:
        item("long", 3600)
        item("short", 1)
        frozen.tick(2)
        item("new", 3600)
        assert sorted(key[0] for key in item.cache) == ["long", "new"]


@pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals")
def test_s8_an_interrupted_waiter_leaves_no_orphan_flight() -> None:
    """S8, S16: a waiter stopped by Ctrl-C, then an aborting leader, leave nothing in flight."""
    group = Group()
    started = threading.Event()
    release = threading.Event()

    def work() -> None:
        started.set()
        assert release.wait(10)
        raise SystemExit  # the leader aborts

    def leader() -> None:
        with pytest.raises(SystemExit):
            group.do("k", work)

    thread = threading.Thread(target=leader)
    thread.start()
    assert started.wait(10)
    previous = signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(KeyboardInterrupt):
            group.do("k", work)  # joins, then is interrupted while waiting
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    release.set()
    thread.join(10)
    assert "k" not in group
    assert len(group) == 0


def test_s7_the_first_step_task_answers_get_coro_and_repr() -> None:
    """S7: inside the execution's first step, current_task() is a usable task."""
    seen: list[Any] = []

    @singleflight
    async def probe() -> int:
        task = asyncio.current_task()
        assert task is not None
        seen.append(task.get_coro())
        seen.append(repr(task))
        return 1

    assert asyncio.run(probe()) == 1
    assert asyncio.iscoroutine(seen[0])
    assert isinstance(seen[1], str)


@pytest.mark.parametrize("outcome", ["raises", "rejected", "invalidated"])
def test_s16_an_execution_that_stores_nothing_leaves_nothing_in_the_store(outcome: str) -> None:
    """S16: a failed, rejected or invalidated execution keeps no reference to its key behind."""
    release = threading.Event()
    running = threading.Event()

    class Arg:
        """A key (one parameter: the key is the argument) that a weakref can watch."""

    @singleflight(ttl=60, cache_if=lambda result: outcome != "rejected")
    def load(x: Arg) -> Arg:
        running.set()
        assert release.wait(10)
        if outcome == "raises":
            raise ValueError("no")
        return Arg()

    def call(arg: Arg) -> None:
        try:
            load(arg)
        except ValueError:
            pass

    arg = Arg()
    arg_ref = weakref.ref(arg)
    leader = threading.Thread(target=call, args=(arg,))
    leader.start()
    assert running.wait(10)
    if outcome == "invalidated":
        load.invalidate(arg)
    release.set()
    leader.join(10)
    assert not leader.is_alive()
    del leader, arg
    gc.collect()
    assert arg_ref() is None  # nothing in the store (no placeholder) holds the key
    assert list(load.cache) == []
    assert load.cache_info().currsize == 0
