"""Past one process: coordinate ``@singleflight`` through Redis (SPEC section 4, R1-R14).

```python
import redis
from coalesce import singleflight
from coalesce.redis import RedisBackend

backend = RedisBackend(redis.Redis.from_url("redis://localhost:6379/0"), prefix="myapp")

@singleflight(ttl=30, backend=backend, name="report")
def report(day): ...
```

How one call goes (``_Binding.flight``), in Redis commands:

1. ``ACQUIRE`` (one Lua script, one round trip): the value if it is there (a hit);
   else ``SET lease NX PX`` with a random token (this caller leads); else the current
   leader's token and the lease's remaining time (this caller follows).
2. A leader runs the function while a daemon thread (or a task) renews its lease
   every ``lease_ttl / 3`` with a compare-and-``PEXPIRE``. Then ``FINISH`` (one script)
   stores the value for ``ttl``, pushes the outcome onto the flight's own list
   ``...:done:<token>`` and deletes the lease if it still holds that token.
3. A follower blocks on that list with ``BLMOVE list list`` (the element is moved onto
   the same list, so it stays there for every other follower too). Redis wakes it the
   moment the leader pushes; the pop times out no later than the lease would expire,
   so a leader that died is noticed and one follower takes over (R4).
4. Every script that stores or drops a value also ``PUBLISH``-es its key on the
   copies channel; with ``local_ttl``, a listener thread per backend drops this
   process's copy of what another process changed (R12, ``_Follower``).

The protocol is written once, as a generator that yields what to do next
(``_Acquire``, ``_Block``, ``_Discard``, ``_Run``, ``_Finish``, ``_Store``); the sync driver
(``redis.Redis``) and the asyncio driver (``redis.asyncio.Redis``) only carry those
steps out. See ``docs/redis.md`` for the semantics and failure modes.

``RedisBackend`` implements the ``Backend`` protocol of ``_backend.py``; what is not
Redis (serialisers, key digests, sealed payloads) comes from ``_payload.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import math
import random
import re
import reprlib
import secrets
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Generator, Hashable
from types import TracebackType
from typing import Any, Final, Literal, TypeVar, cast, final

import redis
import redis.asyncio
import redis.connection
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from coalesce._backend import Copies, Fleet
from coalesce._fork import at_fork
from coalesce._payload import (
    DIGEST_LEN,
    ERROR,
    LOCAL,
    RETRY,
    TIMED,
    VALUE,
    Codec,
    Serializer,
    check_signing_key,
    error_body,
    error_kept_until,
    kept_error_body,
    key_digest,
    open_timed,
    remote_error,
    serializer_for,
    timed_body,
)
from coalesce._seconds import returned, seconds
from coalesce._store import xfetch_gap

__all__ = ("RedisBackend", "Serializer")

R = TypeVar("R")

_log: Final = logging.getLogger("coalesce.redis")

# What a failing Redis raises (R6): redis-py's errors, and on a cluster also the client's
# own, which is no RedisError (no node reachable, slots not covered).
_FAILURES: Final = (RedisError, RedisClusterException)


def _no_tick() -> None:
    """Counts nothing: a binding's takeover counter until the decorator gives one."""


OnBackendError = Literal["local", "raise"]


# How long a flight's outcome list outlives the flight. Followers already waiting are
# served the moment it is pushed; this only covers one that read the leader's token
# just before the push and has yet to send its pop. One that comes later still finds
# the value: its pop times out with the lease it saw, and it looks again.
_DONE_MS: Final = 2000


# ------------------------------------------------------------------------------- scripts

# Every key of one cache key starts with its value key: the value, ``:lease``,
# ``:done:<token>`` and ``:gen``, the key's generation, which invalidate() and
# cache_clear() step (R11). A store names the generation it read when its execution
# began, and a script stores nothing when the generation has moved since. On a Redis
# Cluster the value key is ``prefix:name:{digest}``: the braces make the digest the
# hash tag of all those keys (R13), so each script below and a follower's BLMOVE touch
# one slot, while different cache keys of a function spread over every shard.

# Redis may hold what coalesce did not write there (a key of another type, a lease that
# is not a token or has no expiry, a generation that is not a number): each script
# starts with _CHECKED, whose helpers treat such a key as absent and repair it (delete
# it, or give a lease an expiry), and every script replies {found, ...}: ``found`` says
# what was repaired ("" if nothing), and the binding logs it. So a tampered key is a
# miss for that key only, never an error reply that would pass for an outage.
_CHECKED: Final = """
local found = {}
local function note(key, what) found[#found + 1] = key .. ' ' .. what end
local function get(key)
  local value = redis.pcall('GET', key)
  if type(value) == 'table' and value.err then
    note(key, 'held a ' .. redis.call('TYPE', key).ok .. ', not a string (deleted)')
    redis.call('DEL', key)
    return false
  end
  return value
end
local function lease(key, ms)
  local token = get(key)
  if token and (#token ~= 32 or token:find('[^0-9a-f]')) then
    note(key, 'held no coalesce lease token (deleted)')
    redis.call('DEL', key)
    return false
  end
  if token and redis.call('PTTL', key) == -1 then
    note(key, 'was a lease without expiry (given ' .. ms .. ' ms)')
    redis.call('PEXPIRE', key, ms)
  end
  return token
end
local function list(key)
  local kind = redis.call('TYPE', key).ok
  if kind ~= 'none' and kind ~= 'list' then
    note(key, 'held a ' .. kind .. ', not a list (deleted)')
    redis.call('DEL', key)
  end
end
local function reply(...) return {table.concat(found, '; '), ...} end
local function tell(channel, sender, key)
  if channel ~= '' then redis.call('PUBLISH', channel, sender .. ' ' .. key) end
end
"""

# KEYS: value, lease, generation. ARGV: token, lease ms, "1" to skip the value (it
# failed to verify, or is past its windows). Replies {1, value}, {2, generation}
# (this caller leads) or {3, leader's token, lease ms left, generation}.
_ACQUIRE: Final = (
    _CHECKED
    + """
if ARGV[3] == '0' then
  local value = get(KEYS[1])
  if value then return reply(1, value) end
end
local gen = get(KEYS[3]) or '0'
local token = lease(KEYS[2], ARGV[2])
if not token then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  return reply(2, gen)
end
return reply(3, token, redis.call('PTTL', KEYS[2]), gen)
"""
)

# KEYS: lease, generation, value. ARGV: token, lease ms, SHA-1 of the value the caller
# found stale. A background refresh takes the lease or does nothing (R10: one refresh
# in the fleet): the generation, or nil. A value other than the one found stale means
# another refresh has landed since: nothing to do.
_TRY_LEASE: Final = (
    _CHECKED
    + """
local value = get(KEYS[3])
if value and redis.sha1hex(value) ~= ARGV[3] then return reply(false) end
if lease(KEYS[1], ARGV[2]) then return reply(false) end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return reply(get(KEYS[2]) or '0')
"""
)

# KEYS: value, lease, done list, generation. ARGV: token, outcome, done-list ms, value
# ms (0: do not store the outcome), the generation read when the execution began, the
# copies channel and this process's sender id (R12: a stored value is told to the other
# processes, whose local copies of it go). Stores only if no invalidate() came since
# (R11); releases the lease only if ARGV[1] still holds it. Replies {stored, held}: 1 if
# it stored, 1 if it still held the lease.
_FINISH: Final = (
    _CHECKED
    + """
local stored = 0
if ARGV[4] ~= '0' and (get(KEYS[4]) or '0') == ARGV[5] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[4])
  tell(ARGV[6], ARGV[7], KEYS[1])
  stored = 1
end
list(KEYS[3])
redis.call('RPUSH', KEYS[3], ARGV[2])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
local held = 0
if get(KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
  held = 1
end
return reply(stored, held)
"""
)

# KEYS: value, generation. ARGV: payload, value ms, generation read at the start, the
# copies channel, the sender id. A value computed outside any lease (after
# wait_timeout), stored unless invalidated.
_PUT: Final = (
    _CHECKED
    + """
if (get(KEYS[2]) or '0') == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  tell(ARGV[4], ARGV[5], KEYS[1])
  return reply(1)
end
return reply(0)
"""
)

# KEYS: value, lease, generation. ARGV: generation ms, the copies channel ('': tell
# nobody, cache_clear() tells once at the end), the sender id. invalidate() (R11): the
# value and the lease go, and the generation steps, so no execution that began before
# stores; the other processes drop their local copies (R12). Replies 1 if a value was
# there. A generation that is not a number starts again at 1 (no execution read 1
# from it).
_DROP: Final = (
    _CHECKED
    + """
local had = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
get(KEYS[3])
local stepped = redis.pcall('INCR', KEYS[3])
if type(stepped) == 'table' and stepped.err then
  note(KEYS[3], 'held no generation number (set to 1)')
  redis.call('SET', KEYS[3], '1')
end
redis.call('PEXPIRE', KEYS[3], ARGV[1])
tell(ARGV[2], ARGV[3], KEYS[1])
return reply(had)
"""
)

# How long a key's generation outlives its last invalidate(): longer than any
# execution that could still try to store under the old one.
_GEN_MS: Final = 24 * 3600 * 1000


