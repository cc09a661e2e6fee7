"""P7 (R12): how soon other processes' local copies drop a value invalidated elsewhere.

One command (it starts its own redis-server on a unix socket, and with ``--cluster``
its own 3-master Redis Cluster on loopback too)::

    python benchmarks/copies.py                  # 200 rounds x 3 holders, def and async
    python benchmarks/copies.py --cluster        # also on a Redis Cluster
    python benchmarks/copies.py --kind def --rounds 500

Each round, the invalidating process stores the round's key, every holder process (a
``RedisBackend`` with ``local_ttl=``) reads it into a local copy, then the invalidating
process reads the clock
and calls ``f.invalidate(key)``. Each holder's listener reads the clock the moment its
copy is dropped. The latency is that minus the invalidator's clock (``CLOCK_MONOTONIC``,
shared by the machine's processes): the invalidate script and its ``PUBLISH``, Redis
delivering the message, the holder's listener thread waking and dropping the copy.

Then, in this process, the cost of a local-copy hit with the copies channel on against
the same ``RedisBackend`` whose binding does not follow the fleet (the decorator keeps
copies either way; only the channel differs): the hit path is the same compiled lookup,
so the ratio should be 1.

Bar (SPEC P7, its invalidation half): median within 5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import socket as socketlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: make the repository's coalesce importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis
import redis.asyncio

from coalesce import singleflight
from coalesce.redis import RedisBackend

BAR_MS = 5.0
WARMUP = 5
NAME = "p7copies"


def _now_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def _client(address: str, async_client: bool) -> Any:
    """A client of ``unix:///path`` or ``cluster://host:port``."""
    if address.startswith("cluster://"):
        host, port = address[len("cluster://") :].rsplit(":", 1)
        kind: Any = redis.asyncio.RedisCluster if async_client else redis.RedisCluster
        return kind(host=host, port=int(port))
    kind = redis.asyncio.Redis if async_client else redis.Redis
    return kind.from_url(address)


class _Stamped:
    """A binding's local copies that note when each key's copy is dropped."""

    def __init__(self, copies: Any, dropped: dict[Hashable, int]) -> None:
        self.copies = copies
        self.dropped = dropped

    def drop(self, key: Hashable) -> None:
        self.copies.drop(key)
        self.dropped.setdefault(key, _now_ns())

    def drop_all(self) -> None:
        self.copies.drop_all()

    def holds(self, key: Hashable) -> bool:
        return bool(self.copies.holds(key))

    def after_fork(self) -> None:
        self.copies.after_fork()


def _holder(address: str, run: str, async_client: bool, go: Any, out: Any) -> None:
    """Hold a copy of each round's key; report when the listener dropped it."""
    backend = RedisBackend(_client(address, async_client), prefix="p7", local_ttl=600.0)
    dropped: dict[Hashable, int] = {}
    loop = asyncio.new_event_loop()
    if async_client:

        @singleflight(ttl=600, backend=backend, name=NAME)
        async def avalue(key: Any) -> str:
            return f"{key}"

        def call(key: Any) -> Any:
            return loop.run_until_complete(avalue(key))

        func: Any = avalue
    else:

        @singleflight(ttl=600, backend=backend, name=NAME)
        def value(key: Any) -> str:
            return f"{key}"

        call = value
        func = value
    follower = backend._follower
    for bindings in follower.bindings.values():  # stamp the drops of this one function
        for binding in bindings:
            binding._copies = _Stamped(binding._copies, dropped)
    if not follower.ready.wait(30):
        raise SystemExit("the holder's copies channel never came up")
    out.put(("ready", -1, 0))
    rounds = 0
    while (number := go.get()) is not None:
        key = (run, number)
        # The round's store was told to every process: once this listener has read that
        # message, a copy taken now is dropped only by the invalidation.
        rounds += 1
        deadline = time.monotonic() + 10
        while follower.heard < 2 * rounds - 1:
            if time.monotonic() > deadline:
                raise SystemExit(f"round {number}: the store's message never came")
            time.sleep(0.0005)
        call(key)
        call(key)
        assert key in func.cache, "no local copy"
        dropped.clear()
        out.put(("held", number, 0))
        deadline = time.monotonic() + 10
        while key not in dropped:  # the listener thread drops it; wait for that
            if time.monotonic() > deadline:
                raise SystemExit(f"round {number}: the copy was never dropped")
            time.sleep(0.0005)
        out.put(("dropped", number, dropped.pop(key)))
    backend.close()
    loop.close()


