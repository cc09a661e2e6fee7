"""Batches (SPEC section 9, B1-B8): ``f.batch`` for ``def`` and ``async def``.

Every test body is a coroutine run once per kind (the ``kind`` fixture): for ``def``
the calls run in threads of the test's own pool, for ``async def`` as tasks. A fake
database counts single and batch queries; queries are held by gates (events) and
the test waits on counters the library or the database expose, never on sleeps.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

import pytest
from _core_support import WAIT

from coalesce import singleflight


class Gate:
    """Holds queries until ``open()``; for ``def`` a thread event, for ``async def`` a loop one."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.sync = threading.Event()
        self.aio = asyncio.Event() if kind == "async" else None

    def open(self) -> None:
        self.sync.set()
        if self.aio is not None:
            self.aio.set()

    def wait(self) -> None:
        assert self.sync.wait(WAIT), "gate never opened"

    async def await_(self) -> None:
        assert self.aio is not None
        await asyncio.wait_for(self.aio.wait(), WAIT)


class DB:
    """A fake database: ``one(id)`` and ``many(ids)`` queries, counted; ``gone`` ids are absent."""

    def __init__(self, kind: str, gone: tuple[int, ...] = ()) -> None:
        self.kind = kind
        self.gone = set(gone)
        self.singles: list[int] = []
        self.batches: list[list[int]] = []
        self.started = 0  # queries that have begun (held ones included)
        self.gate: Gate | None = None  # when set, queries wait on it
        self.fail: BaseException | None = None  # when set, batch queries raise it
        self.fail_on: int | None = None  # ... only batches holding this id
        self.answer: Callable[[list[int]], Any] | None = None  # replaces a batch's answer

    def row(self, i: int) -> dict[str, int]:
        return {"id": i}

    def _batch_answer(self, ids: list[int]) -> Any:
        if self.fail is not None and (self.fail_on is None or self.fail_on in ids):
            raise self.fail
        if self.answer is not None:
            return self.answer(ids)
        return {i: self.row(i) for i in ids if i not in self.gone}

    def one(self, i: int) -> dict[str, int]:
        self.singles.append(i)
        self.started += 1
        if self.gate is not None:
            self.gate.wait()
        return self.row(i)

    def many(self, ids: list[int]) -> Any:
        self.batches.append(list(ids))
        self.started += 1
        if self.gate is not None:
            self.gate.wait()
        return self._batch_answer(ids)

    async def aone(self, i: int) -> dict[str, int]:
        self.singles.append(i)
        self.started += 1
        await asyncio.sleep(0)  # a real suspension
        if self.gate is not None:
            await self.gate.await_()
        return self.row(i)

    async def amany(self, ids: list[int]) -> Any:
        self.batches.append(list(ids))
        self.started += 1
        await asyncio.sleep(0)
        if self.gate is not None:
            await self.gate.await_()
        return self._batch_answer(ids)


def build(
    kind: str, db: DB, *, max_batch: int | None = None, collect: float | None = None, **options: Any
) -> tuple[Any, Any]:
    """``user(user_id)`` decorated with ``options`` and its batch function ``users(ids)``."""
    options.setdefault("ttl", 60)
    if kind == "sync":

        @singleflight(key="user_id", **options)
        def user(user_id: int) -> dict[str, int]:
            return db.one(user_id)

        @user.batch(max_batch=max_batch, collect=collect)
        def users(ids: list[int]) -> Mapping[int, dict[str, int]]:
            result: Mapping[int, dict[str, int]] = db.many(ids)
            return result

        return user, users

    @singleflight(key="user_id", **options)
    async def auser(user_id: int) -> dict[str, int]:
        return await db.aone(user_id)

    @auser.batch(max_batch=max_batch, collect=collect)
    async def ausers(ids: list[int]) -> Mapping[int, dict[str, int]]:
        result: Mapping[int, dict[str, int]] = await db.amany(ids)
        return result

    return auser, ausers


