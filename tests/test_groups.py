"""Group and AsyncGroup (SPEC section 1): do, do_shared, forget, ``in``, ``len``."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from _core_support import WAIT, Caller, as_kind, eventually, run, wait

from coalesce import AsyncGroup, Group, ReentrantCallError


def _joined(group: Group | AsyncGroup) -> int:
    """Callers that joined a flight in ``group`` so far (the coalesced counter)."""
    return group._stats.snapshot()[2]


# --------------------------------------------------------------------------- Group


def test_group_do_runs_fn_with_its_arguments() -> None:
    """Section 1: Group.do(key, fn, *args, **kwargs) returns fn's value."""
    group = Group()

    def fn(a: int, b: int = 0, *, key: str = "", fn: str = "") -> str:
        return f"{a}{b}{key}{fn}"

    assert group.do("k", fn, 1, b=2, key="K", fn="F") == "12KF"
    assert len(group) == 0
    assert "k" not in group


def test_group_concurrent_do_runs_once_and_shares() -> None:
    """S1: concurrent Group.do calls with one key share one execution and one object."""
    group = Group()
    release = threading.Event()
    runs: list[int] = []

    def fn() -> object:
        runs.append(1)
        wait(release)
        return object()

    callers = [Caller(group.do_shared, "k", fn) for _ in range(5)]
    for caller in callers:
        caller.start()
    eventually(lambda: "k" in group and _joined(group) == 4, "callers to join")
    assert len(group) == 1
    release.set()
    outcomes = [caller.result() for caller in callers]
    assert all(value is outcomes[0][0] for value, _ in outcomes)
    assert all(shared is True for _, shared in outcomes)
    assert runs == [1]
    assert len(group) == 0
    assert "k" not in group


def test_group_do_shared_alone_is_not_shared(kind: str) -> None:
    """Section 1: Group and AsyncGroup do_shared report shared=False for a lone caller."""
    group = Group() if kind == "sync" else AsyncGroup()
    assert run(group.do_shared, "k", as_kind(kind, lambda: 5)) == (5, False)


def test_group_errors_are_shared_and_not_kept() -> None:
    """S2: Group callers share the same exception object; the next do runs again."""
    group = Group()
    release = threading.Event()
    runs: list[int] = []

    def fn() -> None:
        runs.append(1)
        wait(release)
        raise ValueError("boom")

    callers = [Caller(group.do, "k", fn) for _ in range(3)]
    for caller in callers:
        caller.start()
    eventually(lambda: _joined(group) == 2, "callers to join")
    release.set()
    errors = [caller.finish().error for caller in callers]
    assert isinstance(errors[0], ValueError)
    assert errors[0] is errors[1] is errors[2]
    assert group.do("k", lambda: "again") == "again"


def test_group_forget_lets_later_callers_start_anew() -> None:
    """Section 1: forget(key) is True when in flight; later callers start a new execution."""
    group = Group()
    release = threading.Event()
    entered = threading.Event()

    def slow() -> str:
        entered.set()
        wait(release)
        return "old"

    first = Caller(group.do, "k", slow)
    first.start()
    wait(entered)
    joined = Caller(group.do, "k", slow)
    joined.start()
    eventually(lambda: _joined(group) == 1, "a caller to join")
    assert group.forget("k") is True
    assert "k" not in group
    assert group.forget("k") is False
    assert group.do("k", lambda: "new") == "new"  # does not join the forgotten one
    release.set()
    assert first.result() == "old"
    assert joined.result() == "old"  # the forgotten execution still answers its callers
    assert group.forget("missing") is False


def test_groups_are_independent() -> None:
    """S5: two groups never share a flight for an equal key."""
    one, two = Group(), Group()
    together = threading.Barrier(2)

    def fn(name: str) -> str:
        together.wait(WAIT)
        return name

    callers = [Caller(one.do, "k", fn, "one"), Caller(two.do, "k", fn, "two")]
    for caller in callers:
        caller.start()
    assert [caller.result() for caller in callers] == ["one", "two"]


def test_group_reentrant_do_raises() -> None:
    """S9: Group.do of a key from inside its own execution raises ReentrantCallError."""
    group = Group()

    def fn() -> str:
        with pytest.raises(ReentrantCallError):
            group.do("k", fn)
        return group.do("other", lambda: "inner")

    assert group.do("k", fn) == "inner"


