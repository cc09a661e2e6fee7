"""P8: the HTTP middleware through a real server (uvicorn) and a real load generator (wrk).

One command (it starts its own servers on loopback and, for the fleet row, its own
redis-server on a unix socket; wrk comes from ``apt-get install wrk``)::

    python benchmarks/middleware.py                # 4 s of wrk per row
    python benchmarks/middleware.py --seconds 8

Every row serves the same FastAPI app under ``uvicorn`` (one worker, unless said) on
127.0.0.1 and is loaded by ``wrk`` with 32 connections for the same span; the ratios are
over the bare app measured in the same run:

- pass-through: requests carrying ``Authorization`` go straight through
  ``CoalesceMiddleware`` (H2) to a plain endpoint; bar: at least 0.95x the bare app's
  requests per second (at most 5% overhead);
- micro-cache hits: ``CoalesceMiddleware(ttl=60)`` in front of a 1 ms endpoint (one URL,
  so every request after the first is a hit); bar: at least 2x the bare app. Beside it,
  the same endpoint cached with fastapi-cache2's ``@cache(expire=60)`` (in-memory
  backend) and cashews' ``@cache(ttl=...)`` (``mem://``), where installed;
- stampede: 100 identical concurrent requests (httpx) at a cold 200 ms endpoint that
  counts its runs in a file, everyone keeping the response 60 s; coalesce in 1 worker,
  and across 3 workers with ``backend=RedisBackend(...)``; bar: 1 run. The peers'
  decorators beside it.

Each row's servers run side by side and the rounds alternate them, so a change in the
machine's load meets every contender; ratios are medians of per-round ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if not __package__:  # run as a script: make the repository's coalesce importable
    sys.path.insert(0, str(ROOT))

CONNECTIONS = 32
STAMPEDE = 100


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# uvicorn's fast parser and loop (uvicorn[standard]) where installed, as served in
# production; else its pure-Python ones, whose own cost then dominates every row.
HTTP = "httptools" if _installed("httptools") else "h11"
LOOP = "uvloop" if _installed("uvloop") else "asyncio"


# ------------------------------------------------------------------ the apps (in uvicorn)


def app_factory() -> Any:
    """The app for the row named by ``P8_VARIANT`` (uvicorn ``--factory``)."""
    from fastapi import FastAPI

    variant = os.environ["P8_VARIANT"]
    runs = os.environ.get("P8_RUNS", "")
    app = FastAPI()
    decorate = _peer(app, variant)

    @app.get("/plain")
    async def plain() -> dict[str, str]:
        return {"hello": "world"}

    @app.get("/work")
    @decorate
    async def work() -> dict[str, str]:
        await asyncio.sleep(0.001)
        return {"hello": "world"}

    @app.get("/stampede")
    @decorate
    async def stampede() -> dict[str, str]:
        with open(runs, "a") as log:  # noqa: ASYNC230 - one short append, the count
            log.write("run\n")
        await asyncio.sleep(0.2)
        return {"hello": "world"}

    if variant.startswith("coalesce"):
        from coalesce.asgi import CoalesceMiddleware

        options: dict[str, Any] = {}
        if variant == "coalesce-ttl":
            options["ttl"] = 60.0
        if variant == "coalesce-fleet":
            options["ttl"] = 60.0
            import redis.asyncio

            from coalesce.redis import RedisBackend

            client = redis.asyncio.Redis(unix_socket_path=os.environ["P8_REDIS"])
            options["backend"] = RedisBackend(client, prefix="p8")
        return CoalesceMiddleware(app, **options)
    return app


def _peer(app: Any, variant: str) -> Any:
    """The endpoint decorator a peer's documentation shows, or none."""
    if variant == "fastapi-cache2":
        from fastapi_cache import FastAPICache
        from fastapi_cache.backends.inmemory import InMemoryBackend
        from fastapi_cache.decorator import cache

        FastAPICache.init(InMemoryBackend(), prefix="p8")
        return cache(expire=60)
    if variant == "cashews":
        from cashews import cache as cashews

        cashews.setup("mem://")
        return cashews(ttl="60s")
    return lambda endpoint: endpoint


# ------------------------------------------------------------------------- the driver


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def server(variant: str, workers: int = 1, **env: str) -> Iterator[str]:
    port = _free_port()
    environ = {**os.environ, "P8_VARIANT": variant, **env}
    environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    command = [
        sys.executable, "-m", "uvicorn", "--factory", "benchmarks.middleware:app_factory",
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
        "--log-level", "warning", "--no-access-log", "--lifespan", "on",
        "--http", HTTP, "--loop", LOOP,
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, env=environ, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{variant}: uvicorn exited with {process.returncode}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{variant}: uvicorn did not listen within 60 s")
            time.sleep(0.05)
        time.sleep(0.5 * workers)  # let every worker finish starting
        yield url
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wrk(url: str, seconds: float, *headers: str) -> float:
    """Requests per second ``wrk`` reaches on ``url``."""
    command = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds:g}s", url]
    for header in headers:
        command += ["-H", header]
    subprocess.run(["wrk", "-t1", "-c4", "-d1s", url], capture_output=True, check=True)
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None or "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk failed on {url}:\n{out}")
    return float(match.group(1))


