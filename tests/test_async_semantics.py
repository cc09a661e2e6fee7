"""SPEC section 2 for ``async def`` functions: S1-S3, S6, S7, S9, S10, S12, S16."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import threading
import weakref
from collections.abc import Callable
from typing import Any

import cachetools
import pytest
from _core_support import WAIT, Caller, aeventually, wait

from coalesce import AsyncGroup, ReentrantCallError, singleflight

N = 8

CACHES: dict[str, Callable[[], dict[str, Any]]] = {
    "ttl": lambda: {"ttl": 60},
    "dict": lambda: {"cache": {}},
    "lru": lambda: {"cache": cachetools.LRUCache(maxsize=100)},
}
ALL_OPTIONS: dict[str, Callable[[], dict[str, Any]]] = {"none": dict, **CACHES}


class _Box:
    """A fresh object per execution, so ``is`` tells executions apart (and weakrefs work)."""

    def __init__(self, value: object) -> None:
        self.value = value


async def _bounded(aw: Any) -> Any:
    return await asyncio.wait_for(aw, WAIT)


# --------------------------------------------------------------------------- S1


@pytest.mark.parametrize("options", ALL_OPTIONS.values(), ids=ALL_OPTIONS.keys())
def test_s1_tasks_share_one_execution(options: Callable[[], dict[str, Any]]) -> None:
    """S1: concurrent tasks calling with an equal key share one execution and one object."""
    runs: list[int] = []

    async def main() -> None:
        release = asyncio.Event()

        @singleflight(**options())
        async def load(x: int) -> _Box:
            runs.append(x)
            await release.wait()
            return _Box(x)

        tasks = [asyncio.create_task(load(1)) for _ in range(N)]
        await aeventually(lambda: load.cache_info().coalesced == N - 1, "callers to join")
        release.set()
        results = await _bounded(asyncio.gather(*tasks))
        assert all(result is results[0] for result in results)
        info = load.cache_info()
        assert (info.hits, info.misses, info.coalesced, info.errors, info.in_flight) == (
            0,
            N,
            N - 1,
            0,
            0,
        )

    asyncio.run(main())
    assert runs == [1]


def test_s1_different_keys_run_separately_and_concurrently() -> None:
    """S1: tasks with different keys each run their own execution, at the same time."""
    runs: list[int] = []

    async def main() -> list[int]:
        together = asyncio.Barrier(4)  # only passable if all four executions run at once

        @singleflight
        async def load(x: int) -> int:
            runs.append(x)
            await together.wait()
            return x * 10

        return list(await _bounded(asyncio.gather(*(load(x) for x in range(4)))))

    assert asyncio.run(main()) == [0, 10, 20, 30]
    assert sorted(runs) == [0, 1, 2, 3]


def test_s1_function_that_never_suspends() -> None:
    """S1: an async function that returns without awaiting works, alone and under gather."""
    runs: list[int] = []

    @singleflight
    async def load(x: int) -> int:
        runs.append(x)
        return x + 1

    async def main() -> list[int]:
        return list(await asyncio.gather(load(1), load(1), load(2)))

    assert asyncio.run(main()) == [2, 2, 3]
    assert asyncio.run(load(5)) == 6
    assert load.cache_info().in_flight == 0


@pytest.mark.parametrize("options", CACHES.values(), ids=CACHES.keys())
def test_s1_stampede_on_cold_keys_runs_each_once(options: Callable[[], dict[str, Any]]) -> None:
    """S1: many tasks over many cold keys run each key exactly once."""
    runs: list[int] = []

    @singleflight(**options())
    async def load(x: int) -> int:
        runs.append(x)
        await asyncio.sleep(0)
        return x

    async def worker() -> list[int]:
        return [await load(k) for k in range(30)]

    async def main() -> None:
        results = await asyncio.gather(*(worker() for _ in range(20)))
        assert all(result == list(range(30)) for result in results)

    asyncio.run(main())
    assert sorted(runs) == list(range(30))


# --------------------------------------------------------------------------- S2


@pytest.mark.parametrize("options", ALL_OPTIONS.values(), ids=ALL_OPTIONS.keys())
def test_s2_tasks_share_the_same_exception_object(options: Callable[[], dict[str, Any]]) -> None:
    """S2: every task that shared a failing execution raises the very same exception object."""
    runs: list[int] = []

    async def main() -> None:
        release = asyncio.Event()

        @singleflight(**options())
        async def load(x: int) -> int:
            runs.append(x)
            await release.wait()
            raise ValueError(f"run {len(runs)}")

        tasks = [asyncio.create_task(load(1)) for _ in range(N)]
        await aeventually(lambda: load.cache_info().coalesced == N - 1, "callers to join")
        release.set()
        errors = await _bounded(asyncio.gather(*tasks, return_exceptions=True))
        assert isinstance(errors[0], ValueError)
        assert all(error is errors[0] for error in errors)
        info = load.cache_info()
        assert (info.errors, info.in_flight, info.currsize) == (1, 0, 0)
        with pytest.raises(ValueError, match="run 2"):
            await load(1)  # not cached: runs again

    asyncio.run(main())
    assert runs == [1, 1]


@pytest.mark.parametrize("where", ["before-await", "after-await"])
def test_s2_error_before_or_after_first_await(where: str) -> None:
    """S2: an error raised before or after the function's first await reaches the caller."""
    runs: list[int] = []

    @singleflight(ttl=60)
    async def load(x: int) -> int:
        runs.append(x)
        if where == "after-await":
            await asyncio.sleep(0)
        raise KeyError(x)

    for _ in range(2):
        with pytest.raises(KeyError):
            asyncio.run(load(1))
    assert runs == [1, 1]
    assert load.cache_info().in_flight == 0


