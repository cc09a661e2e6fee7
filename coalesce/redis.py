"""Past one process: coordinate ``@singleflight`` through Redis (SPEC section 4, R1-R9).

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

The protocol is written once, as a generator that yields what to do next
(``_Acquire``, ``_Block``, ``_Discard``, ``_Run``, ``_Finish``, ``_Store``); the sync driver
(``redis.Redis``) and the asyncio driver (``redis.asyncio.Redis``) only carry those
steps out. See ``docs/redis.md`` for the semantics and failure modes.

``RedisBackend`` implements the ``Backend`` protocol of ``_backend.py``; what is not
Redis (serialisers, key digests, sealed payloads) comes from ``_payload.py``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import reprlib
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Generator, Hashable
from typing import Any, Final, Literal, TypeVar, cast, final

import redis
import redis.asyncio
from redis.exceptions import RedisError

from coalesce._fork import at_fork
from coalesce._payload import (
    DIGEST_LEN,
    ERROR,
    LOCAL,
    RETRY,
    VALUE,
    Codec,
    Serializer,
    check_signing_key,
    error_body,
    key_digest,
    remote_error,
    serializer_for,
)
from coalesce._seconds import seconds

__all__ = ("RedisBackend", "Serializer")

R = TypeVar("R")

_log: Final = logging.getLogger("coalesce.redis")

OnBackendError = Literal["local", "raise"]


# How long a flight's outcome list outlives the flight. Followers already waiting are
# served the moment it is pushed; this only covers one that read the leader's token
# just before the push and has yet to send its pop. One that comes later still finds
# the value: its pop times out with the lease it saw, and it looks again.
_DONE_MS: Final = 2000


# ------------------------------------------------------------------------------- scripts

# KEYS: value, lease. ARGV: token, lease ms, "1" to skip the value (it failed to verify).
_ACQUIRE: Final = """
if ARGV[3] == '0' then
  local value = redis.call('GET', KEYS[1])
  if value then return {1, value} end
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2} end
return {3, redis.call('GET', KEYS[2]), redis.call('PTTL', KEYS[2])}
"""

# KEYS: value, lease, done list. ARGV: token, outcome, done-list ms, "1" to store the
# outcome as the value, value ms. Releases the lease only if ARGV[1] still holds it.
_FINISH: Final = """
if ARGV[4] == '1' then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[5]) end
redis.call('RPUSH', KEYS[3], ARGV[2])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
"""

# KEYS: lease. ARGV: token, lease ms. Extends the lease only if ARGV[1] still holds it.
_EXTEND: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


# ------------------------------------------------------------------ steps of the protocol


class _Acquire:
    """Read the value, or take the lease, or learn who holds it (script ``_ACQUIRE``)."""

    __slots__ = ("lease_key", "skip_value", "token", "value_key")

    def __init__(self, value_key: str, lease_key: str, token: str, skip_value: bool) -> None:
        self.value_key = value_key
        self.lease_key = lease_key
        self.token = token
        self.skip_value = skip_value


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


class _Finish:
    """Publish a leader's outcome, store it if it is a value, release the lease."""

    __slots__ = ("done_key", "lease_key", "outcome", "store", "token", "value_key")

    def __init__(
        self, value_key: str, lease_key: str, token: str, outcome: bytes, *, store: bool
    ) -> None:
        self.value_key = value_key
        self.lease_key = lease_key
        self.done_key = f"{value_key}:done:{token}"
        self.token = token
        self.outcome = outcome
        self.store = store


class _Store:
    """Store a value computed outside any lease (after ``wait_timeout``)."""

    __slots__ = ("payload", "value_key")

    def __init__(self, value_key: str, payload: bytes) -> None:
        self.value_key = value_key
        self.payload = payload


_Step = _Acquire | _Block | _Discard | _Run | _Finish | _Store


class _Ran:
    """What a ``_Run`` step sends back: the value, or the ``Exception`` it raised."""

    __slots__ = ("error", "value")

    def __init__(self, value: Any, error: Exception | None) -> None:
        self.value = value
        self.error = error


# --------------------------------------------------------------------------- the backend


_PREFIX: Final = re.compile(r"[A-Za-z0-9_.:/@{}\-]+")
_URL_SCHEMES: Final = ("redis://", "rediss://", "unix://")
_REDIS_PY_SOCKET_TIMEOUT: Final = 5.0


