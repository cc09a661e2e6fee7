"""Issue 19, the Redis half: what Redis holds that coalesce did not write never breaks a call.

Each test tampers with the keys of one cache key in a real Redis (bad bytes, a key of
another type, a lease without expiry, an undecodable payload), once per target of
conftest.py's ``redis_target`` (redis-server, the Redis Cluster, valkey-server), and
checks, for
``def`` (``redis.Redis``) and ``async def`` (``redis.asyncio.Redis``), that the call is
a miss for that key only: it returns the function's value, one warning on
``coalesce.redis`` says what was found, Redis is repaired, and other keys still go
through Redis (no outage: the backends here have a long ``outage_cooldown``, so an
outage would leave the next key's value out of Redis).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from _redis_fixture import RedisTarget, redis
from _redis_workers import make_backend

from coalesce import singleflight
from coalesce.redis import RedisBackend

pytestmark = pytest.mark.timeout(30)

Call = Callable[[Any], Awaitable[Any]]


@pytest.fixture
def redis_server(redis_target: RedisTarget) -> RedisTarget:
    """This run's target (conftest.py): a redis-server, the Redis Cluster, a valkey-server."""
    return redis_target


@pytest.fixture
def client(redis_server: RedisTarget) -> Iterator[redis.Redis]:
    """A sync client of the test's server, to tamper with what Redis holds."""
    connection = redis_server.client()
    yield connection
    connection.close()


class Subject:
    """A decorated ``f(x)`` through a backend of ``kind``, counting its executions."""

    def __init__(self, kind: str, server: RedisTarget, **options: Any) -> None:
        options.setdefault("outage_cooldown", 60.0)
        self.backend: RedisBackend = make_backend(
            server.socket, is_async=kind == "async", **options
        )
        self.runs: list[Any] = []
        self.during: Callable[[], None] = lambda: None  # runs inside each execution
        if kind == "async":

            @singleflight(ttl=30, backend=self.backend, name="f")
            async def af(x: Any) -> Any:
                self.runs.append(x)
                self.during()
                return f"value {x}"

            async def acall(x: Any) -> Any:
                return await af(x)

            self.func: Any = af
            self.call: Call = acall
        else:

            @singleflight(ttl=30, backend=self.backend, name="f")
            def sf(x: Any) -> Any:
                self.runs.append(x)
                self.during()
                return f"value {x}"

            async def scall(x: Any) -> Any:
                return sf(x)  # the sync flight, run in the test's loop

            self.func = sf
            self.call = scall
        # A second binding of the same name and backend: the same Redis keys as f's own.
        self.binding = self.backend.bind(
            self.func, name="f", ttl=30.0, is_async=self.backend.is_async
        )

    def vkey(self, x: Any) -> str:
        """The Redis key of ``f(x)``'s value."""
        return str(self.binding.redis_key(self.func.cache_key(x)))

    def call_each(self, caplog: pytest.LogCaptureFixture, *xs: Any) -> None:
        """Call ``f(x)`` for each of ``xs`` in turn (warnings captured): each is its value."""

        async def scenario() -> None:
            for x in xs:
                assert await self.call(x) == f"value {x}"

        with caplog.at_level(logging.WARNING, logger="coalesce.redis"):
            self.run(scenario)

    def run(self, scenario: Callable[[], Awaitable[None]]) -> None:
        """Run ``scenario`` in one event loop, closing an async client before it ends."""

        async def main() -> None:
            try:
                await scenario()
            finally:
                if self.backend.is_async:
                    await self.backend.client.aclose()

        asyncio.run(main())


def warnings_of(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "coalesce.redis" and r.levelno >= logging.WARNING and text in r.getMessage()
    ]


@pytest.mark.parametrize("poison", [b"\xff", b"not a token", b"a" * 33])
def test_r3_a_lease_that_is_not_a_coalesce_token_is_a_miss_and_deleted(
    kind: str,
    redis_server: RedisTarget,
    client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    poison: bytes,
) -> None:
    """R3/issue 19: ``SET <key>:lease "\\xff"`` (no TTL) is a miss for that key, logged once and
    deleted; the call returns its value and the next one is a Redis hit."""
    subject = Subject(kind, redis_server)
    vkey = subject.vkey(1)
    client.set(f"{vkey}:lease", poison)

    subject.call_each(caplog, 1, 1, "other")
    assert subject.runs == [1, "other"]
    assert client.get(f"{vkey}:lease") is None  # released by the leader that replaced it
    assert client.exists(vkey)
    assert client.exists(subject.vkey("other"))
    (message,) = warnings_of(caplog, f"{vkey}:lease")
    assert "no coalesce lease token" in message


