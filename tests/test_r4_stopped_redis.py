"""R4 (issue 19): a stopped Redis holds no caller past ``wait_timeout``.

The clients here have redis-py's defaults (a 5 s socket timeout, 10 retries), which
alone would hold a caller about a minute on a redis-server stopped with SIGSTOP. A
leader in another backend holds a key's lease; callers of that key wait on it in
Redis; the server is stopped; then each caller, and one that starts while it is
stopped, runs the function itself within ``wait_timeout`` plus a small bound (R4),
with one warning for the outage (R6). For ``def`` and ``async def``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from _redis_fixture import InThread, RedisServer, redis, running_server, wait_until
from _redis_workers import make_backend

from coalesce import singleflight
from coalesce._keys import unhashed
from coalesce.redis import RedisBackend

pytestmark = pytest.mark.timeout(40)

WAIT_TIMEOUT = 1.0
# How long past wait_timeout a caller may take on a loaded machine: the backend's
# one second for Redis to answer, and scheduling. redis-py alone: 5 s and more.
SLACK = 2.0


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A redis-server of the test's own, running again (SIGCONT) after the test."""
    with running_server() as server:
        try:
            yield server
        finally:
            os.kill(server.process.pid, signal.SIGCONT)


def blocked_clients(server: RedisServer) -> int:
    client = server.client()
    try:
        return int(client.info("clients")["blocked_clients"])
    finally:
        client.close()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_r4_a_stopped_redis_holds_no_caller_past_wait_timeout(
    redis_server: RedisServer, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """R4: callers waiting in Redis when it stops, and one that starts while it is stopped,
    each run the function within wait_timeout (plus a bound), whatever the client's own
    socket timeout and retries; R6: one warning for the outage."""
    caplog.set_level(logging.WARNING, logger="coalesce.redis")
    is_async = kind == "async"
    # redis-py's defaults: socket_timeout=5, 10 retries with backoff.
    client: Any = (
        redis.asyncio.Redis(unix_socket_path=redis_server.socket)
        if is_async
        else redis.Redis(unix_socket_path=redis_server.socket)
    )
    backend = RedisBackend(client, wait_timeout=WAIT_TIMEOUT, outage_cooldown=0)
    runs: list[int] = []

    if is_async:

        @singleflight(ttl=30, backend=backend, name="f")
        async def af(x: int) -> str:
            runs.append(x)
            return f"here {x}"

        func: Any = af
    else:

        @singleflight(ttl=30, backend=backend, name="f")
        def sf(x: int) -> str:
            runs.append(x)
            return f"here {x}"

        func = sf

    # A leader elsewhere (a backend of its own) holds the lease of f(1) and keeps it.
    holder = make_backend(redis_server.socket, lease_ttl=30.0)
    leading = holder.bind(_sync_twin(), name="f", ttl=30.0, is_async=False)
    started, release = threading.Event(), threading.Event()

    def lead() -> str:
        started.set()
        assert release.wait(30)
        return "leader"

    leader = InThread(lambda: leading.call(unhashed(func.cache_key(1)), lead))
    assert started.wait(10)

    spans: list[tuple[float, float]] = []
    results: list[Any] = []

    def timed(call: Any) -> Any:
        begin = time.monotonic()
        try:
            return call()
        finally:
            spans.append((begin, time.monotonic()))

    stopped = threading.Event()
    if is_async:

        async def callers() -> None:
            async def one(x: int) -> str:
                begin = time.monotonic()
                try:
                    return str(await af(x))
                finally:
                    spans.append((begin, time.monotonic()))

            waiting = [asyncio.create_task(one(1)) for _ in range(3)]
            while await asyncio.to_thread(blocked_clients, redis_server) < 1:
                pass  # (each look is a round trip to the server: no busy loop)
            os.kill(redis_server.process.pid, signal.SIGSTOP)
            stopped.set()
            newcomer = await one(2)
            results.extend([*(await asyncio.gather(*waiting)), newcomer])
            await client.aclose()

        asyncio.run(asyncio.wait_for(callers(), 30))
    else:
        waiting = [InThread(lambda: timed(lambda: sf(1))) for _ in range(3)]
        wait_until(lambda: blocked_clients(redis_server) >= 1, "a caller waits in Redis")
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        stopped.set()
        newcomer = timed(lambda: sf(2))
        results.extend([*(w.join() for w in waiting), newcomer])

    assert results == ["here 1"] * 3 + ["here 2"]
    assert sorted(runs) == [1, 2]  # the waiting callers shared one run here, as in-process
    longest = max(end - begin for begin, end in spans)
    assert longest < WAIT_TIMEOUT + SLACK, f"a caller waited {longest:.2f}s"
    outages = [r.getMessage() for r in caplog.records if "Redis failed" in r.getMessage()]
    assert len(outages) == 1, outages
    assert "wait_timeout=1.0" in outages[0]

    os.kill(redis_server.process.pid, signal.SIGCONT)
    release.set()
    assert leader.join() == "leader"
    holder.client.close()  # type: ignore[union-attr]
    if not is_async:
        client.close()


def _sync_twin() -> Any:
    """A def function to bind the sync leader's backend with (the name is what counts)."""

    def f(x: int) -> str:
        return str(x)

    return f