class Calls:
    """Starts calls in the background: threads for ``def``, tasks for ``async def``."""

    def __init__(self, kind: str, pool: concurrent.futures.ThreadPoolExecutor) -> None:
        self.kind = kind
        self.pool = pool

    def start(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        if self.kind == "sync":
            return asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
        return asyncio.ensure_future(fn(*args))

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.wait_for(self.start(fn, *args), WAIT)


async def until(predicate: Callable[[], bool], what: str = "condition") -> None:
    """Yield (bounded) until ``predicate()`` holds: a counter reached, a call joined."""
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.0005 if threading.active_count() > 1 else 0)


def run_case(kind: str, body: Callable[[Calls], Awaitable[None]]) -> None:
    with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
        asyncio.run(asyncio.wait_for(body(Calls(kind, pool)), 2 * WAIT))


def coalesced(fn: Any) -> int:
    count: int = fn.cache_info().coalesced
    return count


@pytest.fixture
def pool() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    with concurrent.futures.ThreadPoolExecutor(max_workers=32) as executor:
        yield executor


# --------------------------------------------------------------------------- B1


def test_b1_batch_returns_the_found_ids(kind: str) -> None:
    """B1: the batch callable takes an iterable of ids and returns a dict of those found."""
    db = DB(kind, gone=(3,))
    _user, users = build(kind, db)

    async def body(calls: Calls) -> None:
        result = await calls.call(users, iter([1, 2, 3]))
        assert result == {1: {"id": 1}, 2: {"id": 2}}
        assert type(result) is dict
        assert db.batches == [[1, 2, 3]]

    run_case(kind, body)


def test_b1_batch_keeps_the_kind_of_its_function(kind: str) -> None:
    """B1: the batch callable is async def exactly when f is, and keeps its name and docs."""
    import inspect

    _user, users = build(kind, DB(kind))
    assert inspect.iscoroutinefunction(users) is (kind == "async")
    assert users.__name__ in ("users", "ausers")
    assert users.__wrapped__ is not None


def test_b1_key_by_name_with_other_parameters(kind: str) -> None:
    """B1: key="user_id" on a function with more parameters batches by that id."""
    db = DB(kind)
    if kind == "sync":

        @singleflight(key="user_id", ttl=60)
        def user(user_id: int, *, verbose: bool = False) -> dict[str, int]:
            return db.one(user_id)

        @user.batch()
        def users(ids: list[int]) -> Mapping[int, dict[str, int]]:
            return {i: db.row(i) for i in db.many(ids)}

        assert users([4]) == {4: {"id": 4}}
        assert user(4, verbose=True) == {"id": 4}
    else:

        @singleflight(key="user_id", ttl=60)
        async def auser(user_id: int, *, verbose: bool = False) -> dict[str, int]:
            return await db.aone(user_id)

        @auser.batch()
        async def ausers(ids: list[int]) -> Mapping[int, dict[str, int]]:
            return {i: db.row(i) for i in await db.amany(ids)}

        async def both() -> None:
            assert await ausers([4]) == {4: {"id": 4}}
            assert await auser(4, verbose=True) == {"id": 4}

        asyncio.run(both())
    assert db.singles == []


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({}, "exactly one parameter"),
        ({"key": ("a",)}, "tuple keys"),
        ({"key": lambda a, b=0: a}, "key callable"),
        ({"key": "a", "typed": True}, "typed=True"),
    ],
)
def test_b1_refuses_functions_not_keyed_by_one_parameter(
    kind: str, options: dict[str, Any], needle: str
) -> None:
    """B1: f keyed by anything but one parameter gets a TypeError when its batch is decorated."""
    if kind == "sync":

        @singleflight(**options)
        def f(a: int, b: int = 0) -> int:
            return a

    else:

        @singleflight(**options)
        async def f(a: int, b: int = 0) -> int:
            return a

    with pytest.raises(TypeError, match=needle):
        f.batch()


def test_b1_refuses_a_batch_function_of_the_other_kind(kind: str) -> None:
    """B1: a def batch function for an async def f (and the reverse) is a TypeError."""
    user, _ = build(kind, DB(kind))
    if kind == "sync":

        async def other(ids: list[int]) -> dict[int, int]:
            return {}

    else:

        def other(ids: list[int]) -> dict[int, int]:  # type: ignore[misc]
            return {}

    with pytest.raises(TypeError, match="same kind"):
        user.batch()(other)


