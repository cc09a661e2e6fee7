"""coalesce.redis against a real Redis, with real worker processes (SPEC R1-R9, R13, R14).

Each test runs once per target (``redis_target`` in conftest.py): a redis-server of its
own on a unix socket, the run's Redis Cluster of 3 masters (emptied), and a
valkey-server of its own (``_redis_fixture.py``). The
processes that share a flight are separate processes made by ``multiprocessing``'s
forkserver (started once, with ``_redis_workers`` and so redis-py and coalesce already
imported, so that each worker starts in milliseconds); each makes its own client and
backend. They are synchronised with multiprocessing events and with what Redis itself
reports (``blocked_clients``), never with sleeps.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import multiprocessing
import os
import pickle
import re
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _redis_fixture import InThread, RedisServer, RedisTarget, redis, wait_until
from _redis_workers import (
    Boom,
    CountingRedis,
    Gate,
    areport,
    async_worker,
    decorated_worker,
    make_backend,
    redis_key_worker,
    report,
    sync_worker,
)

from coalesce import RemoteError, singleflight
from coalesce.redis import RedisBackend

pytestmark = pytest.mark.timeout(30)

SPAWN = multiprocessing.get_context("forkserver")
SPAWN.set_forkserver_preload(["_redis_workers"])  # not pytest's __main__


def blocked_clients(client: redis.Redis | redis.RedisCluster) -> int:
    """Clients blocked in a command (a follower's BLMOVE): on every master of a cluster."""
    if isinstance(client, redis.RedisCluster):
        return sum(
            int(node.redis_connection.info("clients")["blocked_clients"])
            for node in client.get_primaries()
        )
    return int(client.info("clients")["blocked_clients"])


class Fleet:
    """Worker processes calling ``report(key)`` through one redis-server."""

    def __init__(
        self,
        server: RedisTarget,
        key: Any,
        options: dict[str, Any] | None = None,
        *,
        target: Callable[..., None] = sync_worker,
    ) -> None:
        self.server = server
        self.key = key
        self.options = dict(options or {})
        self.target = target
        self.executions = SPAWN.Value("i", 0)
        self.started = SPAWN.Event()
        self.release = _Release()
        self.results: Any = SPAWN.Queue()
        self.processes: list[Any] = []

    def spawn(self, count: int = 1, **extra: Any) -> list[Any]:
        new = []
        for _ in range(count):
            args = (
                self.server.socket,
                self.key,
                self.options,
                self.executions,
                self.started,
                self.release.gate,
                self.results,
            )
            process = SPAWN.Process(target=self.target, args=args, kwargs=extra, daemon=True)
            process.start()
            new.append(process)
        self.processes.extend(new)
        return new

    def spawn_leader(self, **extra: Any) -> Any:
        """Start one worker and wait until it runs the function (so it holds the lease)."""
        (leader,) = self.spawn(**extra)
        assert self.started.wait(20), "the leader never started"
        return leader

    def collect(self, count: int) -> list[tuple[str, int, Any]]:
        return [self.results.get(timeout=20) for _ in range(count)]

    def close(self) -> None:
        self.release.set()
        self.release.gate.reader.close()
        for process in self.processes:
            process.join(20)
            if process.is_alive():
                process.kill()
                process.join(5)
        self.results.close()
        self.results.join_thread()


class _Release:
    """The test's end of a worker ``Gate``: ``set()`` releases every worker."""

    def __init__(self) -> None:
        reader, self._writer = SPAWN.Pipe(duplex=False)
        self.gate = Gate(reader)

    def set(self) -> None:
        self._writer.close()  # idempotent; the readers see end of file


@pytest.fixture
def redis_server(redis_target: RedisTarget) -> RedisTarget:
    """The target of this run of the test (conftest.py): redis, cluster or valkey."""
    return redis_target


@pytest.fixture
def fleet_factory(redis_server: RedisTarget) -> Iterator[Callable[..., Fleet]]:
    """Make fleets of worker processes; every process is ended after the test."""
    fleets: list[Fleet] = []

    def make(key: Any, options: dict[str, Any] | None = None, **kwargs: Any) -> Fleet:
        fleet = Fleet(redis_server, key, options, **kwargs)
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        fleet.close()


@pytest.fixture
def client(redis_server: RedisTarget) -> Iterator[redis.Redis]:
    """A sync client of the test's server, to look at and change what Redis holds."""
    connection = redis_server.client()
    yield connection
    connection.close()


def bind_sync(server: RedisTarget, **options: Any) -> Any:
    backend = make_backend(server.socket, **options)
    return backend.bind(report, name="report", ttl=30.0, is_async=False)


def lease_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("coalesce-lease:")]


# ------------------------------------------------------------------------------------ R1


def test_r1_processes_share_one_execution(
    fleet_factory: Callable[..., Fleet], client: redis.Redis
) -> None:
    """R1: four processes calling one key run it once and all get the leader's value."""
    fleet = fleet_factory(("2024-01-01",))
    leader = fleet.spawn_leader()
    fleet.spawn(3)
    wait_until(lambda: blocked_clients(client) == 3, "three followers wait in Redis")
    fleet.release.set()
    results = fleet.collect(4)
    assert fleet.executions.value == 1
    assert {status for status, _, _ in results} == {"ok"}
    assert [value for _, _, value in results] == [{"computed_by": leader.pid}] * 4


