"""coalesce.redis on a real Redis Cluster of 3 masters on loopback (SPEC R13).

The cluster is started once for the run (``redis_cluster_session`` in conftest.py) and
emptied before each test. Every key one call touches carries the cache key's digest as
its hash tag, so the scripts and the followers' blocking pop stay on one slot, while the
keys of one function spread over every master; a master lost mid-flight is an R6 outage.
Callers are synchronised with events and with what Redis reports (``blocked_clients``),
never with sleeps. The rest of the Redis suite runs on this cluster too (``redis_target``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

import pytest
from _redis_fixture import InThread, RedisCluster, redis, wait_until
from _redis_workers import areport, make_backend, report
from redis.cluster import key_slot

from coalesce import singleflight
from coalesce.redis import RedisBackend

pytestmark = pytest.mark.timeout(60)


def blocked_clients(cluster: RedisCluster) -> int:
    """Clients blocked in a command (BLMOVE) on any master of the cluster."""
    total = 0
    for port in cluster.ports:
        node = cluster.node_client(port)
        try:
            total += int(node.info("clients")["blocked_clients"])
        finally:
            node.close()
    return total


def slot(key: str) -> int:
    return int(key_slot(key.encode()))


def test_r13_every_key_of_one_cache_key_shares_its_slot(redis_cluster: RedisCluster) -> None:
    """R13: value, lease, done list and generation of one cache key hash to one slot."""
    bound = make_backend(redis_cluster.socket, prefix="app").bind(
        report, name="report", ttl=30.0, is_async=False
    )
    vkey = bound.redis_key(("day", 1))
    assert vkey.startswith("app:report:{")
    assert vkey.endswith("}")
    siblings = [f"{vkey}:lease", f"{vkey}:done:{'0' * 32}", f"{vkey}:gen"]
    assert {slot(k) for k in [vkey, *siblings]} == {slot(vkey)}


def test_r13_one_functions_keys_spread_over_every_master(redis_cluster: RedisCluster) -> None:
    """R13: the tag is per cache key, never per function: 60 keys land on all 3 masters."""
    backend = make_backend(redis_cluster.socket, prefix="app")

    @singleflight(ttl=60, backend=backend, name="spread")
    def spread(n: int) -> int:
        return n * 2

    assert [spread(n) for n in range(60)] == [n * 2 for n in range(60)]
    holding = []
    for port in redis_cluster.ports:
        node = redis_cluster.node_client(port)
        try:
            holding.append(sum(1 for _ in node.scan_iter(match="app:spread:{*}")))
        finally:
            node.close()
    assert sum(holding) == 60
    assert all(count > 0 for count in holding), holding


def test_r13_a_single_server_keeps_the_r2_key_shape(redis_cluster: RedisCluster) -> None:
    """R13: hash tags are for clusters; a plain redis.Redis keeps prefix:name:digest (R2)."""
    plain = RedisBackend(redis.Redis(), prefix="app").bind(
        report, name="report", ttl=30.0, is_async=False
    )
    tagged = make_backend(redis_cluster.socket, prefix="app").bind(
        report, name="report", ttl=30.0, is_async=False
    )
    digest = plain.redis_key((1,)).rsplit(":", 1)[1]
    assert plain.redis_key((1,)) == f"app:report:{digest}"
    assert tagged.redis_key((1,)) == f"app:report:{{{digest}}}"


def test_r13_sync_callers_share_one_execution_through_the_cluster(
    redis_cluster: RedisCluster,
) -> None:
    """R13: a follower blocks (BLMOVE) on the leader's slot and gets its value; one run."""
    started, release = threading.Event(), threading.Event()
    runs = []

    def compute() -> dict[str, int]:
        runs.append(1)
        started.set()
        assert release.wait(20)
        return {"answer": 42}

    leader_bound = make_backend(redis_cluster.socket).bind(
        report, name="report", ttl=30.0, is_async=False
    )
    follower_bound = make_backend(redis_cluster.socket).bind(
        report, name="report", ttl=30.0, is_async=False
    )
    leader = InThread(lambda: leader_bound.call(("shared",), compute))
    assert started.wait(20)
    follower = InThread(lambda: follower_bound.call(("shared",), compute))
    wait_until(lambda: blocked_clients(redis_cluster) == 1, "the follower waits in Redis")
    release.set()
    assert leader.join() == follower.join() == {"answer": 42}
    assert runs == [1]
    assert leader_bound.call(("shared",), compute) == {"answer": 42}  # a hit now
    assert runs == [1]