def test_b1_refuses_bad_options(kind: str) -> None:
    """B1: max_batch must be a positive int, collect a number of seconds; else a clear error."""
    user, _ = build(kind, DB(kind))
    with pytest.raises(TypeError, match="max_batch must be a positive int"):
        user.batch(max_batch="10")
    with pytest.raises(ValueError, match="max_batch must be at least 1"):
        user.batch(max_batch=0)
    with pytest.raises((TypeError, ValueError), match="collect"):
        user.batch(collect=-1)
    if kind == "sync":

        def no_ids() -> dict[int, int]:
            return {}

    else:

        async def no_ids() -> dict[int, int]:  # type: ignore[misc]
            return {}

    with pytest.raises(TypeError, match="one argument"):
        user.batch()(no_ids)
    with pytest.raises(TypeError, match="not int"):
        user.batch()(3)


def test_b1_sync_refuses_collect_zero() -> None:
    """B6: collect=0 means one event-loop iteration, which a def function lacks: a TypeError."""
    user, _ = build("sync", DB("sync"))
    with pytest.raises(TypeError, match="collect=0"):
        user.batch(collect=0)


def test_b8_backend_bound_function_refuses_batch(kind: str) -> None:
    """B8: with backend=, f.batch is a TypeError that says what is not built (S20)."""
    from test_backend_protocol import MemoryBackend  # a backend of the tests' own

    backend = MemoryBackend()
    if kind == "sync":

        @singleflight(key="user_id", ttl=60, backend=backend)
        def user(user_id: int) -> int:
            return user_id

    else:

        @singleflight(key="user_id", ttl=60, backend=backend)
        async def user(user_id: int) -> int:
            return user_id

    with pytest.raises(TypeError, match="backend= yet"):
        user.batch()


# --------------------------------------------------------------------------- B2


def test_b2_cached_ids_are_hits(kind: str) -> None:
    """B2: ids f has cached are served without a call; only the rest are fetched."""
    db = DB(kind)
    user, users = build(kind, db)

    async def body(calls: Calls) -> None:
        await calls.call(user, 1)
        assert await calls.call(users, [1, 2]) == {1: {"id": 1}, 2: {"id": 2}}
        assert db.batches == [[2]]
        assert await calls.call(users, [2, 1]) == {2: {"id": 2}, 1: {"id": 1}}
        assert db.batches == [[2]]

    run_case(kind, body)


def test_b2_fetched_values_are_stored_as_f_stores_them(kind: str) -> None:
    """B2: a fetched value is in f's cache: f(id) is a hit, with cache_if honoured."""
    db = DB(kind)
    user, users = build(kind, db, cache_if=lambda row: row["id"] != 2)

    async def body(calls: Calls) -> None:
        await calls.call(users, [1, 2])
        assert await calls.call(user, 1) == {"id": 1}
        assert db.singles == []
        assert await calls.call(user, 2) == {"id": 2}  # cache_if refused to keep it
        assert db.singles == [2]
        assert 1 in user.cache
        assert 2 not in user.cache

    run_case(kind, body)


def test_b2_fetched_values_are_stored_with_a_ttl_callable(kind: str) -> None:
    """B2: a ttl callable decides each fetched value's lifetime, as for f(id)."""
    db = DB(kind)
    user, users = build(kind, db, ttl=lambda row: 60 if row["id"] == 1 else 0)

    async def body(calls: Calls) -> None:
        await calls.call(users, [1, 2])
        assert list(user.cache) == [1]

    run_case(kind, body)


def test_b2_ids_in_flight_in_f_are_joined(kind: str) -> None:
    """B2: an id whose f(id) execution is running is joined, not fetched again."""
    db = DB(kind)
    user, users = build(kind, db)

    async def body(calls: Calls) -> None:
        db.gate = Gate(kind)
        single = calls.start(user, 5)
        await until(lambda: db.started == 1, "f(5) running")
        batch = calls.start(users, [5, 6])
        await until(lambda: db.started == 2 and coalesced(user) == 1, "the batch joined f(5)")
        assert db.batches == [[6]]
        db.gate.open()
        assert await asyncio.wait_for(batch, WAIT) == {5: {"id": 5}, 6: {"id": 6}}
        assert await asyncio.wait_for(single, WAIT) == {"id": 5}
        assert db.singles == [5]

    run_case(kind, body)