def test_group_unhashable_key() -> None:
    """Section 1: an unhashable key is a TypeError, and ``in`` answers False for it."""
    group = Group()
    with pytest.raises(TypeError):
        group.do([1], lambda: 1)
    assert [1] not in group
    assert len(group) == 0


# --------------------------------------------------------------------------- AsyncGroup


def test_async_group_do_and_do_shared() -> None:
    """S1: concurrent AsyncGroup.do_shared calls share one execution and report shared."""
    runs: list[int] = []

    async def main() -> None:
        group = AsyncGroup()
        release = asyncio.Event()

        started = asyncio.Event()

        async def fn(x: int, *, key: int = 0) -> object:
            runs.append(x)
            started.set()
            await release.wait()
            return object()

        tasks = [asyncio.create_task(group.do_shared("k", fn, 1, key=2)) for _ in range(4)]
        # The tasks start in the order they were made (asyncio runs ready callbacks
        # first in, first out), all before this one wakes: every one has joined.
        await asyncio.wait_for(started.wait(), WAIT)
        assert "k" in group
        assert len(group) == 1
        release.set()
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks), WAIT)
        assert all(value is outcomes[0][0] for value, _ in outcomes)
        assert all(shared for _, shared in outcomes)
        assert len(group) == 0
        assert "k" not in group

    asyncio.run(main())
    assert runs == [1]


def test_async_group_errors_are_shared() -> None:
    """S2: AsyncGroup callers share the same exception object, then it runs again."""

    async def main() -> None:
        group = AsyncGroup()
        release = asyncio.Event()

        started = asyncio.Event()

        async def fn() -> None:
            started.set()
            await release.wait()
            raise ValueError("boom")

        tasks = [asyncio.create_task(group.do("k", fn)) for _ in range(3)]
        await asyncio.wait_for(started.wait(), WAIT)  # the later tasks joined before (FIFO)
        release.set()
        errors = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(errors[0], ValueError)
        assert errors[0] is errors[1] is errors[2]

        async def ok() -> str:
            return "again"

        assert await group.do("k", ok) == "again"

    asyncio.run(main())


def test_async_group_forget() -> None:
    """Section 1: AsyncGroup.forget(key) makes later callers start a new execution."""

    async def main() -> None:
        group = AsyncGroup()
        release = asyncio.Event()

        started = asyncio.Event()

        async def slow() -> str:
            started.set()
            await release.wait()
            return "old"

        async def fresh() -> str:
            return "new"

        first = asyncio.create_task(group.do("k", slow))
        await asyncio.wait_for(started.wait(), WAIT)
        assert "k" in group
        assert group.forget("k") is True
        assert "k" not in group
        assert group.forget("k") is False
        assert await group.do("k", fresh) == "new"
        release.set()
        assert await asyncio.wait_for(first, WAIT) == "old"
        assert len(group) == 0

    asyncio.run(main())


def test_async_group_reentrant_do_raises() -> None:
    """S9: AsyncGroup.do of a key from inside its own execution raises ReentrantCallError."""

    async def main() -> str:
        group = AsyncGroup()

        async def inner() -> str:
            return "inner"

        async def fn() -> str:
            await asyncio.sleep(0)
            with pytest.raises(ReentrantCallError):
                await group.do("k", fn)
            return await group.do("other", inner)

        return await asyncio.wait_for(group.do("k", fn), WAIT)

    assert asyncio.run(main()) == "inner"


def test_async_group_from_two_loops() -> None:
    """S10: an AsyncGroup used from two threads' loops at once neither fails nor hangs."""
    group = AsyncGroup()
    entered = threading.Event()
    release = threading.Event()

    async def slow() -> str:
        entered.set()
        await asyncio.to_thread(wait, release)
        return "first loop"

    async def quick() -> str:
        await asyncio.sleep(0)
        return "second loop"

    def in_loop(fn: Any) -> Any:
        return asyncio.run(group.do("k", fn))

    first = Caller(in_loop, slow)
    first.start()
    wait(entered)
    assert "k" in group
    assert in_loop(quick) == "second loop"
    release.set()
    assert first.result() == "first loop"
    assert len(group) == 0