def test_r13_async_callers_share_one_execution_through_the_cluster(
    redis_cluster: RedisCluster,
) -> None:
    """R13: the same with redis.asyncio.cluster.RedisCluster and async def."""

    async def main() -> tuple[Any, Any, list[int]]:
        started, release = asyncio.Event(), asyncio.Event()
        runs: list[int] = []

        async def compute() -> dict[str, int]:
            runs.append(1)
            started.set()
            await release.wait()
            return {"answer": 7}

        one = make_backend(redis_cluster.socket, is_async=True)
        two = make_backend(redis_cluster.socket, is_async=True)
        assert isinstance(one.client, redis.asyncio.RedisCluster)
        lead = one.bind(areport, name="report", ttl=30.0, is_async=True)
        follow = two.bind(areport, name="report", ttl=30.0, is_async=True)
        try:
            first = asyncio.ensure_future(lead.acall(("async",), compute))
            await asyncio.wait_for(started.wait(), 20)
            second = asyncio.ensure_future(follow.acall(("async",), compute))
            await asyncio.to_thread(
                wait_until, lambda: blocked_clients(redis_cluster) == 1, "the follower waits"
            )
            release.set()
            return await first, await second, runs
        finally:
            await one.client.aclose()
            await two.client.aclose()

    first, second, runs = asyncio.run(main())
    assert first == second == {"answer": 7}
    assert runs == [1]


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_r13_invalidate_and_cache_clear_reach_every_master(
    redis_cluster: RedisCluster, kind: str
) -> None:
    """R11/R13: invalidate() drops one key; cache_clear() scans every master and drops all."""
    backend = make_backend(redis_cluster.socket, prefix="app", is_async=kind == "async")

    def count() -> int:  # values only: not the flights' done lists, nor generations
        return sum(
            1
            for port in redis_cluster.ports
            for _ in redis_cluster.node_client(port).scan_iter(match="app:clear:{*}")
        )

    if kind == "sync":

        @singleflight(ttl=60, backend=backend, name="clear")
        def clear(n: int) -> int:
            return n

        for n in range(30):
            clear(n)
        assert count() == 30
        assert clear.invalidate(0) is True
        assert count() == 29
        clear.cache_clear()
    else:

        @singleflight(ttl=60, backend=backend, name="clear")
        async def aclear(n: int) -> int:
            return n

        async def main() -> None:
            try:
                for n in range(30):
                    await aclear(n)
                assert count() == 30
                assert await aclear.ainvalidate(0) is True
                assert count() == 29
                await aclear.acache_clear()
            finally:
                await backend.client.aclose()

        asyncio.run(main())
    assert count() == 0


def test_r13_a_prefix_with_braces_is_refused_on_a_cluster(redis_cluster: RedisCluster) -> None:
    """R13: a prefix with '{' would make one hash tag for all its keys: refused, with why."""
    with pytest.raises(ValueError, match=r"prefix '\{app\}' has a '\{'.*drop the braces"):
        make_backend(redis_cluster.socket, prefix="{app}")
    make_backend(redis_cluster.socket, prefix="app}")  # no tag can start there


def test_r13_a_name_with_braces_is_refused_on_a_cluster(redis_cluster: RedisCluster) -> None:
    """R13: a name= with '{' would tag all of a function's keys alike: refused when decorating."""
    backend = make_backend(redis_cluster.socket)
    with pytest.raises(ValueError, match=r"name 'by\{day\}' of .*has a '\{'.*without braces"):

        @singleflight(ttl=1, backend=backend, name="by{day}")
        def daily(day: int) -> int:
            return day


def warnings_about_redis(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "Redis failed" in r.getMessage()]


def caller(backend: RedisBackend, kind: str) -> tuple[Any, Callable[[Any, Any], Any]]:
    """The binding of ``report`` (``def``) or ``areport`` (``async def``) on ``backend``,
    and ``await call(key, value)``: one call whose function returns ``value`` (a ``def``
    call runs in a thread, off the loop)."""
    if kind == "sync":
        bound = backend.bind(report, name="report", ttl=30.0, is_async=False)

        async def call(key: Any, value: Any) -> Any:
            return await asyncio.to_thread(bound.call, key, lambda: value)

        return bound, call
    abound = backend.bind(areport, name="report", ttl=30.0, is_async=True)

    async def acall(key: Any, value: Any) -> Any:
        async def compute() -> Any:
            return value

        return await abound.acall(key, compute)

    return abound, acall


def test_r6_a_master_lost_mid_flight_runs_locally_and_warns_once(
    redis_cluster: RedisCluster, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """R6/R13: the master of a key is killed (SIGKILL) while a caller here waits on it for a
    leader elsewhere: the caller runs the function locally at once (never a hang), one
    warning is logged for the outage, and once the master is back calls go through the
    cluster again."""
    caplog.set_level(logging.INFO, logger="coalesce.redis")
    backend = make_backend(redis_cluster.socket, is_async=kind == "async")
    bound, call = caller(backend, kind)
    vkey = bound.redis_key(("lost",))
    port = redis_cluster.port_of(vkey)
    node = redis_cluster.node_client(port)
    try:
        node.set(f"{vkey}:lease", "0" * 32, px=20_000)  # a leader in another process
    finally:
        node.close()

    async def scenario() -> None:
        follower = asyncio.ensure_future(call(("lost",), "local"))
        await asyncio.to_thread(
            wait_until, lambda: redis_cluster.blocked_clients() == 1, "the caller waits there"
        )
        redis_cluster.kill(port)
        assert await asyncio.wait_for(follower, 20) == "local"  # never a hang
        assert await call(("lost",), "local again") == "local again"
        assert len(warnings_about_redis(caplog)) == 1

        await asyncio.to_thread(redis_cluster.start)  # back on its port, its slots, empty
        assert await call(("back",), "shared") == "shared"
        probe = redis_cluster.client()
        try:
            assert probe.exists(bound.redis_key(("back",))) == 1
        finally:
            probe.close()

    async def main() -> None:
        try:
            await scenario()
        finally:
            if kind == "async":
                await backend.client.aclose()

    asyncio.run(main())
    assert "Redis answers again" in caplog.text
    assert len(warnings_about_redis(caplog)) == 1