def test_b2_ids_held_by_another_batch_are_joined(kind: str) -> None:
    """B2: ids another batch is fetching are joined; only the rest are fetched."""
    db = DB(kind)
    _user, users = build(kind, db)

    async def body(calls: Calls) -> None:
        db.gate = Gate(kind)
        first = calls.start(users, [1, 2])
        await until(lambda: db.started == 1, "the first batch running")
        second = calls.start(users, [2, 3])
        await until(lambda: db.started == 2, "the second batch running")
        assert db.batches == [[1, 2], [3]]
        db.gate.open()
        assert await asyncio.wait_for(first, WAIT) == {1: {"id": 1}, 2: {"id": 2}}
        assert await asyncio.wait_for(second, WAIT) == {2: {"id": 2}, 3: {"id": 3}}

    run_case(kind, body)


def test_b2_max_batch_splits_the_fetch(kind: str) -> None:
    """B2: at most max_batch ids per call of the batch function."""
    db = DB(kind)
    _user, users = build(kind, db, max_batch=2)

    async def body(calls: Calls) -> None:
        result = await calls.call(users, range(5))
        assert list(result) == [0, 1, 2, 3, 4]
        assert sorted(map(len, db.batches)) == [1, 2, 2]
        assert sorted(i for ids in db.batches for i in ids) == [0, 1, 2, 3, 4]

    run_case(kind, body)


def test_b2_stale_ids_are_served_and_refreshed_in_one_batch(kind: str) -> None:
    """B2/F1: stale ids are served stale at once and refreshed together in one batch call."""
    from freezegun import freeze_time

    db = DB(kind)
    with freeze_time("2026-03-01 12:00:00", real_asyncio=True) as clock:
        user, users = build(kind, db, ttl=10, stale=60)

        async def body(calls: Calls) -> None:
            await calls.call(users, [1, 2, 3])
            clock.tick(11)
            db.row = lambda i: {"id": i, "v": 2}  # type: ignore[method-assign]
            assert await calls.call(users, [1, 2, 3]) == {i: {"id": i} for i in (1, 2, 3)}
            await until(lambda: user.cache_info().in_flight == 0 and len(db.batches) == 2)
            assert db.batches == [[1, 2, 3], [1, 2, 3]]
            assert await calls.call(user, 2) == {"id": 2, "v": 2}
            info = user.cache_info()
            assert info.stale == 3
            assert info.refreshes == 3

        run_case(kind, body)


# --------------------------------------------------------------------------- B3


def test_b3_f_joins_a_running_batch(kind: str) -> None:
    """B3: while a batch runs, f(id) for an id in it joins it: no second execution."""
    db = DB(kind)
    user, users = build(kind, db)

    async def body(calls: Calls) -> None:
        db.gate = Gate(kind)
        batch = calls.start(users, [1, 2])
        await until(lambda: db.started == 1, "the batch running")
        singles = [calls.start(user, 2) for _ in range(3)]
        await until(lambda: coalesced(user) == 3, "f(2) callers joined")
        db.gate.open()
        values = [await asyncio.wait_for(s, WAIT) for s in singles]
        assert values == [{"id": 2}] * 3
        batch_value = await asyncio.wait_for(batch, WAIT)
        assert batch_value[2] is values[0]
        assert db.singles == []
        assert db.batches == [[1, 2]]

    run_case(kind, body)


# --------------------------------------------------------------------------- B4


def test_b4_left_out_id_is_absent_and_not_cached(kind: str) -> None:
    """B4: an id the batch leaves out is absent from the result and nothing is cached for it."""
    db = DB(kind, gone=(3,))
    user, users = build(kind, db)

    async def body(calls: Calls) -> None:
        assert await calls.call(users, [3, 4]) == {4: {"id": 4}}
        assert 3 not in user.cache
        assert await calls.call(users, [3]) == {}
        assert db.batches == [[3, 4], [3]]
        assert await calls.call(user, 3) == {"id": 3}  # f stays the truth
        assert db.singles == [3]

    run_case(kind, body)