def _drop_commands(pipe: Any, keys: tuple[str, str, str]) -> None:
    """``_DROP`` as plain commands, for a cluster pipeline (which refuses scripts).

    The generation steps first: a leader finishing before it stored a value that the
    DELs then remove, one finishing after it stores nothing. A cache key's commands go
    to its slot's master in this order.
    """
    value, lease, gen = keys
    pipe.incr(gen)
    pipe.pexpire(gen, _GEN_MS)
    pipe.delete(value)
    pipe.delete(lease)


# KEYS: lease. ARGV: token, lease ms. Extends the lease only if ARGV[1] still holds it.
_EXTEND: Final = (
    _CHECKED
    + """
if get(KEYS[1]) == ARGV[1] then
  return reply(redis.call('PEXPIRE', KEYS[1], ARGV[2]))
end
return reply(0)
"""
)


# ------------------------------------------------------------------ steps of the protocol


class _Leasing:
    """A step about one cache key's lease: its value key, its lease key, this flight's token."""

    __slots__ = ("lease_key", "token", "value_key")

    def __init__(self, value_key: str, lease_key: str, token: str) -> None:
        self.value_key = value_key
        self.lease_key = lease_key
        self.token = token


class _Acquire(_Leasing):
    """Read the value, or take the lease, or learn who holds it (script ``_ACQUIRE``)."""

    __slots__ = ("skip_value",)

    def __init__(self, value_key: str, lease_key: str, token: str, skip_value: bool) -> None:
        super().__init__(value_key, lease_key, token)
        self.skip_value = skip_value


class _TryLease(_Leasing):
    """Take the lease for a background refresh, or learn that another holds it."""

    __slots__ = ("found",)

    def __init__(self, value_key: str, lease_key: str, token: str, found: str) -> None:
        super().__init__(value_key, lease_key, token)
        self.found = found  # SHA-1 of the payload found stale


class _Spawn:
    """Start a background refresh of ``key`` (R10) and go on at once."""

    __slots__ = ("found", "key", "old", "value_key")

    def __init__(self, key: Hashable, value_key: str, old: Any, found: str) -> None:
        self.key = key
        self.value_key = value_key
        self.old = old  # the value served meanwhile (kept for stale_if_error)
        self.found = found  # SHA-1 of its payload


class _Block:
    """Wait on a flight's list for its outcome: ``BLMOVE list list`` with a timeout."""

    __slots__ = ("done_key", "timeout")

    def __init__(self, done_key: str, timeout: float) -> None:
        self.done_key = done_key
        self.timeout = timeout


class _Discard:
    """Remove an unusable outcome from a flight's list (``LREM``)."""

    __slots__ = ("done_key", "item")

    def __init__(self, done_key: str, item: bytes) -> None:
        self.done_key = done_key
        self.item = item


class _Run:
    """Run ``compute()``; with a token, keep renewing the lease it holds meanwhile."""

    __slots__ = ("lease_key", "token")

    def __init__(self, lease_key: str, token: str | None) -> None:
        self.lease_key = lease_key
        self.token = token


class _Finish(_Leasing):
    """Publish a leader's outcome, store it for ``store_ms`` (0: not), release the lease."""

    __slots__ = ("done_key", "gen", "outcome", "store_ms")

    def __init__(
        self,
        value_key: str,
        lease_key: str,
        token: str,
        outcome: bytes,
        *,
        store_ms: int = 0,
        gen: bytes = b"0",
    ) -> None:
        super().__init__(value_key, lease_key, token)
        self.done_key = f"{value_key}:done:{token}"
        self.outcome = outcome
        self.store_ms = store_ms
        self.gen = gen


class _Store:
    """Store a value computed outside any lease (after ``wait_timeout``), unless invalidated."""

    __slots__ = ("gen", "payload", "store_ms", "value_key")

    def __init__(self, value_key: str, payload: bytes, store_ms: int, gen: bytes) -> None:
        self.value_key = value_key
        self.payload = payload
        self.store_ms = store_ms
        self.gen = gen


_Step = _Acquire | _TryLease | _Spawn | _Block | _Discard | _Run | _Finish | _Store
_Command = _Acquire | _TryLease | _Block | _Discard | _Finish | _Store  # one round trip

# What a value read from Redis is for this process's clock (R10): the same verdict in
# every process, since the store time and ttl travel with the value.
_FRESH: Final = 0
_EARLY: Final = 1  # fresh, but XFetch (F2) says refresh it now
_STALE: Final = 2  # past ttl, within stale: serve it, refresh behind it
_RESCUE: Final = 3  # past ttl and stale, within stale_if_error: only if recomputing fails
_GONE: Final = 4
_NONE: Final[Any] = object()  # no old value to fall back on


class _Copy:
    """How long a local copy of the value one call returns may serve it (R8): the
    seconds that value stays fresh, from when it was read or computed; 0 or less
    (stale, kept for no time, or not known): no copy."""

    __slots__ = ("fresh_for",)

    def __init__(self) -> None:
        self.fresh_for = 0.0


class _Ran:
    """What a ``_Run`` step sends back: the value, or the ``Exception`` it raised, and
    whether the lease's renewal found the lease lost meanwhile (it logged that)."""

    __slots__ = ("error", "lost", "value")

    def __init__(self, value: Any, error: Exception | None, lost: bool = False) -> None:
        self.value = value
        self.error = error
        self.lost = lost


# --------------------------------------------------------------------------- the backend


_PREFIX: Final = re.compile(r"[A-Za-z0-9_.:/@{}\-]+")
_URL_SCHEMES: Final = ("redis://", "rediss://", "unix://")
_REDIS_PY_SOCKET_TIMEOUT: Final = 5.0

# How long past a caller's wait_timeout Redis may take to answer one command: a pop
# that times out at the deadline, and the look that follows it (R4). Past it, Redis is
# taken for failing (R6) and the caller runs the function itself.
_GRACE: Final = 1.0


def _unanswered(bound: float, wait_timeout: float) -> RedisTimeoutError:
    return RedisTimeoutError(
        f"Redis did not answer within {bound:.2f}s (the caller's wait_timeout="
        f"{wait_timeout}s, plus {_GRACE}s for Redis to answer)"
    )


@final
class _Lines:
    """The backend's own connections for the commands of ``def`` calls (R4).

    Made as the client's pool makes its connections, but without retries, and every
    reply awaited no longer than the caller may still wait (``read_response(timeout=)``);
    a new one connects within that time too. So a stopped Redis, whatever the client's
    socket timeout and retries, holds a caller no longer than its ``wait_timeout`` (plus
    :data:`_GRACE`). A connection that failed is dropped; the others are reused.
    """

    __slots__ = ("_idle", "_kwargs", "_lock", "_make")

    def __init__(self, client: redis.Redis) -> None:
        pool = client.connection_pool
        self._make: Callable[..., Any] = pool.connection_class
        self._kwargs = {**pool.connection_kwargs, "retry": Retry(NoBackoff(), 0)}
        self._idle: list[Any] = []
        self._lock = threading.Lock()

    def call(self, command: tuple[Any, ...], bound: float) -> Any:
        """Send ``command`` and return its reply, raising a TimeoutError after ``bound``.

        A connection kept idle that Redis has closed meanwhile (a restart, its idle
        ``timeout``) is replaced once, at once: that is no outage.
        """
        with self._lock:
            line = self._idle.pop() if self._idle else None
        if line is not None:
            try:
                return self._send(line, command, bound)
            except RedisConnectionError:
                pass
        line = self._make(
            **{**self._kwargs, "socket_timeout": bound, "socket_connect_timeout": bound}
        )
        return self._send(line, command, bound)

    def _send(self, line: Any, command: tuple[Any, ...], bound: float) -> Any:
        try:
            line.send_command(*command)
            reply = line.read_response(timeout=bound)
        except ResponseError:
            self._keep(line)  # an error reply: the connection is fine
            raise
        except BaseException:
            line.disconnect()
            raise
        self._keep(line)
        return reply

    def script(
        self, script: Any, keys: tuple[Any, ...], args: tuple[Any, ...], bound: float
    ) -> Any:
        """``EVALSHA`` of a registered script, ``EVAL`` if Redis does not have it."""
        try:
            return self.call(("EVALSHA", script.sha, len(keys), *keys, *args), bound)
        except NoScriptError:
            return self.call(("EVAL", script.script, len(keys), *keys, *args), bound)

    def _keep(self, line: Any) -> None:
        with self._lock:
            self._idle.append(line)


