"""O1 through Redis: lease takeovers, and every instrument equal to ``cache_info()``.

The Redis backend counts lease takeovers (``coalesce.lease.takeovers``).

A real redis-server of the test's own (``_redis_fixture``). The "leader in another
process" is a lease the test writes into Redis; the follower is a decorated function
waiting on it, seen waiting through Redis's own ``blocked_clients``. The leader then
gives the run up (its lease gone, a retry pushed to its followers, as a leader that
aborts does), and the follower takes the lease over.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip(
    "opentelemetry.sdk.metrics",
    reason="the OpenTelemetry tests need the SDK: "
    "pip install 'python-coalesce[otel]' opentelemetry-sdk",
)

from _core_support import Caller
from _fleet_driver import Fleet
from _freshness_support import Driver, Hold
from _redis_fixture import RedisServer, redis, running_server, wait_until
from _redis_workers import make_backend
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from coalesce import singleflight
from coalesce._payload import RETRY
from coalesce.otel import instrument, uninstrument

pytestmark = pytest.mark.timeout(30)

OTHER = "0" * 32  # the lease token of the leader "in another process"


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A redis-server of the test's own; skips if there is none (see _redis_fixture)."""
    with running_server() as server:
        yield server


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    """An instrumented provider read in memory; uninstrumented afterwards."""
    metric_reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[metric_reader])
    instrument(provider)
    try:
        yield metric_reader
    finally:
        uninstrument()
        provider.shutdown()


def _takeovers(reader: InMemoryMetricReader, function: str) -> int:
    data = reader.get_metrics_data()
    assert data is not None
    (value,) = [
        point.value
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "coalesce.lease.takeovers"
        for point in metric.data.data_points
        if dict(point.attributes or {}) == {"coalesce.function": function}
    ]
    result: int = value
    return result


def _blocked(client: redis.Redis) -> int:
    return int(client.info("clients")["blocked_clients"])


def _give_up(server: RedisServer, client: redis.Redis, name: str, key: Any) -> None:
    """The other process's leader gives the run up: its lease goes, its followers retry."""
    binding: Any = make_backend(server.socket).bind(
        lambda x: x, name=name, ttl=30.0, is_async=False
    )
    vkey = binding.redis_key(key)
    client.delete(f"{vkey}:lease")
    client.rpush(f"{vkey}:done:{OTHER}", binding._seal(vkey, RETRY, b""))


def _lease_elsewhere(server: RedisServer, client: redis.Redis, name: str, key: Any) -> None:
    binding: Any = make_backend(server.socket).bind(
        lambda x: x, name=name, ttl=30.0, is_async=False
    )
    client.set(f"{binding.redis_key(key)}:lease", OTHER, px=20_000)


def test_o1_sync_lease_takeover_is_counted(
    redis_server: RedisServer, reader: InMemoryMetricReader
) -> None:
    """O1: a def caller that waited on another process's leader and took over counts one."""
    client = redis_server.client()
    name = "o1_takeover_sync"

    @singleflight(ttl=30, backend=make_backend(redis_server.socket), name=name)
    def load(x: int) -> str:
        return f"ran here {x}"

    assert load(0) == "ran here 0"  # a lease taken at once: no takeover
    _lease_elsewhere(redis_server, client, name, load.cache_key(1))
    outcome: list[str] = []
    follower = threading.Thread(target=lambda: outcome.append(load(1)), daemon=True)
    follower.start()
    wait_until(lambda: _blocked(client) == 1, "the follower waits in Redis")
    assert _takeovers(reader, name) == 0
    _give_up(redis_server, client, name, load.cache_key(1))
    follower.join(10)
    assert outcome == ["ran here 1"]
    assert _takeovers(reader, name) == 1
    client.close()