# --------------------------------------------------------------------------- S3


def test_s3_same_loop_caller_after_store_is_a_hit() -> None:
    """S3: within one loop, callers queued behind the flight get the value and never re-run."""
    runs: list[int] = []

    async def main() -> None:
        release = asyncio.Event()

        @singleflight(ttl=60)
        async def load(x: int) -> _Box:
            runs.append(x)
            await release.wait()
            return _Box(x)

        first = asyncio.create_task(load(1))
        await aeventually(lambda: load.cache_info().in_flight == 1, "the flight")
        release.set()
        # Scheduled in the same loop iteration the flight ends in.
        later = [asyncio.create_task(load(1)) for _ in range(5)]
        values = await _bounded(asyncio.gather(first, *later))
        assert all(value is values[0] for value in values)

    asyncio.run(main())
    assert runs == [1]


# --------------------------------------------------------------------------- S6


@pytest.mark.parametrize("options", CACHES.values(), ids=CACHES.keys())
def test_s6_hit_never_waits_on_another_keys_flight(options: Callable[[], dict[str, Any]]) -> None:
    """S6: a hit on a cached key returns while a flight for another key is still blocked."""

    async def main() -> None:
        release = asyncio.Event()
        entered = asyncio.Event()

        @singleflight(**options())
        async def load(x: str) -> str:
            if x == "slow":
                entered.set()
                await release.wait()
            return x.upper()

        assert await load("cached") == "CACHED"
        slow = asyncio.create_task(load("slow"))
        await _bounded(entered.wait())
        assert await _bounded(load("cached")) == "CACHED"
        assert not slow.done()
        assert load.cache_info().in_flight == 1
        release.set()
        assert await _bounded(slow) == "SLOW"

    asyncio.run(main())


# --------------------------------------------------------------------------- S7


@pytest.mark.parametrize("victim", ["first", "middle", "last"])
def test_s7_cancelling_one_caller_leaves_the_others(victim: str) -> None:
    """S7: cancelling one caller (the first one included) ends only its wait."""
    runs: list[int] = []

    async def main() -> None:
        release = asyncio.Event()

        @singleflight
        async def load(x: int) -> _Box:
            runs.append(x)
            await release.wait()
            return _Box(x)

        tasks = [asyncio.create_task(load(1)) for _ in range(4)]
        await aeventually(lambda: load.cache_info().coalesced == 3, "callers to join")
        index = {"first": 0, "middle": 1, "last": 3}[victim]
        tasks[index].cancel()
        with pytest.raises(asyncio.CancelledError):
            await tasks[index]
        assert load.cache_info().in_flight == 1
        release.set()
        rest = [t for i, t in enumerate(tasks) if i != index]
        values = await _bounded(asyncio.gather(*rest))
        assert all(value is values[0] for value in values)
        assert load.cache_info().in_flight == 0

    asyncio.run(main())
    assert runs == [1]