@final
class RedisBackend:
    """Share one execution per key between processes through Redis (SPEC section 4).

    Pass it to ``@singleflight(ttl=..., backend=backend, name=...)``. The options are
    shared by every function that uses this backend; ``docs/redis.md`` tells the
    semantics and the failure modes.

    :param client: a ``redis.Redis`` or ``redis.cluster.RedisCluster`` (for ``def``
        functions), or a ``redis.asyncio.Redis`` or ``redis.asyncio.cluster.RedisCluster``
        (for ``async def`` functions), made with ``decode_responses=False`` (the
        default). On a cluster, keys are ``prefix:name:{digest}`` (R13).
    :param prefix: the first part of every key (``prefix:name:digest``).
    :param serializer: ``"pickle"``, ``"json"``, or any :class:`Serializer`.
    :param signing_key: bytes (16 or more): HMAC-sign every payload, and never
        deserialise one that fails verification (R7). Without it, unsigned pickle lets
        anyone who can write to that Redis run code in the process.
    :param lease_ttl: seconds a leader's lease lives unless renewed (R3); renewed every
        ``lease_ttl / 3`` while the function runs.
    :param wait_timeout: the longest a caller waits for a leader in another process,
        or for Redis to answer (plus a second), whatever the client's timeouts; past
        it, it runs the function itself (R4).
    :param local_ttl: seconds a value is also kept in the process, in front of Redis
        (R8); ``None``: not kept.
    :param on_backend_error: ``"local"``: a Redis failure runs the call in this process
        and logs a warning once per outage; ``"raise"``: raise the redis-py error (R6).
    :param outage_cooldown: after a Redis error, calls run locally without trying Redis
        for this many seconds, so an outage does not cost every call a connection
        attempt (with the client's retries); 0 tries Redis on every call.
    """

    __slots__ = (
        "__weakref__",
        "_codec",
        "_down",
        "_follower",
        "_lines",
        "_lock",
        "_max_block",
        "_raise",
        "_retry_at",
        "client",
        "is_async",
        "is_cluster",
        "lease_ttl",
        "local_ttl",
        "on_backend_error",
        "outage_cooldown",
        "prefix",
        "serializer",
        "signing_key",
        "wait_timeout",
    )

    def __init__(
        self,
        client: redis.Redis | redis.RedisCluster | redis.asyncio.Redis | redis.asyncio.RedisCluster,
        /,
        *,
        prefix: str = "coalesce",
        serializer: Literal["pickle", "json"] | Serializer = "pickle",
        signing_key: bytes | None = None,
        lease_ttl: float = 10.0,
        wait_timeout: float = 30.0,
        local_ttl: float | None = None,
        on_backend_error: OnBackendError = "local",
        outage_cooldown: float = 1.0,
    ) -> None:
        if isinstance(client, redis.asyncio.Redis | redis.asyncio.RedisCluster):
            self.is_async = True
        elif isinstance(client, redis.Redis | redis.RedisCluster):
            self.is_async = False
        else:
            raise TypeError(
                f"RedisBackend needs a redis.Redis or redis.cluster.RedisCluster (for def "
                f"functions), or a redis.asyncio.Redis or redis.asyncio.cluster.RedisCluster "
                f"(for async def functions), not {type(client).__name__}; make one with "
                "redis.Redis.from_url(url), or use RedisBackend.from_url(url)"
            )
        # On a Redis Cluster, every key of one cache key carries its digest as hash tag
        # (R13; see _Binding.redis_key).
        self.is_cluster = isinstance(client, redis.RedisCluster | redis.asyncio.RedisCluster)
        kwargs = client.get_connection_kwargs()
        if kwargs.get("decode_responses"):
            raise ValueError(
                "RedisBackend needs a client made with decode_responses=False (the default): "
                "payloads are bytes; give it a client of its own, e.g. redis.Redis.from_url(url)"
            )
        # A blocking pop must return before the client's socket timeout fires. A pool
        # made by from_url() leaves it out of its kwargs: then it is redis-py's default.
        socket_timeout = kwargs.get("socket_timeout", _REDIS_PY_SOCKET_TIMEOUT)
        self._max_block = (
            math.inf
            if not socket_timeout
            else max(float(socket_timeout) - 1.0, float(socket_timeout) / 2)
        )
        self.client = client

        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
        if not _PREFIX.fullmatch(prefix) or prefix.endswith(":"):
            raise ValueError(
                f"prefix must be a non-empty str of letters, digits and _ . : / @ {{ }} - "
                f"that does not end in ':' (coalesce adds the separator), not {prefix!r}"
            )
        if self.is_cluster and "{" in prefix:
            raise ValueError(
                f"prefix {prefix!r} has a '{{': on a Redis Cluster that would make a hash tag "
                "shared by many keys, putting their load on one shard; coalesce tags each "
                "cache key with its own digest (prefix:name:{digest}): drop the braces"
            )
        self.prefix = prefix

        self.serializer = serializer_for(serializer)
        self.signing_key = check_signing_key(signing_key)
        self._codec = Codec(self.serializer, self.signing_key, _log)

        self.lease_ttl = seconds("lease_ttl", lease_ttl, least=0.1)
        self.wait_timeout = seconds("wait_timeout", wait_timeout)
        self.local_ttl = (
            None if local_ttl is None else seconds("local_ttl", local_ttl, none_is_off=True)
        )
        if on_backend_error not in ("local", "raise"):
            raise ValueError(
                f"on_backend_error must be 'local' (run the call in this process) or "
                f"'raise', not {on_backend_error!r}"
            )
        self.on_backend_error = on_backend_error
        self._raise = on_backend_error == "raise"
        self.outage_cooldown = seconds("outage_cooldown", outage_cooldown, zero_is_off=True)

        # The copies channel (R12): every process publishes on it what it stores or
        # drops, and, with local_ttl, listens to it (see _Follower).
        follower = _Follower(client, f"{prefix}:__copies__", f"RedisBackend(prefix={prefix!r})")
        self._follower = follower
        weakref.finalize(self, follower.stop, 0.0)
        self._lock = threading.Lock()
        self._after_fork(forked=False)
        at_fork(self)

    def _after_fork(self, *, forked: bool = True) -> None:
        """A fresh lock in a forked child (S14): a parent's thread may have held it;
        connections of its own (the parent's are the parent's); and no local copy of
        the parent's until the child's own copies channel is up (R12)."""
        self._lock = threading.Lock()
        self._down = False
        self._retry_at = 0.0
        client = self.client
        self._lines = (
            _Lines(client)
            if isinstance(client, redis.Redis) and not isinstance(client, redis.RedisCluster)
            else None
        )
        if forked:
            self._follower.after_fork()

    def close(self) -> None:
        """Stop listening on the copies channel (R12): local copies are no longer kept.

        Calls still go through Redis. Close the client yourself. Waits at most 2 s for
        the listener thread to end.
        """
        follower = self._follower
        follower.stop()
        follower._went_down()

    def _follow(self, binding: _Binding) -> None:
        self._follower.add(binding)

    @classmethod
    def from_url(cls, url: str, *, async_client: bool = False, **options: Any) -> RedisBackend:
        """A backend with a new client for ``url``; ``async_client=True`` for ``async def``.

        :param url: ``redis://[:password@]host[:port][/db]``, ``rediss://...`` (TLS) or
            ``unix:///path/to/redis.sock``.
        :param async_client: make a ``redis.asyncio.Redis`` (for ``async def``
            functions) rather than a ``redis.Redis``.
        :param options: the keyword options of :class:`RedisBackend`.
        """
        if not isinstance(url, str):
            raise TypeError(f"url must be a str, not {type(url).__name__}")
        if not url.startswith(_URL_SCHEMES):
            raise ValueError(
                f"bad Redis URL {url!r}: expected redis://host:port/db, rediss://host:port/db "
                "or unix:///path/to/redis.sock"
            )
        factory = redis.asyncio.Redis.from_url if async_client else redis.Redis.from_url
        try:
            client = factory(url)
        except ValueError as exc:
            raise ValueError(f"bad Redis URL {url!r}: {exc}") from None
        return cls(client, **options)

    def __repr__(self) -> str:
        return (
            f"RedisBackend({type(self.client).__module__}.{type(self.client).__name__}, "
            f"prefix={self.prefix!r}, serializer={self.serializer!r}, "
            f"signed={self.signing_key is not None}, lease_ttl={self.lease_ttl}, "
            f"wait_timeout={self.wait_timeout}, local_ttl={self.local_ttl}, "
            f"on_backend_error={self.on_backend_error!r})"
        )

    def bind(
        self,
        func: Callable[..., Any],
        *,
        name: str,
        ttl: float | Callable[[Any], float],
        is_async: bool,
        fleet: Fleet | None = None,
    ) -> _SyncBinding | _AsyncBinding:
        """Prepare the backend for one decorated function (called once, when decorating).

        ``fleet`` carries the freshness options (R10); ``ttl`` may then be a callable
        ``(result) -> seconds``.
        """
        label = getattr(func, "__qualname__", None) or repr(func)
        if is_async != self.is_async:
            if is_async:
                raise TypeError(
                    f"{label} is an async def function, but this RedisBackend has a sync "
                    "redis.Redis client; give it a redis.asyncio.Redis "
                    "(redis.asyncio.Redis.from_url(url)) in a backend of its own"
                )
            raise TypeError(
                f"{label} is a def function, but this RedisBackend has a "
                "redis.asyncio.Redis client; give it a sync redis.Redis "
                "(redis.Redis.from_url(url)) in a backend of its own"
            )
        if not isinstance(name, str) or not name or any(c.isspace() for c in name):
            raise ValueError(
                f"name must be a non-empty str without whitespace (it is part of the "
                f"Redis key {self.prefix}:<name>:<digest>), not {name!r}"
            )
        if self.is_cluster and "{" in name:
            raise ValueError(
                f"name {name!r} of {label} has a '{{': on a Redis Cluster that would make a "
                "hash tag shared by the function's keys, putting its whole load on one "
                "shard; coalesce tags each cache key with its own digest "
                "(prefix:name:{digest}): pass a name= without braces"
            )
        binding = _AsyncBinding if is_async else _SyncBinding
        if callable(ttl):
            if fleet is None or fleet.ttl is not ttl:
                raise TypeError(
                    "a ttl callable needs fleet=coalesce.Fleet(ttl=...) too; "
                    "@singleflight(ttl=..., backend=...) passes both"
                )
            return binding(self, name, 0.0, fleet)
        return binding(self, name, seconds("ttl", ttl), fleet)

    # -- outages (R6)

    def _redis_usable(self) -> bool:
        """False during an outage's cooldown (only with on_backend_error='local')."""
        return not self._down or self._raise or time.monotonic() >= self._retry_at

    def _failed(self, exc: Exception, label: str, *, may_raise: bool = True) -> None:
        """Note a Redis error: log the first of an outage, or raise it if asked to.

        An error reply about one key's content (``WRONGTYPE``: a key coalesce did not
        write) is no outage: it is logged, and only that call runs in this process.
        """
        if _about_one_key(exc):
            _log.warning(
                "coalesce: Redis refused a command on a key of %s (%s: %s); this call "
                "runs in this process, other keys are unaffected",
                label,
                type(exc).__name__,
                exc,
            )
            return
        with self._lock:
            first = not self._down
            self._down = True
            self._retry_at = time.monotonic() + self.outage_cooldown
        if may_raise and self._raise:
            raise exc
        if first:
            _log.warning(
                "coalesce: Redis failed (%s: %s) in %s; %s",
                type(exc).__name__,
                exc,
                label,
                "raising it (on_backend_error='raise')"
                if self._raise
                else "calls run in this process until it answers again "
                "(on_backend_error='raise' to raise instead)",
            )

    def _answered(self) -> None:
        if self._down:
            with self._lock:
                was_down = self._down
                self._down = False
            if was_down:
                _log.info("coalesce: Redis answers again; calls are shared through it")