async def _stampede(url: str) -> list[int]:
    import httpx

    limits = httpx.Limits(max_connections=STAMPEDE, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        responses = await asyncio.gather(*(client.get(url) for _ in range(STAMPEDE)))
    return [r.status_code for r in responses]


def stampede(variant: str, workers: int = 1, **env: str) -> int:
    """How many times 100 identical concurrent requests ran the endpoint."""
    with tempfile.TemporaryDirectory(prefix="p8-") as directory:
        runs = Path(directory) / "runs"
        runs.touch()
        with server(variant, workers, P8_RUNS=str(runs), **env) as url:
            statuses = asyncio.run(_stampede(url + "/stampede"))
        assert statuses == [200] * STAMPEDE, statuses
        return len(runs.read_text().splitlines())


@contextlib.contextmanager
def redis_socket() -> Iterator[str]:
    executable = shutil.which("redis-server") or "/usr/bin/redis-server"
    directory = Path(tempfile.mkdtemp(prefix="p8-redis-"))
    path = str(directory / "redis.sock")
    process = subprocess.Popen(
        [executable, "--port", "0", "--unixsocket", path, "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(path):
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.01)
        yield path
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="P8: the middleware through uvicorn and wrk")
    parser.add_argument("--seconds", type=float, default=4.0, help="wrk duration per run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per row")
    options = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install -y wrk")
    seconds = options.seconds
    peers = [
        p for p, m in (("fastapi-cache2", "fastapi_cache"), ("cashews", "cashews")) if _installed(m)
    ]
    auth = "authorization: Bearer x"
    loads = {  # row -> (variant, path, headers)
        "bare /plain": ("bare", "/plain", (auth,)),
        "coalesce pass-through": ("coalesce", "/plain", (auth,)),
        "bare /work": ("bare", "/work", ()),
        "coalesce ttl=60 (hits)": ("coalesce-ttl", "/work", ()),
        **{f"{peer} (hits)": (peer, "/work", ()) for peer in peers},
    }
    rates: dict[str, list[float]] = {name: [] for name in loads}
    with contextlib.ExitStack() as stack:
        urls = {
            v: stack.enter_context(server(v)) for v in dict.fromkeys(x[0] for x in loads.values())
        }
        # Rounds alternate the contenders, so a change in the machine's load meets all.
        for _ in range(options.rounds):
            for name, (variant, path, headers) in loads.items():
                rates[name].append(wrk(urls[variant] + path, seconds, *headers))

    def ratio(name: str, base: str) -> float:
        return statistics.median(a / b for a, b in zip(rates[name], rates[base], strict=True))

    median = {name: statistics.median(values) for name, values in rates.items()}
    passing = ratio("coalesce pass-through", "bare /plain")
    hits = ratio("coalesce ttl=60 (hits)", "bare /work")
    rows = [
        ("pass-through (Authorization)", "bare app", median["bare /plain"], None, ""),
        ("pass-through (Authorization)", "coalesce", median["coalesce pass-through"], passing,
         _bar(passing >= 0.95, ">= 0.95x")),
        ("1 ms endpoint, one URL", "bare app", median["bare /work"], None, ""),
        ("1 ms endpoint, one URL", "coalesce ttl=60 (hits)", median["coalesce ttl=60 (hits)"],
         hits, _bar(hits >= 2, ">= 2x")),
    ]  # fmt: skip
    for peer in peers:
        name = f"{peer} (hits)"
        rows.append(("1 ms endpoint, one URL", name, median[name], ratio(name, "bare /work"), ""))
    print(
        f"P8 middleware: wrk -t1 -c{CONNECTIONS} -d{seconds:g}s on 127.0.0.1, uvicorn 1 worker "
        f"(--http {HTTP} --loop {LOOP}), "
        f"median of {options.rounds} alternating rounds (ratio: median of per-round ratios)"
    )
    print(f"{'load':30} {'contender':24} {'req/s':>8} {'ratio':>7}  bar")
    for load, who, rate, share, bar in rows:
        shown = "" if share is None else f"{share:.2f}x"
        print(f"{load:30} {who:24} {rate:8.0f} {shown:>7}  {bar}")

    print(f"\n{STAMPEDE} identical concurrent requests, 200 ms endpoint, ttl 60 s: endpoint runs")
    counts = [("bare app, 1 worker", stampede("bare"), "")]
    runs = stampede("coalesce-ttl")
    counts.append(("coalesce ttl=60, 1 worker", runs, _bar(runs == 1, "1")))
    with redis_socket() as path:
        runs = stampede("coalesce-fleet", 3, P8_REDIS=path)
    counts.append(("coalesce ttl=60 backend=Redis, 3 workers", runs, _bar(runs == 1, "1")))
    for peer in peers:
        counts.append((f"{peer} expire 60 s, 1 worker", stampede(peer), ""))
    for who, runs, bar in counts:
        print(f"{who:42} {runs:5d}  {bar}")


def _bar(ok: bool, bar: str) -> str:
    return f"{'ok' if ok else 'MISSED'} ({bar})"


if __name__ == "__main__":
    main()