@final
class RedisBackend:
    """Share one execution per key between processes through Redis (SPEC section 4).

    Pass it to ``@singleflight(ttl=..., backend=backend, name=...)``. The options are
    shared by every function that uses this backend; ``docs/redis.md`` tells the
    semantics and the failure modes.

    :param client: a ``redis.Redis`` (for ``def`` functions) or a
        ``redis.asyncio.Redis`` (for ``async def`` functions), made with
        ``decode_responses=False`` (the default).
    :param prefix: the first part of every key (``prefix:name:digest``).
    :param serializer: ``"pickle"``, ``"json"``, or any :class:`Serializer`.
    :param signing_key: bytes (16 or more): HMAC-sign every payload, and never
        deserialise one that fails verification (R7). Without it, unsigned pickle lets
        anyone who can write to that Redis run code in the process.
    :param lease_ttl: seconds a leader's lease lives unless renewed (R3); renewed every
        ``lease_ttl / 3`` while the function runs.
    :param wait_timeout: the longest a caller waits for a leader in another process;
        past it, it runs the function itself (R4).
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
        "_lock",
        "_max_block",
        "_raise",
        "_retry_at",
        "client",
        "is_async",
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
        client: redis.Redis | redis.asyncio.Redis,
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
        if isinstance(client, redis.asyncio.Redis):
            self.is_async = True
        elif isinstance(client, redis.Redis):
            self.is_async = False
        else:
            raise TypeError(
                f"RedisBackend needs a redis.Redis (for def functions) or a "
                f"redis.asyncio.Redis (for async def functions), not {type(client).__name__}; "
                "make one with redis.Redis.from_url(url), or use RedisBackend.from_url(url)"
            )
        kwargs = client.connection_pool.connection_kwargs
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

        self._after_fork()
        at_fork(self)

    def _after_fork(self) -> None:
        """A fresh lock in a forked child (S14): a parent's thread may have held it."""
        self._lock = threading.Lock()
        self._down = False
        self._retry_at = 0.0

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
        self, func: Callable[..., Any], *, name: str, ttl: float, is_async: bool
    ) -> _SyncBinding | _AsyncBinding:
        """Prepare the backend for one decorated function (called once, when decorating)."""
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
        binding = _AsyncBinding if is_async else _SyncBinding
        return binding(self, name, seconds("ttl", ttl))

    # -- outages (R6)

    def _redis_usable(self) -> bool:
        """False during an outage's cooldown (only with on_backend_error='local')."""
        return not self._down or self._raise or time.monotonic() >= self._retry_at

    def _failed(self, exc: Exception, label: str, *, may_raise: bool = True) -> None:
        """Note a Redis error: log the first of an outage, or raise it if asked to."""
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


# --------------------------------------------------------------------------- the protocol


