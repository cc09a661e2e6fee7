"""Batches at their edges (SPEC section 9 with O3, S7, F3): the parameter forms a
one-parameter function takes (B1), cancelled batch callers whose chunks or joined ids
have failed (O3), gathered misses whose callers all left (B7, S7), a failing batch
fetch of an expired id with ``stale_if_error=`` (F3), and aborts counted as single
calls count them (S8, S12).

Calls synchronise on events and on the library's counters, never on sleeps; every
wait is bounded (``WAIT``).
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Mapping
from typing import Any

import pytest
from _core_support import WAIT, Caller
from freezegun import freeze_time
from test_batch import DB, Calls, build, run_case, until

from coalesce import singleflight

# --------------------------------------------------------------------------- B1


def _one_parameter(kind: str, form: str, singles: list[int]) -> Any:
    """``f`` of one parameter ``a`` in ``form``, recording its calls in ``singles``."""
    if kind == "sync":
        if form == "positional-only":

            def f(a: int, /) -> int:
                singles.append(a)
                return a * 10

        elif form == "positional-or-keyword":

            def f(a: int) -> int:
                singles.append(a)
                return a * 10

        else:

            def f(*, a: int) -> int:
                singles.append(a)
                return a * 10

        return singleflight(ttl=60)(f)
    if form == "positional-only":

        async def af(a: int, /) -> int:
            singles.append(a)
            return a * 10

    elif form == "positional-or-keyword":

        async def af(a: int) -> int:
            singles.append(a)
            return a * 10

    else:

        async def af(*, a: int) -> int:
            singles.append(a)
            return a * 10

    return singleflight(ttl=60)(af)


FORMS = ("positional-only", "positional-or-keyword", "keyword-only")


@pytest.mark.parametrize("form", FORMS)
def test_b1_a_one_parameter_function_of_any_form(kind: str, form: str) -> None:
    """B1: a function of exactly one parameter, positional-only, positional-or-keyword
    or keyword-only, has a batch function; the batch and f share one cache (B2), and an
    id the batch leaves out is computed by f itself (B4)."""
    singles: list[int] = []
    fetched: list[list[int]] = []
    f = _one_parameter(kind, form, singles)

    def answer(ids: list[int]) -> dict[int, int]:
        fetched.append(list(ids))
        return {i: i * 100 for i in ids if i != 3}

    if kind == "sync":

        @f.batch()
        def fs(ids: list[int]) -> Mapping[int, int]:
            return answer(ids)

    else:

        @f.batch()
        async def fs(ids: list[int]) -> Mapping[int, int]:
            return answer(ids)

    def one(i: int) -> Any:
        return f(a=i) if form == "keyword-only" else f(i)

    async def body(calls: Calls) -> None:
        assert await calls.call(fs, [1, 2, 3]) == {1: 100, 2: 200}
        assert fetched == [[1, 2, 3]]
        assert await calls.call(one, 1) == 100  # stored as f(1) stores it: a hit
        assert await calls.call(one, 3) == 30  # left out: f runs (B4)
        assert await calls.call(fs, [2, 3]) == {2: 200, 3: 30}  # both hits
        assert singles == [3]
        assert fetched == [[1, 2, 3]]
        info = f.cache_info()
        assert (info.hits, info.misses, info.currsize) == (3, 4, 3)

    run_case(kind, body)


# --------------------------------------------------------------------------- O3


def _asyncio_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    gc.collect()  # a future whose exception nobody read is reported when it is freed
    return [r.getMessage() for r in caplog.records if r.name == "asyncio"]


def test_o3_cancelled_batch_caller_after_a_chunk_failed(caplog: pytest.LogCaptureFixture) -> None:
    """O3: a batch caller cancelled after one of its chunks failed leaves nothing for
    asyncio's logger ("Future exception was never retrieved")."""
    gate = asyncio.Event()
    fetched: list[list[int]] = []

    @singleflight(ttl=60)
    async def user(i: int) -> int:
        return i

    @user.batch(max_batch=1)
    async def users(ids: list[int]) -> Mapping[int, int]:
        fetched.append(ids)
        if ids == [2]:
            raise ValueError("the chunk of id 2 failed")
        await gate.wait()
        return {i: i for i in ids}

    async def body() -> None:
        task = asyncio.ensure_future(users([1, 2]))
        await until(lambda: user.cache_info().errors == 1, "the chunk of id 2 failed")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        gate.set()
        await until(lambda: user.cache_info().in_flight == 0, "the chunk of id 1 ended")

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        asyncio.run(asyncio.wait_for(body(), WAIT))
        assert _asyncio_errors(caplog) == []
    assert fetched == [[1], [2]]


def test_o3_cancelled_batch_caller_after_a_joined_id_failed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """O3: a batch caller cancelled after an id it joined (an f(id) execution) failed
    leaves nothing for asyncio's logger."""
    gate, fail = asyncio.Event(), asyncio.Event()
    running: set[int] = set()

    @singleflight(ttl=60)
    async def user(i: int) -> int:
        running.add(i)
        if i == 5:
            await fail.wait()
            raise KeyError(i)
        await gate.wait()
        return i

    @user.batch()
    async def users(ids: list[int]) -> Mapping[int, int]:
        await gate.wait()
        return {i: i for i in ids}

    async def body() -> None:
        five = asyncio.ensure_future(user(5))
        six = asyncio.ensure_future(user(6))
        await until(lambda: running == {5, 6}, "f(5) and f(6) running")
        task = asyncio.ensure_future(users([6, 5]))
        await until(lambda: user.cache_info().coalesced == 2, "the batch joined both")
        fail.set()
        with pytest.raises(KeyError):
            await five
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        gate.set()
        assert await asyncio.wait_for(six, WAIT) == 6

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        asyncio.run(asyncio.wait_for(body(), WAIT))
        assert _asyncio_errors(caplog) == []


