"""A real redis-server for the Redis tests, and the code their worker processes run.

The fixture starts ``redis-server`` on a unix socket in a temporary directory (no TCP
port, no persistence) and stops it afterwards; a test can stop it and start it again
on the same socket to play an outage. Without ``redis-server`` the tests skip, unless
``COALESCE_REQUIRE_REDIS=1`` makes that a failure (CI sets it).

The code the worker processes run is in ``_redis_workers.py``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

redis = pytest.importorskip("redis", reason="redis-py is not installed (the 'redis' extra)")
from redis.backoff import NoBackoff  # noqa: E402
from redis.retry import Retry  # noqa: E402

REQUIRE_ENV = "COALESCE_REQUIRE_REDIS"


def find_redis_server() -> str:
    """The path of ``redis-server``, or skip (fail under COALESCE_REQUIRE_REDIS=1)."""
    path = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
    )
    if path is None:
        message = (
            "redis-server was not found on PATH: install it (apt-get install redis-server, "
            "or brew install redis) to run the Redis tests"
        )
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{message}; {REQUIRE_ENV}=1 requires them", pytrace=False)
        pytest.skip(f"{message}; set {REQUIRE_ENV}=1 to make this a failure")
    return path


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Wait for a condition another process brings about; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout}s waiting until {what}")
        time.sleep(0.002)


class RedisServer:
    """One ``redis-server`` process on a unix socket; ``stop()`` and ``start()`` again."""

    def __init__(self, executable: str, directory: Path) -> None:
        self.executable = executable
        self.directory = directory
        self.socket = str(directory / "redis.sock")
        self.url = f"unix://{self.socket}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.process is None, "already running"
        self.process = subprocess.Popen(
            [
                self.executable,
                "--port",
                "0",
                "--unixsocket",
                self.socket,
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--logfile",
                str(self.directory / "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
        )
        probe = self.client()
        try:

            def answers() -> bool:
                if self.process is not None and self.process.poll() is not None:
                    log = (self.directory / "redis.log").read_text(errors="replace")
                    raise RuntimeError(f"redis-server exited at start:\n{log}")
                try:
                    return bool(probe.ping())
                except redis.exceptions.ConnectionError:
                    return False

            wait_until(answers, "redis-server answers PING")
        finally:
            probe.close()

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        if os.path.exists(self.socket):
            os.unlink(self.socket)

    def client(self, **options: Any) -> redis.Redis:
        """A sync client that fails at once when the server is gone (no retries)."""
        return redis.Redis(unix_socket_path=self.socket, retry=Retry(NoBackoff(), 0), **options)

    def async_client(self, **options: Any) -> redis.asyncio.Redis:
        return redis.asyncio.Redis(
            unix_socket_path=self.socket, retry=Retry(NoBackoff(), 0), **options
        )


@contextlib.contextmanager
def running_server() -> Iterator[RedisServer]:
    """A fresh redis-server on a unix socket in a temp dir, stopped on exit."""
    executable = find_redis_server()
    # A short directory: unix socket paths are limited to about 100 bytes.
    directory = Path(tempfile.mkdtemp(prefix="coalesce-redis-"))
    server = RedisServer(executable, directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
