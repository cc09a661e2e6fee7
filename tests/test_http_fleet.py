"""The middlewares across worker processes through Redis (SPEC H6, H7, H8 with backend=).

Real servers with three worker processes each (``uvicorn --workers 3``, ``gunicorn -w 3``)
serve ``tests/_http_fleet_apps.py`` on a unix socket; a real redis-server (the
fixtures') is shared by the workers and counts what they do; httpx is the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests._http_fleet_apps import digest
from tests._http_support import stop_process
from tests._redis_fixture import RedisServer, running_server, wait_until

ROOT = Path(__file__).resolve().parent.parent
WORKERS = 3

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with running_server() as server:
        yield server


@contextlib.contextmanager
def fleet(kind: str, redis_server: RedisServer, **options: str) -> Iterator[str]:
    """Run the fleet app under ``kind`` ("uvicorn" or "gunicorn") with 3 workers on a unix
    socket; yield the socket's path once every worker answers."""
    if kind == "gunicorn" and shutil.which("gunicorn") is None and not _has("gunicorn"):
        pytest.fail("gunicorn is not installed (the 'test' extra installs it)")
    directory = Path(tempfile.mkdtemp(prefix="coalesce-fleet-"))
    uds = str(directory / "http.sock")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["COALESCE_FLEET_REDIS"] = redis_server.socket
    for name, value in options.items():
        env[f"COALESCE_FLEET_{name.upper()}"] = value
    if kind == "uvicorn":
        command = [
            sys.executable, "-m", "uvicorn", "tests._http_fleet_apps:asgi_app",
            "--uds", uds, "--workers", str(WORKERS), "--log-level", "warning",
            "--no-access-log", "--lifespan", "off", "--timeout-graceful-shutdown", "5",
        ]  # fmt: skip
    else:
        command = [
            sys.executable, "-m", "gunicorn", "tests._http_fleet_apps:wsgi_app",
            "--bind", f"unix:{uds}", "-w", str(WORKERS), "-k", "gthread",
            "--threads", "160", "--log-level", "warning", "--graceful-timeout", "5",
            "--backlog", "2048",
        ]  # fmt: skip
        # --threads above the 150 requests H6 sends at once: the kernel may hand one worker
        # most connections, and a request queued behind that worker's busy threads never
        # reaches the gate, which then waits for it until it gives up (seen under load).
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL)
    try:
        _wait_for_workers(uds, process, redis_server)
        yield uds
    finally:
        stop_process(process)
        shutil.rmtree(directory, ignore_errors=True)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _ping(uds: str) -> str | None:
    """One ``GET /ping`` on a connection of its own: the worker's pid, or ``None``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        try:
            sock.connect(uds)
            sock.sendall(b"GET /ping HTTP/1.1\r\nhost: fleet\r\nconnection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        except OSError:
            return None
    head, _, body = data.partition(b"\r\n\r\n")
    return body.decode() if head.startswith(b"HTTP/1.1 200") else None


def _wait_for_workers(uds: str, process: subprocess.Popen[bytes], server: RedisServer) -> None:
    """Until every worker has built its app and the server answers /ping (bounded)."""
    with server.client() as client:

        def all_answer() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"the server exited with {process.returncode}")
            if client.scard("workers") < WORKERS or not os.path.exists(uds):
                return False
            return _ping(uds) is not None

        wait_until(all_answer, f"{WORKERS} workers answer", timeout=60)


async def _many(uds: str, requests: list[dict[str, Any]]) -> list[httpx.Response | None]:
    """Send every request at once, each on its own connection; ``None`` for a failure."""
    limits = httpx.Limits(max_connections=len(requests), max_keepalive_connections=0)
    transport = httpx.AsyncHTTPTransport(uds=uds, limits=limits)
    async with httpx.AsyncClient(transport=transport, timeout=60) as client:

        async def one(request: dict[str, Any]) -> httpx.Response | None:
            try:
                return await client.get("http://fleet" + request["url"], headers=request["headers"])
            except httpx.TransportError:
                return None

        return await asyncio.gather(*(one(r) for r in requests))


@pytest.mark.parametrize("kind", ["uvicorn", "gunicorn"])
def test_h6_three_workers_fifty_identical_requests_run_the_app_once(
    kind: str, redis_server: RedisServer
) -> None:
    """H6: 3 workers x 50 identical requests run the downstream app once; every client gets
    its status, headers (repeated ones in order) and body, read from Redis elsewhere."""
    client = redis_server.client()
    n = WORKERS * 50
    with fleet(kind, redis_server) as uds:
        client.set("gate", n)
        requests = [{"url": "/gate/report?day=1", "headers": {}} for _ in range(n)]
        responses = asyncio.run(_many(uds, requests))
    assert int(client.get("calls:/gate/report") or 0) == 1
    assert client.scard("pids") >= 2, "the requests reached one worker only"
    bodies = set()
    for response in responses:
        assert response is not None
        assert response.status_code == 200
        assert response.headers.get_list("x-repeat") == ["one", "two"]
        bodies.add(response.content)
    assert len(bodies) == 1
    # Without ttl= nothing is kept: the response is gone from Redis with its flight.
    assert not _values(client)


def _values(client: Any) -> list[bytes]:
    """The value keys in Redis (not the leases, flights' lists or generations)."""
    return [
        k
        for k in client.scan_iter("fleet:*")
        if b":done:" not in k and not k.endswith((b":gen", b":lease"))
    ]


@pytest.mark.parametrize("kind", ["uvicorn", "gunicorn"])
def test_h6_ttl_keeps_the_micro_cache_in_redis_for_every_worker(
    kind: str, redis_server: RedisServer
) -> None:
    """H6/H8: with ttl= the response lives in Redis; every worker serves it with an Age."""
    client = redis_server.client()
    with fleet(kind, redis_server, ttl="60") as uds:
        client.set("gate", 1)
        first = asyncio.run(_many(uds, [{"url": "/gate/kept", "headers": {}}]))[0]
        later = asyncio.run(_many(uds, [{"url": "/gate/kept", "headers": {}}] * 60))
        fresh = asyncio.run(
            _many(uds, [{"url": "/gate/kept", "headers": {"cache-control": "no-cache"}}])
        )[0]
    assert first is not None
    assert "age" not in first.headers
    assert int(client.get("calls:/gate/kept") or 0) == 2  # the first, and the no-cache one
    for response in later:
        assert response is not None
        assert response.status_code == 200
        assert response.content == first.content
        assert response.headers["age"].isdigit()
    assert fresh is not None
    assert "age" not in fresh.headers
    assert _values(client)


def _mixed_requests(n: int, seed: int) -> list[dict[str, Any]]:
    """Requests of every kind H2 and H1 name, each with a unique client marker."""
    rng = random.Random(seed)
    kinds = ["plain", "auth", "cookie-req", "set-cookie", "private", "nostore", "lang", "error"]
    requests = []
    for i in range(n):
        kind = rng.choice(kinds)
        headers = {"x-client": f"c{i}"}
        url = f"/gate/{kind}?q={rng.randrange(3)}"
        if kind == "auth":
            headers["authorization"] = f"Bearer user{rng.randrange(4)}"
        elif kind == "cookie-req":
            headers["cookie"] = f"sid=user{rng.randrange(4)}"
        elif kind == "set-cookie":
            url = f"/cookie?q={rng.randrange(3)}"
        elif kind == "private":
            url = f"/private?q={rng.randrange(3)}"
        elif kind == "nostore":
            url = f"/nostore?q={rng.randrange(3)}"
        elif kind == "lang":
            url = f"/lang?q={rng.randrange(3)}"
            headers["x-lang"] = rng.choice(["en", "fr", "de"])
        elif kind == "error":
            url = f"/error?q={rng.randrange(3)}"
        requests.append({"url": url, "headers": headers, "kind": kind})
    return requests


def _check_made_for(request: dict[str, Any], response: httpx.Response, private: bool) -> None:
    """The response was made for this request, or for one it may be shared with."""
    if request["kind"] == "error":
        assert response.status_code == 500
        return
    assert response.status_code == 200, response.text
    made = json.loads(response.content)
    path, _, query = request["url"].partition("?")
    assert (made["path"], made["query"]) == (path, query)
    headers = request["headers"]
    assert made["authorization"] == digest(headers.get("authorization"))
    assert made["cookie"] == digest(headers.get("cookie"))
    if request["kind"] == "lang":
        assert made["lang"] == headers["x-lang"]
    # Never shared (H2): made for this very client. With private=True, credentials join
    # the key, so requests carrying the same ones may share (checked above).
    alone = ["set-cookie", "private", "nostore"]
    if not private:
        alone += ["auth", "cookie-req"]
    if request["kind"] in alone:
        assert made["client"] == headers["x-client"]
        assert response.headers["x-made-for"] == headers["x-client"]


async def _disconnect_early(uds: str, paths: list[str]) -> None:
    """Open a connection per path, send the request and close before the response."""
    loop = asyncio.get_running_loop()
    for path in paths:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        await loop.sock_connect(sock, uds)
        await loop.sock_sendall(sock, f"GET {path} HTTP/1.1\r\nhost: fleet\r\n\r\n".encode())
        sock.close()


@pytest.mark.parametrize(("kind", "private"), [("uvicorn", "1"), ("gunicorn", "")])
def test_h6_h2_a_thousand_mixed_requests_reach_only_their_own_clients(
    kind: str, private: str, redis_server: RedisServer
) -> None:
    """H6/H2: 1,000 mixed requests (credentials, Set-Cookie, private, no-store, Vary,
    errors, early disconnects) across 3 workers: no response reaches a client it was not
    made for, and nothing private is written to Redis in clear."""
    client = redis_server.client()
    requests = _mixed_requests(1000, seed=15)
    with fleet(kind, redis_server, ttl="30", private=private) as uds:
        client.set("gate", 0)  # /gate paths do not wait here: requests come in waves
        seen: dict[bytes, bytes] = {}
        for start in range(0, len(requests), 250):
            wave = requests[start : start + 250]
            disconnects = [r["url"] for r in wave[:10]]
            responses = asyncio.run(_wave(uds, wave, disconnects))
            for request, response in zip(wave, responses, strict=True):
                assert response is not None, request
                _check_made_for(request, response, private=bool(private))
            for key in client.scan_iter("fleet:*"):
                if client.type(key) == b"string":
                    seen[key] = client.get(key) or b""
    everything = b"\n".join([*seen, *seen.values()])
    for request in requests:
        for name in ("authorization", "cookie"):
            secret = request["headers"].get(name)
            if secret:
                assert secret.encode() not in everything, f"{name} in clear in Redis"
    # Responses that may not be shared were never written to Redis.
    for marker in (b"session=", b"private", b"no-store", b"/cookie", b"/nostore"):
        assert marker not in everything, marker
    assert seen, "nothing shareable was kept in Redis"


async def _wave(
    uds: str, wave: list[dict[str, Any]], disconnects: list[str]
) -> list[httpx.Response | None]:
    responses, _ = await asyncio.gather(_many(uds, wave), _disconnect_early(uds, disconnects))
    return responses


@pytest.mark.parametrize("kind", ["uvicorn", "gunicorn"])
def test_h7_a_stale_response_is_served_by_every_worker_while_one_refresh_runs(
    kind: str, redis_server: RedisServer
) -> None:
    """H7: past its lifetime (max-age=1), within stale=, the response kept in Redis is
    served at once by every worker to 150 concurrent requests, while ONE background
    downstream call in the whole fleet refreshes it (it is held until all have arrived)."""
    client = redis_server.client()
    with fleet(kind, redis_server, ttl="60", stale="60") as uds:
        first = asyncio.run(_many(uds, [{"url": "/swr", "headers": {}}]))[0]
        assert first is not None
        kept_at = time.time()
        assert json.loads(first.content)["call"] == 1
        wait_until(lambda: time.time() > kept_at + 1.05, "max-age=1 to pass", timeout=5)
        client.set("gate", int(client.get("answered") or 0) + 150)
        responses = asyncio.run(_many(uds, [{"url": "/swr", "headers": {}}] * 150))

        def landed() -> bool:
            leases = [k for k in client.scan_iter("fleet:*") if k.endswith(b":lease")]
            return int(client.get("calls:/swr") or 0) >= 2 and not leases

        wait_until(landed, "the refresh to land", timeout=30)
        later = asyncio.run(_many(uds, [{"url": "/swr", "headers": {}}]))[0]
        pids = client.scard("pids")
    for response in responses:
        assert response is not None
        assert response.status_code == 200
        assert response.content == first.content  # the stale one, at once
    assert int(client.get("calls:/swr") or 0) == 2  # one refresh in the fleet
    assert later is not None
    assert json.loads(later.content)["call"] == 2
    assert pids >= 2
