"""Hardening of fork safety (issue 19, S14): locks held at fork time, forks inside executions."""

from __future__ import annotations

import asyncio
import os
import pickle
import select
import signal
import threading

import pytest
from _core_support import WAIT, in_forked_child, wait

import coalesce._store
from coalesce import singleflight

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only"),
    pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork.*:DeprecationWarning"),
]


def test_s14_child_decorates_with_cache_while_the_guard_registry_was_locked() -> None:
    """S14: a child forked while a thread held the guard registry's lock decorates with cache=."""
    inside = threading.Event()
    leave = threading.Event()
    registry = coalesce._store._guard_registry

    def hold() -> None:
        # What a thread decorating with cache= does at the moment of the fork.
        with registry.lock:
            inside.set()
            wait(leave, "the fork")

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    wait(inside, "the registry lock held")
    try:

        def child() -> int:
            @singleflight(cache={})
            def f(x: int) -> int:
                return x + 1

            return f(1)

        assert in_forked_child(child) == 2
    finally:
        leave.set()
        holder.join(WAIT)


def _fork_inside(kind: str) -> int:
    """Fork from inside an execution; the child reports ``in_flight`` after that call returns."""
    read_end, write_end = os.pipe()

    def report(value: int) -> None:  # pragma: no cover - runs in the child
        try:
            with os.fdopen(write_end, "wb") as out:
                pickle.dump(value, out)
        finally:
            os._exit(0)

    pids: list[int] = []

    def fork() -> str:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            return "child"
        pids.append(pid)
        return "parent"

    if kind == "sync":

        @singleflight(ttl=60)
        def f(x: int) -> str:
            return fork()

        if f(1) == "child":  # pragma: no cover - runs in the child
            report(f.cache_info().in_flight)
    else:

        @singleflight(ttl=60)
        async def g(x: int) -> str:
            return fork()

        async def main() -> None:
            if await g(1) == "child":  # pragma: no cover - runs in the child
                report(g.cache_info().in_flight)

        asyncio.run(main())
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], WAIT)
        if not ready:
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            raise AssertionError("the forked child hung")
        with os.fdopen(read_end, "rb") as inp:
            return int(pickle.load(inp))
    finally:
        for pid in pids:
            os.waitpid(pid, 0)


def test_s14_in_flight_is_zero_in_a_child_forked_inside_an_execution(kind: str) -> None:
    """S14/S12: in a child forked inside an execution, in_flight is 0 once that call returns."""
    assert _fork_inside(kind) == 0
