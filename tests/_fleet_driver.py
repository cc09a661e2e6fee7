"""Drives a fleet of worker processes (``_fleet_workers.py``) from a test (R10, R11, O1).

A :class:`Fleet` starts worker processes on one Redis (a server or the cluster), each
with its own client, backend, ``@singleflight(backend=..., name="report")`` function and
frozen clock; a :class:`Worker` sends one process commands over its pipe and reads its
answers and the executions it reports. Every wait is bounded.
"""

from __future__ import annotations

import multiprocessing
from typing import Any

from _fleet_workers import fleet_worker
from _redis_fixture import RedisTarget

from coalesce.redis import RedisBackend

SPAWN = multiprocessing.get_context("forkserver")
T0 = 1_800_000_000.0  # when the tests' first values are stored, by every worker's clock


class Worker:
    """One process of the fleet, driven over a pipe."""

    def __init__(self, fleet: Fleet, conn: Any, process: Any) -> None:
        self.fleet = fleet
        self.conn = conn
        self.process = process
        self.inbox: list[tuple[Any, ...]] = []
        self.next_id = 0

    def send(self, *command: Any) -> None:
        self.conn.send(command)

    def _take(self, match: Any, timeout: float) -> tuple[Any, ...]:
        deadline_polls = int(timeout / 0.05)
        for _ in range(deadline_polls):
            for i, message in enumerate(self.inbox):
                if match(message):
                    return self.inbox.pop(i)
            if self.conn.poll(0.05):
                self.inbox.append(self.conn.recv())
        raise AssertionError(f"worker {self.process.pid} gave no such message in {timeout}s")

    def start(self, command: str, *args: Any) -> int:
        """Send ``command`` and return its id, without waiting for its end."""
        self.next_id += 1
        self.send(command, self.next_id, *args)
        return self.next_id

    def result(self, ident: int, timeout: float = 30.0) -> tuple[str, Any]:
        message = self._take(lambda m: m[0] == "done" and m[1] == ident, timeout)
        return message[2], message[3]

    def do(self, command: str, *args: Any) -> Any:
        status, value = self.result(self.start(command, *args))
        assert status == "ok", value
        return value

    def call(self, day: Any) -> Any:
        return self.do("call", day)

    def fails(self, day: Any) -> tuple[str, str, int]:
        status, value = self.result(self.start("call", day))
        assert status == "error", value
        return tuple(value)  # type: ignore[return-value]

    def started(self, n: int, timeout: float = 30.0) -> bool:
        """Wait until this worker ran execution number ``n`` of the fleet."""
        return bool(self._take(lambda m: m[0] == "started" and m[1] == n, timeout))

    def saw(self, n: int) -> bool:
        """Whether this worker has reported execution number ``n`` (without waiting)."""
        while self.conn.poll(0):
            self.inbox.append(self.conn.recv())
        return any(m[0] == "started" and m[1] == n for m in self.inbox)

    def info(self) -> tuple[dict[str, int], list[str]]:
        """``cache_info()`` in that process, by field name, and the warnings it logged."""
        cache_info, warnings = self.do("info")
        return cache_info, warnings

    def at(self, timestamp: float) -> None:
        self.send("freeze", timestamp)

    def mode(self, **mode: Any) -> None:
        self.send("mode", mode)


class Fleet:
    """Several workers on one Redis (a server or the cluster), and the count of executions."""

    def __init__(self, server: RedisTarget) -> None:
        self.server = server
        self.counter = SPAWN.Value("i", 0)
        self.workers: list[Worker] = []

    def spawn(
        self, n: int, is_async: bool, backend: dict[str, Any], **decorator: Any
    ) -> list[Worker]:
        backend = {"prefix": "fleet", **backend}
        for _ in range(n):
            ours, theirs = SPAWN.Pipe()
            process = SPAWN.Process(
                target=fleet_worker,
                args=(self.server.socket, is_async, backend, decorator, theirs, self.counter, T0),
                daemon=True,
            )
            process.start()
            theirs.close()
            self.workers.append(Worker(self, ours, process))
        return self.workers

    @property
    def executions(self) -> int:
        return int(self.counter.value)

    def at(self, timestamp: float) -> None:
        for worker in self.workers:
            worker.at(timestamp)

    def value_key(self, day: Any) -> str:
        bound = RedisBackend(self.server.client(), prefix="fleet").bind(
            fleet_worker, name="report", ttl=1.0, is_async=False
        )
        return bound.redis_key(day)

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for worker in self.workers:
            if worker.process.is_alive():
                try:
                    worker.send("release")
                    worker.send("quit")
                except (BrokenPipeError, OSError):
                    pass
        for worker in self.workers:
            worker.process.join(10)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(10)


def stored_n(server: RedisTarget, fleet: Fleet, day: Any, n: int) -> bool:
    """Whether Redis holds the value of execution ``n`` for ``day`` (read by a binding)."""
    bound = RedisBackend(server.client(), prefix="fleet").bind(
        fleet_worker, name="report", ttl=1.0, is_async=False
    )
    raw = server.client().get(fleet.value_key(day))
    if raw is None:
        return False
    kind, value, _ = bound._opened(fleet.value_key(day), raw)
    return bool(kind) and value["n"] == n
