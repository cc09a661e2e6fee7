"""SPEC V3 (public asyncio only), with the S7, S9, S12 and S16 behaviour it must keep."""

from __future__ import annotations

import ast
import asyncio
import pathlib
import sys
import threading
from typing import Any

import pytest
from _core_support import WAIT

from coalesce import ReentrantCallError, singleflight

_PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "coalesce"

# What V3 names, and the other CPython internals the old 3.11 emulation relied on.
_BANNED_NAMES = {
    "_current_tasks",
    "_must_cancel",
    "_thread_id",
    "getrefcount",
    "getweakrefcount",
}


def test_v3_the_package_names_no_private_asyncio_detail() -> None:
    """V3: no module of coalesce reads asyncio internals or reference counts."""
    found = []
    paths = sorted(_PACKAGE.glob("*.py"))
    assert _PACKAGE / "_flight.py" in paths
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", None)
            if name in _BANNED_NAMES:
                found.append(f"{path.name}:{node.lineno}: {name}")
            if (
                isinstance(node, ast.Attribute)
                and node.attr == "__new__"
                and isinstance(node.value, ast.Name)
                and "Task" in node.value.id
            ):
                found.append(f"{path.name}:{node.lineno}: a Task made without __init__")
    assert found == []


def test_v3_current_task_in_the_first_step_is_a_whole_task() -> None:
    """V3: current_task() inside an execution's first step is a real task (name, callbacks)."""
    seen: dict[str, Any] = {}
    called = threading.Event()

    @singleflight
    async def load(x: int) -> int:
        task = asyncio.current_task()
        assert task is not None
        seen["name"] = task.get_name()
        seen["coro"] = task.get_coro()
        task.add_done_callback(lambda _: called.set())
        seen["task"] = task
        return x

    async def main() -> int:
        value = await asyncio.wait_for(load(1), WAIT)
        if not called.is_set():
            await asyncio.wait_for(asyncio.shield(seen["task"]), WAIT)
        return value

    assert asyncio.run(main()) == 1
    assert isinstance(seen["name"], str)
    assert asyncio.iscoroutine(seen["coro"])
    assert called.is_set()
    assert seen["task"].done()
    assert not seen["task"].cancelled()


def test_v3_first_step_task_is_not_the_callers_and_times_out_alone() -> None:
    """V3/S7: an asyncio.timeout entered in the first step cancels the execution only."""

    @singleflight
    async def load(x: int) -> str:
        try:
            async with asyncio.timeout(0):
                await asyncio.Event().wait()
        except TimeoutError:
            return "timed out inside"
        return "never"

    async def main() -> tuple[str, bool]:
        caller = asyncio.current_task()
        assert caller is not None
        value = await asyncio.wait_for(load(1), WAIT)
        return value, caller.cancelling() == 0

    assert asyncio.run(main()) == ("timed out inside", True)
    assert load.cache_info().in_flight == 0


@pytest.mark.parametrize("cache", ["none", "ttl"])
def test_v3_caller_gone_before_the_execution_starts_leaves_nothing(cache: str) -> None:
    """S7/S16: when the only caller goes before the execution's task first runs, nothing stays."""
    runs: list[int] = []
    options: dict[str, Any] = {"ttl": 60} if cache == "ttl" else {}

    @singleflight(**options)
    async def load(x: int) -> int:
        runs.append(x)
        await asyncio.Event().wait()  # never set: only a cancellation ends it
        return x

    async def main() -> None:
        before = asyncio.all_tasks()
        call = load(1)
        # Step the call by hand, then close it before the loop runs anything else:
        # on 3.11 the execution's task has not begun; on 3.12+ its first step has.
        call.send(None)
        assert load.cache_info().in_flight == 1
        call.close()
        others = asyncio.all_tasks() - before
        assert len(others) == 1
        done, _ = await asyncio.wait(others, timeout=WAIT)
        assert done == others
        assert next(iter(done)).cancelled()

    asyncio.run(main())
    info = load.cache_info()
    assert (info.in_flight, info.currsize, info.misses) == (0, 0, 1)
    assert runs == ([1] if sys.version_info >= (3, 12) else [])

    async def again() -> None:
        # A later call starts afresh: no tombstone or flight from the abandoned one.
        call = load(2)
        call.send(None)
        assert load.cache_info().in_flight == 1
        call.close()

    asyncio.run(again())
    assert load.cache_info().in_flight == 0


@pytest.mark.parametrize("where", ["first-step", "after-await"])
def test_v3_reentrancy_is_seen_through_the_public_current_task(where: str) -> None:
    """S9: the same key awaited from its own execution raises at once, before or after it awaits."""

    @singleflight
    async def load(x: int) -> str:
        if where == "after-await":
            await asyncio.sleep(0)
        try:
            await load(x)
        except ReentrantCallError:
            return "refused"
        return "joined"

    async def main() -> list[str]:
        return list(await asyncio.wait_for(asyncio.gather(load(1), load(1)), WAIT))

    assert asyncio.run(main()) == ["refused", "refused"]
    assert load.cache_info().in_flight == 0


def test_s12_counters_read_while_counting_stay_exact() -> None:
    """S12: cache_info() read from many threads while others count never skews the counts."""
    calls = 2000
    readers = 4

    @singleflight(ttl=60)
    def load(x: int) -> int:
        return x

    load(0)
    start = threading.Barrier(readers + 2)
    errors: list[BaseException] = []

    def count() -> None:
        start.wait(WAIT)
        for _ in range(calls):
            load(0)

    def read() -> None:
        start.wait(WAIT)
        try:
            last = 0
            for _ in range(calls):
                hits = load.cache_info().hits
                assert last <= hits <= 2 * calls
                last = hits
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=count) for _ in range(2)]
    threads += [threading.Thread(target=read) for _ in range(readers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert errors == []
    info = load.cache_info()
    assert (info.hits, info.misses, info.in_flight) == (2 * calls, 1, 0)
    load.cache_clear()
    assert load.cache_info().hits == 0
    load(0)
    load(0)
    assert (load.cache_info().hits, load.cache_info().misses) == (1, 1)
