"""R12: local copies (``local_ttl=``) follow the fleet, against a real redis-server.

One worker process keeps local copies and answers over a pipe (``_copies_workers``);
the test process plays the other processes of the fleet: it invalidates, clears and
stores through its own backend, and stops the copies channel. Every wait is on an
answer from the worker or on what Redis reports, bounded.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections.abc import Iterator
from typing import Any

import pytest
from _copies_workers import NAME
from _core_support import in_forked_child
from _redis_fixture import RedisServer, redis, running_server, wait_until
from _redis_workers import CLUSTER, make_backend

from coalesce import singleflight

pytestmark = pytest.mark.timeout(60)

SPAWN = multiprocessing.get_context("forkserver")
SPAWN.set_forkserver_preload(["_copies_workers"])


class Worker:
    """A process with local copies of ``copies(key)``, driven over a pipe."""

    def __init__(self, address: str, is_async: bool) -> None:
        from _copies_workers import copies_worker

        self.conn, theirs = SPAWN.Pipe()
        self.process = SPAWN.Process(target=copies_worker, args=(address, is_async, theirs))
        self.process.start()
        theirs.close()
        assert self.conn.poll(20), "the worker did not start"
        self.conn.recv()

    def ask(self, *command: Any, timeout: float = 20.0) -> Any:
        self.conn.send(command)
        assert self.conn.poll(timeout), f"the worker did not answer {command!r}"
        return self.conn.recv()

    def close(self) -> None:
        try:
            self.conn.send(("stop",))
        except OSError:
            pass
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.conn.close()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with running_server() as server:
        yield server


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    made: list[Worker] = []
    yield made
    for worker in made:
        worker.close()


def start(workers: list[Worker], address: str, kind: str) -> Worker:
    worker = Worker(address, kind == "async")
    workers.append(worker)
    assert worker.ask("up", 10.0), "the worker's copies channel never came up"
    return worker


class Here:
    """This process's ``copies`` function, through a backend of its own (no copies)."""

    def __init__(self, address: str, kind: str) -> None:
        self.kind = kind
        self.backend = make_backend(address, is_async=kind == "async")
        self.loop = asyncio.new_event_loop()
        if kind == "async":

            @singleflight(ttl=60, backend=self.backend, name=NAME)
            async def acopies(key: Any) -> str:
                return f"{key}:here"

            self.func: Any = acopies
        else:

            @singleflight(ttl=60, backend=self.backend, name=NAME)
            def copies(key: Any) -> str:
                return f"{key}:here"

            self.func = copies

    def call(self, key: Any) -> Any:
        if self.kind == "async":
            return self.loop.run_until_complete(self.func(key))
        return self.func(key)

    def invalidate(self, key: Any) -> bool:
        if self.kind == "async":
            return bool(self.loop.run_until_complete(self.func.ainvalidate(key)))
        return bool(self.func.invalidate(key))

    def clear(self) -> None:
        if self.kind == "async":
            self.loop.run_until_complete(self.func.acache_clear())
        else:
            self.func.cache_clear()

    def close(self) -> None:
        if self.kind == "async":
            self.loop.run_until_complete(self.backend.client.aclose())
        else:
            self.backend.client.close()
        self.loop.close()


@pytest.fixture
def here_factory() -> Iterator[Any]:
    made: list[Here] = []

    def make(address: str, kind: str) -> Here:
        here = Here(address, kind)
        made.append(here)
        return here

    yield make
    for here in made:
        here.close()


def copy_held(worker: Worker, key: Any) -> str:
    """Call ``key`` twice in the worker: the second is served by its local copy."""
    value = worker.ask("call", key)
    assert worker.ask("held", key)
    assert worker.ask("call", key) == value
    return str(value)


def listeners(client: redis.Redis) -> list[dict[str, Any]]:
    return [c for c in client.client_list() if c.get("name") == "coalesce-copies"]


# ------------------------------------------------------------------ single server


def test_r12_invalidate_elsewhere_drops_the_local_copy(
    redis_server: RedisServer, workers: list[Worker], here_factory: Any, kind: str
) -> None:
    worker = start(workers, redis_server.socket, kind)
    here = here_factory(redis_server.socket, kind)
    first = copy_held(worker, 1)
    other = copy_held(worker, 2)
    assert here.invalidate(1)
    assert worker.ask("dropped", 1, 5.0), "the worker kept its copy after invalidate()"
    assert worker.ask("held", 2), "another key's copy went too"
    again = worker.ask("call", 1)
    assert again != first  # not the dropped copy, nor Redis's old value: run anew
    assert worker.ask("call", 2) == other


