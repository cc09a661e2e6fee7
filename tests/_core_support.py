"""Helpers shared by the core tests (SPEC sections 1 and 2).

Waits are bounded (``WAIT`` seconds) so that a bug shows up as a failure, never as a
hang; they are hang guards, not synchronisation: every test synchronises on events,
barriers or counters.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

WAIT = 10.0
"""Seconds any single wait may take before the test fails instead of hanging."""

KINDS = ("sync", "async")


def as_kind(kind: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` itself for ``"sync"``; an ``async def`` twin with its signature for ``"async"``."""
    if kind == "sync":
        return fn

    @functools.wraps(fn)
    async def twin(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0)  # a real suspension, as an async function has
        return fn(*args, **kwargs)

    return twin


def run(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn`` once: directly, or in a fresh event loop when it is ``async def``."""
    if inspect.iscoroutinefunction(fn):
        return asyncio.run(fn(*args, **kwargs))
    return fn(*args, **kwargs)


def eventually(predicate: Callable[[], bool], what: str = "condition") -> None:
    """Wait (bounded) until ``predicate()`` holds, e.g. until N threads joined a flight.

    Joining a flight has no event of its own, so this re-checks the counters the
    library exposes; it never guesses a duration.
    """
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.0005)


async def aeventually(predicate: Callable[[], bool], what: str = "condition") -> None:
    """Yield to the event loop until ``predicate()`` holds (bounded)."""
    for _ in range(100_000):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"timed out waiting for {what}")


def wait(event: threading.Event, what: str = "event") -> None:
    """``event.wait()`` with a hang guard."""
    if not event.wait(WAIT):
        raise AssertionError(f"timed out waiting for {what}")


async def await_bounded(aw: Awaitable[Any]) -> Any:
    """Await ``aw`` with a hang guard."""
    return await asyncio.wait_for(aw, WAIT)


class Caller(threading.Thread):
    """A thread that makes one call and keeps its outcome (value or exception)."""

    def __init__(
        self,
        fn: Callable[..., Any],
        /,
        *args: Any,
        barrier: threading.Barrier | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.barrier = barrier
        self.calling = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            if self.barrier is not None:
                self.barrier.wait(WAIT)
            self.calling.set()
            self.value = run(self.fn, *self.args, **self.kwargs)
        except BaseException as exc:
            self.error = exc

    def finish(self) -> Caller:
        """Join (bounded) and return self; fails if the thread still runs."""
        self.join(WAIT)
        assert not self.is_alive(), "caller thread hung"
        return self

    def result(self) -> Any:
        """The call's value; re-raises its exception."""
        self.finish()
        if self.error is not None:
            raise self.error
        return self.value


def start_callers(n: int, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> list[Caller]:
    """Start ``n`` threads that call ``fn(*args, **kwargs)`` together (behind a barrier)."""
    barrier = threading.Barrier(n)
    callers = [Caller(fn, *args, barrier=barrier, **kwargs) for _ in range(n)]
    for caller in callers:
        caller.start()
    return callers


def in_forked_child(fn: Callable[[], Any]) -> Any:
    """Run ``fn()`` in a child made by ``os.fork`` and return what it returned (or raised).

    The child reports through a pipe and leaves with ``os._exit``; a child that hangs
    is killed after ``WAIT`` seconds and the test fails.
    """
    import os
    import pickle
    import select
    import signal

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        status = 0
        try:
            os.close(read_end)
            try:
                payload = ("ok", fn())
            except BaseException as exc:
                payload = ("error", f"{type(exc).__name__}: {exc}")
            with os.fdopen(write_end, "wb") as out:
                pickle.dump(payload, out)
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], WAIT)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            raise AssertionError("the forked child hung")
        with os.fdopen(read_end, "rb") as inp:
            data = inp.read()
    finally:
        os.waitpid(pid, 0)
    kind, value = pickle.loads(data)
    if kind == "error":
        raise AssertionError(f"the forked child raised {value}")
    return value
