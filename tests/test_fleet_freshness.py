"""R10/R11: freshness and invalidation across a fleet of real processes sharing Redis.

Each test runs once per target of conftest.py's ``redis_target`` (a redis-server of its
own, the run's Redis Cluster of 3 masters, a valkey-server of its own) with several worker
processes (``_fleet_workers.py``), each with its own client, backend, decorated
function and frozen clock. The store time in Redis is read by each process's own
wall clock (``time.time()``, which freezegun controls), so the tests say what time it
is in each process; nothing sleeps to synchronise: the workers report every
execution's start and every call's end over their pipes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from _fleet_driver import T0, Fleet, Worker, stored_n
from _redis_fixture import RedisTarget, wait_until

KINDS = pytest.mark.parametrize("is_async", [False, True], ids=["def", "async_def"])


@pytest.fixture
def server(redis_target: RedisTarget) -> RedisTarget:
    """This run's target (conftest.py): a redis-server, the Redis Cluster, a valkey-server."""
    return redis_target


@pytest.fixture
def fleet(server: RedisTarget) -> Iterator[Fleet]:
    """Worker processes on that server, stopped after the test."""
    with Fleet(server) as made:
        yield made


@KINDS
def test_r10_stale_served_at_once_while_one_refresh_runs_in_the_fleet(
    fleet: Fleet, server: RedisTarget, is_async: bool
) -> None:
    """R10: past ttl, every process serves the stale value at once while ONE refresh runs in
    the whole fleet, and when it lands every process sees the new value."""
    workers = fleet.spawn(4, is_async, {"lease_ttl": 10.0}, ttl=10, stale=30)
    assert workers[0].call(1)["n"] == 1
    fleet.at(T0 + 15)  # past ttl, within stale, in every process
    for worker in workers:
        worker.mode(hold=True)
    served = [worker.call(1) for worker in workers]  # each answers while the refresh is held
    assert [value["n"] for value in served] == [1, 1, 1, 1]
    wait_until(lambda: any(w.saw(2) for w in workers), "a refresh starts")
    holders = [w for w in workers if w.saw(2)]
    assert len(holders) == 1
    assert fleet.executions == 2
    for worker in workers:
        worker.mode(hold=False)
    holders[0].send("release")
    wait_until(lambda: stored_n(server, fleet, 1, 2), "the refresh lands in Redis")
    assert [worker.call(1)["n"] for worker in workers] == [2, 2, 2, 2]
    assert fleet.executions == 2
    infos = [worker.info()[0] for worker in workers]
    assert sum(info["stale"] for info in infos) == 4  # stale serves, one per process
    assert sum(info["refreshes"] for info in infos) == 1  # one refresh started in the fleet


@KINDS
def test_r10_value_lives_for_ttl_plus_longest_window_judged_alike(
    fleet: Fleet, server: RedisTarget, is_async: bool
) -> None:
    """R10: the value lives in Redis for ttl + max(stale, stale_if_error) with its store time,
    so each process judges it fresh, stale or expired by that time alike."""
    workers = fleet.spawn(2, is_async, {}, ttl=10, stale=5, stale_if_error=20)
    assert workers[0].call(7)["n"] == 1
    pttl = server.client().pttl(fleet.value_key(7))
    assert 20_000 < pttl <= 30_000  # ttl + max(stale, stale_if_error), in Redis time
    workers[1].at(T0 + 9.9)  # fresh by the store time, in another process
    assert workers[1].call(7)["n"] == 1
    assert fleet.executions == 1
    workers[1].at(T0 + 16)  # past ttl + stale: a fresh execution, waited for
    assert workers[1].call(7)["n"] == 2
    assert workers[1].info()[0]["stale"] == 0  # no stale serve


@KINDS
def test_r10_early_refresh_uses_the_storing_process_delta(
    fleet: Fleet, server: RedisTarget, is_async: bool
) -> None:
    """R10: early= decides with the computation time measured by the storing process, and the
    early refresh it triggers runs once in the fleet."""
    writer, reader, third = fleet.spawn(3, is_async, {}, ttl=10, early=1.0)
    writer.mode(compute=4.0)  # its execution takes 4 s by its clock
    assert writer.call(3)["n"] == 1
    for worker in (reader, third):
        worker.mode(draw=0.5, hold=True)  # XFetch's gap: 4 * ln 2 = 2.77 s
    reader.at(T0 + 4 + 6)  # 4 s left of ttl: no early refresh yet
    assert reader.call(3)["n"] == 1
    assert fleet.executions == 1
    for worker in (reader, third):
        worker.at(T0 + 4 + 8)  # 2 s left: refresh now, by the writer's delta
    assert reader.call(3)["n"] == 1
    assert third.call(3)["n"] == 1
    wait_until(lambda: reader.saw(2) or third.saw(2), "an early refresh starts")
    assert fleet.executions == 2  # once in the fleet
    reader.send("release")
    third.send("release")
    wait_until(lambda: stored_n(server, fleet, 3, 2), "the early refresh lands")
    assert fleet.executions == 2