def test_r12_cache_clear_elsewhere_drops_every_local_copy(
    redis_server: RedisServer, workers: list[Worker], here_factory: Any, kind: str
) -> None:
    worker = start(workers, redis_server.socket, kind)
    here = here_factory(redis_server.socket, kind)
    firsts = [copy_held(worker, key) for key in (1, 2, 3)]
    here.clear()
    for key in (1, 2, 3):
        assert worker.ask("dropped", key, 5.0), f"the worker kept its copy of {key}"
    assert [worker.ask("call", key) for key in (1, 2, 3)] != firsts


def test_r12_a_new_value_stored_elsewhere_replaces_the_local_copy(
    redis_server: RedisServer, workers: list[Worker], here_factory: Any, kind: str
) -> None:
    worker = start(workers, redis_server.socket, kind)
    here = here_factory(redis_server.socket, kind)
    copy_held(worker, 1)
    # The value goes from Redis behind everyone's back (no message), then this process
    # computes and stores a new one: that store is what tells the worker.
    client = redis_server.client()
    try:
        values = [k for k in client.scan_iter(match=f"coalesce:{NAME}:*") if k.count(b":") == 2]
        assert len(values) == 1
        client.delete(*values)
    finally:
        client.close()
    assert here.call(1) == "1:here"
    assert worker.ask("dropped", 1, 5.0), "the worker kept its copy after a new value was stored"
    assert worker.ask("call", 1) == "1:here"
    assert worker.ask("held", 1)


def test_r12_no_local_copy_is_served_while_the_channel_is_down(
    redis_server: RedisServer, workers: list[Worker], here_factory: Any, kind: str
) -> None:
    worker = start(workers, redis_server.socket, kind)
    here = here_factory(redis_server.socket, kind)
    client = redis_server.client()
    try:
        copy_held(worker, 1)
        # The listener may not subscribe again (PUBLISH still works); cut its connection.
        client.acl_setuser("default", enabled=True, nopass=True, commands=["-subscribe"])
        (listener,) = listeners(client)
        client.client_kill_filter(_id=listener["id"])
        assert worker.ask("down", 5.0), "the worker did not notice its channel went down"
        assert not worker.ask("held", 1), "a copy stayed while the channel was down"
        # Calls still go through Redis, and keep no copy meanwhile: a change made
        # elsewhere (that the worker cannot hear of) is seen at once.
        before = worker.ask("call", 1)
        assert not worker.ask("held", 1)
        assert here.invalidate(1)
        assert here.call(1) == "1:here" != before
        assert worker.ask("call", 1) == "1:here"
        assert not worker.ask("held", 1)
        # Back: it subscribes again by itself, and copies are kept again.
        client.acl_setuser("default", enabled=True, nopass=True, commands=["+subscribe"])
        assert worker.ask("up", 10.0), "the channel did not come back"
        assert copy_held(worker, 1) == "1:here"
        assert here.invalidate(1)
        assert worker.ask("dropped", 1, 5.0)
    finally:
        client.close()


def test_r12_the_channel_comes_back_after_a_server_restart(
    redis_server: RedisServer, workers: list[Worker], here_factory: Any
) -> None:
    worker = start(workers, redis_server.socket, "sync")
    copy_held(worker, 1)
    redis_server.stop()
    assert worker.ask("down", 5.0)
    assert not worker.ask("held", 1)
    worker.ask("call", 1)  # Redis is down: computed in the worker (R6), not kept
    assert not worker.ask("held", 1)
    redis_server.start()
    assert worker.ask("up", 10.0), "the channel did not come back after the restart"
    here = here_factory(redis_server.socket, "sync")
    copy_held(worker, 1)
    assert here.invalidate(1)
    assert worker.ask("dropped", 1, 5.0)


def test_r12_the_writer_keeps_its_own_copy(redis_server: RedisServer) -> None:
    """A process's own store does not drop its own copy (it skips its own messages)."""
    backend = make_backend(redis_server.socket, local_ttl=60.0)
    runs: list[int] = []

    @singleflight(ttl=60, backend=backend, name=NAME)
    def copies(key: Any) -> int:
        runs.append(key)
        return len(runs)

    assert backend._follower.ready.wait(10)
    assert copies(1) == 1
    assert copies(2) == 2
    # Another process's message comes after ours on the one connection: once it is
    # seen, ours was too.
    other = make_backend(redis_server.socket)
    other.bind(copies, name=NAME, ttl=60.0, is_async=False).invalidate(2)
    wait_until(lambda: 2 not in copies.cache, "the other process's invalidate() was heard")
    assert 1 in copies.cache
    assert copies(1) == 1
    assert runs == [1, 2]
    backend.close()
    assert 1 not in copies.cache  # closed: no channel, no copies
    assert copies(1) == 1  # from Redis
    assert 1 not in copies.cache