class _Binding:
    """One decorated function's view of the backend: key names, payloads, the protocol."""

    __slots__ = ("backend", "codec", "name", "ttl", "ttl_ms")

    def __init__(self, backend: RedisBackend, name: str, ttl: float) -> None:
        self.backend = backend
        self.codec = backend._codec
        self.name = name
        self.ttl = ttl
        self.ttl_ms = max(1, math.ceil(ttl * 1000))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.backend.prefix}:{self.name} ttl={self.ttl}>"

    # -- keys (R2)

    def redis_key(self, key: Hashable) -> str:
        """The Redis key that holds the value for ``key``: ``prefix:name:digest``."""
        digest = key_digest(key, name=self.name, store="Redis")
        return f"{self.backend.prefix}:{self.name}:{digest}"

    def _pattern(self) -> str:
        escaped = re.sub(r"([*?\[\]\\])", r"\\\1", f"{self.backend.prefix}:{self.name}:")
        return escaped + "?" * DIGEST_LEN

    def _is_value_key(self, key: bytes | str) -> bool:
        text = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
        head = f"{self.backend.prefix}:{self.name}:"
        tail = text[len(head) :]
        return (
            text.startswith(head)
            and len(tail) == DIGEST_LEN
            and all(c in "0123456789abcdef" for c in tail)
        )

    # -- payloads (R7)

    def _seal(self, vkey: str, kind: bytes, body: bytes) -> bytes:
        return self.codec.seal(vkey, kind, body)

    # -- the protocol, I/O-free: it yields steps and the drivers carry them out

    def flight(self, key: Hashable) -> Generator[_Step, Any, Any]:
        """One call for ``key``: return its value or raise, one step at a time."""
        vkey = self.redis_key(key)
        lkey = f"{vkey}:lease"
        backend = self.backend
        if not backend._redis_usable():
            return (yield from self._local(vkey, lkey, store=False))
        token = secrets.token_hex(16)
        deadline = time.monotonic() + backend.wait_timeout
        skip_value = False
        while True:
            try:
                reply = yield _Acquire(vkey, lkey, token, skip_value)
            except RedisError as exc:
                backend._failed(exc, self.name)
                return (yield from self._local(vkey, lkey, store=False))
            backend._answered()
            skip_value = False
            state = int(reply[0])
            if state == 1:  # a hit
                opened = self.codec.open(vkey, bytes(reply[1]))
                if opened is not None and opened[0] == VALUE:
                    found, value = self.codec.load(vkey, opened[1])
                    if found:
                        return value
                skip_value = True  # a miss: the next round takes the lease and replaces it
                continue
            if state == 2:  # this caller leads
                return (yield from self._lead(vkey, lkey, token))
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
                return (yield from self._local(vkey, lkey, store=True))
            lease_ms = int(reply[2])
            if lease_ms < 0:  # a lease without expiry was not set by coalesce: bound the wait
                lease_ms = self._lease_ms()
            block = min(left, lease_ms / 1000 + 0.002, backend._max_block)
            done_key = f"{vkey}:done:{leader}"
            try:
                item = yield _Block(done_key, max(block, 0.001))
            except RedisError as exc:
                backend._failed(exc, self.name)
                return (yield from self._local(vkey, lkey, store=False))
            if item is None:
                continue  # the lease ran out, or was renewed: look again
            opened = self.codec.open(vkey, bytes(item))
            if opened is not None:
                kind, body = opened
                if kind == VALUE:
                    found, value = self.codec.load(vkey, body)
                    if found:
                        return value
                elif kind == ERROR:
                    raise remote_error(body)
                elif kind == LOCAL:
                    return (yield from self._local(vkey, lkey, store=False))
                elif kind == RETRY:
                    continue  # the leader aborted and freed its lease: look again
            # Not usable (forged, or unreadable): remove it, or every pop would return it
            # at once; then look again.
            try:
                yield _Discard(done_key, bytes(item))
            except RedisError as exc:
                backend._failed(exc, self.name)
                return (yield from self._local(vkey, lkey, store=False))

    def _lead(self, vkey: str, lkey: str, token: str) -> Generator[_Step, Any, Any]:
        backend = self.backend
        try:
            ran: _Ran = yield _Run(lkey, token)
        except BaseException:
            # KeyboardInterrupt, SystemExit, cancellation: free the lease and tell the
            # followers to look again, so that one of them leads at once.
            try:
                yield _Finish(vkey, lkey, token, self._seal(vkey, RETRY, b""), store=False)
            except RedisError as exc:
                backend._failed(exc, self.name, may_raise=False)
            raise
        if ran.error is not None:
            error = ran.error
            body = error_body(error)
            try:
                yield _Finish(vkey, lkey, token, self._seal(vkey, ERROR, body), store=False)
            except RedisError as exc:
                backend._failed(exc, self.name, may_raise=False)
            raise error
        value = ran.value
        try:
            payload = self._seal(vkey, VALUE, backend.serializer.dumps(value))
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
                yield _Finish(vkey, lkey, token, self._seal(vkey, LOCAL, b""), store=False)
            except RedisError as redis_exc:
                backend._failed(redis_exc, self.name, may_raise=False)
            return value
        try:
            yield _Finish(vkey, lkey, token, payload, store=True)
        except RedisError as exc:
            backend._failed(exc, self.name)
        return value

    def _local(self, vkey: str, lkey: str, *, store: bool) -> Generator[_Step, Any, Any]:
        """Run the function in this process, outside any lease."""
        ran: _Ran = yield _Run(lkey, None)
        if ran.error is not None:
            raise ran.error
        if store:
            try:
                payload = self._seal(vkey, VALUE, self.backend.serializer.dumps(ran.value))
            except Exception:
                return ran.value  # nothing to share; the caller still gets its value
            try:
                yield _Store(vkey, payload)
            except RedisError as exc:
                self.backend._failed(exc, self.name, may_raise=False)
        return ran.value

    # -- what the drivers share

    def _lease_ms(self) -> int:
        return max(1, math.ceil(self.backend.lease_ttl * 1000))

    def _finish_args(self, step: _Finish) -> tuple[tuple[str, str, str], tuple[Any, ...]]:
        return (step.value_key, step.lease_key, step.done_key), (
            step.token,
            step.outcome,
            min(self._lease_ms(), _DONE_MS),
            "1" if step.store else "0",
            self.ttl_ms,
        )

    def _lost_lease(self) -> None:
        _log.warning(
            "coalesce: %s lost its lease while running (a pause longer than lease_ttl=%ss?); "
            "another process may run it at the same time",
            self.name,
            self.backend.lease_ttl,
        )