def test_b4_f_caller_waiting_on_a_left_out_id_runs_f(kind: str) -> None:
    """B4: an f(id) caller that joined a batch which leaves the id out runs f itself."""
    db = DB(kind, gone=(3,))
    user, users = build(kind, db)

    async def body(calls: Calls) -> None:
        db.gate = Gate(kind)
        batch = calls.start(users, [3, 4])
        await until(lambda: db.started == 1, "the batch running")
        singles = [calls.start(user, 3) for _ in range(2)]
        await until(lambda: coalesced(user) == 2, "f(3) callers joined")
        db.gate.open()
        assert await asyncio.wait_for(batch, WAIT) == {4: {"id": 4}}
        assert [await asyncio.wait_for(s, WAIT) for s in singles] == [{"id": 3}] * 2
        assert db.singles == [3]  # one execution of f for both callers
        assert user.cache[3] == {"id": 3}
        assert user.cache_info().in_flight == 0

    run_case(kind, body)


def test_b4_a_joined_batch_hears_not_found(kind: str) -> None:
    """B4: a batch call that joined another batch's id the batch left out does not get it."""
    db = DB(kind, gone=(3,))
    user, users = build(kind, db)

    async def body(calls: Calls) -> None:
        db.gate = Gate(kind)
        first = calls.start(users, [3])
        await until(lambda: db.started == 1, "the first batch running")
        second = calls.start(users, [3, 5])
        await until(lambda: db.started == 2 and coalesced(user) == 1, "the second joined")
        db.gate.open()
        assert await asyncio.wait_for(first, WAIT) == {}
        assert await asyncio.wait_for(second, WAIT) == {5: {"id": 5}}
        assert db.singles == []
        assert user.cache_info().in_flight == 0

    run_case(kind, body)


# --------------------------------------------------------------------------- B5


def test_b5_batch_error_reaches_every_caller_of_its_ids(kind: str) -> None:
    """B5: a batch that raises gives the same exception object to every caller of its ids."""
    db = DB(kind)
    user, users = build(kind, db)
    boom = LookupError("database down")

    async def body(calls: Calls) -> None:
        db.gate = Gate(kind)
        db.fail = boom
        batch = calls.start(users, [1, 2])
        await until(lambda: db.started == 1, "the batch running")
        single = calls.start(user, 2)
        joined = calls.start(users, [1, 9])
        await until(lambda: coalesced(user) == 2, "callers joined")
        db.gate.open()
        for waiter in (batch, single, joined):
            with pytest.raises(LookupError) as info:
                await asyncio.wait_for(waiter, WAIT)
            assert info.value is boom
        assert 1 not in user.cache
        assert 2 not in user.cache
        db.fail = None
        assert await calls.call(user, 2) == {"id": 2}  # errors are not cached

    run_case(kind, body)


def test_b5_other_chunks_are_not_affected(kind: str) -> None:
    """B5: a failing chunk does not stop the other chunks: their values are cached."""
    db = DB(kind)
    user, users = build(kind, db, max_batch=1)
    boom = LookupError("id 1 broke the query")

    async def body(calls: Calls) -> None:
        db.fail = boom
        db.fail_on = 1
        with pytest.raises(LookupError) as info:
            await calls.call(users, [1, 2, 3])
        assert info.value is boom
        assert sorted(user.cache) == [2, 3]
        assert user.cache_info().errors == 1

    run_case(kind, body)


def test_b5_a_non_mapping_answer_is_a_clear_error(kind: str) -> None:
    """B5: a batch function returning a non-mapping gives every caller a TypeError naming it."""
    db = DB(kind)
    user, users = build(kind, db)
    db.answer = lambda ids: [db.row(i) for i in ids]

    async def body(calls: Calls) -> None:
        with pytest.raises(TypeError, match=r"returned list, not a mapping"):
            await calls.call(users, [1])
        assert 1 not in user.cache

    run_case(kind, body)