def measure(address: str, *, rounds: int, holders: int, async_client: bool) -> list[float]:
    """Run the rounds; return the latencies (ms), one per holder per round."""
    context = multiprocessing.get_context("spawn")
    out: Any = context.Queue()
    gos: list[Any] = [context.Queue() for _ in range(holders)]
    run = f"p7-{os.getpid()}-{time.time_ns()}"
    processes = [
        context.Process(target=_holder, args=(address, run, async_client, go, out), daemon=True)
        for go in gos
    ]
    for process in processes:
        process.start()
    ready = [out.get(timeout=60) for _ in range(holders)]
    assert all(r[0] == "ready" for r in ready), ready
    backend = RedisBackend(_client(address, False), prefix="p7")

    @singleflight(ttl=600, backend=backend, name=NAME)
    def value(key: Any) -> str:
        return f"{key}"

    latencies: list[float] = []
    try:
        for number in range(WARMUP + rounds):
            # Stored here first, so that the holders only read it (a store's own message
            # would drop a copy a holder read just before it).
            value((run, number))
            for go in gos:
                go.put(number)
            held = [out.get(timeout=60) for _ in range(holders)]
            assert all(r[:2] == ("held", number) for r in held), held
            began = _now_ns()
            value.invalidate((run, number))
            drops = [out.get(timeout=30) for _ in range(holders)]
            assert all(r[:2] == ("dropped", number) for r in drops), drops
            if number >= WARMUP:
                latencies.extend((r[2] - began) / 1e6 for r in drops)
    finally:
        for go in gos:
            go.put(None)
        for process in processes:
            process.join(10)
            if process.is_alive():
                process.kill()
        backend.client.close()
    return latencies


class _Hidden:
    """The same ``RedisBackend``, whose bindings do not follow the fleet (no channel)."""

    def __init__(self, backend: RedisBackend) -> None:
        self.backend = backend
        self.local_ttl = backend.local_ttl

    def bind(self, func: Callable[..., Any], **options: Any) -> Any:
        return _Unfollowing(self.backend.bind(func, **options))