@pytest.mark.parametrize("how", ["timeout", "wait_for"])
def test_s7_timing_out_the_first_caller_leaves_the_others(how: str) -> None:
    """S7: a caller that gives up through asyncio.timeout or wait_for does not cancel the others."""
    runs: list[int] = []

    async def main() -> None:
        release = asyncio.Event()
        calling = asyncio.Event()
        gave_up = asyncio.Event()

        @singleflight(ttl=60)
        async def load(x: int) -> _Box:
            runs.append(x)
            await release.wait()
            return _Box(x)

        async def give_up() -> None:
            calling.set()
            if how == "timeout":
                async with asyncio.timeout(0):
                    await load(1)
            else:
                await asyncio.wait_for(load(1), 0.001)

        async def impatient() -> None:
            with pytest.raises(TimeoutError):
                await give_up()
            gave_up.set()

        first = asyncio.create_task(impatient())
        # It calls first; the others are made before its timeout can fire (asyncio
        # runs ready callbacks first in, first out), so they join before it gives up.
        # (asyncio.timeout, not wait_for: on 3.11 wait_for wakes a loop round later.)
        async with asyncio.timeout(WAIT):
            await calling.wait()
        others = [asyncio.create_task(load(1)) for _ in range(3)]
        await _bounded(gave_up.wait())
        await aeventually(lambda: load.cache_info().coalesced >= 3, "callers to join")
        assert not any(t.done() for t in others)
        release.set()
        values = await _bounded(asyncio.gather(*others))
        assert all(value is values[0] for value in values)
        await first
        assert await load(1) is values[0]  # stored for later callers too

    asyncio.run(main())
    assert runs == [1]


@pytest.mark.parametrize("options", ALL_OPTIONS.values(), ids=ALL_OPTIONS.keys())
def test_s7_all_callers_gone_cancels_the_execution(options: Callable[[], dict[str, Any]]) -> None:
    """S7: when every caller is cancelled the execution is cancelled and nothing stays in flight."""
    events: list[str] = []

    async def main() -> None:
        ended = asyncio.Event()

        @singleflight(**options())
        async def load(x: int) -> int:
            try:
                await asyncio.Event().wait()  # never set
            except asyncio.CancelledError:
                events.append("cancelled")
                raise
            finally:
                ended.set()
            return x

        tasks = [asyncio.create_task(load(1)) for _ in range(3)]
        await aeventually(lambda: load.cache_info().coalesced == 2, "callers to join")
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)
        await _bounded(ended.wait())
        await aeventually(lambda: load.cache_info().in_flight == 0, "the execution to end")
        assert load.forget(1) is False  # nothing in flight for the key
        assert load.cache_info().currsize == 0

    asyncio.run(main())
    assert events == ["cancelled"]


def test_s7_all_callers_gone_group_is_empty() -> None:
    """S7: with AsyncGroup, once every caller is cancelled the key is no longer in the group."""

    async def main() -> None:
        group = AsyncGroup()
        cancelled = asyncio.Event()
        started = asyncio.Event()

        async def work() -> int:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return 1

        tasks = [asyncio.create_task(group.do("k", work)) for _ in range(2)]
        await _bounded(started.wait())  # both tasks have run (first in, first out)
        assert "k" in group
        assert len(group) == 1
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await _bounded(cancelled.wait())
        assert "k" not in group
        assert len(group) == 0

    asyncio.run(main())