def test_o1_async_lease_takeover_is_counted(
    redis_server: RedisServer, reader: InMemoryMetricReader
) -> None:
    """O1: an async def caller that waited on another process's leader and took over counts one."""
    client = redis_server.client()
    name = "o1_takeover_async"

    async def main() -> None:
        backend = make_backend(redis_server.socket, is_async=True)

        @singleflight(ttl=30, backend=backend, name=name)
        async def load(x: int) -> str:
            return f"ran here {x}"

        _lease_elsewhere(redis_server, client, name, load.cache_key(1))
        follower = asyncio.ensure_future(load(1))
        for _ in range(10_000):
            if _blocked(client) == 1:
                break
            await asyncio.wait([follower], timeout=0.001)
        assert _blocked(client) == 1, "the follower waits in Redis"
        assert _takeovers(reader, name) == 0
        _give_up(redis_server, client, name, load.cache_key(1))
        assert await asyncio.wait_for(follower, 10) == "ran here 1"
        assert _takeovers(reader, name) == 1
        await backend.client.aclose()

    asyncio.run(main())
    client.close()


# -- every instrument equals cache_info() through Redis (R10 counting), beside a real
# second process of the fleet (``_fleet_driver``): the test process's function shares
# its name, prefix and keys with the worker's.

TTL, STALE = 300.0, 600.0  # long: the test's own values never go stale while it runs


@pytest.fixture
def fleet(redis_server: RedisServer) -> Iterator[Fleet]:
    with Fleet(redis_server) as made:
        yield made


@pytest.fixture
def driver(kind: str) -> Iterator[Driver]:
    made = Driver(kind)
    try:
        yield made
    finally:
        made.close()


def _report(driver: Driver, fleet: Fleet, hold: Hold, ran: list[Any], name: str) -> Any:
    """The test process's ``report(day)``: the worker's function (``name=``), counted in
    ``ran``."""
    backend = make_backend(fleet.server.socket, is_async=driver.is_async, prefix="fleet")

    def body(day: Any) -> dict[str, Any]:
        if day == "bad":
            ran.append(day)
            raise ValueError("a bad day")
        with fleet.counter.get_lock():
            fleet.counter.value += 1
            n = fleet.counter.value
        ran.append(day)
        return {"n": n, "pid": os.getpid(), "day": day, "ttl": day}

    if driver.is_async:

        async def report(day: Any) -> dict[str, Any]:
            await asyncio.sleep(0)
            if hold.take():
                await hold.wait_async()
            return body(day)

        made: Any = singleflight(ttl=TTL, stale=STALE, backend=backend, name=name)(report)
        made.backend_client = backend.client  # closed by the test, on its loop
        return made

    def report_sync(day: Any) -> dict[str, Any]:
        if hold.take():
            hold.wait_sync()
        return body(day)

    report_sync.__name__ = report_sync.__qualname__ = "report"
    return singleflight(ttl=TTL, stale=STALE, backend=backend, name=name)(report_sync)


def _points(reader: InMemoryMetricReader, function: str) -> dict[str, Any]:
    """Every coalesce.* instrument of ``function``: a number, a dict by attribute, or for
    the histogram its count."""
    data = reader.get_metrics_data()
    assert data is not None
    found: dict[str, Any] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    attrs = dict(point.attributes or {})
                    if attrs.pop("coalesce.function", None) != function:
                        continue
                    if metric.name == "coalesce.execution.duration":
                        found[metric.name] = found.get(metric.name, 0) + point.count
                    elif attrs:
                        (value,) = attrs.values()
                        found.setdefault(metric.name, {})[value] = point.value
                    else:
                        found[metric.name] = point.value
    return found


def _equal_to_cache_info(points: dict[str, Any], info: Any) -> None:
    calls, executions = points["coalesce.calls"], points["coalesce.executions"]
    assert calls["hit"] + calls["stale"] == info.hits
    assert calls["stale"] == info.stale
    assert calls["joined"] + calls["executed"] == info.misses
    assert calls["joined"] == info.coalesced
    assert executions["error"] == info.errors
    assert points["coalesce.refreshes"] == info.refreshes
    assert points["coalesce.in_flight"] == info.in_flight
    assert points["coalesce.cache.size"] == info.currsize