# ----------------------------------------------------- local copies that follow the fleet

# R12: with local_ttl=, every script that stores or drops a value publishes
# "<sender> <value key>" on the backend's copies channel, and cache_clear() publishes
# "<sender> *<prefix:name:>" once its keys are gone. Each process listens on that
# channel (one connection per backend, in a daemon thread, for sync and asyncio
# clients alike) and drops its copy of the key, or all of the function's. While the
# connection is down, no copy is served: the copies go when it breaks, none is kept
# until it is back, and an execution that read Redis meanwhile keeps nothing (the
# epoch it began in is gone). Classic PUBLISH reaches every node of a Redis Cluster.

_POLL: Final = 0.25  # the longest the listener waits before looking at its stop flag
# Silence is counted in polls, never read from a clock: freezegun and time-machine may
# hold the process's clocks still (S13), and the channel must not look down for it.
_PING_POLLS: Final = 4  # quiet polls (1 s) before the listener PINGs
_SILENT_POLLS: Final = 12  # quiet polls (3 s) without any reply: the channel is down
_SILENCE: Final = _SILENT_POLLS * _POLL
_BACKOFF: Final = (0.05, 2.0)  # the first and the longest wait before reconnecting
_LISTENER_NAME: Final = "coalesce-copies"
# The connection options a listener takes from the backend's client; the rest (retry,
# protocol, the client's own name, the maintenance notifications of RESP3) are its own.
_NOT_COPIED: Final = frozenset(
    {"retry", "protocol", "client_name", "redis_connect_func", "connection_class"}
)


def _connection_options(cls: type) -> set[str]:
    """The keyword options the ``__init__`` methods of ``cls`` and its bases name."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            names.update(inspect.signature(init).parameters)
        except (TypeError, ValueError):
            continue
    return names


class _Follower:
    """One backend's copies channel (R12): a listener thread and the state the calls read.

    ``up`` and ``epoch`` are read without a lock by every call that goes to Redis: a
    call keeps its copy only if the channel was up when it began and the epoch has not
    moved since (the epoch steps each time the channel goes down or comes up).
    """

    __slots__ = (
        "__weakref__",
        "_client",
        "_lock",
        "_outage",
        "_stop",
        "_thread",
        "_was_up",
        "bindings",
        "channel",
        "epoch",
        "heard",
        "label",
        "ready",
        "sender",
        "settled",
        "up",
    )

    def __init__(self, client: Any, channel: str, label: str) -> None:
        self._client = client
        self.channel = channel
        self.label = label
        self.bindings: dict[str, weakref.WeakSet[_Binding]] = {}
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self.heard = 0  # messages from other processes read (tests, benchmarks)
        self._outage = False  # logged as down, not yet back
        self._was_up = False
        self.up = False
        self.epoch = 0
        self.sender = secrets.token_hex(8)
        self.ready = threading.Event()  # set while the channel is up (tests, benchmarks)
        # Set once the first connection is up or has failed: a call that comes before
        # waits for that (once), so that a process keeps copies from its first call.
        self.settled = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def after_fork(self) -> None:
        """In a forked child: a new sender, no channel yet, and no copy of the parent's.

        The parent's connection is left alone (closing it here would cut the parent's):
        the child's listener opens its own on the next call through Redis.
        """
        self._lock = threading.Lock()
        epoch = self.epoch
        closed = self._stop.is_set()
        self._reset()
        self.epoch = epoch + 1
        if closed:
            self._stop.set()  # a closed backend stays closed
        for bindings in list(self.bindings.values()):
            for binding in list(bindings):
                binding._held = {}
                if binding._copies is not None:
                    binding._copies.after_fork()

    def add(self, binding: _Binding) -> None:
        with self._lock:
            self.bindings.setdefault(binding._head, weakref.WeakSet()).add(binding)
        self.start()

    def start(self) -> None:
        """Start the listener if it is not running (after a fork, on the next call)."""
        with self._lock:
            if self._thread is not None or self._stop.is_set():
                return
            thread = threading.Thread(
                target=self._run, args=(weakref.ref(self),), name=_LISTENER_NAME, daemon=True
            )
            self._thread = thread
        thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the listener and wait for it (at most ``timeout`` seconds)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # -- the listener thread

    @staticmethod
    def _run(ref: weakref.ref[_Follower]) -> None:
        """Listen until stopped, reconnecting with a bounded backoff. Holds the
        follower only weakly between rounds, so a backend nobody uses can go."""
        delay = _BACKOFF[0]
        while True:
            follower = ref()
            if follower is None or follower._stop.is_set():
                return
            stop = follower._stop
            follower._was_up = False
            try:
                follower._listen()
            except Exception as exc:
                follower.settled.set()
                if not follower._outage:
                    follower._outage = True
                    _log.warning(
                        "coalesce: the local-copies channel of %s is down (%s: %s); local "
                        "copies are not served until it is back (reconnecting)",
                        follower.label,
                        type(exc).__name__,
                        exc,
                    )
            if follower._was_up:
                delay = _BACKOFF[0]  # it was up a while: reconnect at once, then back off
            del follower
            if stop.wait(delay):
                return
            delay = min(delay * 2, _BACKOFF[1])

    def _connection(self) -> Any:
        """A new RESP2 connection of the listener's own, to the server (or a node)."""
        client = self._client
        if isinstance(client, redis.RedisCluster | redis.asyncio.RedisCluster):
            # Before its first command an asyncio cluster client knows only its
            # startup nodes; any node hears every PUBLISH.
            nodes = (
                client.get_primaries()
                or client.get_nodes()
                or list(client.nodes_manager.startup_nodes.values())
            )
            node = random.choice(nodes)
            if isinstance(client, redis.RedisCluster):
                pool = node.redis_connection.connection_pool
                cls, options = pool.connection_class, pool.connection_kwargs
            else:
                cls, options = node.connection_class, node.connection_kwargs
        else:
            pool = client.connection_pool
            cls, options = pool.connection_class, pool.connection_kwargs
        # The sync class of the same name for an asyncio client's connection class.
        sync_cls: type = redis.connection.Connection
        for klass in cls.__mro__:
            found = getattr(redis.connection, klass.__name__, None)
            if isinstance(found, type) and issubclass(found, redis.connection.AbstractConnection):
                sync_cls = found
                break
        accepted = _connection_options(sync_cls)
        kwargs = {
            k: v
            for k, v in options.items()
            if k in accepted and k not in _NOT_COPIED and not k.startswith(("maint_", "oss_"))
        }
        kwargs.update(
            protocol=2,  # pub/sub messages as plain replies, never RESP3 push frames
            client_name=_LISTENER_NAME,
            retry=Retry(NoBackoff(), 0),  # a lost connection is the listener's to notice
            socket_timeout=_SILENCE,
        )
        kwargs.setdefault("socket_connect_timeout", _SILENCE)
        return sync_cls(**kwargs)

    def _listen(self) -> None:
        conn = self._connection()
        try:
            conn.connect()
            conn.send_command("SUBSCRIBE", self.channel)
            reply = conn.read_response()
            if not (isinstance(reply, list) and reply and bytes(reply[0]) == b"subscribe"):
                raise ConnectionError(f"SUBSCRIBE {self.channel} replied {reply!r}")
            self._went_up()
            quiet = 0  # polls without a reply
            while not self._stop.is_set():
                if conn.can_read(timeout=_POLL):
                    reply = conn.read_response()
                    quiet = 0
                    if isinstance(reply, list) and reply and bytes(reply[0]) == b"message":
                        self._told(bytes(reply[2]))
                    continue
                quiet += 1
                if quiet > _SILENT_POLLS:
                    raise TimeoutError(f"no reply to PING in {_SILENCE:g}s")
                if quiet % _PING_POLLS == 0:
                    conn.send_command("PING")
        finally:
            self._went_down()
            conn.disconnect()

    def _each(self) -> list[_Binding]:
        with self._lock:
            return [b for bindings in self.bindings.values() for b in list(bindings)]

    def _went_up(self) -> None:
        """Subscribed: a new epoch, so that what was read before is not kept; then copies
        serve. (There is none to drop: going down dropped them, and a call that began
        while down keeps none.)"""
        self.epoch += 1
        self.up = True
        self._was_up = True
        self.ready.set()
        self.settled.set()
        if self._outage:
            self._outage = False
            _log.info("coalesce: the local-copies channel of %s is back", self.label)

    def _went_down(self) -> None:
        if not self.up:
            return
        self.up = False  # first: a call that reads the new epoch then sees it down
        self.ready.clear()
        self.epoch += 1
        for binding in self._each():
            binding._drop_copies()

    def _told(self, message: bytes) -> None:
        """One message: ``<sender> <value key>`` or ``<sender> *<prefix:name:>``."""
        sender, _, what = message.partition(b" ")
        if sender.decode("ascii", "replace") == self.sender:
            return  # this process did it: its own copies already follow
        self.heard += 1
        text = what.decode("utf-8", "replace")
        if text.startswith("*"):
            for binding in list(self.bindings.get(text[1:], ())):
                binding._drop_copies()
            return
        cut = len(text) - DIGEST_LEN - (1 if text.endswith("}") else 0)
        for binding in list(self.bindings.get(text[:cut], ())):
            binding._drop_copy(text)