@KINDS
def test_r10_stale_if_error_serves_the_old_value_everywhere(
    fleet: Fleet, server: RedisTarget, is_async: bool
) -> None:
    """R10: a failed recomputation leaves the old value served, in the leader's process and in
    one that waited on it, until ttl + stale_if_error."""
    leader, follower = fleet.spawn(2, is_async, {}, ttl=10, stale_if_error=20)
    assert leader.call(5)["n"] == 1
    fleet.at(T0 + 15)  # expired, within stale_if_error
    leader.mode(fail="down", hold=True)
    first = leader.start("call", 5)
    assert leader.started(2)
    second = follower.start("call", 5)
    wait_until(
        lambda: server.blocked_clients() == 1,  # in its BLMOVE
        "the follower waits in Redis",
    )
    leader.send("release")
    status, value = leader.result(first)
    assert status == "ok"
    assert value["n"] == 1
    status, value = follower.result(second)
    assert status == "ok"
    assert value["n"] == 1
    assert leader.info()[0]["errors"] == 1  # the failure is counted
    fleet.at(T0 + 31)  # past ttl + stale_if_error: the error is raised
    follower.mode(fail="still down")
    assert follower.fails(5)[:2] == ("ValueError", "still down")


@KINDS
def test_r10_error_ttl_keeps_the_error_in_redis(
    fleet: Fleet, server: RedisTarget, is_async: bool
) -> None:
    """R10: with error_ttl= the error is kept in Redis and raised in every process without
    running the function: a RemoteError elsewhere, the same object where it was raised."""
    raiser, other = fleet.spawn(2, is_async, {}, ttl=10, error_ttl=30)
    raiser.mode(fail="bad input")
    name, message, first_id = raiser.fails(9)
    assert (name, message) == ("ValueError", "bad input")
    assert raiser.fails(9) == (name, message, first_id)  # the same object
    remote = other.fails(9)
    assert remote[0] == "RemoteError"
    assert "ValueError" in remote[1]
    assert "bad input" in remote[1]
    assert fleet.executions == 1
    fleet.at(T0 + 31)  # past error_ttl: the function runs again
    raiser.mode(fail=None)
    assert other.call(9)["n"] == 2


@KINDS
def test_r10_ttl_callable_and_cache_if_decide_what_redis_keeps(
    fleet: Fleet, server: RedisTarget, is_async: bool
) -> None:
    """R10: a ttl callable sets each value's lifetime in Redis, judged alike everywhere, and
    cache_if= decides whether it is kept at all (callers still share the execution)."""
    first, second = fleet.spawn(2, is_async, {}, ttl="ttl_of", cache_if="keep_if_even")
    assert first.call(4)["n"] == 1  # kept, for 4 s
    assert 0 < server.client().pttl(fleet.value_key(4)) <= 4000
    second.at(T0 + 3.9)
    assert second.call(4)["n"] == 1
    second.at(T0 + 4.1)
    assert second.call(4)["n"] == 2
    assert first.call(3)["n"] == 3  # odd: not kept
    assert server.client().exists(fleet.value_key(3)) == 0
    assert second.call(3)["n"] == 4


@KINDS
def test_r11_invalidate_removes_value_and_lease_and_the_old_leader_stores_nothing(
    fleet: Fleet, server: RedisTarget, is_async: bool
) -> None:
    """R11: invalidate() removes the value and the lease; the leader whose lease went still
    answers its callers but stores nothing, and a call after it never gets an older value."""
    old, invalidator, late = fleet.spawn(3, is_async, {}, ttl=60)
    client = server.client()
    vkey = fleet.value_key(2)
    assert old.call(2)["n"] == 1
    old.mode(hold=True)
    fleet.at(T0 + 61)
    before = old.start("call", 2)  # leads, holds the lease
    assert old.started(2)
    assert client.exists(vkey + ":lease") == 1
    assert invalidator.do("invalidate", 2) is True
    assert client.exists(vkey) == 0
    assert client.exists(vkey + ":lease") == 0
    late.mode(hold=True)
    after = late.start("call", 2)  # starts after invalidate() returned: runs anew
    assert late.started(3)
    old.send("release")
    status, value = old.result(before)
    assert status == "ok"
    assert value["n"] == 2
    assert client.exists(vkey) == 0  # ...and stores nothing
    late.send("release")
    assert late.result(after)[1]["n"] == 3
    old.mode(hold=False)
    assert old.call(2)["n"] == 3
    assert invalidator.call(2)["n"] == 3