def test_s7_execution_that_outlives_cancellation_counts_in_flight_until_it_ends() -> None:
    """S7/S12: an execution that resists cancellation is out of the registry but in in_flight."""

    async def main() -> None:
        cancelled = asyncio.Event()
        finish = asyncio.Event()
        runs: list[int] = []

        @singleflight
        async def load(x: int) -> int:
            runs.append(x)
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                await finish.wait()  # clean-up that takes a while
                raise
            return x

        task = asyncio.create_task(load(1))
        await aeventually(lambda: load.cache_info().in_flight == 1, "the flight")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await _bounded(cancelled.wait())
        assert load.cache_info().in_flight == 1  # still running its clean-up
        assert load.forget(1) is False  # but no longer joinable
        finish.set()
        await aeventually(lambda: load.cache_info().in_flight == 0, "the execution to end")

    asyncio.run(main())


def test_s7_context_runs_in_a_copy_of_the_first_callers_context() -> None:
    """S7: the execution sees the first caller's context values; what it sets never leaks."""
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    seen: list[str] = []

    async def main() -> None:
        release = asyncio.Event()

        @singleflight
        async def load(x: int) -> str:
            seen.append(var.get())
            var.set("set inside")
            await release.wait()
            return var.get()

        async def caller(name: str) -> tuple[str, str]:
            var.set(name)
            value = await load(1)
            return value, var.get()

        first = asyncio.create_task(caller("first"))
        await aeventually(lambda: load.cache_info().in_flight == 1, "the flight")
        second = asyncio.create_task(caller("second"))
        await aeventually(lambda: load.cache_info().coalesced == 1, "the second caller")
        release.set()
        assert await _bounded(first) == ("set inside", "first")
        assert await _bounded(second) == ("set inside", "second")
        assert var.get() == "unset"

    asyncio.run(main())
    assert seen == ["first"]


def test_s7_context_does_not_leak_when_function_never_suspends() -> None:
    """S7: a context variable set by an execution that never awaits stays out of the caller."""
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var2", default="unset")

    @singleflight
    async def load(x: int) -> str:
        var.set("inside")
        return var.get()

    async def main() -> tuple[str, str]:
        var.set("caller")
        return await load(1), var.get()

    assert asyncio.run(main()) == ("inside", "caller")


@pytest.mark.parametrize("where", ["before-first-await", "after-first-await"])
def test_s7_timeout_inside_the_function_times_out_the_execution(where: str) -> None:
    """S7: asyncio.timeout used inside the function times out the execution, not the caller."""

    @singleflight
    async def load(x: int) -> str:
        if where == "after-first-await":
            await asyncio.sleep(0)
        try:
            async with asyncio.timeout(0):
                await asyncio.Event().wait()
        except TimeoutError:
            return "timed out inside"
        return "not reached"

    async def main() -> tuple[str, int]:
        value = await _bounded(load(1))
        task = asyncio.current_task()
        assert task is not None
        return value, task.cancelling()

    assert asyncio.run(main()) == ("timed out inside", 0)


@pytest.mark.parametrize("where", ["before-first-await", "after-first-await"])
def test_s7_timeout_escaping_the_function_is_a_shared_error(where: str) -> None:
    """S7: a TimeoutError from a timeout inside the function reaches callers as its error."""

    async def main() -> None:
        release = asyncio.Event()

        @singleflight
        async def load(x: int) -> str:
            if where == "after-first-await":
                await asyncio.sleep(0)
            async with asyncio.timeout(0):
                await release.wait()
            return "not reached"

        results = await _bounded(asyncio.gather(load(1), load(1), return_exceptions=True))
        assert isinstance(results[0], TimeoutError)
        assert results[0] is results[1]
        task = asyncio.current_task()
        assert task is not None
        assert task.cancelling() == 0

    asyncio.run(main())


@pytest.mark.parametrize("where", ["before-first-await", "after-first-await"])
def test_s7_timeout_inside_function_with_waiting_callers(where: str) -> None:
    """S7: a timeout inside a shared execution leaves every caller's task uncancelled."""

    async def main() -> None:
        @singleflight
        async def load(x: int) -> str:
            if where == "after-first-await":
                await asyncio.sleep(0)
            try:
                async with asyncio.timeout(0.001):
                    await asyncio.Event().wait()
            except TimeoutError:
                return "fallback"
            return "not reached"

        async def caller() -> tuple[str, int]:
            value = await load(1)
            task = asyncio.current_task()
            assert task is not None
            return value, task.cancelling()

        results = await _bounded(asyncio.gather(*(caller() for _ in range(3))))
        assert results == [("fallback", 0)] * 3
        assert load.cache_info().coalesced == 2

    asyncio.run(main())