def _blocked_in_redis(client: redis.Redis) -> bool:
    return _blocked(client) == 1


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_o1_instruments_equal_cache_info_through_redis_beside_another_process(
    redis_server: RedisServer, fleet: Fleet, driver: Driver, reader: InMemoryMetricReader
) -> None:
    """O1 with R10: through Redis, every instrument counts as ``cache_info()`` does: a call
    answered from Redis is a hit, one that waited on another process's execution joined,
    a stale serve is ``stale``; executions and durations are the function's runs here."""
    client = redis_server.client()
    name = f"o1_fleet_{driver.kind}"  # unique: every live function is published
    (other,) = fleet.spawn(1, driver.is_async, {}, ttl=TTL, stale=STALE, name=name)
    hold, ran = Hold(), []
    report = _report(driver, fleet, hold, ran, name)
    try:
        _script(driver, fleet, other, client, report, hold, ran, reader, name)
    finally:
        if driver.loop is not None:
            driver.run(report.backend_client.aclose())
        client.close()


def _script(
    driver: Driver,
    fleet: Fleet,
    other: Any,
    client: redis.Redis,
    report: Any,
    hold: Hold,
    ran: list[Any],
    reader: InMemoryMetricReader,
    name: str,
) -> None:

    assert driver.call(report, 1)["pid"] == os.getpid()  # executed here
    assert driver.call(report, 1)["pid"] == os.getpid()  # a hit, from Redis
    other.at(time.time())
    assert other.call(2)["pid"] != os.getpid()  # the other process runs it...
    assert driver.call(report, 2)["pid"] == other.process.pid  # ...a hit here
    values = driver.concurrent(report, 3, hold, 3)  # executed here, 2 joined here
    assert [value["day"] for value in values] == [3, 3, 3]
    with pytest.raises(ValueError, match="a bad day"):
        driver.call(report, "bad")  # executed here, an error

    # Joined across processes: the other process leads day 4; this one waits in Redis.
    other.mode(hold=True)
    next_run = fleet.executions + 1
    led = other.start("call", 4)
    assert other.started(next_run)
    if driver.loop is None:
        waiting = Caller(report, 4)
        waiting.start()
        wait_until(lambda: _blocked_in_redis(client), "this process waits in Redis")
        other.send("release")
        assert waiting.result()["pid"] == other.process.pid
    else:
        task = driver.loop.create_task(report(4))
        driver.until(lambda: _blocked_in_redis(client), "this process waits in Redis")
        other.send("release")
        assert driver.run(task)["pid"] == other.process.pid
    assert other.result(led)[0] == "ok"
    other.mode(hold=False)

    # Stale: the other process stores day 5 as it was 400 s ago (past ttl, within stale).
    other.at(time.time() - 400)
    assert other.call(5)["pid"] == other.process.pid
    assert driver.call(report, 5)["pid"] == other.process.pid  # stale, served at once
    driver.settle(report)  # ...while this process's refresh runs and lands
    assert driver.call(report, 5)["pid"] == os.getpid()  # a hit: the refreshed value

    expected_calls = {"hit": 3, "stale": 1, "joined": 3, "executed": 3}
    expected_executions = {"ok": 3, "error": 1, "cancelled": 0}
    if driver.loop is not None:  # an execution every caller left is cancelled (S7)
        hold.arm()
        task = driver.loop.create_task(report(6))
        driver.entered(hold)
        task.cancel()
        driver.settle(report)
        expected_calls["executed"] += 1
        expected_executions["cancelled"] = 1

    points = _points(reader, name)
    info = report.cache_info()
    _equal_to_cache_info(points, info)
    assert points["coalesce.calls"] == expected_calls
    assert points["coalesce.executions"] == expected_executions
    assert points["coalesce.refreshes"] == 1
    assert points["coalesce.lease.takeovers"] == 0
    assert points["coalesce.in_flight"] == 0
    assert points["coalesce.cache.size"] == 0  # no local_ttl: no local copies
    assert points["coalesce.execution.duration"] == sum(expected_executions.values())
    assert ran == [1, 3, "bad", 5]  # the cancelled run never reached its body
    assert other.info()[0]["hits"] == 0  # the other process ran each of its calls

    # cache_clear() resets cache_info(), never the instruments (monotonic counters).
    if driver.loop is None:
        report.cache_clear()
    else:
        driver.run(report.acache_clear())
    assert report.cache_info()[:4] == (0, 0, 0, 0)
    assert _points(reader, name)["coalesce.calls"] == expected_calls