# ------------------------------------------------------------------ cluster


def cluster_address(cluster: Any) -> str:
    return f"{CLUSTER}127.0.0.1:{cluster.ports[0]}"


def test_r12_on_a_cluster_invalidate_and_clear_drop_local_copies(
    redis_cluster: Any, workers: list[Worker], here_factory: Any, kind: str
) -> None:
    address = cluster_address(redis_cluster)
    worker = start(workers, address, kind)
    here = here_factory(address, kind)
    keys = list(range(8))  # over every master (one hash tag per key)
    for key in keys:
        copy_held(worker, key)
    assert here.invalidate(3)
    assert worker.ask("dropped", 3, 5.0)
    assert worker.ask("held", 4)
    here.clear()
    for key in keys:
        assert worker.ask("dropped", key, 5.0), f"the worker kept its copy of {key}"
    assert worker.ask("call", 0) != "0:here"
    assert here.call(0) == worker.ask("call", 0)  # one value in the fleet


def test_r12_on_a_cluster_no_local_copy_is_served_while_the_channel_is_down(
    redis_cluster: Any, workers: list[Worker], here_factory: Any, kind: str
) -> None:
    address = cluster_address(redis_cluster)
    worker = start(workers, address, kind)
    here = here_factory(address, kind)
    copy_held(worker, 1)
    nodes = [redis_cluster.node_client(port) for port in redis_cluster.ports]
    try:
        for node in nodes:  # the listener may not subscribe again, on any node
            node.acl_setuser("default", enabled=True, nopass=True, commands=["-subscribe"])
        for node in nodes:
            for listener in listeners(node):
                node.client_kill_filter(_id=listener["id"])
        assert worker.ask("down", 5.0), "the worker did not notice its channel went down"
        assert not worker.ask("held", 1)
        assert here.invalidate(1)
        assert here.call(1) == "1:here"
        assert worker.ask("call", 1) == "1:here"  # read from Redis: no copy meanwhile
        assert not worker.ask("held", 1)
        for node in nodes:
            node.acl_setuser("default", enabled=True, nopass=True, commands=["+subscribe"])
        assert worker.ask("up", 10.0), "the channel did not come back"
        copy_held(worker, 1)
        assert here.invalidate(1)
        assert worker.ask("dropped", 1, 5.0)
    finally:
        for node in nodes:
            node.acl_setuser("default", enabled=True, nopass=True, commands=["+@all"])
            node.close()


# ------------------------------------------------------------------ fork (S14)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
@pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork.*:DeprecationWarning")
def test_r12_a_forked_child_keeps_no_copy_of_its_parent_until_its_own_channel_is_up(
    redis_server: RedisServer,
) -> None:
    """S14: the child drops its parent's copies, opens its own channel, and tells with a
    sender of its own (the parent hears the child's invalidate())."""
    backend = make_backend(redis_server.socket, local_ttl=60.0)

    @singleflight(ttl=60, backend=backend, name=NAME)
    def copies(key: Any) -> str:
        return f"{key}:{os.getpid()}"

    follower = backend._follower
    assert follower.ready.wait(10)
    stored = copies(1)
    assert 1 in copies.cache

    def child() -> tuple[bool, str, bool, bool, bool]:
        inherited = 1 in copies.cache
        value = copies(1)  # from Redis; starts this child's channel, keeps nothing yet
        up = follower.ready.wait(10)
        copies(1)
        kept = 1 in copies.cache
        copies.invalidate(1)  # told to the parent, under this child's own sender
        return inherited, value, up, kept, follower.sender != parent_sender

    parent_sender = follower.sender
    inherited, value, up, kept, new_sender = in_forked_child(child)
    assert not inherited, "the child served a copy its parent kept"
    assert value == stored
    assert up, "the child's channel never came up"
    assert kept, "the child kept no copy once its channel was up"
    assert new_sender
    wait_until(lambda: 1 not in copies.cache, "the parent heard the child's invalidate()")
    assert follower.up  # the child left the parent's connection alone
    backend.close()