def test_s7_current_task_is_stable_and_not_the_callers() -> None:
    """S7: inside the function asyncio.current_task() is one task across awaits, not a caller's."""
    seen: list[Any] = []

    @singleflight
    async def load(x: int) -> int:
        seen.append(asyncio.current_task())
        await asyncio.sleep(0)
        seen.append(asyncio.current_task())
        await asyncio.sleep(0)
        seen.append(asyncio.current_task())
        return x

    async def main() -> Any:
        await load(1)
        return asyncio.current_task()

    caller = asyncio.run(main())
    assert seen[0] is not None
    assert seen[0] is seen[1] is seen[2]
    assert seen[0] is not caller


def test_s7_taskgroup_inside_the_function() -> None:
    """S7: a TaskGroup opened inside the function (before its first await) belongs to it."""

    @singleflight
    async def load(x: int) -> int:
        async with asyncio.TaskGroup() as tg:
            a = tg.create_task(asyncio.sleep(0, result=x))
            b = tg.create_task(asyncio.sleep(0, result=x + 1))
        return a.result() + b.result()

    async def main() -> list[int]:
        return list(await _bounded(asyncio.gather(load(1), load(1), load(2))))

    assert asyncio.run(main()) == [3, 3, 5]


def test_s7_caller_cancelled_the_execution_error_does_not_warn() -> None:
    """S7: an execution failing after its only caller left raises no 'never retrieved' noise."""

    async def main() -> None:
        started = asyncio.Event()
        proceed = asyncio.Event()
        ended = asyncio.Event()

        @singleflight
        async def load(x: int) -> int:
            started.set()
            try:
                await proceed.wait()
            finally:
                ended.set()
            raise ValueError(x)

        one = asyncio.create_task(load(1))
        two = asyncio.create_task(load(1))
        await _bounded(started.wait())
        await aeventually(lambda: load.cache_info().coalesced == 1, "the second caller")
        one.cancel()
        proceed.set()
        with pytest.raises(ValueError):
            await _bounded(two)
        with pytest.raises(asyncio.CancelledError):
            await one

    asyncio.run(main())
    gc.collect()


# --------------------------------------------------------------------------- S9


@pytest.mark.parametrize("where", ["before-first-await", "after-first-await"])
def test_s9_reentrant_call_in_the_execution_task_raises(where: str) -> None:
    """S9: awaiting the same key from inside its own execution raises ReentrantCallError at once."""
    seen: list[BaseException] = []

    @singleflight
    async def load(x: int) -> int:
        if where == "after-first-await":
            await asyncio.sleep(0)
        if x == 1:
            try:
                await load(1)
            except ReentrantCallError as exc:
                seen.append(exc)
            return await load(2) + 1  # another key is fine
        return x

    async def main() -> int:
        return int(await _bounded(load(1)))

    assert asyncio.run(main()) == 3
    assert len(seen) == 1
    assert isinstance(seen[0], RuntimeError)


def test_s9_other_task_joins_instead_of_raising() -> None:
    """S9: a different task calling the key while it runs joins the flight, no error."""

    async def main() -> None:
        release = asyncio.Event()

        @singleflight
        async def load(x: int) -> str:
            await release.wait()
            return "ok"

        first = asyncio.create_task(load(1))
        await aeventually(lambda: load.cache_info().in_flight == 1, "the flight")
        second = asyncio.create_task(load(1))
        await aeventually(lambda: load.cache_info().coalesced == 1, "the join")
        release.set()
        assert await _bounded(asyncio.gather(first, second)) == ["ok", "ok"]

    asyncio.run(main())


# --------------------------------------------------------------------------- S10


