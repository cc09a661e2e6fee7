"""P7: a fleet of processes on one hot, short-lived key set, with stale= through Redis.

One command (it starts its own redis-server on a unix socket)::

    python benchmarks/fleet.py                 # 4 processes x 64 keys, 6 s per contender
    python benchmarks/fleet.py --seconds 10

Each of 4 processes calls a function for keys drawn from a Zipf stream (theta 0.99)
over 64 keys, as fast as it can, for the same wall-clock span. The function takes
20 ms; values live ``ttl=1`` s and, for coalesce, stay usable ``stale=30`` s more.
Measured per contender:

- executions per key per ttl window: every execution is logged with its key and the
  1 s window it began in; the figure is executions over the (key, window) pairs that
  had any (1.0: never two for one key in one window);
- p99 call latency beside the p99 of a plain Redis ``GET`` round trip, taken by the
  same processes on the same server (and both medians);
- how many calls took at least one execution's 20 ms: a caller that waits on a
  refresh (or on a computation elsewhere) takes that long, one served at once does
  not, unless the machine stalled it.

Contenders, each set up as its documentation shows: coalesce
(``@singleflight(ttl=1, stale=30, backend=RedisBackend(...))``), dogpile.cache's
``dogpile.cache.redis`` region with ``distributed_lock=True``, and cashews with its
Redis backend and ``@cache.early``. Bars (SPEC P7): at most 1.05 executions per key per
ttl window, and p99 within 3x the GET round trip.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import multiprocessing
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: make the repository's coalesce importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROCESSES, KEYS, THETA = 4, 64, 0.99
TTL, STALE, WORK = 1.0, 30.0, 0.02


def zipf_stream(seed: int) -> Callable[[], int]:
    """Keys 0..KEYS-1 with P(k) proportional to 1 / (k + 1) ** THETA."""
    weights = list(itertools.accumulate(1 / (k + 1) ** THETA for k in range(KEYS)))
    total = weights[-1]
    draw = random.Random(seed).random
    return lambda: bisect.bisect_left(weights, draw() * total)


def _coalesce(socket: str, log: Callable[[int], None]) -> Callable[[int], Any]:
    import redis

    from coalesce import singleflight
    from coalesce.redis import RedisBackend

    backend = RedisBackend(redis.Redis(unix_socket_path=socket), prefix="p7")

    @singleflight(ttl=TTL, stale=STALE, backend=backend, name="work")
    def work(key: int) -> int:
        log(key)
        time.sleep(WORK)
        return key

    return work


def _dogpile(socket: str, log: Callable[[int], None]) -> Callable[[int], Any]:
    from dogpile.cache import make_region

    region = make_region().configure(
        "dogpile.cache.redis",
        expiration_time=TTL,
        arguments={
            "url": f"unix://{socket}",
            "distributed_lock": True,
            "thread_local_lock": False,
            "redis_expiration_time": int(TTL + STALE),
        },
    )

    @region.cache_on_arguments()
    def work(key: int) -> int:
        log(key)
        time.sleep(WORK)
        return key

    return work


def _cashews(socket: str, log: Callable[[int], None]) -> Callable[[int], Any]:
    import asyncio
    import datetime

    from cashews import Cache

    cache = Cache()
    from redis.asyncio import UnixDomainSocketConnection

    class Unix(UnixDomainSocketConnection):
        """cashews passes TCP keepalive options; a unix socket has none."""

        def __init__(self, **options: Any) -> None:
            for tcp_only in ("socket_keepalive", "socket_keepalive_options", "host", "port"):
                options.pop(tcp_only, None)
            super().__init__(**options)

    cache.setup("redis://localhost", client_side=False, connection_class=Unix, path=socket)
    loop = asyncio.new_event_loop()

    @cache.early(
        ttl=datetime.timedelta(seconds=TTL + STALE),
        early_ttl=datetime.timedelta(seconds=TTL),
        key="p7:{key}",
    )
    async def work(key: int) -> int:
        log(key)
        await asyncio.sleep(WORK)
        return key

    return lambda key: loop.run_until_complete(work(key))


CONTENDERS: dict[str, Callable[[str, Callable[[int], None]], Callable[[int], Any]]] = {
    "coalesce (stale=)": _coalesce,
    "dogpile.cache (redis, distributed_lock)": _dogpile,
    "cashews (redis, early)": _cashews,
}


def _worker(name: str, socket: str, seed: int, start: float, seconds: float, out: Any) -> None:
    import redis

    executions: list[tuple[int, int]] = []

    def log(key: int) -> None:
        executions.append((key, int((time.time() - start) // TTL)))

    try:
        call = CONTENDERS[name](socket, log)
        plain = redis.Redis(unix_socket_path=socket)
        plain.set("p7:plain", b"x" * 32)
        next_key = zipf_stream(seed)
        for key in range(KEYS):  # warm: every key stored once before the clock starts
            if seed == 0:
                call(key)
        while time.time() < start:
            time.sleep(0.001)
        executions.clear()
        latencies: list[float] = []
        gets: list[float] = []
        while time.time() < start + seconds:
            key = next_key()
            began = time.perf_counter()
            call(key)
            latencies.append(time.perf_counter() - began)
            if len(latencies) % 10 == 0:
                began = time.perf_counter()
                plain.get("p7:plain")
                gets.append(time.perf_counter() - began)
        out.put(("ok", executions, latencies, gets))
    except Exception as exc:  # a peer that cannot run here is reported, not fatal
        out.put(("error", f"{type(exc).__name__}: {exc}", [], []))


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


def _start_server(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    executable = shutil.which("redis-server") or "/usr/bin/redis-server"
    socket = str(directory / "redis.sock")
    process = subprocess.Popen(
        [executable, "--port", "0", "--unixsocket", socket, "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    import redis

    for _ in range(500):
        try:
            if redis.Redis(unix_socket_path=socket).ping():
                return process, socket
        except redis.exceptions.ConnectionError:
            time.sleep(0.01)
    process.kill()
    raise SystemExit("redis-server did not start")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args(argv)
    directory = Path(tempfile.mkdtemp(prefix="p7-"))
    server, socket = _start_server(directory)
    context = multiprocessing.get_context("spawn")
    import redis

    print(
        f"P7: {PROCESSES} processes x {KEYS} keys, Zipf({THETA}), ttl={TTL}s, "
        f"{WORK * 1000:.0f} ms per execution, {args.seconds}s each\n"
    )
    print(
        "| contender | executions per key per ttl window | calls | calls >= one execution "
        "| p50 call | p99 call | p50 GET | p99 GET | p99 / GET |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    try:
        for name in CONTENDERS:
            redis.Redis(unix_socket_path=socket).flushall()
            out = context.Queue()
            start = time.time() + 3.0  # every process is up and warm by then
            processes = [
                context.Process(target=_worker, args=(name, socket, i, start, args.seconds, out))
                for i in range(PROCESSES)
            ]
            for process in processes:
                process.start()
            replies = [out.get(timeout=args.seconds + 60) for _ in processes]
            for process in processes:
                process.join(30)
            errors = [r[1] for r in replies if r[0] == "error"]
            if errors:
                print(f"| {name} | failed: {errors[0]} | | | |")
                continue
            pairs: Counter[tuple[int, int]] = Counter()
            latencies: list[float] = []
            gets: list[float] = []
            for _, executions, lat, get in replies:
                pairs.update(executions)
                latencies += lat
                gets += get
            per_window = sum(pairs.values()) / len(pairs) if pairs else 0.0
            p99, p99_get = _quantile(latencies, 0.99), _quantile(gets, 0.99)
            slow = sum(latency >= WORK for latency in latencies)
            print(
                f"| {name} | {per_window:.3f} | {len(latencies)} | {slow} "
                f"| {_quantile(latencies, 0.5) * 1e3:.2f} ms | {p99 * 1e3:.2f} ms "
                f"| {_quantile(gets, 0.5) * 1e3:.2f} ms | {p99_get * 1e3:.2f} ms "
                f"| {p99 / p99_get:.1f}x |",
                flush=True,
            )
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