@final
class _SyncBinding(_Binding):
    """The driver for ``def`` functions and ``redis.Redis``."""

    __slots__ = ("_acquire", "_execute", "_extend", "_finish", "client")

    def __init__(self, backend: RedisBackend, name: str, ttl: float) -> None:
        super().__init__(backend, name, ttl)
        client = cast(redis.Redis, backend.client)
        self.client = client
        # redis-py types BLMOVE's timeout as int and LREM's value as str; Redis takes
        # seconds with decimals and any bytes.
        self._execute: Callable[..., Any] = client.execute_command
        self._acquire = client.register_script(_ACQUIRE)
        self._finish = client.register_script(_FINISH)
        self._extend = client.register_script(_EXTEND)

    def call(self, key: Hashable, compute: Callable[[], R]) -> R:
        """The value for ``key``: from Redis, from a leader elsewhere, or computed here."""
        steps = self.flight(key)
        sent: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = steps.send(sent) if error is None else steps.throw(error)
            except StopIteration as stop:
                return cast(R, stop.value)
            sent = error = None
            try:
                sent = self._perform(step, compute)
            except BaseException as exc:
                error = exc

    def _perform(self, step: _Step, compute: Callable[[], Any]) -> Any:
        if isinstance(step, _Run):
            return self._run(step, compute)
        return self._command(step)

    def _run(self, step: _Run, compute: Callable[[], Any]) -> _Ran:
        if step.token is None:
            try:
                return _Ran(compute(), None)
            except Exception as exc:
                return _Ran(None, exc)
        stop = threading.Event()
        renewer = threading.Thread(
            target=self._renew,
            args=(step.lease_key, step.token, stop),
            name=f"coalesce-lease:{self.name}",
            daemon=True,
        )
        renewer.start()
        try:
            return _Ran(compute(), None)
        except Exception as exc:
            return _Ran(None, exc)
        finally:
            stop.set()

    def _command(self, step: _Acquire | _Block | _Discard | _Finish | _Store) -> Any:
        if isinstance(step, _Acquire):
            return self._acquire(
                keys=(step.value_key, step.lease_key),
                args=(step.token, self._lease_ms(), "1" if step.skip_value else "0"),
            )
        if isinstance(step, _Block):
            return self._execute(
                "BLMOVE", step.done_key, step.done_key, "RIGHT", "LEFT", step.timeout
            )
        if isinstance(step, _Finish):
            keys, args = self._finish_args(step)
            return self._finish(keys=keys, args=args)
        if isinstance(step, _Discard):
            return self._execute("LREM", step.done_key, 1, step.item)
        return self.client.set(step.value_key, step.payload, px=self.ttl_ms)

    def _renew(self, lease_key: str, token: str, stop: threading.Event) -> None:
        interval = self.backend.lease_ttl / 3
        while not stop.wait(interval):
            try:
                held = self._extend(keys=(lease_key,), args=(token, self._lease_ms()))
            except RedisError as exc:
                self.backend._failed(exc, self.name, may_raise=False)
                continue
            if not held:
                if not stop.is_set():
                    self._lost_lease()
                return

    def invalidate(self, key: Hashable) -> bool:
        """Delete the value for ``key`` in Redis; ``True`` if one was there."""
        vkey = self.redis_key(key)
        try:
            return bool(self.client.delete(vkey))
        except RedisError as exc:
            self.backend._failed(exc, self.name)
            return False

    def clear(self) -> None:
        """Delete every value of this function in Redis (``SCAN``, never ``KEYS``)."""
        try:
            batch: list[bytes] = []
            for found in self.client.scan_iter(match=self._pattern(), count=500):
                if self._is_value_key(found):
                    batch.append(found)
                    if len(batch) >= 500:
                        self.client.unlink(*batch)
                        batch.clear()
            if batch:
                self.client.unlink(*batch)
        except RedisError as exc:
            self.backend._failed(exc, self.name)


