"""O1: the Redis backend counts lease takeovers (``coalesce.lease.takeovers``).

A real redis-server of the test's own (``_redis_fixture``). The "leader in another
process" is a lease the test writes into Redis; the follower is a decorated function
waiting on it, seen waiting through Redis's own ``blocked_clients``. The leader then
gives the run up (its lease gone, a retry pushed to its followers, as a leader that
aborts does), and the follower takes the lease over.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip(
    "opentelemetry.sdk.metrics",
    reason="the OpenTelemetry tests need the SDK: "
    "pip install 'python-coalesce[otel]' opentelemetry-sdk",
)

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
