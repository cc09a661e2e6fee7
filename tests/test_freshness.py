"""Freshness options (SPEC section 3, F1-F6), for ``def`` and ``async def``.

Time is frozen with freezegun and moved with ``tick``; executions that must still be
running when the test looks are held by a :class:`Hold`; background refreshes are
waited for by polling ``cache_info().in_flight`` (bounded), never by sleeping.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import re
import subprocess
import sys
import textwrap
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _core_support import WAIT, aeventually
from _freshness_support import START, Driver, Hold, Runs
from freezegun import freeze_time
from freezegun.api import FrozenDateTimeFactory, StepTickTimeFactory, TickingDateTimeFactory

from coalesce import CacheInfo, singleflight

ROOT = Path(__file__).resolve().parent.parent
Frozen = FrozenDateTimeFactory | StepTickTimeFactory | TickingDateTimeFactory


@pytest.fixture
def driver(kind: str) -> Iterator[Driver]:
    """A :class:`Driver` of the test's kind; its event loop is closed afterwards."""
    d = Driver(kind)
    try:
        yield d
    finally:
        d.close()


@pytest.fixture
def frozen() -> Iterator[Frozen]:
    """Time frozen at ``START`` for the store; the event loop's clock stays real."""
    with freeze_time(START, real_asyncio=True) as factory:
        yield factory


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Warnings of the ``coalesce`` logger, from any thread."""
    caplog.set_level(logging.WARNING, logger="coalesce")
    return caplog


def _patch_random(monkeypatch: pytest.MonkeyPatch, value: float) -> None:
    """Make XFetch's draw ``value``: it is taken from the ``random`` module (F2)."""
    monkeypatch.setattr(random, "random", lambda: value)


# ------------------------------------------------------------------- F1: stale=


def test_f1_stale_result_served_at_once_with_one_refresh(driver: Driver, frozen: Frozen) -> None:
    """F1: a call between ttl and ttl+stale gets the old result at once; one refresh starts."""
    runs, hold = Runs(), Hold()
    load = driver.make(runs, hold=hold, ttl=10, stale=20)
    assert driver.call(load, 1) == "v1"
    frozen.tick(15)
    hold.arm()
    assert driver.call(load, 1) == "v1"  # returned while the refresh is held
    driver.entered(hold)
    for _ in range(3):
        assert driver.call(load, 1) == "v1"
    info = load.cache_info()
    assert (info.hits, info.misses, info.in_flight) == (4, 1, 1)
    assert (info.stale, info.refreshes) == (4, 1)
    hold.release()
    driver.settle(load)
    assert driver.call(load, 1) == "v2"  # the refresh landed and replaced it
    info = load.cache_info()
    assert (info.hits, info.misses, info.stale, info.refreshes) == (5, 1, 4, 1)
    assert runs.count == 2


def test_f1_past_ttl_plus_stale_waits_for_fresh_execution(driver: Driver, frozen: Frozen) -> None:
    """F1: past ttl+stale a call waits for a fresh execution and gets its result."""
    runs = Runs()
    load = driver.make(runs, ttl=10, stale=20)
    assert driver.call(load, 1) == "v1"
    frozen.tick(30.5)
    assert driver.call(load, 1) == "v2"
    info = load.cache_info()
    assert (info.hits, info.misses, info.stale, info.refreshes) == (0, 2, 0, 0)


def test_f1_before_ttl_is_a_plain_hit(driver: Driver, frozen: Frozen) -> None:
    """F1: before ttl a call is a plain hit: nothing stale served, no refresh."""
    runs = Runs()
    load = driver.make(runs, ttl=10, stale=20)
    driver.call(load, 1)
    frozen.tick(9.5)
    assert driver.call(load, 1) == "v1"
    info = load.cache_info()
    assert (info.hits, info.stale, info.refreshes, info.in_flight) == (1, 0, 0, 0)
    assert runs.count == 1