def test_r1_async_processes_share_one_execution(
    fleet_factory: Callable[..., Fleet], client: redis.Redis
) -> None:
    """R1: async def workers with redis.asyncio in four processes run the key once."""
    fleet = fleet_factory(("async", 7), target=async_worker)
    leader = fleet.spawn_leader()
    fleet.spawn(3)
    wait_until(lambda: blocked_clients(client) == 3, "three async followers wait in Redis")
    fleet.release.set()
    results = fleet.collect(4)
    assert fleet.executions.value == 1
    assert [value for _, _, value in results] == [{"computed_by": leader.pid}] * 4


def test_r1_value_is_kept_in_redis_for_ttl(
    fleet_factory: Callable[..., Fleet], redis_server: RedisTarget, client: redis.Redis
) -> None:
    """R1: the value stays in Redis for ttl, so a later process reads it without running."""
    fleet = fleet_factory(("kept",))
    fleet.release.set()
    leader = fleet.spawn_leader()
    assert fleet.collect(1) == [("ok", leader.pid, {"computed_by": leader.pid})]
    vkey = bind_sync(redis_server).redis_key(("kept",))
    assert 0 < client.pttl(vkey) <= 30_000
    later = fleet.spawn()[0]
    assert fleet.collect(1) == [("ok", later.pid, {"computed_by": leader.pid})]
    assert fleet.executions.value == 1


# ------------------------------------------------------------------------------------ R2


def test_r2_keys_are_stable_across_processes(redis_server: RedisTarget) -> None:
    """R2: two other processes (other hash seeds) compute the same namespaced key."""
    key = ("user", 42, 1.5, b"raw", None, True, ("nested", frozenset({"a", "b", "c"})))
    results: Any = SPAWN.Queue()
    processes = [
        SPAWN.Process(target=redis_key_worker, args=(redis_server.socket, key, results))
        for _ in range(2)
    ]
    for process in processes:
        process.start()
    remote = [results.get(timeout=20) for _ in processes]
    for process in processes:
        process.join(20)
    local = make_backend(redis_server.socket, prefix="stable")
    here = local.bind(report, name="report", ttl=1.0, is_async=False).redis_key(key)
    assert remote == [here, here]
    digest = r"\{[0-9a-f]{64}\}" if redis_server.is_cluster else "[0-9a-f]{64}"  # R13
    assert re.fullmatch(f"stable:report:{digest}", here)


def test_r2_equal_keys_share_a_digest_and_different_keys_do_not(
    redis_server: RedisTarget,
) -> None:
    """R2: keys equal in Python (1, 1.0, True) map alike; 1 and "1", b"a" and "a" do not."""
    bound = bind_sync(redis_server)
    same = [(1,), (1.0,), (True,)]
    assert len({bound.redis_key(k) for k in same}) == 1
    different = [1, "1", (1,), b"a", "a", (None,), (), 1.5, (1, 2), (2, 1), frozenset({1})]
    assert len({bound.redis_key(k) for k in different}) == len(different)
    assert bound.redis_key(frozenset({"x", "y", "z"})) == bound.redis_key(
        frozenset({"z", "y", "x"})
    )


def test_r2_name_and_prefix_namespace_the_key(redis_server: RedisTarget) -> None:
    """R2: the key is prefix:name:digest, so names and prefixes never share a key."""
    backend = make_backend(redis_server.socket, prefix="app")
    one = backend.bind(report, name="one", ttl=1.0, is_async=False)
    two = backend.bind(report, name="two", ttl=1.0, is_async=False)
    other = make_backend(redis_server.socket, prefix="other").bind(
        report, name="one", ttl=1.0, is_async=False
    )
    assert one.redis_key((1,)).startswith("app:one:")
    assert two.redis_key((1,)).startswith("app:two:")
    assert other.redis_key((1,)).startswith("other:one:")
    assert one.redis_key((1,)).rsplit(":", 1)[1] == two.redis_key((1,)).rsplit(":", 1)[1]


def test_r2_a_key_part_without_stable_encoding_is_a_type_error(
    redis_server: RedisTarget,
) -> None:
    """R2: an object with the default repr cannot be a Redis key; the error says key=."""
    bound = bind_sync(redis_server)
    with pytest.raises(TypeError, match=r"report\(\).*key=") as info:
        bound.call((object(),), lambda: 1)
    assert "object" in str(info.value)


# ------------------------------------------------------------------------------------ R3


def test_r3_lease_has_a_random_token_and_is_renewed(
    fleet_factory: Callable[..., Fleet], redis_server: RedisTarget, client: redis.Redis
) -> None:
    """R3: the leader's lease holds a random token and is renewed while it runs."""
    fleet = fleet_factory(("renewed",), {"lease_ttl": 1.0})
    fleet.spawn_leader()
    lkey = bind_sync(redis_server).redis_key(("renewed",)) + ":lease"
    token = client.get(lkey)
    assert token is not None
    assert re.fullmatch(rb"[0-9a-f]{32}", token)
    renewals = 0
    last = client.pttl(lkey)

    def renewed() -> bool:
        nonlocal renewals, last
        now = client.pttl(lkey)
        assert now > 0, "the lease expired while its leader was running"
        if now > last:
            renewals += 1
        last = now
        return renewals >= 4

    # Renewals come at least lease_ttl / 3 apart: after four, the lease has outlived
    # its own ttl.
    wait_until(renewed, "the lease is renewed four times")
    assert client.get(lkey) == token
    fleet.release.set()
    assert fleet.collect(1)[0][0] == "ok"
    assert client.exists(lkey) == 0