@final
class _AsyncBinding(_Binding):
    """The driver for ``async def`` functions and ``redis.asyncio.Redis``."""

    __slots__ = ("_acquire", "_execute", "_extend", "_finish", "client")

    def __init__(self, backend: RedisBackend, name: str, ttl: float) -> None:
        super().__init__(backend, name, ttl)
        client = cast(redis.asyncio.Redis, backend.client)
        self.client = client
        self._execute = cast(Callable[..., Awaitable[Any]], client.execute_command)
        self._acquire = client.register_script(_ACQUIRE)
        self._finish = client.register_script(_FINISH)
        self._extend = client.register_script(_EXTEND)

    async def acall(self, key: Hashable, compute: Callable[[], Awaitable[R]]) -> R:
        """The value for ``key``: from Redis, from a leader elsewhere, or computed here."""
        steps = self.flight(key)
        sent: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = steps.send(sent) if error is None else steps.throw(error)
            except StopIteration as stop:
                return cast(R, stop.value)
            sent = error = None
            try:
                sent = await self._perform(step, compute)
            except BaseException as exc:
                error = exc

    async def _perform(self, step: _Step, compute: Callable[[], Awaitable[Any]]) -> Any:
        if isinstance(step, _Run):
            return await self._run(step, compute)
        try:
            return await self._command(step)
        except RuntimeError as exc:
            if "loop" not in str(exc):
                raise
            raise RuntimeError(
                f"{self.name}: the redis.asyncio client of this RedisBackend was used in "
                f"another event loop ({exc}). A redis-py asyncio client belongs to one loop "
                "at a time: close it with `await backend.client.aclose()` before that loop "
                "ends (then the next loop can use it), or give each loop a backend of its own"
            ) from exc

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
            return _Ran(await compute(), None)
        except Exception as exc:
            return _Ran(None, exc)
        finally:
            renewer.cancel()

    async def _command(self, step: _Acquire | _Block | _Discard | _Finish | _Store) -> Any:
        if isinstance(step, _Acquire):
            return await self._acquire(
                keys=(step.value_key, step.lease_key),
                args=(step.token, self._lease_ms(), "1" if step.skip_value else "0"),
            )
        if isinstance(step, _Block):
            return await self._execute(
                "BLMOVE", step.done_key, step.done_key, "RIGHT", "LEFT", step.timeout
            )
        if isinstance(step, _Finish):
            keys, args = self._finish_args(step)
            return await self._finish(keys=keys, args=args)
        if isinstance(step, _Discard):
            return await self._execute("LREM", step.done_key, 1, step.item)
        return await self.client.set(step.value_key, step.payload, px=self.ttl_ms)

    async def _renew(self, lease_key: str, token: str) -> None:
        interval = self.backend.lease_ttl / 3
        while True:
            await asyncio.sleep(interval)
            try:
                held = await self._extend(keys=(lease_key,), args=(token, self._lease_ms()))
            except RedisError as exc:
                self.backend._failed(exc, self.name, may_raise=False)
                continue
            if not held:
                self._lost_lease()
                return

    async def ainvalidate(self, key: Hashable) -> bool:
        """Delete the value for ``key`` in Redis; ``True`` if one was there."""
        vkey = self.redis_key(key)
        try:
            return bool(await self.client.delete(vkey))
        except RedisError as exc:
            self.backend._failed(exc, self.name)
            return False

    async def aclear(self) -> None:
        """Delete every value of this function in Redis (``SCAN``, never ``KEYS``)."""
        try:
            batch: list[bytes] = []
            async for found in self.client.scan_iter(match=self._pattern(), count=500):
                if self._is_value_key(found):
                    batch.append(found)
                    if len(batch) >= 500:
                        await self.client.unlink(*batch)
                        batch.clear()
            if batch:
                await self.client.unlink(*batch)
        except RedisError as exc:
            self.backend._failed(exc, self.name)