def test_extra_ids_are_ignored_with_a_warning(kind: str) -> None:
    """B4: ids the batch function was not asked for are ignored, with a RuntimeWarning."""
    db = DB(kind)
    user, users = build(kind, db)
    db.answer = lambda ids: {**{i: db.row(i) for i in ids}, "1": {"id": -1}}

    async def body(calls: Calls) -> None:
        with pytest.warns(RuntimeWarning, match=r"not asked for \('1'\)"):
            assert await calls.call(users, [1]) == {1: {"id": 1}}
        assert list(user.cache) == [1]

    run_case(kind, body)


def test_unhashable_id_names_its_position(kind: str) -> None:
    """B1: an unhashable id is a TypeError naming its position; nothing is left in flight."""
    db = DB(kind)
    user, users = build(kind, db)

    async def body(calls: Calls) -> None:
        with pytest.raises(TypeError, match=r"position 2 \(\[3\]\) is unhashable"):
            await calls.call(users, [1, 2, [3]])
        with pytest.raises(TypeError, match="not a str"):
            await calls.call(users, "12")
        with pytest.raises(TypeError, match="iterable of ids"):
            await calls.call(users, 12)
        assert db.batches == []
        assert user.cache_info().in_flight == 0

    run_case(kind, body)


def test_duplicate_ids_are_fetched_once(kind: str) -> None:
    """B7: an id given twice is fetched and counted once and appears once in the result."""
    db = DB(kind)
    user, users = build(kind, db)

    async def body(calls: Calls) -> None:
        assert await calls.call(users, [2, 1, 2, 2]) == {2: {"id": 2}, 1: {"id": 1}}
        assert db.batches == [[2, 1]]
        assert user.cache_info().misses == 2

    run_case(kind, body)


# --------------------------------------------------------------------------- B6


def test_b6_collect_zero_gathers_one_loop_iteration() -> None:
    """B6: with collect=0, misses of async f made in one loop iteration make one batch call."""
    db = DB("async", gone=(7,))
    user, _ = build("async", db, collect=0)

    async def body() -> None:
        values = await asyncio.gather(*(user(i) for i in range(10)))
        assert values == [db.row(i) for i in range(10)]
        assert db.batches == [list(range(10))]
        assert db.singles == [7]  # left out: its caller ran f itself (B4)
        info = user.cache_info()
        assert (info.hits, info.misses, info.coalesced, info.in_flight) == (0, 10, 0, 0)

    asyncio.run(body())


def test_b6_collect_zero_respects_max_batch() -> None:
    """B6/P9: 1,000 concurrent misses with collect=0, max_batch=100 make 10 batch calls."""
    db = DB("async")
    user, _ = build("async", db, collect=0, max_batch=100, maxsize=None)

    async def body() -> None:
        await asyncio.gather(*(user(i) for i in range(1000)))
        assert [len(ids) for ids in db.batches] == [100] * 10
        assert db.singles == []

    asyncio.run(body())


def test_b6_collect_seconds_gathers_a_window(kind: str) -> None:
    """B6: with collect=seconds, misses within the window are fetched in one batch call."""
    db = DB(kind)
    # The window closes when max_batch misses are in it, so the test waits on no clock.
    user, _ = build(kind, db, collect=WAIT, max_batch=4)

    async def body(calls: Calls) -> None:
        singles = [calls.start(user, i) for i in range(4)]
        values = [await asyncio.wait_for(s, WAIT) for s in singles]
        assert values == [db.row(i) for i in range(4)]
        assert [sorted(ids) for ids in db.batches] == [[0, 1, 2, 3]]
        assert db.singles == []

    run_case(kind, body)


def test_b6_collect_window_ends_by_time(kind: str) -> None:
    """B6: a window that is not filled closes after collect seconds and fetches what it has."""
    db = DB(kind)
    user, _ = build(kind, db, collect=0.01)

    async def body(calls: Calls) -> None:
        assert await calls.call(user, 1) == {"id": 1}
        assert db.batches == [[1]]

    run_case(kind, body)