def test_r3_lease_is_released_only_by_its_owner(
    redis_server: RedisTarget, client: redis.Redis
) -> None:
    """R3: a leader whose lease passed to another token does not delete that lease."""
    bound = bind_sync(redis_server)
    lkey = bound.redis_key(("owned",)) + ":lease"
    running = threading.Event()
    finish = threading.Event()

    def compute() -> str:
        running.set()
        assert finish.wait(20)
        return "value"

    call = InThread(lambda: bound.call(("owned",), compute))
    assert running.wait(20)
    mine = client.get(lkey)
    client.set(lkey, b"someone-else", px=20_000)  # as if it expired and was taken over
    finish.set()
    assert call.join() == "value"
    assert client.get(lkey) == b"someone-else"
    assert mine is not None
    assert mine != b"someone-else"
    wait_until(lambda: not lease_threads(), "the renewal thread ends")


def test_r3_each_flight_draws_a_new_token(redis_server: RedisTarget, client: redis.Redis) -> None:
    """R3: two flights of one key hold different lease tokens."""
    bound = bind_sync(redis_server)
    lkey = bound.redis_key(("tokens",)) + ":lease"
    seen = []

    def compute() -> int:
        seen.append(client.get(lkey))
        return 1

    bound.call(("tokens",), compute)
    bound.invalidate(("tokens",))
    bound.call(("tokens",), compute)
    assert len(seen) == 2
    assert None not in seen
    assert seen[0] != seen[1]


# ------------------------------------------------------------------------------------ R4


def test_r4_a_killed_leader_is_taken_over(
    fleet_factory: Callable[..., Fleet], client: redis.Redis
) -> None:
    """R4: a leader killed with SIGKILL loses its lease; one follower runs the key for all."""
    fleet = fleet_factory(("takeover",), {"lease_ttl": 0.5})
    leader = fleet.spawn_leader()
    followers = fleet.spawn(2)
    wait_until(lambda: blocked_clients(client) == 2, "two followers wait in Redis")
    os.kill(leader.pid, signal.SIGKILL)  # while it holds the lease, inside the function
    leader.join(20)
    assert leader.exitcode == -signal.SIGKILL
    fleet.release.set()  # the function the follower runs on takeover returns at once
    results = fleet.collect(2)
    assert fleet.executions.value == 2  # the killed run and the takeover
    values = [value for _, _, value in results]
    assert values[0] == values[1]
    assert values[0]["computed_by"] in {p.pid for p in followers}


