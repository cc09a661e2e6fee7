"""The apps the fleet middleware tests serve from real multi-process servers (H6-H8).

``uvicorn --workers 3 tests._http_fleet_apps:asgi_app`` and
``gunicorn -w 3 --threads 64 tests._http_fleet_apps:wsgi_app`` import this module in each
worker process. Everything a test controls comes from the environment:

- ``COALESCE_FLEET_REDIS``: the unix socket of the test's redis-server;
- ``COALESCE_FLEET_TTL``, ``COALESCE_FLEET_STALE``, ``COALESCE_FLEET_PRIVATE``: the
  middleware's options (empty: left out).

What happens is counted in that Redis, so the test reads it whatever process did it:
``arrived`` (requests reaching the middleware, counted just before it), ``calls:<path>``
(downstream calls), ``pids`` (the workers that served a request). ``/gate/...`` paths
block their downstream call until ``COALESCE_FLEET_GATE`` requests have arrived and
every other worker's leader is blocked waiting on this call in Redis (a barrier the
test sets; bounded, it never guesses a duration).

Every response carries a marker of the request it was made for: the header
``X-Made-For`` echoes the request's ``X-Client`` header, and the body names the path, the
query and the credentials it was made for, so a test can tell a response that reached a
client it was not made for.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from typing import Any
from urllib.parse import parse_qs

import redis
import redis.asyncio

from coalesce.asgi import CoalesceMiddleware as ASGIMiddleware
from coalesce.redis import RedisBackend
from coalesce.wsgi import CoalesceMiddleware as WSGIMiddleware

SOCKET = os.environ.get("COALESCE_FLEET_REDIS", "")
GATE_WAIT = 30.0


def _options() -> dict[str, Any]:
    options: dict[str, Any] = {"vary": ("x-lang",)}
    for name in ("ttl", "stale"):
        value = os.environ.get(f"COALESCE_FLEET_{name.upper()}", "")
        if value:
            options[name] = float(value)
    if os.environ.get("COALESCE_FLEET_PRIVATE") == "1":
        options["private"] = True
    return options


def digest(secret: str | None) -> str | None:
    """How a response names the credentials it was made for: never in clear."""
    return None if secret is None else hashlib.sha256(secret.encode()).hexdigest()


def _made(path: str, query: str, headers: dict[str, str], pid: int, call: int) -> dict[str, Any]:
    return {
        "call": call,
        "path": path,
        "query": query,
        "authorization": digest(headers.get("authorization")),
        "cookie": digest(headers.get("cookie")),
        "lang": headers.get("x-lang"),
        "client": headers.get("x-client"),
        "pid": pid,
    }


def _respond(
    path: str, query: str, headers: dict[str, str], call: int
) -> tuple[int, list[tuple[str, str]], bytes]:
    """The downstream response for a request: status, headers, body (shared by both apps)."""
    if path.startswith("/error"):
        raise RuntimeError("the downstream app failed on purpose")
    made = _made(path, query, headers, os.getpid(), call)
    out = [("content-type", "application/json"), ("x-made-for", headers.get("x-client", ""))]
    if path.startswith("/cookie"):
        out.append(("set-cookie", f"session={headers.get('x-client', '')}"))
    elif path.startswith("/private"):
        out.append(("cache-control", "private, max-age=60"))
    elif path.startswith("/nostore"):
        out.append(("cache-control", "no-store"))
    elif path.startswith("/lang"):
        out.append(("vary", "X-Lang"))
    elif path.startswith("/maxage"):
        out.append(("cache-control", "max-age=" + parse_qs(query).get("age", ["1"])[0]))
    elif path.startswith("/swr"):
        # The first response lives 1 s, the ones that refresh it a minute.
        out.append(("cache-control", "max-age=1" if call == 1 else "max-age=60"))
    elif path.startswith("/big"):
        made["padding"] = "x" * 2_000_000  # past max_body (1 MiB)
    out.append(("x-repeat", "one"))
    out.append(("x-repeat", "two"))
    return 200, out, json.dumps(made).encode()


# ------------------------------------------------------------------------------ ASGI

_aredis: redis.asyncio.Redis | None = None


def _async_redis() -> redis.asyncio.Redis:
    global _aredis
    if _aredis is None:
        _aredis = redis.asyncio.Redis(unix_socket_path=SOCKET, max_connections=2000)
    return _aredis


async def _gate_async(client: redis.asyncio.Redis) -> None:
    """Block until the gate's count of requests has arrived and the other workers wait."""
    want = int(await client.get("gate") or 0)
    if not want:
        return
    deadline = time.monotonic() + GATE_WAIT
    while time.monotonic() < deadline:
        arrived = int(await client.get("arrived") or 0)
        workers = await client.scard("pids")
        blocked = int((await client.info("clients"))["blocked_clients"])
        if arrived >= want and blocked >= workers - 1:
            return
        await asyncio.sleep(0.005)  # re-checks a state other processes bring about
    raise RuntimeError(f"gate: gave up after {GATE_WAIT}s")


