"""Code that the Redis tests run in worker processes (``multiprocessing``).

Module-level functions, so that a process of their own can import and run them: each
worker makes its own client and its own ``RedisBackend``, as in a fleet of workers.
Nothing here imports pytest, so the workers start fast.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry

from coalesce.redis import RedisBackend


class Gate:
    """A one-way release signal that a killed process cannot jam.

    A ``multiprocessing.Event`` must hear back from every process it wakes, so a
    worker killed with SIGKILL while waiting on one hangs ``set()`` for ever. Here
    the workers hold the read end of a pipe and the test process the write end;
    closing it releases every reader at once (end of file), dead ones or not.
    """

    def __init__(self, reader: Any) -> None:
        self.reader = reader

    def wait(self, timeout: float) -> bool:
        """Block until released (``True``) or ``timeout`` seconds pass (``False``)."""
        return bool(self.reader.poll(timeout))


class CountingRedis(redis.Redis):
    """A sync client that counts the commands it sends (scripts count as one).

    Counted where they are sent, by its connections (``CountingConnection``): the
    backend sends a call's commands on connections of its own, made as the client's
    pool makes them (R4). A connection's handshake is not counted.
    """

    commands = 0


class CountingConnection(redis.UnixDomainSocketConnection):
    """A connection that counts, in ``CountingRedis.commands``, the commands it sends."""

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        if args and args[0] not in ("CLIENT", "HELLO", "AUTH", "SELECT"):
            CountingRedis.commands += 1
        super().send_command(*args, **kwargs)


class CountingRedisCluster(redis.RedisCluster):
    """``CountingRedis`` for a Redis Cluster (it shares the count)."""

    def execute_command(self, *args: Any, **options: Any) -> Any:
        CountingRedis.commands += 1
        return super().execute_command(*args, **options)


CLUSTER = "cluster:"
"""How an address names a Redis Cluster: ``cluster:<host>:<port>`` of one node."""


def connect(address: str, *, is_async: bool = False, **options: Any) -> Any:
    """A client of ``address`` (a unix socket path, or ``cluster:host:port``), no retries."""
    retry = Retry(NoBackoff(), 0)
    if address.startswith(CLUSTER):
        host, port = address[len(CLUSTER) :].rsplit(":", 1)
        if is_async:
            return redis.asyncio.RedisCluster(host=host, port=int(port), retry=retry, **options)
        return CountingRedisCluster(host=host, port=int(port), retry=retry, **options)
    if is_async:
        return redis.asyncio.Redis(unix_socket_path=address, retry=retry, **options)
    pool = redis.ConnectionPool(
        connection_class=CountingConnection,
        path=address,
        retry=retry,
        **{"socket_timeout": 5.0, **options},
    )
    return CountingRedis(connection_pool=pool)


def make_backend(socket: str, *, is_async: bool = False, **options: Any) -> RedisBackend:
    """A backend on a fresh client that fails at once when the server is gone.

    ``socket`` is a unix socket path or ``cluster:host:port`` (a Redis Cluster);
    ``socket_timeout`` among the options goes to the client, the rest to the backend.
    """
    extra = {"socket_timeout": options.pop("socket_timeout")} if "socket_timeout" in options else {}
    client = connect(socket, is_async=is_async, **extra)
    options.setdefault("outage_cooldown", 0)
    return RedisBackend(client, **options)


def report(day: Any) -> Any:
    """The function the workers share (its body is the ``compute`` they pass)."""
    raise AssertionError("not called directly")


async def areport(day: Any) -> Any:
    """The async twin of ``report``."""
    raise AssertionError("not called directly")


def sync_worker(
    socket: str,
    key: Any,
    options: dict[str, Any],
    executions: Any,
    started: Any,
    release: Any,
    results: Any,
    raise_message: str | None = None,
    commands: Any = None,
) -> None:
    """Call ``report`` for ``key`` through Redis; put ``(status, pid, value)`` in results.

    ``commands`` (a multiprocessing queue) receives how many commands the call sent.
    """
    backend = make_backend(socket, **options)
    bound = backend.bind(report, name="report", ttl=30.0, is_async=False)

    def compute() -> dict[str, int]:
        with executions.get_lock():
            executions.value += 1
        started.set()
        release.wait(20)
        if raise_message is not None:
            raise ValueError(raise_message)
        return {"computed_by": os.getpid()}

    before = CountingRedis.commands
    try:
        value = bound.call(key, compute)
    except Exception as exc:
        results.put(("error", os.getpid(), (type(exc).__name__, str(exc))))
    else:
        results.put(("ok", os.getpid(), value))
    if commands is not None:
        commands.put(CountingRedis.commands - before)


def async_worker(
    socket: str,
    key: Any,
    options: dict[str, Any],
    executions: Any,
    started: Any,
    release: Any,
    results: Any,
) -> None:
    """The ``async def`` twin of ``sync_worker``, with ``redis.asyncio``."""

    async def main() -> None:
        backend = make_backend(socket, is_async=True, **options)
        bound = backend.bind(areport, name="report", ttl=30.0, is_async=True)

        async def compute() -> dict[str, int]:
            with executions.get_lock():
                executions.value += 1
            started.set()
            # The event is a multiprocessing one: wait for it off the event loop.
            await asyncio.to_thread(release.wait, 20)
            return {"computed_by": os.getpid()}

        try:
            value = await bound.acall(key, compute)
        except Exception as exc:
            results.put(("error", os.getpid(), (type(exc).__name__, str(exc))))
        else:
            results.put(("ok", os.getpid(), value))
        finally:
            await backend.client.aclose()

    asyncio.run(main())


def redis_key_worker(socket: str, key: Any, results: Any) -> None:
    """Put the Redis key this process computes for ``key`` (R2)."""
    backend = make_backend(socket, prefix="stable")
    bound = backend.bind(report, name="report", ttl=30.0, is_async=False)
    results.put(bound.redis_key(key))


class Boom:
    """Unpickling this runs code: ``__reduce__`` asks for a call that writes ``marker``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[[str], None], tuple[str]]:
        return (_detonate, (self.marker,))


def _detonate(marker: str) -> None:
    """Leave a file behind: proof that a payload was deserialised."""
    Path(marker).write_text("deserialised")


def decorated_worker(
    socket: str,
    key: Any,
    options: dict[str, Any],
    executions: Any,
    started: Any,
    release: Any,
    results: Any,
    is_async: bool = False,
    callers: int = 2,
) -> None:
    """``callers`` concurrent calls of ``@singleflight(backend=...)`` in this process.

    Puts one ``("ok", pid, values)`` in results, ``values`` being every caller's value.
    """
    from coalesce import singleflight

    backend = make_backend(socket, is_async=is_async, **options)

    def body() -> dict[str, int]:
        with executions.get_lock():
            executions.value += 1
        started.set()
        release.wait(20)
        return {"computed_by": os.getpid()}

    if is_async:

        @singleflight(ttl=30, backend=backend, name="report")
        async def adaily(day: Any) -> dict[str, int]:
            return await asyncio.to_thread(body)

        async def main() -> list[Any]:
            try:
                return list(await asyncio.gather(*(adaily(key) for _ in range(callers))))
            finally:
                await backend.client.aclose()

        values = asyncio.run(main())
    else:

        @singleflight(ttl=30, backend=backend, name="report")
        def daily(day: Any) -> dict[str, int]:
            return body()

        box: list[Any] = []
        threads = [threading.Thread(target=lambda: box.append(daily(key))) for _ in range(callers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        values = box
    results.put(("ok", os.getpid(), values))