def test_f1_refresh_expiry_follows_the_frozen_clock(driver: Driver, frozen: Frozen) -> None:
    """F1: a refresh under freezegun stores an entry whose ttl counts on the frozen clock."""
    runs = Runs()
    load = driver.make(runs, ttl=10, stale=20)
    driver.call(load, 1)
    frozen.tick(15)
    assert driver.call(load, 1) == "v1"
    driver.settle(load)
    frozen.tick(9.5)  # 9.5 s after the refresh stored v2: still fresh
    assert driver.call(load, 1) == "v2"
    assert (load.cache_info().stale, load.cache_info().refreshes) == (1, 1)
    frozen.tick(1)  # 10.5 s after: stale, so one more refresh
    assert driver.call(load, 1) == "v2"
    assert (load.cache_info().stale, load.cache_info().refreshes) == (2, 2)
    driver.settle(load)
    assert driver.call(load, 1) == "v3"


def test_f1_keys_refresh_independently(driver: Driver, frozen: Frozen) -> None:
    """F1: one refresh per key: two stale keys get one refresh each."""
    runs, hold = Runs(), Hold()
    load = driver.make(runs, hold=hold, ttl=10, stale=20)
    driver.call(load, "a")
    driver.call(load, "b")
    frozen.tick(12)
    hold.arm(2)
    for _ in range(2):
        assert driver.call(load, "a") == "v1"
        assert driver.call(load, "b") == "v2"
    driver.until(lambda: load.cache_info().in_flight == 2, "both refreshes to start")
    assert load.cache_info().refreshes == 2
    hold.release()
    driver.settle(load)
    assert {driver.call(load, "a"), driver.call(load, "b")} == {"v3", "v4"}


def test_f1_sync_refresh_runs_in_a_daemon_thread(frozen: Frozen) -> None:
    """F1: for def, the refresh runs in a daemon thread, not in the caller's."""
    driver = Driver("sync")
    runs = Runs()
    load = driver.make(runs, ttl=10, stale=20)
    driver.call(load, 1)
    frozen.tick(15)
    driver.call(load, 1)
    driver.settle(load)
    refresher = runs.threads[1]
    assert refresher is not threading.current_thread()
    assert refresher.daemon
    assert load.cache_info().in_flight == 0


def test_f1_async_refresh_is_a_task_on_the_callers_loop(frozen: Frozen) -> None:
    """F1: for async def, the refresh is a task of its own on the caller's event loop."""
    seen: list[tuple[asyncio.AbstractEventLoop, asyncio.Task[Any] | None]] = []

    @singleflight(ttl=10, stale=20)
    async def load(x: int) -> int:
        seen.append((asyncio.get_running_loop(), asyncio.current_task()))
        return len(seen)

    async def main() -> None:
        assert await load(1) == 1
        frozen.tick(15)
        caller = asyncio.current_task()
        assert await load(1) == 1
        await aeventually(lambda: load.cache_info().in_flight == 0, "the refresh to land")
        assert await load(1) == 2
        loop, task = seen[1]
        assert loop is asyncio.get_running_loop()
        assert task is not None
        assert task is not caller

    asyncio.run(asyncio.wait_for(main(), WAIT))


def test_f1_failed_refresh_is_logged_counted_and_stale_still_served(
    driver: Driver, frozen: Frozen, logs: pytest.LogCaptureFixture
) -> None:
    """F1: a failed refresh is logged with the function's name and counted; stale stays."""
    runs = Runs()
    load = driver.make(runs, name="load_rates", ttl=10, stale=20)
    driver.call(load, 1)
    frozen.tick(15)
    runs.failing = True
    assert driver.call(load, 1) == "v1"
    driver.settle(load)
    assert load.cache_info().errors == 1
    [record] = [r for r in logs.records if r.name == "coalesce"]
    assert record.levelno == logging.WARNING
    assert "load_rates()" in record.getMessage()
    assert record.exc_info is not None
    assert record.exc_info[1] is runs.errors[0]
    runs.failing = False
    assert driver.call(load, 1) == "v1"  # still within the stale window: another refresh
    driver.settle(load)
    assert driver.call(load, 1) == "v3"
    info = load.cache_info()
    assert (info.errors, info.refreshes, info.in_flight) == (1, 2, 0)


