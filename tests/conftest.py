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
    """The session's Redis Cluster, emptied: a test sees only the keys it writes."""
    redis_cluster_session.flush()
    return redis_cluster_session
