"""O1 for batches (SPEC sections 9 and 10): a batch reports through its function's instruments.

``users = user.batch(...)`` publishes nothing of its own: every id it is given counts as
one call of ``user`` (``coalesce.function`` is ``user``'s name) by ``coalesce.result``
(hit, stale, joined or executed, as B7 counts it in ``cache_info()``), and one call of
the batch function is one execution (``coalesce.executions`` by outcome, one duration
in ``coalesce.execution.duration``), however many ids it fetched. ``coalesce.in_flight``
counts the keys being fetched, as ``cache_info().in_flight`` does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import pytest

pytest.importorskip(
    "opentelemetry.sdk.metrics",
    reason="the OpenTelemetry tests need the SDK: "
    "pip install 'python-coalesce[otel]' opentelemetry-sdk",
)

from _core_support import WAIT
from test_batch import DB, Calls, Gate, coalesced, run_case, until
from test_otel import Metrics, _matches_cache_info, metrics

from coalesce import singleflight
from coalesce.otel import instrument

__all__ = ("metrics",)  # the fixture, shared with test_otel


def named(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` under the qualified name ``name``: its ``coalesce.function`` value."""
    fn.__qualname__ = name
    return fn


def _one_execution(metrics: Metrics, name: str, user: Any, *, executed: int, outcome: str) -> None:
    """The instruments equal cache_info(), ``executed`` ids were fetched, and by ONE
    execution (one duration) that ended with ``outcome``."""
    readings = metrics.read()
    _matches_cache_info(readings, name, user)
    assert readings.by("coalesce.calls", name, "coalesce.result")["executed"] == executed
    outcomes = {"ok": 0, "error": 0, "cancelled": 0}
    outcomes[outcome] = 1
    assert readings.by("coalesce.executions", name, "coalesce.outcome") == outcomes
    assert readings.durations(name) == 1


def build_named(kind: str, db: DB, name: str) -> tuple[Any, Any]:
    """``user(user_id)`` named ``name``, and its batch function, over ``db``."""
    if kind == "sync":

        def one(user_id: int) -> dict[str, int]:
            return db.one(user_id)

        user = singleflight(key="user_id", ttl=60)(named(name, one))
        return user, user.batch()(db.many)

    async def aone(user_id: int) -> dict[str, int]:
        return await db.aone(user_id)

    auser = singleflight(key="user_id", ttl=60)(named(name, aone))
    return auser, auser.batch()(db.amany)


def test_o1_batch_ids_count_as_calls_and_batch_calls_as_executions(
    kind: str, metrics: Metrics
) -> None:
    """O1/B7: hits, joins and fetched ids are calls of f; each batch call is one execution."""
    name = f"otel_batch_mix_{kind}"
    instrument(metrics.provider)
    db = DB(kind, gone=(9,))
    user, users = build_named(kind, db, name)

    async def body(calls: Calls) -> None:
        assert await calls.call(user, 1) == {"id": 1}  # executed; one execution
        found = await calls.call(users, [1, 2, 3, 9])  # 1 hit; 2, 3, 9 in one batch call
        assert sorted(found) == [1, 2, 3]
        assert sorted(await calls.call(users, [2, 3, 4])) == [2, 3, 4]  # 2 hits, 1 fetched
        db.gate = Gate(kind)
        held = calls.start(users, [5, 6])  # one batch call, held
        await until(lambda: db.started == 4, "the held batch to start")
        single = calls.start(user, 5)  # joins the batch (B3)
        await until(lambda: coalesced(user) == 1, "f(5) to join the batch")
        other = calls.start(users, [6, 7])  # 6 joined, 7 in a second batch call
        await until(lambda: db.started == 5, "the second batch to start")
        db.gate.open()
        await asyncio.wait_for(asyncio.gather(held, single, other), WAIT)
        db.gate = Gate(kind)
        left = calls.start(users, [8, 9])  # 9 is left out (B4) ...
        await until(lambda: db.started == 6, "the batch of 8 and 9 to start")
        nine = calls.start(user, 9)  # ... so f(9), which joined it, runs f itself
        await until(lambda: coalesced(user) == 3, "f(9) to join the batch")
        db.gate.open()
        assert sorted(await asyncio.wait_for(left, WAIT)) == [8]
        assert await asyncio.wait_for(nine, WAIT) == {"id": 9}
        db.gate = None
        db.fail = LookupError("the query failed")
        with pytest.raises(LookupError):
            await calls.call(users, [10, 11])  # two ids, one failed execution (B5)

    run_case(kind, body)
    readings = metrics.read()
    _matches_cache_info(readings, name, user)
    assert readings.by("coalesce.calls", name, "coalesce.result") == {
        "hit": 3,
        "stale": 0,
        "joined": 3,  # f(5), 6 in the second batch, f(9)
        "executed": 12,  # 1; 2, 3, 9; 4; 5, 6; 7; 8, 9; 10, 11
    }
    assert readings.by("coalesce.executions", name, "coalesce.outcome") == {
        "ok": 7,  # f(1), five batch calls that answered, f(9)
        "error": 1,
        "cancelled": 0,
    }
    assert readings.durations(name) == 8
    assert readings.value("coalesce.in_flight", name) == 0
    assert readings.value("coalesce.cache.size", name) == 9
    assert db.batches == [[2, 3, 9], [4], [5, 6], [7], [8, 9], [10, 11]]
    assert db.singles == [1, 9]


def test_o1_collected_misses_are_one_execution(metrics: Metrics) -> None:
    """O1/B6: ten misses gathered by collect=0 are ten executed calls and one execution."""
    name = "otel_batch_collect"
    instrument(metrics.provider)

    async def user_id_of(user_id: int) -> int:
        return user_id

    user = singleflight(key="user_id", ttl=60)(named(name, user_id_of))

    @user.batch(collect=0)
    async def users(ids: list[int]) -> Mapping[int, int]:
        return {i: i for i in ids}

    async def body() -> list[int]:
        return await asyncio.gather(*(user(i) for i in range(10)))

    assert asyncio.run(body()) == list(range(10))
    _one_execution(metrics, name, user, executed=10, outcome="ok")


def test_o1_a_cancelled_batch_is_one_cancelled_execution(metrics: Metrics) -> None:
    """O1/S7: a batch whose every caller left is cancelled: one ``cancelled`` execution."""
    name = "otel_batch_cancelled"
    instrument(metrics.provider)
    started, stopped = asyncio.Event(), asyncio.Event()

    async def user_id_of(user_id: int) -> int:
        return user_id

    user = singleflight(key="user_id", ttl=60)(named(name, user_id_of))

    @user.batch()
    async def users(ids: list[int]) -> Mapping[int, int]:
        started.set()
        try:
            await asyncio.Event().wait()  # until cancelled
        except asyncio.CancelledError:
            stopped.set()
            raise
        return {}

    async def body() -> None:
        batch = asyncio.ensure_future(users([1, 2, 3]))
        await asyncio.wait_for(started.wait(), WAIT)
        batch.cancel()
        await asyncio.wait_for(stopped.wait(), WAIT)
        await until(lambda: user.cache_info().in_flight == 0, "the batch to settle")

    asyncio.run(body())
    _one_execution(metrics, name, user, executed=3, outcome="cancelled")
