"""Helpers for the freshness tests (SPEC section 3): one driver for ``def`` and ``async def``.

A test is written once against a :class:`Driver`: it builds the decorated function
(``def``, or ``async def`` with a real suspension), makes calls, waits for a held
execution to start and for background refreshes to end. Time is frozen with
freezegun (``real_asyncio=True``, so the event loop's own clock, and with it every
hang guard, stays real while the store reads the frozen one).

Every wait is bounded: a bug shows up as a failure, never as a hang.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from _core_support import WAIT

START = "2026-03-01 12:00:00"
"""When every frozen-time test starts."""

_PAUSE = 0.0005
"""Seconds of one real pause while a thread polls."""
_SPINS = 200_000
"""Bound on event-loop steps while a task polls."""


class Hold:
    """Makes the next ``arm()``-ed executions wait until ``release()``.

    ``entered`` is set when a held execution has started (in the refresh thread for
    ``def``, in the refresh task for ``async def``).
    """

    def __init__(self) -> None:
        self._armed = 0
        self._lock = threading.Lock()
        self.entered = threading.Event()
        self.released = threading.Event()
        self._async_released: asyncio.Event | None = None

    def arm(self, count: int = 1) -> None:
        """Hold the next ``count`` executions; clear ``entered`` and ``released``."""
        with self._lock:
            self._armed += count
        self.entered.clear()
        self.released.clear()
        self._async_released = None

    def take(self) -> bool:
        """Called by an execution: ``True`` if it is to be held."""
        with self._lock:
            if self._armed:
                self._armed -= 1
                return True
            return False

    def release(self) -> None:
        self.released.set()
        if self._async_released is not None:
            self._async_released.set()

    def wait_sync(self) -> None:
        self.entered.set()
        if not self.released.wait(WAIT):
            raise AssertionError("a held execution was never released")

    async def wait_async(self) -> None:
        if self._async_released is None:
            self._async_released = asyncio.Event()
            if self.released.is_set():
                self._async_released.set()
        self.entered.set()
        await asyncio.wait_for(self._async_released.wait(), WAIT)


class Driver:
    """Builds and drives a decorated function of one kind (``"sync"`` or ``"async"``).

    For ``async def`` every call runs on one event loop kept for the test, so that
    a refresh task started by one call lives on and lands while later calls run.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.loop: asyncio.AbstractEventLoop | None = (
            asyncio.new_event_loop() if kind == "async" else None
        )

    @property
    def is_async(self) -> bool:
        return self.kind == "async"

    def make(
        self,
        body: Callable[..., Any],
        *,
        name: str = "load",
        hold: Hold | None = None,
        **options: Any,
    ) -> Any:
        """``@singleflight(**options)`` over a function called ``name`` that runs ``body``.

        ``body`` is plain code (it may raise); with ``hold``, an armed execution
        waits for ``hold.release()`` before running it.
        """
        from coalesce import singleflight

        if self.is_async:

            async def fn(*args: Any) -> Any:
                await asyncio.sleep(0)  # a real suspension, as an async function has
                if hold is not None and hold.take():
                    await hold.wait_async()
                return body(*args)

        else:

            def fn(*args: Any) -> Any:  # type: ignore[misc]
                if hold is not None and hold.take():
                    hold.wait_sync()
                return body(*args)

        fn.__name__ = fn.__qualname__ = name
        return singleflight(**options)(fn)

    def call(self, fn: Any, *args: Any) -> Any:
        """One call; its exception propagates."""
        if self.loop is None:
            return fn(*args)
        return self.loop.run_until_complete(asyncio.wait_for(fn(*args), WAIT))

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coro`` on the test's loop (async tests only)."""
        assert self.loop is not None
        return self.loop.run_until_complete(asyncio.wait_for(coro, WAIT))

    def until(self, predicate: Callable[[], bool], what: str) -> None:
        """Wait (bounded) until ``predicate()``: the loop runs meanwhile for ``async def``."""
        if self.loop is None:
            pause = threading.Event()
            for _ in range(int(WAIT / _PAUSE)):
                if predicate():
                    return
                pause.wait(_PAUSE)  # a real pause: threading is real time under freezegun
            raise AssertionError(f"timed out waiting for {what}")

        async def spin() -> None:
            for _ in range(_SPINS):
                if predicate():
                    return
                await asyncio.sleep(0)
            raise AssertionError(f"timed out waiting for {what}")

        self.run(spin())

    def entered(self, hold: Hold) -> None:
        """Wait until a held execution has started."""
        self.until(hold.entered.is_set, "the held execution to start")

    def settle(self, fn: Any) -> None:
        """Wait until nothing of ``fn`` is in flight (background refreshes included)."""
        self.until(lambda: fn.cache_info().in_flight == 0, "the refresh to land")

    def concurrent(self, fn: Any, n: int, hold: Hold, *args: Any) -> list[Any]:
        """``n`` concurrent calls sharing one held execution; their return values."""
        hold.arm()
        if self.loop is None:
            from _core_support import Caller

            first = Caller(fn, *args)
            first.start()
            self.entered(hold)
            others = [Caller(fn, *args) for _ in range(n - 1)]
            for caller in others:
                caller.start()
            self.until(lambda: fn.cache_info().coalesced == n - 1, "callers to join")
            hold.release()
            return [caller.result() for caller in [first, *others]]

        async def gather() -> list[Any]:
            tasks = [asyncio.ensure_future(fn(*args)) for _ in range(n)]
            for _ in range(_SPINS):
                if hold.entered.is_set() and fn.cache_info().coalesced == n - 1:
                    break
                await asyncio.sleep(0)
            hold.release()
            return list(await asyncio.gather(*tasks))

        results: list[Any] = self.run(gather())
        return results

    def close(self) -> None:
        """Cancel what is left on the loop and close it."""
        loop = self.loop
        if loop is None:
            return
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


class Runs:
    """A body that counts its runs and returns ``"v1"``, ``"v2"``, ...; or, ``failing``, raises."""

    def __init__(self) -> None:
        self.count = 0
        self.failing = False
        self.errors: list[BaseException] = []
        self.threads: list[threading.Thread] = []

    def __call__(self, *args: Any) -> Any:
        self.count += 1
        self.threads.append(threading.current_thread())
        if self.failing:
            error = RuntimeError(f"run {self.count} failed")
            self.errors.append(error)
            raise error
        return f"v{self.count}"
