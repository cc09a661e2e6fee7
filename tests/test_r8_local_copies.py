"""R8 (issue 19): a local copy (``local_ttl=``) never outlives the value it copies.

Each test runs worker processes (``_fleet_workers.py``) on each target of conftest.py's
``redis_target`` (a redis-server, the Redis Cluster, a valkey-server), each worker with
its own ``RedisBackend(local_ttl=...)`` and frozen clock, for ``def`` and ``async def``.
A copy lives ``min(local_ttl, what the value's ttl has left)``: past the value's ttl a
process asks Redis again, which says the value is gone (a new execution) or stale
(served as stale while one refresh runs), never a copy served as fresh.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from _fleet_driver import T0, Fleet
from _redis_fixture import RedisTarget, wait_until

pytestmark = pytest.mark.timeout(60)

KINDS = pytest.mark.parametrize("is_async", [False, True], ids=["def", "async_def"])


@pytest.fixture
def fleet(redis_target: RedisTarget) -> Iterator[Fleet]:
    """Worker processes on this run's target (conftest.py), stopped after the test."""
    with Fleet(redis_target) as made:
        yield made


@KINDS
def test_r8_a_local_copy_never_outlives_the_value_it_copies(fleet: Fleet, is_async: bool) -> None:
    """R8: with local_ttl=60 and ttl=30, the leader's copy ends at the value's ttl, and a
    copy read from Redis 20 s into it ends 10 s later, not 60."""
    leader, reader = fleet.spawn(2, is_async, {"local_ttl": 60.0}, ttl=30)
    assert leader.call(1)["n"] == 1
    fleet.at(T0 + 20)
    assert reader.call(1)["n"] == 1  # from Redis: fresh for the 10 s its ttl has left
    fleet.at(T0 + 29)
    assert [leader.call(1)["n"], reader.call(1)["n"]] == [1, 1]  # both copies still serve
    assert fleet.executions == 1
    fleet.at(T0 + 31)  # past the value's ttl, well within local_ttl of either copy
    assert leader.call(1)["n"] == 2  # its copy ended with the value: a new execution
    assert reader.call(1)["n"] == 2  # so did this one: it reads the new value from Redis
    assert fleet.executions == 2
    (ran, ran_warnings), (read, read_warnings) = leader.info(), reader.info()
    assert (ran["hits"], ran["misses"], ran_warnings) == (1, 2, [])
    assert (read["hits"], read["misses"], read_warnings) == (3, 0, [])


@KINDS
def test_r8_a_local_copy_never_serves_a_value_as_fresh_once_it_is_stale_in_redis(
    fleet: Fleet, is_async: bool
) -> None:
    """R8 with stale= (R10): past the value's ttl no copy answers as fresh; each process gets
    the stale value from Redis, counted as stale, while ONE refresh runs in the fleet, and
    every process then has the refreshed value."""
    workers = fleet.spawn(2, is_async, {"local_ttl": 300.0}, ttl=30, stale=30)
    assert workers[0].call(1)["n"] == 1
    fleet.at(T0 + 20)
    assert workers[1].call(1)["n"] == 1  # a copy of it in both processes
    fleet.at(T0 + 35)  # past ttl, within stale
    for worker in workers:
        worker.mode(hold=True)
    assert [worker.call(1)["n"] for worker in workers] == [1, 1]
    wait_until(lambda: any(w.saw(2) for w in workers), "a refresh starts")
    assert [w.saw(2) for w in workers].count(True) == 1
    for worker in workers:
        worker.mode(hold=False)
        worker.send("release")
    wait_until(lambda: stored(fleet.server, fleet, 2), "the refresh lands in Redis")
    assert [worker.call(1)["n"] for worker in workers] == [2, 2]
    assert fleet.executions == 2
    infos = [worker.info()[0] for worker in workers]
    assert [info["stale"] for info in infos] == [1, 1]  # served stale, not from a copy
    assert sum(info["refreshes"] for info in infos) == 1


def stored(server: RedisTarget, fleet: Fleet, n: int) -> bool:
    from _fleet_driver import stored_n

    return stored_n(server, fleet, 1, n)