@KINDS
def test_r11_cache_clear_removes_every_value_and_lease(
    fleet: Fleet, server: RedisTarget, is_async: bool
) -> None:
    """R11: cache_clear() removes every value and lease of the function from Redis, and a
    leader whose lease went stores nothing."""
    holder, clearer = fleet.spawn(2, is_async, {}, ttl=60)
    client = server.client()
    assert clearer.call(10)["n"] == 1
    holder.mode(hold=True)
    running = holder.start("call", 11)
    assert holder.started(2)
    clearer.do("clear")
    assert client.exists(fleet.value_key(10), fleet.value_key(11) + ":lease") == 0
    holder.send("release")
    assert holder.result(running)[1]["n"] == 2
    assert client.exists(fleet.value_key(11)) == 0
    assert clearer.call(11)["n"] == 3


@KINDS
def test_r10_cache_info_counts_redis_hits_and_waits(
    fleet: Fleet, server: RedisTarget, is_async: bool
) -> None:
    """R10: cache_info() counts a call answered from Redis as a hit and one that waited for
    another process's execution as a miss that coalesced."""
    leader, follower, reader = fleet.spawn(3, is_async, {}, ttl=60)
    leader.mode(hold=True)
    led = leader.start("call", 1)
    assert leader.started(1)
    waited = follower.start("call", 1)
    wait_until(
        lambda: server.blocked_clients() == 1,  # in its BLMOVE
        "the follower waits in Redis",
    )
    leader.send("release")
    assert leader.result(led)[1]["n"] == 1
    assert follower.result(waited)[1]["n"] == 1
    assert reader.call(1)["n"] == 1

    def counts(worker: Worker) -> tuple[int, int, int]:
        info = worker.info()[0]
        return info["hits"], info["misses"], info["coalesced"]

    assert counts(leader) == (0, 1, 0)
    assert counts(follower) == (0, 1, 1)
    assert counts(reader) == (1, 0, 0)


@KINDS
def test_r4_a_refresh_leader_killed_is_taken_over(
    fleet: Fleet, server: RedisTarget, is_async: bool
) -> None:
    """R4 with R10: a process killed with SIGKILL while it refreshes loses its lease, and a
    caller in another process that needs a fresh value takes over."""
    doomed, survivor = fleet.spawn(2, is_async, {"lease_ttl": 0.5}, ttl=10, stale=5)
    assert survivor.call(6)["n"] == 1
    doomed.at(T0 + 12)  # stale: serves it and refreshes
    doomed.mode(hold=True)
    assert doomed.call(6)["n"] == 1
    assert doomed.started(2)
    os.kill(doomed.process.pid, signal.SIGKILL)
    doomed.process.join(10)
    survivor.at(T0 + 16)  # past ttl + stale: waits for the dead refresh, then takes over
    assert survivor.call(6)["n"] == 3


@KINDS
def test_r6_redis_stopped_mid_refresh_runs_locally_with_one_warning(
    fleet: Fleet, server: RedisTarget, is_async: bool
) -> None:
    """R6 with R10: Redis stopped while a refresh runs leaves the process running calls
    locally, with one warning for the outage."""
    (worker,) = fleet.spawn(1, is_async, {"outage_cooldown": 60}, ttl=10, stale=5)
    assert worker.call(8)["n"] == 1
    worker.at(T0 + 12)
    worker.mode(hold=True)
    assert worker.call(8)["n"] == 1  # stale, served at once; the refresh is held
    assert worker.started(2)
    server.stop()
    worker.mode(hold=False)
    worker.send("release")
    assert worker.call(8)["n"] == 3  # Redis is down: run here
    assert worker.call(8)["n"] == 4
    warnings = [w for w in worker.info()[1] if "Redis failed" in w]
    assert len(warnings) == 1, warnings


def test_fleet_timeline_svg_is_generated_by_its_script(tmp_path: Path) -> None:
    """R10: the fleet timeline picture in docs/redis.md is what its script writes, valid SVG."""
    root = Path(__file__).resolve().parent.parent
    script = root / "docs" / "_static" / "make_fleet_timeline.py"
    out = tmp_path / "fleet.svg"
    subprocess.run([sys.executable, str(script), str(out)], check=True, timeout=60)
    committed = root / "docs" / "_static" / "fleet-timeline.svg"
    assert out.read_text(encoding="utf-8") == committed.read_text(encoding="utf-8")
    assert ET.fromstring(committed.read_text(encoding="utf-8")).tag.endswith("}svg")
    page = (root / "docs" / "redis.md").read_text(encoding="utf-8")
    assert "](_static/fleet-timeline.svg)" in page