@pytest.mark.parametrize("options", ALL_OPTIONS.values(), ids=ALL_OPTIONS.keys())
def test_s10_sequential_asyncio_run(options: Callable[[], dict[str, Any]]) -> None:
    """S10: successive asyncio.run calls work; with a cache the later loops get hits."""
    runs: list[int] = []

    @singleflight(**options())
    async def load(x: int) -> int:
        runs.append(x)
        await asyncio.sleep(0)
        return x * 2

    async def main() -> list[int]:
        return list(await asyncio.gather(load(1), load(1), load(2)))

    for _ in range(3):
        assert asyncio.run(main()) == [2, 2, 4]
    if load.cache is None:
        assert runs == [1, 2] * 3
    else:
        assert runs == [1, 2]
        assert load.cache_info().hits == 6


@pytest.mark.parametrize("options", ALL_OPTIONS.values(), ids=ALL_OPTIONS.keys())
def test_s10_flight_open_in_another_loop(options: Callable[[], dict[str, Any]]) -> None:
    """S10: a call from a second loop while the first loop's flight is open works at once."""
    entered = threading.Event()
    release = threading.Event()
    runs: list[str] = []

    @singleflight(**options())
    async def load(x: int) -> str:
        name = threading.current_thread().name
        runs.append(name)
        if len(runs) == 1:
            entered.set()
            await asyncio.to_thread(wait, release)
        await asyncio.sleep(0)
        return f"{x} from {name}"

    first = Caller(load, 1)
    first.start()
    wait(entered)
    second = Caller(load, 1)
    second.start()
    assert second.result() == f"1 from {second.name}"
    assert load.cache_info().in_flight == 1
    release.set()
    assert first.result() == f"1 from {first.name}"
    assert load.cache_info().in_flight == 0
    if load.cache is not None:
        assert asyncio.run(load(1)).startswith("1 from")
        assert len(runs) == 2
        assert load.cache_info().hits == 1


def test_s10_in_flight_counts_every_loop() -> None:
    """S10/S12: in_flight counts executions running in every event loop."""
    barrier = threading.Barrier(3)
    release = threading.Event()

    @singleflight
    async def load(x: int) -> int:
        await asyncio.to_thread(barrier.wait, WAIT)
        await asyncio.to_thread(wait, release)
        return x

    callers = [Caller(load, 1), Caller(load, 1)]
    for caller in callers:
        caller.start()
    barrier.wait(WAIT)
    assert load.cache_info().in_flight == 2
    release.set()
    assert [caller.result() for caller in callers] == [1, 1]
    assert load.cache_info().in_flight == 0


def test_s10_many_threads_each_with_a_loop() -> None:
    """S10: many threads, each running its own loop, stampeding one cached key never break."""
    runs: list[int] = []
    lock = threading.Lock()

    @singleflight(ttl=60)
    async def load(x: int) -> int:
        with lock:
            runs.append(x)
        await asyncio.sleep(0)
        return x

    barrier = threading.Barrier(N)

    async def loop_body() -> list[int]:
        return list(await asyncio.gather(*(load(k % 5) for k in range(50))))

    def worker() -> list[int]:
        barrier.wait(WAIT)
        return asyncio.run(loop_body())

    callers = [Caller(worker) for _ in range(N)]
    for caller in callers:
        caller.start()
    for caller in callers:
        assert caller.result() == [k % 5 for k in range(50)]
    info = load.cache_info()
    assert info.hits + info.misses == N * 50
    assert info.misses - info.coalesced == len(runs)
    assert info.in_flight == 0


# --------------------------------------------------------------------------- S12


def test_s12_counters_exact_under_tasks() -> None:
    """S12: under many tasks every call is one hit or one miss, and sizes are exact."""
    runs: list[int] = []

    @singleflight(ttl=60, maxsize=50)
    async def load(x: int) -> int:
        runs.append(x)
        await asyncio.sleep(0)
        return x

    async def worker(offset: int) -> None:
        for i in range(50):
            await load((i + offset) % 20)

    async def main() -> None:
        await asyncio.gather(*(worker(o) for o in range(20)))

    asyncio.run(main())
    info = load.cache_info()
    assert info.hits + info.misses == 1000
    assert info.misses - info.coalesced == len(runs) == 20
    assert (info.errors, info.in_flight, info.currsize, info.maxsize) == (0, 0, 20, 50)