def _about_one_key(exc: Exception) -> bool:
    """Whether ``exc`` is an error reply about one key's content, not Redis failing."""
    return isinstance(exc, ResponseError) and (
        "WRONGTYPE" in str(exc) or "not an integer" in str(exc)
    )


# --------------------------------------------------------------------------- the protocol


class _Binding:
    """One decorated function's view of the backend: key names, payloads, the protocol."""

    __slots__ = (
        "__weakref__",
        "_acquire",
        "_copies",
        "_drop",
        "_extend",
        "_finish",
        "_head",
        "_held",
        "_held_max",
        "_put",
        "_raised",
        "_refreshing",
        "_tail",
        "_tick",
        "_try",
        "backend",
        "codec",
        "fleet",
        "name",
        "tally",
        "ttl",
        "ttl_ms",
    )

    def __init__(
        self, backend: RedisBackend, name: str, ttl: float, fleet: Fleet | None = None
    ) -> None:
        self._tick: Callable[[], object] = _no_tick  # counts lease takeovers (O1)
        self.backend = backend
        self.codec = backend._codec
        self.name = name
        # What comes before and after a key's digest in its Redis key (R2, R13).
        tagged = backend.is_cluster
        self._head = f"{backend.prefix}:{name}:{'{' if tagged else ''}"
        self._tail = "}" if tagged else ""
        self.ttl = ttl
        self.ttl_ms = max(1, math.ceil(ttl * 1000))
        self.fleet = fleet if fleet is not None else Fleet(ttl=ttl)
        self.tally = self.fleet.tally if self.fleet.tally is not None else _NO_TALLY
        # Errors this process raised and kept in Redis (error_ttl=): the same object is
        # raised here again (F4); other processes raise a RemoteError.
        self._raised: dict[str, tuple[bytes, BaseException, TracebackType | None]] = {}
        # Keys whose background refresh this process is running (at most one each).
        self._refreshing: set[str] = set()
        # Local copies kept in step with the fleet (R12): set by follow(); the keys this
        # process went to Redis for, by value key, so a message can name the copy to drop.
        self._copies: Copies | None = None
        self._held: dict[str, Hashable] = {}
        self._held_max = _HELD_MIN
        client = backend.client
        self._acquire: Callable[..., Any] = client.register_script(_ACQUIRE)
        self._finish: Callable[..., Any] = client.register_script(_FINISH)
        self._extend: Callable[..., Any] = client.register_script(_EXTEND)
        self._try: Callable[..., Any] = client.register_script(_TRY_LEASE)
        self._put: Callable[..., Any] = client.register_script(_PUT)
        self._drop: Callable[..., Any] = client.register_script(_DROP)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.backend.prefix}:{self.name} ttl={self.ttl}>"

    # -- local copies that follow the fleet (R12)

    def follow(self, copies: Copies) -> None:
        """Drop this process's copies when another process invalidates, replaces or
        clears them, and keep none while the copies channel is down (``FollowsCopies``)."""
        self._copies = copies
        self.backend._follow(self)

    def _unsettled(self) -> threading.Event | None:
        """The event to wait on (at most ``_SILENCE`` s) before the first call reads
        Redis, while the channel's first connection is under way; else ``None``."""
        follower = self.backend._follower
        if follower._thread is None:
            follower.start()  # a forked child's first call
        return None if follower.settled.is_set() else follower.settled

    def _copy_epoch(self, key: Hashable) -> int:
        """Before a call goes to Redis: the epoch its copy may be kept in, or -1 (none)."""
        follower = self.backend._follower
        held = self._held
        held[self.redis_key(key)] = key
        if len(held) > self._held_max:
            self._prune_held()
        epoch = follower.epoch  # then up: see _Follower._went_down
        return epoch if follower.up else -1

    def _kept_for(self, copy: _Copy, epoch: int) -> float:
        """After it: how long its copy serves; none unless the channel stayed up all
        along (a message it may have missed, or one that comes before the copy is
        kept, drops the execution's copy: ``Copies.drop`` detaches it)."""
        return copy.fresh_for if self.backend._follower.epoch == epoch else 0.0

    def _prune_held(self) -> None:
        copies = self._copies
        if copies is not None:
            self._held = {v: k for v, k in list(self._held.items()) if copies.holds(k)}
        self._held_max = max(_HELD_MIN, 2 * len(self._held))

    def _drop_copy(self, vkey: str) -> None:
        """Another process stored or dropped ``vkey``: drop the copy of it here."""
        key = self._held.pop(vkey, _NONE)
        if key is not _NONE and self._copies is not None:
            self._copies.drop(key)

    def _drop_copies(self) -> None:
        """Drop every copy of this function here (a clear elsewhere, the channel lost)."""
        self._held = {}
        if self._copies is not None:
            self._copies.drop_all()

    def _telling(self, channel: bool = True) -> tuple[str, str]:
        """The copies channel and the sender id that scripts publish with (R12)."""
        follower = self.backend._follower
        return (follower.channel if channel else ""), follower.sender

    # -- keys (R2)

    def count_takeovers(self, tick: Callable[[], object]) -> None:
        """Call ``tick()`` each time a caller that waited on another process's leader
        takes the lease over (coalesce.CountsTakeovers, ``coalesce.lease.takeovers``)."""
        self._tick = tick

    def redis_key(self, key: Hashable) -> str:
        """The Redis key that holds the value for ``key``: ``prefix:name:digest``.

        On a Redis Cluster it is ``prefix:name:{digest}``: the digest is the hash tag of
        the value and of every key beside it (``:lease``, ``:done:<token>``, ``:gen``),
        so one call's scripts and blocking pop stay on one slot (R13).
        """
        digest = key_digest(key, name=self.name, store="Redis")
        return f"{self._head}{digest}{self._tail}"

    def _pattern(self) -> str:
        escaped = re.sub(r"([*?\[\]\\])", r"\\\1", self._head)
        return escaped + "?" * DIGEST_LEN + self._tail

    def _is_value_key(self, key: bytes | str) -> bool:
        text = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
        head = self._head
        tail = text[len(head) :]
        if self._tail:
            if not tail.endswith(self._tail):
                return False
            tail = tail[: -len(self._tail)]
        return (
            text.startswith(head)
            and len(tail) == DIGEST_LEN
            and all(c in "0123456789abcdef" for c in tail)
        )

    def _owner(self, key: bytes | str) -> str | None:
        """The value key that ``key`` (a value, a lease) belongs to, else ``None``."""
        text = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
        if text.endswith(":lease"):
            text = text[: -len(":lease")]
        return text if self._is_value_key(text) else None

    # -- payloads (R7)

    def _seal(self, vkey: str, kind: bytes, body: bytes) -> bytes:
        return self.codec.seal(vkey, kind, body)

    def _timed(
        self, vkey: str, value: Any, delta: float, copy: _Copy | None = None
    ) -> tuple[bytes, int]:
        """The payload of a value and how long Redis keeps it, in ms (0: not kept);
        ``copy`` learns how long it stays fresh.

        Raises what the serialiser raises.
        """
        ttl, keep = self._lifetime(value)
        body = timed_body(time.time(), ttl, delta, self.backend.serializer.dumps(value))
        store_ms = max(1, math.ceil((ttl + self.fleet.keep) * 1000)) if keep else 0
        if copy is not None:
            copy.fresh_for = ttl if keep else 0.0
        return self._seal(vkey, TIMED, body), store_ms

    def _lifetime(self, value: Any) -> tuple[float, bool]:
        """``(ttl, keep)`` of a value computed here: its ttl, and whether it is kept."""
        fleet = self.fleet
        lifetime = fleet.ttl
        ttl = (
            returned(f"the ttl callable of {self.name}()", lifetime(value))
            if callable(lifetime)
            else lifetime
        )
        return ttl, ttl > 0 and (fleet.cache_if is None or bool(fleet.cache_if(value)))

    def _judge(self, born: float, ttl: float, delta: float) -> int:
        """What a value stored at ``born`` (wall clock) is now, by this process's clock."""
        fleet = self.fleet
        age = time.time() - born
        if age < ttl:
            if fleet.early and delta > 0 and xfetch_gap(delta, fleet.early) >= ttl - age:
                return _EARLY
            return _FRESH
        if age < ttl + fleet.stale:
            return _STALE
        if age < ttl + fleet.stale_if_error:
            return _RESCUE
        return _GONE

    def _opened(
        self, vkey: str, payload: bytes, copy: _Copy | None = None
    ) -> tuple[bytes, Any, int]:
        """``(kind, value, verdict)`` of a payload; kind ``b""`` if it is unusable.

        For an :data:`ERROR` the value is the body. ``copy`` learns how long a value
        stays fresh (by its store time and ttl, R8).
        """
        opened = self.codec.open(vkey, payload)
        if opened is None:
            return b"", None, _GONE
        kind, body = opened
        if kind == TIMED:
            timed = open_timed(body)
            if timed is None:
                _log.warning("coalesce: %s holds a malformed value; ignoring it", vkey)
                return b"", None, _GONE
            born, ttl, delta, data = timed
            if copy is not None:
                copy.fresh_for = born + ttl - time.time()
            found, value = self.codec.load(vkey, data)
            return (TIMED, value, self._judge(born, ttl, delta)) if found else (b"", None, _GONE)
        if kind == VALUE:
            found, value = self.codec.load(vkey, body)
            return (VALUE, value, _FRESH) if found else (b"", None, _GONE)
        return kind, body, _FRESH

    def _kept_error(self, vkey: str, payload: bytes, body: bytes) -> BaseException:
        """A kept error (error_ttl=, F4): the same object where it was raised, else remote."""
        raised = self._raised.get(vkey)
        if raised is not None and raised[0] == payload:
            return raised[1].with_traceback(raised[2])
        return remote_error(body)

    def _keep_raised(self, vkey: str, payload: bytes, error: BaseException) -> None:
        raised = self._raised
        raised.pop(vkey, None)
        raised[vkey] = (payload, error, error.__traceback__)
        while len(raised) > _RAISED_MAX:
            del raised[next(iter(raised))]

    def _rescued(self, error: BaseException) -> None:
        self.tally.failed()
        _log.warning(
            "coalesce: %s() failed (%s: %s); serving its previous result (stale_if_error)",
            self.name,
            type(error).__name__,
            error,
        )

    # -- the protocol, I/O-free: it yields steps and the drivers carry them out

    def flight(self, key: Hashable, copy: _Copy | None = None) -> Generator[_Step, Any, Any]:
        """One call for ``key``: return its value or raise, one step at a time.

        ``copy`` learns how long the value returned stays fresh (R8): what its ttl has
        left when read from Redis or from another process's leader, its ttl when
        computed here, nothing when it is stale or served instead of a failure.
        """
        vkey = self.redis_key(key)
        lkey = f"{vkey}:lease"
        backend = self.backend
        tally = self.tally
        if not backend._redis_usable():
            return (yield from self._local(vkey, lkey, None, copy))
        token = secrets.token_hex(16)
        deadline = time.monotonic() + backend.wait_timeout
        skip_value = False
        rescue: Any = _NONE  # an old value, served if recomputing fails (stale_if_error)
        waited = False  # on a leader in another process: leading after that is a takeover
        while True:
            try:
                reply = yield _Acquire(vkey, lkey, token, skip_value)
            except _FAILURES as exc:
                backend._failed(exc, self.name)
                return (yield from self._local(vkey, lkey, None, copy))
            backend._answered()
            skip_value = False
            state = int(reply[0])
            if state == 1:  # a value is there: judge it by its store time (R10)
                payload = bytes(reply[1])
                kind, value, verdict = self._opened(vkey, payload, copy)
                if kind == ERROR and time.time() < error_kept_until(value):  # error_ttl (F4)
                    tally.hit()
                    tally.kept()
                    raise self._kept_error(vkey, payload, value)
                if kind in (VALUE, TIMED):
                    if verdict == _FRESH:
                        tally.hit()
                        return value
                    if verdict in (_EARLY, _STALE):
                        tally.hit()
                        if verdict == _STALE:
                            tally.stale()
                        yield _Spawn(key, vkey, value, hashlib.sha1(payload).hexdigest())
                        return value
                    if verdict == _RESCUE:
                        rescue = value
                # A miss: the next round takes the lease (or follows) and replaces it.
                skip_value = True
                continue
            if state == 2:  # this caller leads
                if waited:
                    self._tick()  # the leader it waited on died or gave up (R4)
                gen = bytes(reply[1])
                return (
                    yield from self._lead(
                        vkey, lkey, token, gen, rescue, background=False, copy=copy
                    )
                )
            waited = True
            # Another process leads: wait for its outcome on the flight's own list, no
            # longer than its lease has left (it may have died) or our deadline.
            leader = bytes(reply[1]).decode("ascii")
            left = deadline - time.monotonic()
            if left <= 0:
                _log.warning(
                    "coalesce: %s%s waited wait_timeout=%ss for its leader in another "
                    "process; running it here (duplicate work rather than a failure)",
                    self.name,
                    reprlib.repr(key),
                    backend.wait_timeout,
                )
                return (yield from self._local(vkey, lkey, bytes(reply[3]), copy))
            lease_ms = int(reply[2])
            if lease_ms < 0:  # a lease without expiry was not set by coalesce: bound the wait
                lease_ms = self._lease_ms()
            block = min(left, lease_ms / 1000 + 0.002, backend._max_block)
            done_key = f"{vkey}:done:{leader}"
            try:
                item = yield _Block(done_key, max(block, 0.001))
            except _FAILURES as exc:
                backend._failed(exc, self.name)
                return (yield from self._local(vkey, lkey, None, copy))
            if item is None:
                continue  # the lease ran out, or was renewed: look again
            kind, value, _verdict = self._opened(vkey, bytes(item), copy)
            if kind in (VALUE, TIMED):
                tally.waited()
                return value
            if kind == ERROR:
                tally.waited()
                error = remote_error(value)
                if rescue is not _NONE:
                    self._rescued(error)
                    return rescue
                raise error
            if kind == LOCAL:
                return (yield from self._local(vkey, lkey, None, copy))
            if kind == RETRY:
                continue  # the leader aborted and freed its lease: look again
            # Not usable (forged, or unreadable): remove it, or every pop would return it
            # at once; then look again.
            try:
                yield _Discard(done_key, bytes(item))
            except _FAILURES as exc:
                backend._failed(exc, self.name)
                return (yield from self._local(vkey, lkey, None, copy))

    def refresh(self, key: Hashable, old: Any, found: str) -> Generator[_Step, Any, None]:
        """A background refresh (R10): take the key's lease, or leave it to its holder."""
        vkey = self.redis_key(key)
        lkey = f"{vkey}:lease"
        token = secrets.token_hex(16)
        try:
            gen = yield _TryLease(vkey, lkey, token, found)
        except _FAILURES as exc:
            self.backend._failed(exc, self.name, may_raise=False)
            return
        if gen is None:
            return  # another process (or thread) refreshes it: one in the fleet
        self.tally.refreshed()
        rescue = old if self.fleet.stale_if_error else _NONE
        yield from self._lead(vkey, lkey, token, bytes(gen), rescue, background=True)

    def _lead(
        self,
        vkey: str,
        lkey: str,
        token: str,
        gen: bytes,
        rescue: Any,
        *,
        background: bool,
        copy: _Copy | None = None,
    ) -> Generator[_Step, Any, Any]:
        backend = self.backend
        started = time.monotonic()
        try:
            ran: _Ran = yield _Run(lkey, token)
        except BaseException:
            # KeyboardInterrupt, SystemExit, cancellation: free the lease and tell the
            # followers to look again, so that one of them leads at once.
            try:
                yield _Finish(vkey, lkey, token, self._seal(vkey, RETRY, b""))
            except _FAILURES as exc:
                backend._failed(exc, self.name, may_raise=False)
            raise
        delta = time.monotonic() - started
        if ran.error is not None:
            error = ran.error
            # Kept for error_ttl (F4) only when it answers callers: not a background
            # refresh's, and not one that stale_if_error covers with the old value.
            keep = bool(self.fleet.error_ttl) and not background and rescue is _NONE
            body = (
                kept_error_body(error, time.time(), self.fleet.error_ttl)
                if keep
                else error_body(error)
            )
            sealed = self._seal(vkey, ERROR, body)
            store_ms = max(1, math.ceil(self.fleet.error_ttl * 1000)) if keep else 0
            try:
                finished = yield _Finish(vkey, lkey, token, sealed, store_ms=store_ms, gen=gen)
            except _FAILURES as exc:
                backend._failed(exc, self.name, may_raise=False)
            else:
                self._check_held(finished, ran)
            if rescue is not _NONE:
                self._rescued(error)
                return rescue
            if background:
                self.tally.failed()
                _log.warning(
                    "coalesce: background refresh of %s() failed (%s: %s); the stored "
                    "result stays until it expires",
                    self.name,
                    type(error).__name__,
                    error,
                )
                return None
            if keep:
                self._keep_raised(vkey, sealed, error)
            raise error
        value = ran.value
        try:
            payload, store_ms = self._timed(vkey, value, delta, copy)
        except Exception as exc:
            _log.warning(
                "coalesce: the result of %s could not be serialised with %r (%s: %s); it is "
                "returned here but not shared, and callers in other processes run it "
                "themselves; choose another serializer= or return a serialisable value",
                self.name,
                backend.serializer,
                type(exc).__name__,
                exc,
            )
            try:
                yield _Finish(vkey, lkey, token, self._seal(vkey, LOCAL, b""))
            except _FAILURES as redis_exc:
                backend._failed(redis_exc, self.name, may_raise=False)
            return value
        try:
            finished = yield _Finish(vkey, lkey, token, payload, store_ms=store_ms, gen=gen)
        except _FAILURES as exc:
            backend._failed(exc, self.name)
        else:
            self._check_held(finished, ran)
        return value

    def _local(
        self, vkey: str, lkey: str, gen: bytes | None, copy: _Copy | None = None
    ) -> Generator[_Step, Any, Any]:
        """Run the function in this process, outside any lease; store it under ``gen``."""
        started = time.monotonic()
        ran: _Ran = yield _Run(lkey, None)
        if ran.error is not None:
            raise ran.error
        if gen is None and copy is not None:
            try:
                ttl, keep = self._lifetime(ran.value)
            except Exception:
                return ran.value  # no copy: the caller still gets its value
            copy.fresh_for = ttl if keep else 0.0
        if gen is not None:
            try:
                payload, store_ms = self._timed(vkey, ran.value, time.monotonic() - started, copy)
            except Exception:
                return ran.value  # nothing to share; the caller still gets its value
            if store_ms:
                try:
                    yield _Store(vkey, payload, store_ms, gen)
                except _FAILURES as exc:
                    self.backend._failed(exc, self.name, may_raise=False)
        return ran.value

    # -- what the drivers share

    def _lease_ms(self) -> int:
        return max(1, math.ceil(self.backend.lease_ttl * 1000))

    def _request(
        self, step: _Command
    ) -> tuple[Callable[..., Any] | None, tuple[Any, ...], tuple[Any, ...]]:
        """What a driver sends for ``step``: ``(script, keys, args)``, or
        ``(None, command, ())`` for a plain command."""
        vkey = step.value_key if not isinstance(step, (_Block, _Discard)) else ""
        keys: tuple[str, ...]
        if isinstance(step, _Acquire):
            keys = (vkey, step.lease_key, f"{vkey}:gen")
            return self._acquire, keys, (step.token, self._lease_ms(), int(step.skip_value))
        if isinstance(step, _Block):
            done = step.done_key
            return None, ("BLMOVE", done, done, "RIGHT", "LEFT", step.timeout), ()
        if isinstance(step, _Finish):
            keys = (vkey, step.lease_key, step.done_key, f"{vkey}:gen")
            args = (
                step.token,
                step.outcome,
                min(self._lease_ms(), _DONE_MS),
                step.store_ms,
                step.gen,
                *self._telling(),
            )
            return self._finish, keys, args
        if isinstance(step, _Discard):
            return None, ("LREM", step.done_key, 1, step.item), ()
        if isinstance(step, _TryLease):
            keys = (step.lease_key, f"{vkey}:gen", vkey)
            return self._try, keys, (step.token, self._lease_ms(), step.found)
        told = (step.payload, step.store_ms, step.gen, *self._telling())
        return self._put, (vkey, f"{vkey}:gen"), told

    def _answer(self, step: _Command, reply: Any) -> Any:
        """A script's reply for ``step``: the list after ``found`` for ``_Acquire`` and
        ``_Finish``, else its one value."""
        rest = self._checked(reply)
        return rest if isinstance(step, (_Acquire, _Finish)) else rest[0]

    def _checked(self, reply: Any) -> list[Any]:
        """A script's reply without its first element, ``found``, logged if not empty:
        what the script repaired (see ``_CHECKED``)."""
        found = bytes(reply[0])
        if found:
            _log.warning(
                "coalesce: Redis held keys of %s that coalesce did not write there: %s; "
                "treated as a miss for that key and repaired",
                self.name,
                found.decode("utf-8", "backslashreplace"),
            )
        return list(reply[1:])

    @property
    def _quiet_drop(self) -> tuple[Any, ...]:
        """``_DROP``'s args in a cache_clear(), which tells once at the end (R12)."""
        return (_GEN_MS, *self._telling(channel=False))

    def _cleared(self) -> tuple[str, str]:
        """The copies channel and the message a cache_clear() ends with (R12)."""
        channel, sender = self._telling()
        return channel, f"{sender} *{self._head}"

    def _drop_keys(self, vkey: str) -> tuple[str, str, str]:
        return vkey, f"{vkey}:lease", f"{vkey}:gen"

    def _spawning(self, step: _Spawn) -> bool:
        """Whether to start the refresh ``step`` asks for (one per key per process)."""
        if step.value_key in self._refreshing:
            return False
        self._refreshing.add(step.value_key)
        self.tally.running()  # until _done_refreshing: in cache_info().in_flight
        return True

    def _done_refreshing(self, step: _Spawn) -> None:
        self._refreshing.discard(step.value_key)
        self.tally.settled()

    def _lost_lease(self, when: str = "while running") -> None:
        _log.warning(
            "coalesce: %s lost its lease %s (a pause longer than lease_ttl=%ss?); "
            "another process may run it at the same time",
            self.name,
            when,
            self.backend.lease_ttl,
        )

    def _check_held(self, finished: list[Any], ran: _Ran) -> None:
        """Log a lease the final store found lost (``FINISH`` replies ``[stored, held]``),
        unless its renewal already did."""
        if not int(finished[1]) and not ran.lost:
            self._lost_lease("before storing its outcome (another token or none held it)")