def test_f1_pending_sync_refresh_does_not_hang_exit() -> None:
    """F1: a process whose def refresh is still running exits anyway (daemon thread)."""
    script = textwrap.dedent(
        """
        import threading
        from freezegun import freeze_time
        from coalesce import singleflight

        entered, never = threading.Event(), threading.Event()
        runs = []

        @singleflight(ttl=10, stale=20)
        def load():
            runs.append(1)
            if len(runs) > 1:
                entered.set()
                never.wait()
            return len(runs)

        with freeze_time("2026-03-01") as frozen:
            load()
            frozen.tick(15)
            assert load() == 1
            assert entered.wait(10)
        print("leaving", load.cache_info().in_flight)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=WAIT, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "leaving 1"


def test_f1_pending_async_refresh_ends_with_its_loop(frozen: Frozen) -> None:
    """F1: an async def refresh still running when its loop ends is cancelled, nothing left."""
    runs: list[int] = []
    state: dict[str, Any] = {}

    @singleflight(ttl=10, stale=20)
    async def load() -> int:
        runs.append(1)
        if len(runs) > 1:
            state["entered"].set()
            await asyncio.Event().wait()  # never set
        return len(runs)

    async def main() -> None:
        state["entered"] = asyncio.Event()
        assert await load() == 1
        frozen.tick(15)
        assert await load() == 1
        await asyncio.wait_for(state["entered"].wait(), WAIT)
        assert load.cache_info().in_flight == 1

    asyncio.run(main())
    assert load.cache_info().in_flight == 0

    async def later() -> int:
        return await load()

    assert asyncio.run(later()) == 1  # the stale result is still there; no leftover flight
    assert load.cache_info().refreshes == 2


# ------------------------------------------------------------------- F2: early=

# With this draw, -log(1 - r) == 1: a hit refreshes once expiry is at most beta * delta away.
_ONE = 1.0 - math.exp(-1.0)


def test_f2_early_refresh_rises_near_expiry_scaled_by_compute_time(
    driver: Driver, frozen: Frozen, monkeypatch: pytest.MonkeyPatch
) -> None:
    """F2: a hit refreshes once expiry is within beta x (the key's last compute time), per key."""
    _patch_random(monkeypatch, _ONE)
    took = {"slow": 4.0, "fast": 1.0}
    runs = Runs()

    def body(key: str) -> str:
        frozen.tick(took[key])  # the computation takes this long on the frozen clock
        return f"{key}-{runs(key)!s}"

    hold = Hold()
    load = driver.make(body, hold=hold, ttl=100, early=1.0)
    assert driver.call(load, "slow") == "slow-v1"  # stored at +4, expires at +104
    assert driver.call(load, "fast") == "fast-v2"  # stored at +5, expires at +105
    frozen.tick(94)  # +99: 5 s and 6 s left, more than 4 and 1
    assert driver.call(load, "slow") == "slow-v1"
    assert driver.call(load, "fast") == "fast-v2"
    assert load.cache_info().refreshes == 0
    frozen.tick(2.5)  # +101.5: slow has 2.5 s left (< 4), fast 3.5 s (> 1)
    hold.arm()
    assert driver.call(load, "slow") == "slow-v1"  # returned at once, refresh held
    assert driver.call(load, "fast") == "fast-v2"
    driver.entered(hold)
    assert driver.call(load, "slow") == "slow-v1"  # at most one refresh per key
    info = load.cache_info()
    assert (info.refreshes, info.in_flight, info.misses) == (1, 1, 2)
    hold.release()
    driver.settle(load)
    assert driver.call(load, "slow") == "slow-v3"
    assert runs.count == 3


@pytest.mark.parametrize(("draw", "refreshes"), [(0.0, 0), (1.0 - 1e-12, 1)])
def test_f2_probability_zero_and_one(
    driver: Driver,
    frozen: Frozen,
    monkeypatch: pytest.MonkeyPatch,
    draw: float,
    refreshes: int,
) -> None:
    """F2: a draw of 0 never refreshes early; a draw near 1 refreshes on the first hit."""
    _patch_random(monkeypatch, draw)
    runs = Runs()

    def body(x: int) -> str:
        frozen.tick(0.5)
        return str(runs(x))

    load = driver.make(body, ttl=100, early=1.0)
    driver.call(load, 1)
    frozen.tick(99)  # 0.5 s before expiry
    assert driver.call(load, 1) == "v1"
    driver.settle(load)
    assert load.cache_info().refreshes == refreshes
    assert runs.count == 1 + refreshes


def test_f2_off_without_early(
    driver: Driver, frozen: Frozen, monkeypatch: pytest.MonkeyPatch
) -> None:
    """F2: without early= no hit refreshes, however close to expiry."""
    _patch_random(monkeypatch, 1.0 - 1e-12)
    runs = Runs()

    def body(x: int) -> str:
        frozen.tick(5)
        return str(runs(x))

    load = driver.make(body, ttl=100)
    driver.call(load, 1)
    frozen.tick(99.5)
    assert driver.call(load, 1) == "v1"
    assert (load.cache_info().refreshes, load.cache_info().in_flight, runs.count) == (0, 0, 1)


# ------------------------------------------------------------ F3: stale_if_error=


def test_f3_failed_recomputation_serves_old_result(
    driver: Driver, frozen: Frozen, logs: pytest.LogCaptureFixture
) -> None:
    """F3: a failed recomputation callers wait for serves the old result, within the window."""
    runs = Runs()
    load = driver.make(runs, name="load_prices", ttl=10, stale_if_error=20)
    assert driver.call(load, 1) == "v1"
    frozen.tick(15)
    runs.failing = True
    assert driver.call(load, 1) == "v1"
    assert load.cache_info().errors == 1
    [record] = [r for r in logs.records if r.name == "coalesce"]
    assert "load_prices()" in record.getMessage()
    assert record.exc_info is not None
    assert record.exc_info[1] is runs.errors[0]
    frozen.tick(14.5)  # 29.5 s: still within 10 + 20
    assert driver.call(load, 1) == "v1"
    frozen.tick(1)  # 30.5 s: past it
    with pytest.raises(RuntimeError) as raised:
        driver.call(load, 1)
    assert raised.value is runs.errors[-1]
    assert load.cache_info().errors == 3
    assert runs.count == 4


def test_f3_success_after_failure_replaces_old_result(driver: Driver, frozen: Frozen) -> None:
    """F3: once a recomputation succeeds its result replaces the one served on errors."""
    runs = Runs()
    load = driver.make(runs, ttl=10, stale_if_error=20)
    driver.call(load, 1)
    frozen.tick(12)
    runs.failing = True
    assert driver.call(load, 1) == "v1"
    runs.failing = False
    assert driver.call(load, 1) == "v3"
    assert driver.call(load, 1) == "v3"
    assert runs.count == 3


def test_f3_concurrent_callers_share_the_old_result(driver: Driver, frozen: Frozen) -> None:
    """F3: every caller waiting on the failed recomputation gets the old result."""
    runs, hold = Runs(), Hold()
    load = driver.make(runs, hold=hold, ttl=10, stale_if_error=20)
    driver.call(load, 1)
    frozen.tick(12)
    runs.failing = True
    assert driver.concurrent(load, 4, hold, 1) == ["v1"] * 4
    info = load.cache_info()
    assert (info.errors, info.coalesced, runs.count) == (1, 3, 2)


def test_f3_failed_background_refresh_keeps_serving(
    driver: Driver, frozen: Frozen, logs: pytest.LogCaptureFixture
) -> None:
    """F3: after a failed background refresh the old result serves up to stale_if_error."""
    runs = Runs()
    load = driver.make(runs, name="load_quotes", ttl=10, stale=5, stale_if_error=20)
    driver.call(load, 1)
    frozen.tick(12)  # stale: served, one refresh, which fails
    runs.failing = True
    assert driver.call(load, 1) == "v1"
    driver.settle(load)
    assert load.cache_info().errors == 1
    assert any("load_quotes()" in r.getMessage() for r in logs.records if r.name == "coalesce")
    frozen.tick(8)  # 20 s: past ttl + stale, within ttl + stale_if_error
    assert driver.call(load, 1) == "v1"
    info = load.cache_info()
    assert (info.errors, info.refreshes, info.stale) == (2, 1, 1)
    frozen.tick(10.5)  # 30.5 s: past every window
    with pytest.raises(RuntimeError):
        driver.call(load, 1)


def test_f3_without_an_old_result_the_error_is_raised(driver: Driver, frozen: Frozen) -> None:
    """F3: with nothing to fall back on, the error reaches the callers."""
    runs = Runs()
    runs.failing = True
    load = driver.make(runs, ttl=10, stale_if_error=20)
    with pytest.raises(RuntimeError) as raised:
        driver.call(load, 1)
    assert raised.value is runs.errors[0]


# ------------------------------------------------------------------ F4: error_ttl=


def test_f4_same_exception_reraised_without_running(driver: Driver, frozen: Frozen) -> None:
    """F4: within error_ttl the same exception object is re-raised without running; then it runs."""
    runs = Runs()
    runs.failing = True
    load = driver.make(runs, ttl=10, error_ttl=5)
    with pytest.raises(RuntimeError) as first:
        driver.call(load, 1)
    frozen.tick(4.5)
    for _ in range(3):
        with pytest.raises(RuntimeError) as again:
            driver.call(load, 1)
        assert again.value is first.value
    assert runs.count == 1
    assert load.cache_info().errors == 1
    frozen.tick(1)  # 5.5 s: the kept error has expired
    with pytest.raises(RuntimeError) as later:
        driver.call(load, 1)
    assert later.value is not first.value
    assert runs.count == 2
    runs.failing = False
    frozen.tick(5.5)
    assert driver.call(load, 1) == "v3"


def test_f4_kept_error_is_per_key_and_invalidate_drops_it(driver: Driver, frozen: Frozen) -> None:
    """F4: a kept error belongs to its key, and invalidate() drops it."""
    runs = Runs()
    load = driver.make(runs, ttl=10, error_ttl=5)
    runs.failing = True
    with pytest.raises(RuntimeError):
        driver.call(load, "a")
    runs.failing = False
    assert driver.call(load, "b") == "v2"
    with pytest.raises(RuntimeError):
        driver.call(load, "a")
    assert runs.count == 2
    load.invalidate("a")
    assert driver.call(load, "a") == "v3"


def test_f4_reraising_a_kept_error_does_not_grow_its_traceback(
    driver: Driver, frozen: Frozen
) -> None:
    """F4: re-raising a kept error does not pile callers' frames onto its traceback (S16)."""
    runs = Runs()
    runs.failing = True
    load = driver.make(runs, ttl=10, error_ttl=60)

    def depth() -> int:
        with pytest.raises(RuntimeError) as raised:
            driver.call(load, 1)
        tb, frames = raised.value.__traceback__, 0
        while tb is not None:
            frames, tb = frames + 1, tb.tb_next
        return frames

    depth()
    second = depth()
    for _ in range(20):
        depth()
    assert depth() == second
    assert runs.count == 1


def test_f4_kept_error_of_a_failed_refresh_does_not_hide_the_stale_result(
    driver: Driver, frozen: Frozen
) -> None:
    """F1, F4: after a background refresh fails, calls within ttl+stale still get stale."""
    runs = Runs()
    load = driver.make(runs, ttl=10, stale=20, error_ttl=5)
    assert driver.call(load, 1) == "v1"
    frozen.tick(12)
    runs.failing = True
    assert driver.call(load, 1) == "v1"
    driver.settle(load)
    assert load.cache_info().errors == 1
    assert driver.call(load, 1) == "v1"  # 12 s: within ttl + stale
    frozen.tick(2)
    assert driver.call(load, 1) == "v1"
    driver.settle(load)


def test_f4_off_by_default(driver: Driver, frozen: Frozen) -> None:
    """F4: without error_ttl errors are not kept (S2): the next call runs again."""
    runs = Runs()
    runs.failing = True
    load = driver.make(runs, ttl=10)
    for _ in range(2):
        with pytest.raises(RuntimeError):
            driver.call(load, 1)
    assert runs.count == 2


# ------------------------------------------------------- F5: ttl callable, cache_if=


def test_f5_ttl_callable_gives_each_result_its_lifetime(driver: Driver, frozen: Frozen) -> None:
    """F5: ttl=(result) -> seconds keeps each result for its own lifetime."""
    lifetimes = {"short": 5, "long": 50}
    load = driver.make(lambda key: (key, lifetimes[key]), ttl=lambda result: result[1])
    first_short = driver.call(load, "short")
    first_long = driver.call(load, "long")
    frozen.tick(4.5)
    assert driver.call(load, "short") is first_short
    frozen.tick(1)
    assert driver.call(load, "short") is not first_short
    assert driver.call(load, "long") is first_long
    frozen.tick(45)  # 50.5 s after the first long one
    assert driver.call(load, "long") is not first_long


@pytest.mark.parametrize("seconds", [0, -1, -0.5])
def test_f5_ttl_callable_zero_or_less_keeps_nothing(
    driver: Driver, frozen: Frozen, seconds: float
) -> None:
    """F5: a ttl callable returning 0 or less keeps that result not at all."""
    runs = Runs()
    load = driver.make(runs, ttl=lambda result: seconds)
    assert driver.call(load, 1) == "v1"
    assert driver.call(load, 1) == "v2"
    assert load.cache_info().currsize == 0


def test_f5_ttl_callable_returning_a_non_number_is_a_clear_error(
    driver: Driver, frozen: Frozen
) -> None:
    """F5: a ttl callable returning a non-number raises a TypeError naming the function."""
    load = driver.make(lambda x: x, name="load_config", ttl=lambda result: "soon")
    with pytest.raises(TypeError, match=r"ttl callable of load_config\(\)"):
        driver.call(load, 1)


def test_f5_cache_if_decides_what_is_kept(driver: Driver, frozen: Frozen) -> None:
    """F5: cache_if=(result) -> bool keeps only the results it accepts."""
    answers = {"hit": "found", "miss": None}
    runs = Runs()

    def body(key: str) -> Any:
        runs(key)
        return answers[key]

    load = driver.make(body, ttl=60, cache_if=lambda result: result is not None)
    for _ in range(2):
        assert driver.call(load, "hit") == "found"
        assert driver.call(load, "miss") is None
    assert runs.count == 3  # "hit" once, "miss" twice
    assert load.cache_info().currsize == 1


def test_f5_cache_if_rejected_result_still_shared_in_flight(driver: Driver, frozen: Frozen) -> None:
    """F5: callers in flight together share one execution even when cache_if rejects its result."""
    hold = Hold()
    runs = Runs()

    def body(x: int) -> list[str]:
        runs(x)
        return ["not kept"]

    load = driver.make(body, hold=hold, ttl=60, cache_if=lambda result: False)
    results = driver.concurrent(load, 4, hold, 1)
    assert all(r is results[0] for r in results)
    assert runs.count == 1
    assert load.cache_info().currsize == 0
    driver.call(load, 1)
    assert runs.count == 2


def test_f5_cache_if_with_a_users_mapping(driver: Driver) -> None:
    """F5: cache_if also decides what goes into a mapping passed as cache=."""
    cache: dict[Any, Any] = {}
    load = driver.make(lambda x: x * 2, cache=cache, cache_if=lambda result: result > 2)
    assert driver.call(load, 1) == 2
    assert driver.call(load, 3) == 6
    assert list(cache.values()) == [6]


# --------------------------------------------------- F6: no stale write-back


@pytest.mark.parametrize("action", ["invalidate", "cache_clear"])
def test_f6_refresh_running_at_invalidation_does_not_write_back(
    driver: Driver, frozen: Frozen, action: str
) -> None:
    """F6: a refresh running when its key is invalidated or the cache cleared stores nothing."""
    runs, hold = Runs(), Hold()
    load = driver.make(runs, hold=hold, ttl=10, stale=20)
    driver.call(load, 1)
    driver.call(load, 2)
    frozen.tick(15)
    hold.arm()
    assert driver.call(load, 1) == "v1"
    driver.entered(hold)
    if action == "invalidate":
        assert load.invalidate(1) is True
    else:
        load.cache_clear()
    hold.release()
    driver.settle(load)
    assert runs.count == 3
    assert 1 not in load.cache
    assert load.cache_info().currsize == (1 if action == "invalidate" else 0)
    assert driver.call(load, 1) == "v4"  # a fresh execution, not the refresh's v3
    assert runs.count == 4


def test_f6_early_refresh_after_invalidate_does_not_write_back(
    driver: Driver, frozen: Frozen, monkeypatch: pytest.MonkeyPatch
) -> None:
    """F6: an early (XFetch) refresh running when its key is invalidated stores nothing."""
    _patch_random(monkeypatch, 1.0 - 1e-12)
    runs, hold = Runs(), Hold()

    def body(x: int) -> str:
        frozen.tick(1)
        return str(runs(x))

    load = driver.make(body, hold=hold, ttl=100, early=1.0)
    driver.call(load, 1)
    frozen.tick(90)  # 10 s before expiry: this draw refreshes
    hold.arm()
    assert driver.call(load, 1) == "v1"
    driver.entered(hold)
    load.invalidate(1)
    hold.release()
    driver.settle(load)
    assert 1 not in load.cache
    assert load.cache_info().currsize == 0


# ------------------------------------------------------------- cache_info()


def test_cache_info_counts_stale_and_refreshes_outside_the_tuple(
    driver: Driver, frozen: Frozen
) -> None:
    """F1: cache_info() tells stale results served and refreshes started, past its 7 fields."""
    load = driver.make(Runs(), ttl=10, stale=20)
    driver.call(load, 1)
    frozen.tick(12)
    driver.call(load, 1)
    driver.settle(load)
    info = load.cache_info()
    assert isinstance(info, CacheInfo)
    assert len(info) == 7
    assert tuple(info) == (1, 1, 0, 0, 0, 1, 1024)
    assert (info.stale, info.refreshes) == (1, 1)
    assert "stale=1, refreshes=1" in repr(info)
    load.cache_clear()
    info = load.cache_info()
    assert (info.stale, info.refreshes) == (0, 0)


def test_cache_info_freshness_counters_default_to_zero() -> None:
    """F1: a function without freshness options reports stale=0 and refreshes=0."""

    @singleflight
    def plain() -> int:
        return 1

    plain()
    info = plain.cache_info()
    assert (info.stale, info.refreshes) == (0, 0)


# ------------------------------------------------------------- bad input

_WINDOWS = ("stale", "early", "stale_if_error", "error_ttl")


def _options(option: str, value: object) -> dict[str, Any]:
    return {option: value}


@pytest.mark.parametrize("option", _WINDOWS)
@pytest.mark.parametrize("value", [-1, -0.5, math.nan, math.inf, -math.inf])
def test_bad_window_values_are_value_errors(option: str, value: float) -> None:
    """F1-F4: a negative, NaN or infinite window is a ValueError naming the option."""
    with pytest.raises(ValueError, match=rf"^{option} must be"):
        singleflight(ttl=10, **_options(option, value))


@pytest.mark.parametrize("option", _WINDOWS)
@pytest.mark.parametrize("value", ["5", b"5", True, [5], object()])
def test_non_number_windows_are_type_errors(option: str, value: object) -> None:
    """F1-F4: a window that is not a number is a TypeError at decoration time naming the option."""
    with pytest.raises(TypeError, match=rf"^{option} must be a number"):
        singleflight(ttl=10, **_options(option, value))


@pytest.mark.parametrize("option", _WINDOWS)
def test_windows_need_ttl(option: str) -> None:
    """F1-F4: a freshness window without ttl= is a TypeError naming the option."""
    with pytest.raises(TypeError, match=rf"{option}=.*pass ttl="):
        singleflight(**_options(option, 5))


@pytest.mark.parametrize("option", _WINDOWS)
def test_windows_refused_with_a_users_mapping(option: str) -> None:
    """F1-F4: a freshness window with cache= is a TypeError naming the option."""
    with pytest.raises(TypeError, match=rf"{option}=.*not with cache="):
        singleflight(cache={}, **_options(option, 5))


@pytest.mark.parametrize("option", _WINDOWS)
@pytest.mark.parametrize("value", [None, 0])
def test_zero_or_none_windows_are_off(option: str, value: object) -> None:
    """F1-F4: a window of None or 0 is off, and needs no ttl=."""
    singleflight(**_options(option, value))(lambda: 1)


def test_cache_if_must_be_callable_and_needs_a_cache() -> None:
    """F5: cache_if that is not callable, or without ttl= or cache=, is a TypeError naming it."""
    with pytest.raises(TypeError, match=r"^cache_if must be a callable"):
        singleflight(ttl=10, cache_if=True)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=r"^cache_if= .*pass ttl= or cache="):
        singleflight(cache_if=bool)


@pytest.mark.parametrize("ttl", [0, -1, math.nan, math.inf])
def test_ttl_numbers_still_checked(ttl: float) -> None:
    """F5: ttl as a number is still checked; only a callable is taken as is."""
    with pytest.raises(ValueError, match=r"^ttl must be"):
        singleflight(ttl=ttl, stale=5)


# ------------------------------------------------------------------ the docs


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_freshness_doc_examples_run() -> None:
    """F1-F6: every python block of docs/freshness.md runs as written, asserts included."""
    page = ROOT / "docs" / "freshness.md"
    blocks = _python_blocks(page.read_text(encoding="utf-8"))
    assert len(blocks) >= 4
    for number, block in enumerate(blocks, 1):
        code = compile(block, f"docs/freshness.md (block {number})", "exec")
        exec(code, {"__name__": f"freshness_doc_{number}"})


def test_freshness_timeline_svg_is_generated_by_its_script(tmp_path: Path) -> None:
    """F1, F3: the committed timeline picture is what its script writes, and valid SVG."""
    script = ROOT / "docs" / "_static" / "make_freshness_timeline.py"
    out = tmp_path / "timeline.svg"
    subprocess.run([sys.executable, str(script), str(out)], check=True, timeout=WAIT)
    committed = ROOT / "docs" / "_static" / "freshness-timeline.svg"
    assert out.read_text(encoding="utf-8") == committed.read_text(encoding="utf-8")
    root = ET.fromstring(committed.read_text(encoding="utf-8"))
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    page = (ROOT / "docs" / "freshness.md").read_text(encoding="utf-8")
    assert "](_static/freshness-timeline.svg)" in page