def test_r4_a_lease_without_expiry_is_given_one_and_taken_over(
    kind: str, redis_server: RedisTarget, client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """R4/issue 19: a lease with a coalesce-like token but no TTL gets ``lease_ttl`` as its
    expiry (logged once), so the caller takes over when it ends instead of waiting forever."""
    subject = Subject(kind, redis_server, lease_ttl=0.2, wait_timeout=20)
    vkey = subject.vkey(1)
    client.set(f"{vkey}:lease", "0" * 32)

    async def scenario() -> None:
        assert await subject.call(1) == "value 1"

    with caplog.at_level(logging.WARNING, logger="coalesce.redis"):
        subject.run(scenario)
    assert subject.runs == [1]
    assert client.exists(vkey)
    (message,) = warnings_of(caplog, f"{vkey}:lease")
    assert "without expiry" in message
    assert not warnings_of(caplog, "wait_timeout")  # taken over at the lease's end


@pytest.mark.parametrize("kind_of_key", ["list", "hash", "set"])
def test_r6_a_value_key_of_another_type_is_a_miss_not_an_outage(
    kind: str,
    redis_server: RedisTarget,
    client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    kind_of_key: str,
) -> None:
    """R6/issue 19: a value key that is a list, hash or set is a miss for that key (logged
    once, replaced by the value); other keys keep going through Redis, no outage."""
    subject = Subject(kind, redis_server)
    vkey = subject.vkey(1)
    {
        "list": lambda: client.rpush(vkey, "x"),
        "hash": lambda: client.hset(vkey, "a", "b"),
        "set": lambda: client.sadd(vkey, "x"),
    }[kind_of_key]()

    subject.call_each(caplog, 1, 1, "other")
    assert subject.runs == [1, "other"]
    assert client.type(vkey) == b"string"
    assert client.exists(subject.vkey("other"))  # stored: Redis was never taken for down
    (message,) = warnings_of(caplog, vkey)
    assert f"held a {kind_of_key}" in message
    assert not warnings_of(caplog, "Redis failed")


@pytest.mark.parametrize("on_backend_error", ["local", "raise"])
def test_r6_a_done_list_of_another_type_is_no_outage_and_no_error(
    kind: str,
    redis_server: RedisTarget,
    client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    on_backend_error: str,
) -> None:
    """R6/issue 19: a follower whose leader's outcome list is a string gets ``WRONGTYPE``
    from its blocking pop: that call runs here (even with on_backend_error='raise'), and
    the error reply is not counted as Redis being down."""
    subject = Subject(kind, redis_server, on_backend_error=on_backend_error)
    vkey = subject.vkey(1)
    token = "ab" * 16
    client.set(f"{vkey}:lease", token, px=20_000)
    client.set(f"{vkey}:done:{token}", "not a list")

    async def scenario() -> None:
        assert await subject.call(1) == "value 1"
        assert await subject.call("other") == "value other"

    with caplog.at_level(logging.WARNING, logger="coalesce.redis"):
        subject.run(scenario)
    assert subject.runs == [1, "other"]
    assert client.exists(subject.vkey("other"))
    (message,) = warnings_of(caplog, "WRONGTYPE")
    assert "other keys are unaffected" in message
    assert not warnings_of(caplog, "Redis failed")


@pytest.mark.parametrize("gen", ["list", "text"])
def test_r11_a_bad_generation_is_repaired_and_invalidate_still_works(
    kind: str,
    redis_server: RedisTarget,
    client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    gen: str,
) -> None:
    """R11/issue 19: a generation key that is a list, or not a number, is a miss for that
    key and is repaired by the call and by invalidate(), which still removes the value."""
    subject = Subject(kind, redis_server)
    vkey = subject.vkey(1)

    def tamper() -> None:
        if gen == "list":
            client.rpush(f"{vkey}:gen", "x")
        else:
            client.set(f"{vkey}:gen", "\xff")

    tamper()

    async def scenario() -> None:
        assert await subject.call(1) == "value 1"
        tamper()
        if kind == "async":
            assert await subject.func.ainvalidate(1)
        else:
            assert subject.func.invalidate(1)
        assert not client.exists(vkey)
        assert await subject.call(1) == "value 1"
        assert await subject.call("other") == "value other"

    with caplog.at_level(logging.WARNING, logger="coalesce.redis"):
        subject.run(scenario)
    assert subject.runs == [1, 1, "other"]
    assert client.exists(vkey)
    assert int(client.get(f"{vkey}:gen") or 0) >= 1
    assert client.pttl(f"{vkey}:gen") > 0
    assert warnings_of(caplog, f"{vkey}:gen")
    assert not warnings_of(caplog, "Redis failed")


@pytest.mark.parametrize("payload", [b"\x00\x01garbage", b"", b"\xff" * 40])
def test_r7_a_value_that_does_not_decode_is_a_miss_and_replaced(
    kind: str,
    redis_server: RedisTarget,
    client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    payload: bytes,
) -> None:
    """R7/issue 19: a value payload that does not decode is a miss for that key, logged
    once, and replaced by the value the call computes."""
    subject = Subject(kind, redis_server)
    vkey = subject.vkey(1)
    client.set(vkey, payload)

    async def scenario() -> None:
        assert await subject.call(1) == "value 1"
        assert await subject.call(1) == "value 1"

    with caplog.at_level(logging.WARNING, logger="coalesce.redis"):
        subject.run(scenario)
    assert subject.runs == [1]
    assert client.get(vkey) != payload
    assert len(warnings_of(caplog, vkey)) == 1


@pytest.mark.parametrize("how", ["deleted", "another token"])
def test_r3_a_lease_lost_before_the_final_store_is_logged(
    kind: str,
    redis_server: RedisTarget,
    client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    how: str,
) -> None:
    """R3/issue 19: when the final store finds another token or no lease (and no renewal
    noticed first), the leader logs that it lost its lease, once; callers get the value."""
    subject = Subject(kind, redis_server, lease_ttl=30)  # no renewal before the store
    vkey = subject.vkey(1)

    def steal() -> None:
        if how == "deleted":
            client.delete(f"{vkey}:lease")
        else:
            client.set(f"{vkey}:lease", "cd" * 16, px=20_000)

    subject.during = steal

    async def scenario() -> None:
        assert await subject.call(1) == "value 1"

    with caplog.at_level(logging.WARNING, logger="coalesce.redis"):
        subject.run(scenario)
    assert subject.runs == [1]
    (message,) = warnings_of(caplog, "lost its lease")
    assert "before storing" in message
    if how == "another token":
        assert client.get(f"{vkey}:lease") == b"cd" * 16  # never released by another


def test_r3_a_lease_kept_to_the_end_logs_nothing(
    kind: str, redis_server: RedisTarget, caplog: pytest.LogCaptureFixture
) -> None:
    """R3/issue 19: a leader that still holds its lease at the final store logs no loss."""
    subject = Subject(kind, redis_server)

    async def scenario() -> None:
        assert await subject.call(1) == "value 1"

    with caplog.at_level(logging.WARNING, logger="coalesce.redis"):
        subject.run(scenario)
    assert subject.runs == [1]
    assert not warnings_of(caplog, "")


@pytest.mark.parametrize(
    ("result", "path", "key_type"),
    [
        ({1: "a"}, "result", "int"),
        ({"rows": [{"id": 1}, {2: "b"}]}, "result['rows'][1]", "int"),
        ({"a": ({None: 1},)}, "result['a'][0]", "NoneType"),
        ({"a": {"b": {1.5: 1}}}, "result['a']['b']", "float"),
        ({"a": {True: 1}}, "result['a']", "bool"),
    ],
)
def test_r7_json_refuses_dict_keys_it_would_turn_into_strings(
    redis_server: RedisTarget, result: Any, path: str, key_type: str
) -> None:
    """R7/issue 19: serializer='json' refuses a non-str dict key, naming its path, instead
    of storing a value that would read back with string keys."""
    backend = make_backend(redis_server.socket, serializer="json")
    with pytest.raises(TypeError, match=rf"{key_type} key .* of {re.escape(path)}: JSON"):
        backend.serializer.dumps(result)
    assert backend.serializer.loads(backend.serializer.dumps({"1": [1, {"x": None}]})) == {
        "1": [1, {"x": None}]
    }


def test_r7_a_json_result_with_int_keys_is_returned_and_not_shared(
    kind: str, redis_server: RedisTarget, client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """R7/issue 19: a result with int keys reaches its caller unchanged, is logged with the
    key's path and is not stored in Redis (where it would read back as {"1": ...})."""
    backend = make_backend(redis_server.socket, is_async=kind == "async", serializer="json")
    runs: list[int] = []
    if kind == "async":

        @singleflight(ttl=30, backend=backend, name="g")
        async def g(x: int) -> dict[int, str]:
            runs.append(x)
            return {x: "one"}

        async def call() -> Any:
            try:
                return [await g(1), await g(1)]
            finally:
                await backend.client.aclose()

        with caplog.at_level(logging.WARNING, logger="coalesce.redis"):
            got = asyncio.run(call())
    else:

        @singleflight(ttl=30, backend=backend, name="g")
        def g(x: int) -> dict[int, str]:
            runs.append(x)
            return {x: "one"}

        with caplog.at_level(logging.WARNING, logger="coalesce.redis"):
            got = [g(1), g(1)]
    assert got == [{1: "one"}, {1: "one"}]
    assert runs == [1, 1]  # never a {"1": "one"} from Redis
    assert not [k for k in client.scan_iter(match="coalesce:g:*") if b":done:" not in k]
    assert "int key 1 of result" in caplog.text