class _NoTally:
    """Counts nothing: a binding made outside ``@singleflight``."""

    __slots__ = ()

    def _ignore(self) -> None:
        pass

    hit = stale = waited = refreshed = failed = kept = running = settled = _ignore


_NO_TALLY: Final = _NoTally()
_RAISED_MAX: Final = 1024
_HELD_MIN: Final = 1024  # value keys remembered (R12) before pruning those without a copy


@final
class _SyncBinding(_Binding):
    """The driver for ``def`` functions and ``redis.Redis``."""

    __slots__ = (
        "_execute",
        "client",
    )

    def __init__(
        self, backend: RedisBackend, name: str, ttl: float, fleet: Fleet | None = None
    ) -> None:
        super().__init__(backend, name, ttl, fleet)
        client = cast(redis.Redis, backend.client)
        self.client = client
        # redis-py types BLMOVE's timeout as int and LREM's value as str; Redis takes
        # seconds with decimals and any bytes.
        self._execute: Callable[..., Any] = client.execute_command

    def call(self, key: Hashable, compute: Callable[[], R]) -> R:
        """The value for ``key``: from Redis, from a leader elsewhere, or computed here."""
        return cast(R, self._drive(self.flight(key), compute))

    def call_fresh(self, key: Hashable, compute: Callable[[], R]) -> tuple[R, float]:
        """``call()``, and the seconds its value stays fresh (coalesce.DatesValues, R8);
        0 while the copies channel is down (R12)."""
        copy = _Copy()
        if self._copies is None:
            return cast(R, self._drive(self.flight(key, copy), compute)), copy.fresh_for
        unsettled = self._unsettled()
        if unsettled is not None:
            unsettled.wait(_SILENCE)
        epoch = self._copy_epoch(key)
        value = cast(R, self._drive(self.flight(key, copy), compute))
        return value, self._kept_for(copy, epoch)

    def _drive(self, steps: Generator[_Step, Any, Any], compute: Callable[[], Any]) -> Any:
        sent: Any = None
        error: BaseException | None = None
        # Until when this caller waits on Redis (R4); a run here starts a new wait.
        wait_timeout = self.backend.wait_timeout
        until = time.monotonic() + wait_timeout
        while True:
            try:
                step = steps.send(sent) if error is None else steps.throw(error)
            except StopIteration as stop:
                return stop.value
            sent = error = None
            try:
                sent = self._perform(step, compute, until)
            except BaseException as exc:
                error = exc
            if isinstance(step, _Run):
                until = time.monotonic() + wait_timeout

    def _perform(self, step: _Step, compute: Callable[[], Any], until: float = math.inf) -> Any:
        if isinstance(step, _Run):
            return self._run(step, compute)
        if isinstance(step, _Spawn):
            if self._spawning(step):
                threading.Thread(
                    target=self._background,
                    args=(step, compute),
                    name=f"coalesce-refresh:{self.name}",
                    daemon=True,
                ).start()
            return None
        return self._command(step, until)

    def _background(self, step: _Spawn, compute: Callable[[], Any]) -> None:
        try:
            self._drive(self.refresh(step.key, step.old, step.found), compute)
        except Exception as exc:  # a refresh answers nobody: log what escaped it
            _log.warning("coalesce: background refresh of %s() failed: %r", self.name, exc)
        finally:
            self._done_refreshing(step)

    def _run(self, step: _Run, compute: Callable[[], Any]) -> _Ran:
        if step.token is None:
            try:
                return _Ran(compute(), None)
            except Exception as exc:
                return _Ran(None, exc)
        stop = threading.Event()
        lost = threading.Event()
        renewer = threading.Thread(
            target=self._renew,
            args=(step.lease_key, step.token, stop, lost),
            name=f"coalesce-lease:{self.name}",
            daemon=True,
        )
        renewer.start()
        try:
            return _Ran(compute(), None, lost.is_set())
        except Exception as exc:
            return _Ran(None, exc, lost.is_set())
        finally:
            stop.set()

    def _command(self, step: _Command, until: float = math.inf) -> Any:
        script, keys, args = self._request(step)
        lines = self.backend._lines
        if lines is None:  # a cluster: the client routes, with its own timeouts
            if script is None:
                return self._execute(*keys)
            return self._answer(step, script(keys=keys, args=args))
        bound = max(until - time.monotonic(), 0.0) + _GRACE
        try:
            if script is None:
                return lines.call(keys, bound)
            return self._answer(step, lines.script(script, keys, args, bound))
        except RedisTimeoutError:
            raise _unanswered(bound, self.backend.wait_timeout) from None

    def _renew(
        self, lease_key: str, token: str, stop: threading.Event, lost: threading.Event
    ) -> None:
        interval = self.backend.lease_ttl / 3
        while not stop.wait(interval):
            try:
                held = self._checked(
                    self._extend(keys=(lease_key,), args=(token, self._lease_ms()))
                )[0]
            except _FAILURES as exc:
                self.backend._failed(exc, self.name, may_raise=False)
                continue
            if not held:
                if not stop.is_set():
                    lost.set()
                    self._lost_lease()
                return

    def invalidate(self, key: Hashable) -> bool:
        """Delete the value and the lease of ``key`` in Redis (R11); ``True`` if a value was."""
        vkey = self.redis_key(key)
        try:
            reply = self._drop(keys=self._drop_keys(vkey), args=(_GEN_MS, *self._telling()))
            return bool(self._checked(reply)[0])
        except _FAILURES as exc:
            self.backend._failed(exc, self.name)
            return False

    def clear(self) -> None:
        """Delete every value and lease of this function in Redis (``SCAN``, never ``KEYS``)."""
        try:
            batch: list[str] = []
            for found in self.client.scan_iter(match=self._pattern() + "*", count=500):
                vkey = self._owner(found)
                if vkey is not None:
                    batch.append(vkey)
                    if len(batch) >= 500:
                        self._drop_all(batch)
            self._drop_all(batch)
            self.client.publish(*self._cleared())
        except _FAILURES as exc:
            self.backend._failed(exc, self.name)

    def _drop_all(self, batch: list[str]) -> None:
        if not batch:
            return
        pipe = self.client.pipeline(transaction=False)
        for vkey in dict.fromkeys(batch):
            if self.backend.is_cluster:
                _drop_commands(pipe, self._drop_keys(vkey))
            else:
                self._drop(keys=self._drop_keys(vkey), args=self._quiet_drop, client=pipe)
        replies = pipe.execute()
        if not self.backend.is_cluster:  # the scripts' replies, with what they repaired
            for reply in replies:
                self._checked(reply)
        batch.clear()