def test_s12_cancelled_callers_are_counted_once() -> None:
    """S12: callers that were cancelled still count as one miss each."""

    async def main() -> None:
        @singleflight
        async def load(x: int) -> int:
            await asyncio.Event().wait()
            return x

        tasks = [asyncio.create_task(load(1)) for _ in range(3)]
        await aeventually(lambda: load.cache_info().coalesced == 2, "callers to join")
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await aeventually(lambda: load.cache_info().in_flight == 0, "the execution to end")
        info = load.cache_info()
        assert (info.hits, info.misses, info.coalesced) == (0, 3, 2)

    asyncio.run(main())


# --------------------------------------------------------------------------- S16


class _Arg:
    def __hash__(self) -> int:
        return 7

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Arg)


@pytest.mark.parametrize("options", ALL_OPTIONS.values(), ids=ALL_OPTIONS.keys())
def test_s16_no_references_left_after_tasks_return(options: Callable[[], dict[str, Any]]) -> None:
    """S16: after every task returned, nothing but the cache keeps arguments or result alive."""
    refs: dict[str, weakref.ref[Any]] = {}

    @singleflight(**options())
    async def load(arg: _Arg) -> _Box:
        await asyncio.sleep(0)
        return _Box(arg)

    async def main() -> None:
        arg = _Arg()
        refs["arg"] = weakref.ref(arg)
        results = await asyncio.gather(*(load(arg) for _ in range(4)))
        refs["result"] = weakref.ref(results[0])

    asyncio.run(main())
    gc.collect()
    assert load.cache_info().in_flight == 0
    if load.cache is not None:
        assert refs["result"]() is not None
        load.cache_clear()
        gc.collect()
    assert refs["result"]() is None
    assert refs["arg"]() is None


def test_s16_no_references_left_after_errors() -> None:
    """S16: after a shared failure, the arguments and the exception are released."""
    refs: dict[str, weakref.ref[Any]] = {}

    class Failure(Exception):
        pass

    @singleflight
    async def load(arg: _Arg) -> None:
        await asyncio.sleep(0)
        raise Failure(arg)

    async def main() -> None:
        arg = _Arg()
        refs["arg"] = weakref.ref(arg)
        results = await asyncio.gather(load(arg), load(arg), return_exceptions=True)
        refs["error"] = weakref.ref(results[0])

    asyncio.run(main())
    gc.collect()
    assert refs["error"]() is None
    assert refs["arg"]() is None


def test_s16_no_references_left_after_cancellation() -> None:
    """S16: after every caller was cancelled, the execution's arguments are released."""
    refs: dict[str, weakref.ref[Any]] = {}

    @singleflight
    async def load(arg: _Arg) -> None:
        await asyncio.Event().wait()

    async def main() -> None:
        arg = _Arg()
        refs["arg"] = weakref.ref(arg)
        tasks = [asyncio.create_task(load(arg)) for _ in range(2)]
        await aeventually(lambda: load.cache_info().coalesced == 1, "callers to join")
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await aeventually(lambda: load.cache_info().in_flight == 0, "the execution to end")
        assert load.forget(_Arg()) is False

    asyncio.run(main())
    gc.collect()
    assert refs["arg"]() is None


def test_s16_forgotten_flight_in_a_finished_loop_leaves_nothing() -> None:
    """S16: forgetting a flight and finishing leaves no flight in any (closed) event loop."""

    events: list[tuple[asyncio.Event, asyncio.Event]] = []

    @singleflight
    async def load(x: int) -> int:
        started, release = events[-1]
        started.set()
        await release.wait()
        return x

    async def main() -> int:
        started, release = asyncio.Event(), asyncio.Event()
        events.append((started, release))  # new ones per loop: an Event belongs to its loop
        task = asyncio.create_task(load(1))
        await _bounded(started.wait())
        assert load.forget(1) is True
        release.set()
        return int(await _bounded(task))

    for _ in range(3):
        assert asyncio.run(main()) == 1
    assert load.cache_info().in_flight == 0
    assert load.forget(1) is False