def test_b6_collected_miss_joined_by_others(kind: str) -> None:
    """B6: callers of an id whose miss is being collected join it; a cached id is a hit."""
    db = DB(kind)
    user, _users = build(kind, db, collect=WAIT, max_batch=2)

    async def body(calls: Calls) -> None:
        first = calls.start(user, 1)
        await until(lambda: user.cache_info().misses == 1, "the first miss")
        second = calls.start(user, 1)
        await until(lambda: coalesced(user) == 1, "the second joined")
        third = calls.start(user, 2)  # fills the window
        assert [await asyncio.wait_for(c, WAIT) for c in (first, second, third)] == [
            {"id": 1},
            {"id": 1},
            {"id": 2},
        ]
        assert db.batches == [[1, 2]]
        assert await calls.call(user, 1) == {"id": 1}
        assert user.cache_info().hits == 1

    run_case(kind, body)


# --------------------------------------------------------------------------- B7


def test_b7_every_id_counts_once(kind: str) -> None:
    """B7: each id of a batch call is one hit, one miss, or one coalesced miss in cache_info()."""
    db = DB(kind)
    user, users = build(kind, db)

    async def body(calls: Calls) -> None:
        await calls.call(user, 1)  # miss
        db.gate = Gate(kind)
        single = calls.start(user, 2)  # miss
        await until(lambda: db.started == 2, "f(2) running")
        batch = calls.start(users, [1, 2, 3, 4])  # hit, coalesced, miss, miss
        await until(lambda: db.started == 3, "the batch running")
        db.gate.open()
        await asyncio.wait_for(batch, WAIT)
        await asyncio.wait_for(single, WAIT)
        info = user.cache_info()
        assert (info.hits, info.misses, info.coalesced, info.in_flight) == (1, 5, 1, 0)
        assert info.currsize == 4

    run_case(kind, body)


def test_b7_cancelling_the_batch_caller_leaves_joined_callers_served() -> None:
    """B7/S7: cancelling the batch caller ends only its wait; f(id) callers still get the value."""
    db = DB("async")
    user, users = build("async", db)

    async def body() -> None:
        db.gate = Gate("async")
        batch = asyncio.ensure_future(users([1, 2]))
        await until(lambda: db.started == 1)
        single = asyncio.ensure_future(user(2))
        await until(lambda: coalesced(user) == 1)
        batch.cancel()
        with pytest.raises(asyncio.CancelledError):
            await batch
        db.gate.open()
        assert await asyncio.wait_for(single, WAIT) == {"id": 2}
        assert sorted(user.cache) == [1, 2]  # the batch ran on for its other caller
        assert user.cache_info().in_flight == 0

    asyncio.run(body())


def test_b7_cancelling_every_caller_cancels_the_batch() -> None:
    """B7/S7/S16: when every caller of a batch's ids has gone, it is cancelled; nothing is left."""
    db = DB("async")
    cancelled = asyncio.Event()

    @singleflight(key="user_id", ttl=60)
    async def user(user_id: int) -> dict[str, int]:
        return await db.aone(user_id)

    @user.batch()
    async def users(ids: list[int]) -> Mapping[int, dict[str, int]]:
        db.started += 1
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return {}

    async def body() -> None:
        batch = asyncio.ensure_future(users([1, 2]))
        await until(lambda: db.started == 1)
        single = asyncio.ensure_future(user(1))
        await until(lambda: coalesced(user) == 1)
        single.cancel()
        batch.cancel()
        await asyncio.wait_for(cancelled.wait(), WAIT)
        await until(lambda: user.cache_info().in_flight == 0)
        assert not user.forget(1)
        assert not user.forget(2)
        assert list(user.cache) == []

    asyncio.run(body())


def test_b7_no_reference_left_after_a_batch(kind: str) -> None:
    """B7/S16: after a batch, no flight and no reference to its ids list or results remain."""

    class Row:
        pass

    kept: list[weakref.ref[Any]] = []
    if kind == "sync":

        @singleflight(key="user_id")
        def user(user_id: int) -> Row:
            return Row()

        @user.batch()
        def users(ids: list[int]) -> Mapping[int, Row]:
            rows = {i: Row() for i in ids}
            kept.extend(weakref.ref(r) for r in rows.values())
            return rows

        users([1, 2])
    else:

        @singleflight(key="user_id")
        async def user(user_id: int) -> Row:
            return Row()

        @user.batch()
        async def users(ids: list[int]) -> Mapping[int, Row]:
            await asyncio.sleep(0)
            rows = {i: Row() for i in ids}
            kept.extend(weakref.ref(r) for r in rows.values())
            return rows

        asyncio.run(users([1, 2]))
    gc.collect()
    assert all(ref() is None for ref in kept)
    assert user.cache_info().in_flight == 0