@final
class _AsyncBinding(_Binding):
    """The driver for ``async def`` functions and ``redis.asyncio.Redis``."""

    __slots__ = (
        "_execute",
        "_tasks",
        "client",
    )

    def __init__(
        self, backend: RedisBackend, name: str, ttl: float, fleet: Fleet | None = None
    ) -> None:
        super().__init__(backend, name, ttl, fleet)
        client = cast(redis.asyncio.Redis, backend.client)
        self.client = client
        self._execute = cast(Callable[..., Awaitable[Any]], client.execute_command)
        self._tasks: set[asyncio.Task[None]] = set()  # background refreshes, kept alive

    async def acall(self, key: Hashable, compute: Callable[[], Awaitable[R]]) -> R:
        """The value for ``key``: from Redis, from a leader elsewhere, or computed here."""
        return cast(R, await self._drive(self.flight(key), compute))

    async def acall_fresh(
        self, key: Hashable, compute: Callable[[], Awaitable[R]]
    ) -> tuple[R, float]:
        """``acall()``, and the seconds its value stays fresh (coalesce.DatesValues, R8);
        0 while the copies channel is down (R12)."""
        copy = _Copy()
        if self._copies is None:
            return cast(R, await self._drive(self.flight(key, copy), compute)), copy.fresh_for
        unsettled = self._unsettled()
        if unsettled is not None:
            await asyncio.to_thread(unsettled.wait, _SILENCE)
        epoch = self._copy_epoch(key)
        value = cast(R, await self._drive(self.flight(key, copy), compute))
        return value, self._kept_for(copy, epoch)

    async def _drive(
        self, steps: Generator[_Step, Any, Any], compute: Callable[[], Awaitable[Any]]
    ) -> Any:
        sent: Any = None
        error: BaseException | None = None
        # Until when this caller waits on Redis (R4); a run here starts a new wait.
        wait_timeout = self.backend.wait_timeout
        until = time.monotonic() + wait_timeout
        while True:
            try:
                step = steps.send(sent) if error is None else steps.throw(error)
            except StopIteration as stop:
                return stop.value
            sent = error = None
            try:
                sent = await self._perform(step, compute, until)
            except BaseException as exc:
                error = exc
            if isinstance(step, _Run):
                until = time.monotonic() + wait_timeout

    async def _perform(
        self, step: _Step, compute: Callable[[], Awaitable[Any]], until: float = math.inf
    ) -> Any:
        if isinstance(step, _Run):
            return await self._run(step, compute)
        if isinstance(step, _Spawn):
            if self._spawning(step):
                task = asyncio.get_running_loop().create_task(
                    self._background(step, compute),
                    name=f"coalesce-refresh:{self.name}",
                )
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            return None
        bound = max(until - time.monotonic(), 0.0) + _GRACE
        try:
            async with asyncio.timeout(bound):  # whatever the client's timeouts (R4)
                return await self._command(step)
        except TimeoutError as exc:
            if isinstance(exc, RedisError):
                raise
            raise _unanswered(bound, self.backend.wait_timeout) from None
        except RuntimeError as exc:
            if "loop" not in str(exc):
                raise
            raise RuntimeError(
                f"{self.name}: the redis.asyncio client of this RedisBackend was used in "
                f"another event loop ({exc}). A redis-py asyncio client belongs to one loop "
                "at a time: close it with `await backend.client.aclose()` before that loop "
                "ends (then the next loop can use it), or give each loop a backend of its own"
            ) from exc

    async def _background(self, step: _Spawn, compute: Callable[[], Awaitable[Any]]) -> None:
        try:
            await self._drive(self.refresh(step.key, step.old, step.found), compute)
        except Exception as exc:  # a refresh answers nobody: log what escaped it
            _log.warning("coalesce: background refresh of %s() failed: %r", self.name, exc)
        finally:
            self._done_refreshing(step)

    async def _run(self, step: _Run, compute: Callable[[], Awaitable[Any]]) -> _Ran:
        if step.token is None:
            try:
                return _Ran(await compute(), None)
            except Exception as exc:
                return _Ran(None, exc)
        renewer = asyncio.get_running_loop().create_task(
            self._renew(step.lease_key, step.token), name=f"coalesce-lease:{self.name}"
        )
        try:
            value = await compute()
        except Exception as exc:
            return _Ran(None, exc, self._renewer_lost(renewer))
        finally:
            renewer.cancel()
        return _Ran(value, None, self._renewer_lost(renewer))

    @staticmethod
    def _renewer_lost(renewer: asyncio.Task[bool]) -> bool:
        """Whether the renewal ended because the lease was lost (it logged that)."""
        return renewer.done() and not renewer.cancelled() and renewer.result()

    async def _command(self, step: _Command) -> Any:
        script, keys, args = self._request(step)
        if script is None:
            return await self._execute(*keys)
        return self._answer(step, await script(keys=keys, args=args))

    async def _renew(self, lease_key: str, token: str) -> bool:
        interval = self.backend.lease_ttl / 3
        while True:
            await asyncio.sleep(interval)
            try:
                held = self._checked(
                    await self._extend(keys=(lease_key,), args=(token, self._lease_ms()))
                )[0]
            except _FAILURES as exc:
                self.backend._failed(exc, self.name, may_raise=False)
                continue
            if not held:
                self._lost_lease()
                return True

    async def ainvalidate(self, key: Hashable) -> bool:
        """Delete the value and the lease of ``key`` in Redis (R11); ``True`` if a value was."""
        vkey = self.redis_key(key)
        try:
            reply = await self._drop(keys=self._drop_keys(vkey), args=(_GEN_MS, *self._telling()))
            return bool(self._checked(reply)[0])
        except _FAILURES as exc:
            self.backend._failed(exc, self.name)
            return False

    async def aclear(self) -> None:
        """Delete every value and lease of this function in Redis (``SCAN``, never ``KEYS``)."""
        try:
            batch: list[str] = []
            async for found in self.client.scan_iter(match=self._pattern() + "*", count=500):
                vkey = self._owner(found)
                if vkey is not None:
                    batch.append(vkey)
                    if len(batch) >= 500:
                        await self._drop_all(batch)
            await self._drop_all(batch)
            await self.client.publish(*self._cleared())
        except _FAILURES as exc:
            self.backend._failed(exc, self.name)

    async def _drop_all(self, batch: list[str]) -> None:
        if not batch:
            return
        pipe = self.client.pipeline(transaction=False)
        for vkey in dict.fromkeys(batch):
            if self.backend.is_cluster:
                _drop_commands(pipe, self._drop_keys(vkey))
            else:
                await self._drop(keys=self._drop_keys(vkey), args=self._quiet_drop, client=pipe)
        replies = await pipe.execute()
        if not self.backend.is_cluster:  # the scripts' replies, with what they repaired
            for reply in replies:
                self._checked(reply)
        batch.clear()