def test_r4_a_caller_waits_at_most_wait_timeout(
    fleet_factory: Callable[..., Fleet],
    redis_server: RedisTarget,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """R4: a caller still waiting after wait_timeout runs the function itself and logs it."""
    fleet = fleet_factory(("slow",))
    fleet.spawn_leader()
    bound = bind_sync(redis_server, wait_timeout=0.3)
    with caplog.at_level(logging.WARNING, logger="coalesce.redis"):
        assert bound.call(("slow",), lambda: "ran here") == "ran here"
    assert "wait_timeout=0.3" in caplog.text
    fleet.release.set()
    assert fleet.collect(1)[0][0] == "ok"


# ------------------------------------------------------------------------------------ R5


def test_r5_followers_are_woken_by_redis_not_by_polling(
    fleet_factory: Callable[..., Fleet], client: redis.Redis
) -> None:
    """R5: each follower sends one lookup and one blocking pop, however long it waits."""
    # No socket timeout and a long lease: nothing bounds a pop but the leader's push.
    fleet = fleet_factory(("woken",), {"lease_ttl": 60.0, "socket_timeout": None})
    commands: Any = SPAWN.Queue()
    fleet.spawn_leader()
    fleet.spawn(3, commands=commands)
    wait_until(lambda: blocked_clients(client) == 3, "three followers wait in Redis")
    fleet.release.set()
    results = fleet.collect(4)
    assert len({json.dumps(value) for _, _, value in results}) == 1
    counts = [commands.get(timeout=20) for _ in range(3)]
    commands.close()
    commands.join_thread()
    assert counts == [2, 2, 2]  # the ACQUIRE script, then one BLMOVE until woken


def test_r4_a_waiting_follower_rechecks_when_the_lease_would_expire(
    fleet_factory: Callable[..., Fleet], redis_server: RedisTarget, client: redis.Redis
) -> None:
    """R4: a follower's pop ends when the lease it waits on would run out, and it re-checks."""
    fleet = fleet_factory(("renewing",), {"lease_ttl": 0.6, "socket_timeout": None})
    commands: Any = SPAWN.Queue()
    fleet.spawn_leader()
    fleet.spawn(1, commands=commands)
    wait_until(lambda: blocked_clients(client) == 1, "the follower waits in Redis")
    lkey = bind_sync(redis_server).redis_key(("renewing",)) + ":lease"
    renewals = 0
    last = client.pttl(lkey)

    def renewed() -> bool:
        nonlocal renewals, last
        now = client.pttl(lkey)
        renewals += now > last
        last = now
        return renewals >= 5

    # Renewals come at least lease_ttl / 3 apart: five of them since the follower
    # blocked span more than the 0.6 s its first pop could last.
    wait_until(renewed, "the leader renews its lease five times")
    fleet.release.set()
    assert [status for status, _, _ in fleet.collect(2)] == ["ok", "ok"]
    count = commands.get(timeout=20)
    commands.close()
    commands.join_thread()
    # Its first pop timed out with the lease it was given; it looked again (a renewed
    # lease) and waited again: at least two rounds of ACQUIRE and BLMOVE.
    assert count >= 4


# ------------------------------------------------------------------------------------ R6


# What redis-py raises for a Redis it cannot reach: a cluster client that reaches no node
# raises RedisClusterException ("Redis Cluster cannot be connected").
UNREACHABLE = (redis.exceptions.ConnectionError, redis.exceptions.RedisClusterException)


def warnings_about_redis(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "Redis failed" in r.getMessage()]


def test_r6_server_stopped_mid_flight_then_started_again(
    fleet_factory: Callable[..., Fleet],
    redis_server: RedisTarget,
    client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """R6: when Redis goes away mid-flight calls run locally, warning once per outage."""
    caplog.set_level(logging.INFO, logger="coalesce.redis")
    fleet = fleet_factory(("outage",))
    leader = fleet.spawn_leader()
    bound = bind_sync(redis_server)
    follower = InThread(lambda: bound.call(("outage",), lambda: "local"))
    wait_until(lambda: blocked_clients(client) == 1, "this process waits in Redis")

    redis_server.stop()
    assert follower.join() == "local"
    assert bound.call(("another",), lambda: "local too") == "local too"
    assert len(warnings_about_redis(caplog)) == 1
    fleet.release.set()  # the leader finishes while Redis is down: it keeps its value
    assert fleet.collect(1) == [("ok", leader.pid, {"computed_by": leader.pid})]

    redis_server.start()
    assert bound.call(("after",), lambda: "shared") == "shared"
    assert client.exists(bound.redis_key(("after",))) == 1
    assert "Redis answers again" in caplog.text

    redis_server.stop()
    assert bound.call(("again",), lambda: 1) == 1
    assert bound.call(("again",), lambda: 2) == 2
    assert len(warnings_about_redis(caplog)) == 2  # one for each outage


def test_r6_raise_mode_raises_the_redis_error(redis_server: RedisTarget) -> None:
    """R6: with on_backend_error='raise' a Redis failure raises and nothing runs."""
    bound = bind_sync(redis_server, on_backend_error="raise", outage_cooldown=60)
    redis_server.stop()
    ran = []
    for _ in range(2):  # the cooldown of "local" never turns raising into local runs
        with pytest.raises(UNREACHABLE):
            bound.call(("x",), lambda: ran.append(1))
    assert ran == []


def test_r6_outage_cooldown_skips_redis_for_a_while(
    redis_server: RedisTarget, client: redis.Redis
) -> None:
    """R6: after a failure, calls within outage_cooldown run locally without trying Redis."""
    bound = bind_sync(redis_server, outage_cooldown=3600)
    redis_server.stop()
    assert bound.call(("cool",), lambda: 1) == 1
    redis_server.start()
    assert bound.call(("cool",), lambda: 2) == 2
    assert client.exists(bound.redis_key(("cool",))) == 0


def test_r6_invalidate_during_an_outage_returns_false(redis_server: RedisTarget) -> None:
    """R6: invalidate() and clear() on a down Redis log and go on, or raise if asked."""
    bound = bind_sync(redis_server)
    strict = bind_sync(redis_server, on_backend_error="raise")
    redis_server.stop()
    assert bound.invalidate(("x",)) is False
    bound.clear()
    with pytest.raises(UNREACHABLE):
        strict.invalidate(("x",))


# ------------------------------------------------------------------------------------ R7

KEY = b"k" * 32


def test_r7_a_tampered_payload_is_never_deserialised(
    redis_server: RedisTarget,
    client: redis.Redis,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """R7: a signed value whose body was replaced is refused unread and counts as a miss."""
    bound = bind_sync(redis_server, signing_key=KEY)
    assert bound.call(("day",), lambda: "genuine") == "genuine"
    vkey = bound.redis_key(("day",))
    stored = client.get(vkey)
    assert stored is not None
    marker = tmp_path / "deserialised"
    evil = pickle.dumps(Boom(str(marker)))
    header = stored[: len(stored) - len(pickle.dumps("genuine", protocol=5))]
    client.set(vkey, header + evil)  # the old MAC, a new body
    with caplog.at_level(logging.WARNING, logger="coalesce.redis"):
        assert bound.call(("day",), lambda: "recomputed") == "recomputed"
    assert not marker.exists()
    assert "failed HMAC verification" in caplog.text
    assert bound.call(("day",), lambda: "not again") == "recomputed"


def test_r7_unsigned_or_foreign_payloads_are_refused_with_a_key(
    redis_server: RedisTarget, client: redis.Redis, tmp_path: Path
) -> None:
    """R7: with signing_key, values written unsigned or under another key are misses."""
    marker = tmp_path / "deserialised"
    unsigned = bind_sync(redis_server)
    unsigned.call(("a",), lambda: Boom(str(marker)))  # pickled, never unpickled yet
    assert not marker.exists()
    signed = bind_sync(redis_server, signing_key=KEY)
    assert signed.call(("a",), lambda: "fresh") == "fresh"
    assert not marker.exists()
    foreign = bind_sync(redis_server, signing_key=b"f" * 32)
    assert foreign.call(("a",), lambda: "mine") == "mine"
    assert signed.call(("a",), lambda: "again") == "again"


def test_r7_unsigned_pickle_runs_what_redis_holds(
    redis_server: RedisTarget, client: redis.Redis, tmp_path: Path
) -> None:
    """R7: the documented danger: without signing, whoever writes to Redis runs code here."""
    bound = bind_sync(redis_server)
    marker = tmp_path / "deserialised"
    vkey = bound.redis_key(("victim",))
    client.set(vkey, b"\xc5\x01v\x00" + pickle.dumps(Boom(str(marker))))
    bound.call(("victim",), lambda: "never")
    assert marker.read_text() == "deserialised"


def test_r7_a_forged_outcome_is_ignored_by_a_waiting_caller(
    redis_server: RedisTarget, client: redis.Redis, tmp_path: Path
) -> None:
    """R7: a forged outcome pushed to a follower is refused unread and removed."""
    bound = bind_sync(redis_server, signing_key=KEY)
    vkey = bound.redis_key(("forged",))
    client.set(vkey + ":lease", b"0" * 32, px=20_000)  # a leader in another process
    done = vkey + ":done:" + "0" * 32
    follower = InThread(lambda: bound.call(("forged",), lambda: "ran here"))
    wait_until(lambda: blocked_clients(client) == 1, "the follower waits in Redis")
    marker = tmp_path / "deserialised"
    client.rpush(done, b"\xc5\x01v\x00" + pickle.dumps(Boom(str(marker))))
    # Redis serves the pop before it answers the push; the follower then removes the
    # forged item (else every pop would return it at once) and waits again.
    wait_until(
        lambda: client.llen(done) == 0 and blocked_clients(client) == 1,
        "the follower drops the forged outcome and waits again",
    )
    genuine = bound._seal(vkey, b"v", pickle.dumps("from the leader"))
    client.rpush(done, genuine)
    assert follower.join() == "from the leader"
    assert not marker.exists()


@pytest.mark.parametrize(
    ("serializer", "value"),
    [("json", {"rows": [1, 2, 3], "name": "é"}), ("pickle", {"rows": (1, 2), "at": 1.5})],
)
def test_r7_serializers_round_trip(redis_server: RedisTarget, serializer: str, value: Any) -> None:
    """R7: pickle and JSON values written by one backend are read by another."""
    writer = bind_sync(redis_server, serializer=serializer, signing_key=KEY)
    reader = bind_sync(redis_server, serializer=serializer, signing_key=KEY)
    assert writer.call(("s",), lambda: value) == value
    assert reader.call(("s",), lambda: "not run") == value


def test_r7_a_custom_serializer_is_used(redis_server: RedisTarget, client: redis.Redis) -> None:
    """R7: any object with dumps() and loads() serialises the values."""

    class Upper:
        def dumps(self, value: Any) -> bytes:
            return str(value).upper().encode()

        def loads(self, data: bytes) -> Any:
            return data.decode() + "!"

    bound = bind_sync(redis_server, serializer=Upper())
    assert bound.call(("c",), lambda: "shout") == "shout"
    assert client.get(bound.redis_key(("c",))).endswith(b"SHOUT")
    assert bound.call(("c",), lambda: "x") == "SHOUT!"


def test_r7_an_unserialisable_result_is_returned_and_followers_run_it(
    fleet_factory: Callable[..., Fleet],
    redis_server: RedisTarget,
    client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """R7: a result the serializer refuses reaches its caller; other processes run it."""
    fleet = fleet_factory(("lambda",))
    bound = bind_sync(redis_server)
    running = threading.Event()
    finish = threading.Event()
    result = lambda: None  # noqa: E731 -- pickle cannot serialise a lambda

    def compute() -> Any:
        running.set()
        assert finish.wait(20)
        return result

    caplog.set_level(logging.WARNING, logger="coalesce.redis")
    leader = InThread(lambda: bound.call(("lambda",), compute))
    assert running.wait(20)
    (follower,) = fleet.spawn()
    wait_until(lambda: blocked_clients(client) == 1, "the follower waits in Redis")
    fleet.release.set()
    finish.set()
    assert leader.join() is result
    assert fleet.collect(1) == [("ok", follower.pid, {"computed_by": follower.pid})]
    assert "could not be serialised" in caplog.text


# ------------------------------------------------------------------------------------ R8


def test_r8_local_ttl_is_validated_and_exposed(redis_server: RedisTarget) -> None:
    """R8: local_ttl is read by the decorator: None by default, else positive seconds."""
    assert make_backend(redis_server.socket).local_ttl is None
    assert make_backend(redis_server.socket, local_ttl=2).local_ttl == 2.0
    with pytest.raises(ValueError, match="local_ttl"):
        make_backend(redis_server.socket, local_ttl=0)


# ------------------------------------------------------------------------------------ R9


def test_r9_a_remote_leader_error_reaches_followers_as_remote_error(
    fleet_factory: Callable[..., Fleet], redis_server: RedisTarget, client: redis.Redis
) -> None:
    """R9: the leader's caller gets its ValueError; a follower elsewhere gets RemoteError."""
    fleet = fleet_factory(("fails",))
    leader = fleet.spawn_leader(raise_message="no data for day 3")
    bound = bind_sync(redis_server)
    follower = InThread(lambda: bound.call(("fails",), lambda: "not run"))
    wait_until(lambda: blocked_clients(client) == 1, "this process waits in Redis")
    fleet.release.set()
    with pytest.raises(RemoteError) as info:
        follower.join()
    assert (info.value.type_name, info.value.message) == ("ValueError", "no data for day 3")
    assert "ValueError" in str(info.value)
    assert "no data for day 3" in str(info.value)
    assert fleet.collect(1) == [("error", leader.pid, ("ValueError", "no data for day 3"))]
    # Not cached past the flight: the next call runs.
    assert bound.call(("fails",), lambda: "ran") == "ran"


def test_r9_an_error_in_this_process_propagates_unchanged(redis_server: RedisTarget) -> None:
    """R9: the leader's own caller gets the very exception object its function raised."""
    bound = bind_sync(redis_server)
    error = KeyError("missing")

    def compute() -> None:
        raise error

    with pytest.raises(KeyError) as info:
        bound.call(("own",), compute)
    assert info.value is error


# ------------------------------------------------------------------------ aborts, async


def test_an_aborted_leader_hands_over_at_once(
    fleet_factory: Callable[..., Fleet], redis_server: RedisTarget, client: redis.Redis
) -> None:
    """R4: a leader ending in KeyboardInterrupt frees its lease; a follower runs at once."""
    fleet = fleet_factory(("abort",), {"lease_ttl": 60.0, "wait_timeout": 120.0})
    bound = bind_sync(redis_server, lease_ttl=60.0)
    running = threading.Event()
    finish = threading.Event()

    def compute() -> None:
        running.set()
        assert finish.wait(20)
        raise KeyboardInterrupt

    leader = InThread(lambda: bound.call(("abort",), compute))
    assert running.wait(20)
    (follower,) = fleet.spawn()
    wait_until(lambda: blocked_clients(client) == 1, "the follower waits in Redis")
    fleet.release.set()
    finish.set()
    with pytest.raises(KeyboardInterrupt):
        leader.join()
    # With a 60 s lease, only the hand-over lets the follower finish within the timeout.
    assert fleet.collect(1) == [("ok", follower.pid, {"computed_by": follower.pid})]


def test_async_leader_and_follower_in_one_loop_and_another_process(
    fleet_factory: Callable[..., Fleet], redis_server: RedisTarget, client: redis.Redis
) -> None:
    """R1: an async leader here shares its value with an async follower in another process."""
    fleet = fleet_factory(("mixed",), target=async_worker)

    async def main() -> Any:
        backend = make_backend(redis_server.socket, is_async=True)
        bound = backend.bind(areport, name="report", ttl=30.0, is_async=True)
        running = asyncio.Event()
        finish = asyncio.Event()

        async def compute() -> str:
            running.set()
            await finish.wait()
            return "from the async leader"

        call = asyncio.create_task(bound.acall(("mixed",), compute))
        await running.wait()
        fleet.spawn()
        await asyncio.to_thread(
            wait_until, lambda: blocked_clients(client) == 1, "the follower waits in Redis"
        )
        finish.set()
        value = await call
        assert await bound.ainvalidate(("mixed",)) is True
        assert await bound.ainvalidate(("mixed",)) is False
        await bound.aclear()
        await backend.client.aclose()
        return value

    assert asyncio.run(main()) == "from the async leader"
    assert fleet.collect(1)[0][2] == "from the async leader"


def test_async_cancelled_leader_hands_over(
    fleet_factory: Callable[..., Fleet], redis_server: RedisTarget, client: redis.Redis
) -> None:
    """R4: cancelling an async leader frees its lease and a follower elsewhere runs it."""
    fleet = fleet_factory(("cancel",), {"lease_ttl": 60.0, "wait_timeout": 120.0})

    async def main() -> None:
        backend = make_backend(redis_server.socket, is_async=True, lease_ttl=60.0)
        bound = backend.bind(areport, name="report", ttl=30.0, is_async=True)
        running = asyncio.Event()

        async def compute() -> str:
            running.set()
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        call = asyncio.create_task(bound.acall(("cancel",), compute))
        await running.wait()
        fleet.spawn()
        await asyncio.to_thread(
            wait_until, lambda: blocked_clients(client) == 1, "the follower waits in Redis"
        )
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await backend.client.aclose()

    fleet.release.set()
    asyncio.run(main())
    (status, pid, value) = fleet.collect(1)[0]
    assert (status, value) == ("ok", {"computed_by": pid})


# ---------------------------------------------------------------- through @singleflight


@pytest.mark.parametrize("is_async", [False, True], ids=["def", "async-def"])
def test_r1_decorated_function_runs_once_across_processes(
    fleet_factory: Callable[..., Fleet], client: redis.Redis, is_async: bool
) -> None:
    """R1: @singleflight(backend=...) in three processes, two callers in each, runs once."""
    fleet = fleet_factory("2024-01-01", target=decorated_worker)
    leader = fleet.spawn_leader(is_async=is_async)
    fleet.spawn(2, is_async=is_async)
    wait_until(lambda: blocked_clients(client) >= 2, "the other processes wait in Redis")
    fleet.release.set()
    results = fleet.collect(3)
    assert fleet.executions.value == 1
    assert [values for _, _, values in results] == [[{"computed_by": leader.pid}] * 2] * 3


def test_r2_name_overrides_the_qualified_name(
    redis_server: RedisTarget, client: redis.Redis
) -> None:
    """R2: the Redis key holds name= when given, else the function's qualified name."""
    backend = make_backend(redis_server.socket, prefix="app")

    @singleflight(ttl=30, backend=backend, name="daily")
    def named(day: int) -> int:
        return day

    @singleflight(ttl=30, backend=backend)
    def unnamed(day: int) -> int:
        return day

    named(1)
    unnamed(1)
    keys = sorted(k.decode() for k in client.scan_iter(match="app:*") if b":done:" not in k)
    assert [k.rsplit(":", 1)[0] for k in keys] == ["app:daily", f"app:{unnamed.__qualname__}"]


def test_r8_local_ttl_serves_hot_keys_without_redis(redis_server: RedisTarget) -> None:
    """R8: with local_ttl, repeated calls in a process are served without a round trip."""
    near = make_backend(redis_server.socket, local_ttl=60)
    far = make_backend(redis_server.socket)

    @singleflight(ttl=30, backend=near, name="near")
    def hot(x: int) -> int:
        return x * 2

    @singleflight(ttl=30, backend=far, name="far")
    def cold(x: int) -> int:
        return x * 2

    assert hot(2) == cold(2) == 4
    before = CountingRedis.commands
    assert [hot(2) for _ in range(5)] == [4] * 5
    assert CountingRedis.commands == before
    assert [cold(2) for _ in range(5)] == [4] * 5
    assert CountingRedis.commands == before + 5  # one lookup each


def test_r6_an_outage_still_coalesces_in_process(
    redis_server: RedisTarget, caplog: pytest.LogCaptureFixture
) -> None:
    """R6: with Redis down, concurrent calls in one process still share one execution."""
    caplog.set_level(logging.WARNING, logger="coalesce.redis")
    backend = make_backend(redis_server.socket)
    release = threading.Event()
    runs: list[int] = []

    @singleflight(ttl=30, backend=backend, name="down")
    def down(x: int) -> int:
        runs.append(x)
        assert release.wait(20)
        return x

    redis_server.stop()
    calls = [InThread(lambda: down(1)) for _ in range(4)]
    wait_until(lambda: down.cache_info().coalesced == 3, "three calls join the first")
    release.set()
    assert [call.join() for call in calls] == [1] * 4
    assert runs == [1]
    assert len(warnings_about_redis(caplog)) == 1


def test_s10_an_async_backend_serves_a_new_loop_after_aclose(redis_server: RedisTarget) -> None:
    """S10: closing the client at the end of a loop lets the next asyncio.run use it."""
    backend = make_backend(redis_server.socket, is_async=True)

    @singleflight(ttl=30, backend=backend, name="loops")
    async def double(x: int) -> int:
        return x * 2

    async def main(x: int) -> int:
        try:
            return await double(x)
        finally:
            await backend.client.aclose()

    assert [asyncio.run(main(x)) for x in (1, 2, 1)] == [2, 4, 2]


def test_s10_an_async_client_of_another_loop_is_a_clear_error(
    redis_server: RedisTarget,
) -> None:
    """S10: a redis.asyncio client still open in another loop fails with a clear error."""
    backend = make_backend(redis_server.socket, is_async=True)
    bound = backend.bind(areport, name="report", ttl=30.0, is_async=True)

    async def one() -> int:
        return 1

    first = asyncio.new_event_loop()
    second = asyncio.new_event_loop()
    try:
        assert first.run_until_complete(bound.acall(("a",), one)) == 1
        with pytest.raises(RuntimeError, match=r"another event loop.*aclose\(\)"):
            second.run_until_complete(bound.acall(("b",), one))
    finally:
        first.run_until_complete(backend.client.aclose())
        second.close()
        first.close()


# -------------------------------------------------------------------- invalidate, clear


def test_invalidate_and_clear_delete_only_this_function_values(
    redis_server: RedisTarget, client: redis.Redis
) -> None:
    """R2: invalidate() drops one key; clear() drops this name's values via SCAN."""
    backend = make_backend(redis_server.socket, prefix="app")
    one = backend.bind(report, name="one", ttl=30.0, is_async=False)
    two = backend.bind(report, name="two", ttl=30.0, is_async=False)
    for i in range(1200):
        one.call((i,), lambda i=i: i)
    two.call((0,), lambda: "kept")
    assert one.invalidate((0,)) is True
    assert one.invalidate((0,)) is False
    one.clear()
    assert client.exists(two.redis_key((0,))) == 1
    assert not any(one._is_value_key(k) for k in client.scan_iter(match="app:one:*", count=1000))


# ---------------------------------------------------------------------------- bad input


def test_client_kind_must_match_the_function_kind(redis_server: RedisTarget) -> None:
    """A sync client for an async def function, or the reverse, is a TypeError at bind."""
    sync_backend = make_backend(redis_server.socket)
    async_backend = make_backend(redis_server.socket, is_async=True)
    with pytest.raises(TypeError, match=r"areport is an async def function.*redis\.asyncio"):
        sync_backend.bind(areport, name="areport", ttl=1.0, is_async=True)
    with pytest.raises(TypeError, match=r"report is a def function.*sync redis\.Redis"):
        async_backend.bind(report, name="report", ttl=1.0, is_async=False)


def test_bad_clients_are_refused(redis_server: RedisTarget) -> None:
    """Anything but a redis-py client, or one decoding responses, is refused clearly."""
    with pytest.raises(TypeError, match=r"redis\.Redis"):
        RedisBackend("redis://localhost")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="decode_responses=False"):
        RedisBackend(redis_server.client(decode_responses=True))


@pytest.mark.parametrize(
    "url", ["http://localhost:6379", "localhost:6379", "redis://localhost:port", ""]
)
def test_bad_urls_are_refused(url: str) -> None:
    """A URL that is not redis://, rediss:// or unix:// is a ValueError naming it."""
    with pytest.raises(ValueError, match="bad Redis URL"):
        RedisBackend.from_url(url)


def test_from_url_builds_a_working_backend(redis_single: RedisServer) -> None:
    """from_url() gives a sync or, with async_client=True, an asyncio client."""
    backend = RedisBackend.from_url(redis_single.url, prefix="u")
    bound = backend.bind(report, name="report", ttl=5.0, is_async=False)
    assert bound.call((1,), lambda: "via url") == "via url"
    backend.client.close()
    assert RedisBackend.from_url(redis_single.url, async_client=True).is_async


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"prefix": ""}, ValueError, "prefix"),
        ({"prefix": "has space"}, ValueError, "prefix"),
        ({"prefix": "ends:"}, ValueError, "prefix"),
        ({"prefix": 3}, TypeError, "prefix"),
        ({"lease_ttl": 0}, ValueError, "lease_ttl"),
        ({"lease_ttl": 0.01}, ValueError, "lease_ttl"),
        ({"lease_ttl": math.inf}, ValueError, "lease_ttl"),
        ({"lease_ttl": "10"}, TypeError, "lease_ttl"),
        ({"wait_timeout": -1}, ValueError, "wait_timeout"),
        ({"wait_timeout": math.nan}, ValueError, "wait_timeout"),
        ({"wait_timeout": True}, TypeError, "wait_timeout"),
        ({"local_ttl": -1}, ValueError, "local_ttl"),
        ({"outage_cooldown": -1}, ValueError, "outage_cooldown"),
        ({"on_backend_error": "ignore"}, ValueError, "on_backend_error"),
        ({"serializer": "yaml"}, ValueError, "serializer"),
        ({"serializer": object()}, TypeError, "serializer"),
        ({"signing_key": "secret"}, TypeError, "signing_key"),
        ({"signing_key": b"short"}, ValueError, "signing_key"),
    ],
)
def test_bad_options_are_refused(
    redis_server: RedisTarget, options: dict[str, Any], error: type[Exception], match: str
) -> None:
    """A bad prefix, timeout or option is an error that names it."""
    with pytest.raises(error, match=match):
        RedisBackend(redis_server.client(), **options)