def test_b7_invalidate_during_a_batch_is_read_your_writes(kind: str) -> None:
    """B7/S18: invalidate(id) during a batch: its value is not stored; a later f(id) runs anew."""
    db = DB(kind)
    user, users = build(kind, db)

    async def body(calls: Calls) -> None:
        db.gate = Gate(kind)
        batch = calls.start(users, [1, 2])
        await until(lambda: db.started == 1)
        user.invalidate(1)
        db.row = lambda i: {"id": i, "v": 2}  # type: ignore[method-assign]
        db.gate.open()
        await asyncio.wait_for(batch, WAIT)
        assert sorted(user.cache) == [2]
        assert await calls.call(user, 1) == {"id": 1, "v": 2}
        assert db.singles == [1]

    run_case(kind, body)


def test_reentrant_batch_call_fails_fast(kind: str) -> None:
    """S9: a batch function calling f for an id of its own batch raises ReentrantCallError."""
    from coalesce import ReentrantCallError

    if kind == "sync":

        @singleflight(key="user_id")
        def user(user_id: int) -> int:
            return user_id

        @user.batch()
        def users(ids: list[int]) -> Mapping[int, int]:
            return {i: user(i) for i in ids}

        with pytest.raises(ReentrantCallError):
            users([1])
    else:

        @singleflight(key="user_id")
        async def auser(user_id: int) -> int:
            return user_id

        @auser.batch()
        async def ausers(ids: list[int]) -> Mapping[int, int]:
            return {i: await auser(i) for i in ids}

        with pytest.raises(ReentrantCallError):
            asyncio.run(ausers([1]))
    assert (user if kind == "sync" else auser).cache_info().in_flight == 0


def test_batch_with_a_cache_mapping(kind: str) -> None:
    """B2: with cache=, ids in the mapping are hits and fetched values go into it."""
    db = DB(kind)
    mapping: dict[Any, Any] = {1: {"id": 1, "from": "cache"}}
    _user, users = build(kind, db, ttl=None, cache=mapping)

    async def body(calls: Calls) -> None:
        assert await calls.call(users, [1, 2]) == {1: {"id": 1, "from": "cache"}, 2: {"id": 2}}
        assert db.batches == [[2]]
        assert mapping[2] == {"id": 2}

    run_case(kind, body)


def test_b2_ids_that_are_not_plain_values_agree_with_f(kind: str) -> None:
    """B2: tuple ids (keys carrying their hash in f) are hits and joins for the batch too."""
    db = DB(kind)
    seen: list[list[Any]] = []
    if kind == "sync":

        @singleflight(ttl=60)
        def place(where: tuple[str, int]) -> str:
            return f"{where}"

        @place.batch()
        def places(ids: list[tuple[str, int]]) -> Mapping[tuple[str, int], str]:
            seen.append(ids)
            return {i: f"{i}" for i in ids}

        place(("eu", 1))
        assert places([("eu", 1), ("us", 2)]) == {("eu", 1): "('eu', 1)", ("us", 2): "('us', 2)"}
        assert place.cache_info().hits == 1
    else:

        @singleflight(ttl=60)
        async def aplace(where: tuple[str, int]) -> str:
            return f"{where}"

        @aplace.batch()
        async def aplaces(ids: list[tuple[str, int]]) -> Mapping[tuple[str, int], str]:
            seen.append(ids)
            return {i: f"{i}" for i in ids}

        async def both() -> None:
            await aplace(("eu", 1))
            assert await aplaces([("eu", 1), ("us", 2)]) == {
                ("eu", 1): "('eu', 1)",
                ("us", 2): "('us', 2)",
            }

        asyncio.run(both())
        assert aplace.cache_info().hits == 1
    assert seen == [[("us", 2)]]
    assert db.batches == []