async def _hold_async(client: redis.asyncio.Redis) -> None:
    """Block a refresh until the gate's count of responses has been answered (bounded)."""
    want = int(await client.get("gate") or 0)
    deadline = time.monotonic() + GATE_WAIT
    while int(await client.get("answered") or 0) < want:
        if time.monotonic() > deadline:
            raise RuntimeError(f"hold: gave up after {GATE_WAIT}s")
        await asyncio.sleep(0.005)  # re-checks a count other processes bring about


async def _downstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    query = scope["query_string"].decode("latin-1")
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    client = _async_redis()
    if path == "/ping":
        body = str(os.getpid()).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})
        return
    call = await client.incr(f"calls:{path}")
    await client.incr("calls")
    if path.startswith("/gate"):
        await _gate_async(client)
    if path.startswith("/swr") and call > 1:
        await _hold_async(client)
    status, out, body = _respond(path, query, headers, call)
    raw = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in out]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _asgi() -> Any:
    backend = RedisBackend(
        redis.asyncio.Redis(unix_socket_path=SOCKET, max_connections=2000),
        prefix="fleet",
        wait_timeout=60.0,
    )
    middleware = ASGIMiddleware(_downstream, backend=backend, **_options())

    async def counted(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] != "/ping":
            client = _async_redis()
            await client.sadd("pids", os.getpid())
            await client.incr("arrived")

            async def answering(message: Any) -> None:
                if message["type"] == "http.response.start":
                    await client.incr("answered")
                await send(message)

            await middleware(scope, receive, answering)
            return
        await middleware(scope, receive, send)

    return counted


# ------------------------------------------------------------------------------ WSGI

_redis: redis.Redis | None = None


def _sync_redis() -> redis.Redis:
    global _redis
    if _redis is None:
        _redis = redis.Redis(unix_socket_path=SOCKET, max_connections=2000)
    return _redis


def _gate_sync(client: redis.Redis) -> None:
    want = int(client.get("gate") or 0)
    if not want:
        return
    deadline = time.monotonic() + GATE_WAIT
    while time.monotonic() < deadline:
        arrived = int(client.get("arrived") or 0)
        workers = client.scard("pids")
        blocked = int(client.info("clients")["blocked_clients"])
        if arrived >= want and blocked >= workers - 1:
            return
        time.sleep(0.005)  # re-checks a state other processes bring about
    raise RuntimeError(f"gate: gave up after {GATE_WAIT}s")


def _hold_sync(client: redis.Redis) -> None:
    """Block a refresh until the gate's count of responses has been answered (bounded)."""
    want = int(client.get("gate") or 0)
    deadline = time.monotonic() + GATE_WAIT
    while int(client.get("answered") or 0) < want:
        if time.monotonic() > deadline:
            raise RuntimeError(f"hold: gave up after {GATE_WAIT}s")
        time.sleep(0.005)  # re-checks a count other processes bring about


def _wsgi_downstream(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    path = environ.get("PATH_INFO", "")
    query = environ.get("QUERY_STRING", "")
    headers = {
        k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")
    }
    client = _sync_redis()
    if path == "/ping":
        start_response("200 OK", [])
        return [str(os.getpid()).encode()]
    call = client.incr(f"calls:{path}")
    client.incr("calls")
    if path.startswith("/gate"):
        _gate_sync(client)
    if path.startswith("/swr") and call > 1:
        _hold_sync(client)
    status, out, body = _respond(path, query, headers, call)
    start_response(f"{status} OK", out)
    return [body]


def _wsgi() -> Any:
    backend = RedisBackend(
        redis.Redis(unix_socket_path=SOCKET, max_connections=2000),
        prefix="fleet",
        wait_timeout=60.0,
    )
    middleware = WSGIMiddleware(_wsgi_downstream, backend=backend, **_options())

    def counted(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") != "/ping":
            client = _sync_redis()
            client.sadd("pids", os.getpid())
            client.incr("arrived")

            def answering(status: str, headers: Any, exc_info: Any = None) -> Any:
                client.incr("answered")
                return start_response(status, headers, exc_info)

            return middleware(environ, answering)
        return middleware(environ, start_response)

    return counted


def _register() -> None:
    """Count this worker process in ``workers`` once it has built its app."""
    with redis.Redis(unix_socket_path=SOCKET) as client:
        client.sadd("workers", os.getpid())


asgi_app = _asgi() if SOCKET else None
wsgi_app = _wsgi() if SOCKET else None
if SOCKET:
    _register()