class _Unfollowing:
    def __init__(self, binding: Any) -> None:
        self.binding = binding

    def call(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        return self.binding.call(key, compute)

    def call_fresh(self, key: Hashable, compute: Callable[[], Any]) -> tuple[Any, float]:
        return self.binding.call_fresh(key, compute)  # type: ignore[no-any-return]

    def invalidate(self, key: Hashable) -> bool:
        return bool(self.binding.invalidate(key))

    def clear(self) -> None:
        self.binding.clear()


def hit_cost(address: str, *, repeats: int = 9, calls: int = 200_000) -> tuple[float, float]:
    """Median ns per local-copy hit ``f(1)``: with the copies channel on, and without."""
    on_backend = RedisBackend(_client(address, False), prefix="p7hit", local_ttl=600.0)
    off_backend = _Hidden(RedisBackend(_client(address, False), prefix="p7hit", local_ttl=600.0))

    @singleflight(ttl=600, backend=on_backend, name="on")
    def on(key: int) -> int:
        return key

    @singleflight(ttl=600, backend=off_backend, name="off")
    def off(key: int) -> int:
        return key

    if not on_backend._follower.ready.wait(30):
        raise SystemExit("the copies channel never came up")
    for func in (on, off):
        func(1)
        func(1)
        assert 1 in func.cache
    timings: dict[str, list[float]] = {"on": [], "off": []}
    for _ in range(repeats):
        for label, func in (("on", on), ("off", off)):
            began = time.perf_counter_ns()
            for _ in range(calls):
                func(1)
            timings[label].append((time.perf_counter_ns() - began) / calls)
    assert on.cache_info().misses == 1  # hits only
    assert off.cache_info().misses == 1
    on_backend.close()
    on_backend.client.close()
    off_backend.backend.client.close()
    return statistics.median(timings["on"]), statistics.median(timings["off"])


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _wait_for(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting for {what}")
        time.sleep(0.05)


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.exceptions.ConnectionError:
        return False


@contextmanager
def _server(directory: Path) -> Iterator[str]:
    """Its own redis-server on a unix socket: yields ``unix:///path``."""
    executable = shutil.which("redis-server")
    if executable is None:
        raise SystemExit("redis-server not found: install it (apt-get install redis-server)")
    path = directory / "redis.sock"
    process = subprocess.Popen(
        [
            *(executable, "--port", "0", "--unixsocket", str(path), "--save", ""),
            *("--appendonly", "no", "--logfile", str(directory / "redis.log")),
        ],
        stdin=subprocess.DEVNULL,
    )
    try:
        probe = redis.Redis(unix_socket_path=str(path))
        _wait_for(lambda: _answers(probe), "redis-server")
        probe.close()
        yield f"unix://{path}"
    finally:
        process.terminate()
        process.wait(10)


def _free_port() -> int:
    """A free loopback port whose cluster bus port (``+ 10000``) is free too."""
    for _ in range(200):
        with socketlib.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port + 10000 > 65535:
            continue
        with socketlib.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise SystemExit("found no free loopback port pair for the cluster")


@contextmanager
def _cluster(directory: Path, masters: int = 3) -> Iterator[str]:
    """Its own Redis Cluster of ``masters`` masters on loopback: ``cluster://host:port``."""
    executable = shutil.which("redis-server")
    cli = shutil.which("redis-cli")
    if executable is None or cli is None:
        raise SystemExit("redis-server and redis-cli are needed for --cluster")
    ports = [_free_port() for _ in range(masters)]
    processes = []
    try:
        for port in ports:
            node = directory / f"node-{port}"
            node.mkdir()
            processes.append(
                subprocess.Popen(
                    [
                        *(executable, "--port", str(port), "--bind", "127.0.0.1"),
                        *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
                        *("--save", "", "--appendonly", "no", "--logfile", "redis.log"),
                    ],
                    cwd=node,
                    stdin=subprocess.DEVNULL,
                )
            )
        for port in ports:
            probe = redis.Redis(port=port)
            _wait_for(lambda probe=probe: _answers(probe), f"node {port}")  # type: ignore[misc]
            probe.close()
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=60,
        )
        probe = redis.Redis(port=ports[0])
        _wait_for(lambda: probe.cluster("info").get("cluster_state") == "ok", "cluster state ok")
        probe.close()
        yield f"cluster://127.0.0.1:{ports[0]}"
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(10)


def _report(where: str, kind: str, args: argparse.Namespace, latencies: list[float]) -> None:
    median = statistics.median(latencies)
    print(f"{where}, {args.rounds} rounds x {args.holders} holder processes ({kind})")
    print("  invalidate() called -> the other processes' local copies dropped, ms:")
    print(
        f"    median {median:.3f}   p90 {_percentile(latencies, 0.9):.3f}   "
        f"p99 {_percentile(latencies, 0.99):.3f}   max {max(latencies):.3f}"
    )
    verdict = "PASS" if median <= BAR_MS else "FAIL"
    print(f"  P7 (local copies) median {median:.3f} ms (bar <= {BAR_MS:g} ms) {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/copies.py",
        description=(
            "SPEC P7/R12: invalidate() in one process to the local copies of the others "
            "dropping it, and the local-copy hit cost with the copies channel on and off. "
            "The bar is reported, not asserted."
        ),
    )
    parser.add_argument("--rounds", type=int, default=200, help="measured rounds (200)")
    parser.add_argument("--holders", type=int, default=3, help="holder processes (3)")
    parser.add_argument(
        "--kind", choices=("def", "async", "both"), default="both", help="the holders' kind"
    )
    parser.add_argument("--cluster", action="store_true", help="also on a 3-master cluster")
    args = parser.parse_args(argv)
    kinds = {"def": [False], "async": [True], "both": [False, True]}[args.kind]
    directory = Path(tempfile.mkdtemp(prefix="coalesce-p7-"))
    try:
        print(f"P7 local copies: {os.cpu_count()} CPUs, redis-py {redis.__version__}")
        places: list[tuple[str, Any]] = [("single server (unix socket)", _server)]
        if args.cluster:
            places.append(("3-master cluster (loopback TCP)", _cluster))
        for where, start in places:
            with start(directory) as address:
                for async_client in kinds:
                    latencies = measure(
                        address, rounds=args.rounds, holders=args.holders, async_client=async_client
                    )
                    kind = "async def, redis.asyncio" if async_client else "def, redis.Redis"
                    _report(where, kind, args, latencies)
                if start is _server:
                    on, off = hit_cost(address)
                    print(
                        f"local-copy hit f(1): channel on {on:.1f} ns, off {off:.1f} ns, "
                        f"on/off {on / off:.3f}"
                    )
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