def test_bad_names_and_ttls_are_refused_at_bind(redis_server: RedisTarget) -> None:
    """bind() refuses an empty name or a non-positive ttl."""
    backend = make_backend(redis_server.socket)
    with pytest.raises(ValueError, match="name"):
        backend.bind(report, name="", ttl=1.0, is_async=False)
    with pytest.raises(ValueError, match="ttl"):
        backend.bind(report, name="report", ttl=0, is_async=False)


def test_redis_demo_shows_one_execution(
    redis_single: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """R1: the Redis demo's processes (def and async def) run the function once."""
    from coalesce._demo_redis import run_redis_demo

    run_redis_demo(redis_single.url, processes=4, work_seconds=0.2)
    out = capsys.readouterr().out
    assert "executions: 1 for 4 calls in 4 processes" in out
    assert out.count(" yes ") == 1


def test_redis_demo_names_an_unreachable_redis(redis_single: RedisServer) -> None:
    """R6: the demo says plainly which Redis it could not reach."""
    from coalesce._demo_redis import run_redis_demo

    redis_single.stop()
    with pytest.raises(SystemExit, match="cannot reach Redis at unix://"):
        run_redis_demo(redis_single.url)


def test_docs_redis_examples_run(
    redis_single: RedisServer, redis_cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """R1: every Python example of docs/redis.md runs as written against a real Redis."""
    monkeypatch.setenv("REDIS_URL", redis_single.url)
    monkeypatch.setenv("REDIS_CLUSTER_URL", redis_cluster.url)  # R13's example
    text = (Path(__file__).resolve().parent.parent / "docs" / "redis.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) >= 3
    for block in blocks:
        namespace: dict[str, Any] = {"__name__": "docs_redis_example"}
        exec(compile(block, "docs/redis.md", "exec"), namespace)
        for value in namespace.values():
            if isinstance(value, RedisBackend) and not value.is_async:
                value.client.close()


def test_invalidate_and_cache_clear_reach_redis(redis_server: RedisTarget) -> None:
    """R1: invalidate() and cache_clear() drop the value in Redis, so the next call runs."""
    backend = make_backend(redis_server.socket)
    runs: list[int] = []

    @singleflight(ttl=30, backend=backend, name="dropped")
    def square(x: int) -> int:
        runs.append(x)
        return x * x

    assert square(3) == 9
    assert square(3) == 9
    assert runs == [3]
    assert square.invalidate(3) is True
    assert square.invalidate(3) is False
    assert square(3) == 9
    assert runs == [3, 3]
    square.cache_clear()
    assert square(3) == 9
    assert runs == [3, 3, 3]


def test_ainvalidate_and_acache_clear_reach_redis(redis_server: RedisTarget) -> None:
    """R1: with an async client, await ainvalidate()/acache_clear() drop the value in Redis."""
    backend = make_backend(redis_server.socket, is_async=True)
    runs: list[int] = []

    @singleflight(ttl=30, backend=backend, name="adropped")
    async def square(x: int) -> int:
        runs.append(x)
        return x * x

    async def main() -> None:
        try:
            assert await square(3) == 9
            assert await square(3) == 9
            assert runs == [3]
            assert await square.ainvalidate(3) is True
            assert await square(3) == 9
            assert runs == [3, 3]
            await square.acache_clear()
            assert await square(3) == 9
            assert runs == [3, 3, 3]
        finally:
            await backend.client.aclose()

    asyncio.run(main())