# --------------------------------------------------------------------------- B7, S7


def test_b7_gathered_misses_whose_callers_left_end_at_once() -> None:
    """B7/S7: when every caller of a miss gathered by collect= has been cancelled, it is
    in flight no more, and it leaves its window: the batch function never gets it."""
    db = DB("async")
    # The window closes when max_batch misses are in it, so the test waits on no clock.
    user, _ = build("async", db, collect=WAIT, max_batch=3)

    async def body() -> None:
        gone = [asyncio.ensure_future(user(i)) for i in (1, 2)]
        await until(lambda: user.cache_info().misses == 2, "two misses gathered")
        assert user.cache_info().in_flight == 2
        for task in gone:
            task.cancel()
        await asyncio.gather(*gone, return_exceptions=True)
        info = user.cache_info()
        assert (info.in_flight, info.currsize) == (0, 0)
        assert db.batches == []
        # The window, emptied, is filled by three new misses: one call, for them only.
        values = await asyncio.gather(*(user(i) for i in (3, 4, 1)))
        assert values == [db.row(i) for i in (3, 4, 1)]
        assert db.batches == [[3, 4, 1]]
        assert user.cache_info().in_flight == 0

    asyncio.run(asyncio.wait_for(body(), WAIT))


# --------------------------------------------------------------------------- F3, S8


def test_f3_a_failed_batch_serves_old_results_within_stale_if_error(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """F3: a failing batch fetch of expired ids serves each id's old result within
    ttl + stale_if_error, as f(id) would; the failure is logged with f's name and
    counted; an id with no old result makes the batch call raise (B5)."""
    db = DB(kind)
    with freeze_time("2026-03-01 12:00:00", real_asyncio=True) as clock:
        user, users = build(kind, db, ttl=10, stale_if_error=20)

        async def body(calls: Calls) -> None:
            await calls.call(users, [1, 2])
            clock.tick(15)
            db.fail = RuntimeError("the database is down")
            with caplog.at_level(logging.WARNING, logger="coalesce"):
                assert await calls.call(users, [1, 2]) == {1: {"id": 1}, 2: {"id": 2}}
            [record] = [r for r in caplog.records if r.name.startswith("coalesce")]
            assert "user()" in record.getMessage()
            assert record.exc_info is not None
            assert record.exc_info[1] is db.fail
            with pytest.raises(RuntimeError) as raised:
                await calls.call(users, [1, 3])  # 3 has no old result
            assert raised.value is db.fail
            clock.tick(15.5)  # 30.5 s: past 10 + 20
            with pytest.raises(RuntimeError):
                await calls.call(users, [2])
            assert db.singles == []
            assert len(db.batches) == 4
            info = user.cache_info()
            assert (info.errors, info.in_flight) == (3, 0)

        run_case(kind, body)


def _framed(depth: int, fn: Any, *args: Any) -> Any:
    """``fn(*args)`` called ``depth`` frames down: freezegun serves the real clock to code
    called within five frames of a ``threading`` frame, so a thread's call of ``f``, whose
    hit path is short, would not see the frozen clock."""
    return _framed(depth - 1, fn, *args) if depth else fn(*args)


def _concurrently(kind: str, fn: Any, ids: tuple[int, ...]) -> list[Any]:
    """``fn(i)`` for each id at once, their values or exceptions: in Caller threads
    (``def``) or as tasks of one loop (``async def``)."""
    if kind == "sync":
        callers = [Caller(_framed, 5, fn, i) for i in ids]
        for caller in callers:
            caller.start()
        return [c.finish().error or c.value for c in callers]

    async def gathered() -> list[Any]:
        calls = asyncio.gather(*(fn(i) for i in ids), return_exceptions=True)
        return await asyncio.wait_for(calls, WAIT)

    return asyncio.run(gathered())


def test_f3_gathered_misses_of_a_failed_batch_serve_old_results(kind: str) -> None:
    """F3 with collect=: the misses of f gathered into a failing batch call each get their
    old result within stale_if_error; one with no old result gets the error."""
    db = DB(kind)
    with freeze_time("2026-03-01 12:00:00", real_asyncio=True) as clock:
        # The window closes when max_batch misses are in it, so the test waits on no clock.
        user, _ = build(kind, db, ttl=10, stale_if_error=20, collect=WAIT, max_batch=3)
        assert _concurrently(kind, user, (1, 2, 3)) == [{"id": i} for i in (1, 2, 3)]
        user.invalidate(3)
        clock.tick(15)
        db.fail = RuntimeError("the database is down")
        assert _concurrently(kind, user, (1, 2, 3)) == [{"id": 1}, {"id": 2}, db.fail]
        assert len(db.batches) == 2
        assert db.singles == []
        assert user.cache_info().in_flight == 0


def test_s8_an_abort_in_a_def_batch_counts_as_a_single_calls_abort() -> None:
    """S8/S12: a KeyboardInterrupt out of a def batch function is counted in errors, as
    one out of f itself is, and leaves nothing in flight."""
    abort = False

    @singleflight(ttl=60)
    def user(i: int) -> int:
        if abort:
            raise KeyboardInterrupt
        return i

    @user.batch()
    def users(ids: list[int]) -> Mapping[int, int]:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        users([1, 2])
    info = user.cache_info()
    assert (info.errors, info.in_flight) == (1, 0)
    abort = True
    with pytest.raises(KeyboardInterrupt):
        user(3)
    info = user.cache_info()
    assert (info.errors, info.in_flight) == (2, 0)
