"""SPEC section 2 where ``def`` and ``async def`` behave alike: each test runs once per kind.

Callers here are threads (``Caller``): a ``def`` call runs in the thread, an
``async def`` call runs in a fresh event loop of that thread, so for ``async def``
these tests are about calls from other loops (S10). What only one kind does
(threads joining one execution, tasks of one loop, cancellation) stays in
test_sync_semantics.py and test_async_semantics.py.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import cachetools
import pytest
from _core_support import Caller, as_kind, in_forked_child, run, wait

from coalesce import singleflight
from coalesce._store import TTLStore

CACHES: dict[str, Callable[[], dict[str, Any]]] = {
    "ttl": lambda: {"ttl": 60},
    "dict": lambda: {"cache": {}},
    "lru": lambda: {"cache": cachetools.LRUCache(maxsize=100)},
    "ttlcache": lambda: {"cache": cachetools.TTLCache(maxsize=100, ttl=60)},
}
ALL_OPTIONS: dict[str, Callable[[], dict[str, Any]]] = {"none": dict, **CACHES}


class _Box:
    """A fresh object per execution, so ``is`` tells executions apart."""

    def __init__(self, value: object) -> None:
        self.value = value


# --------------------------------------------------------------------------- S3


def test_s3_no_gap_with_ttl(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """S3: a caller arriving after the result is stored but before the flight ends runs nothing."""
    stored = threading.Event()
    leave = threading.Event()
    # No public hook runs between the built-in store's write and the flight's end, so
    # the store's save is held open here (with cache=, the mapping's __setitem__ is
    # that hook: test_sync_semantics.py holds it instead).
    original = TTLStore.save

    def save(self: TTLStore, key: Any, value: Any, *rest: Any) -> None:
        original(self, key, value, *rest)
        stored.set()
        wait(leave, "the late caller")  # the flight stays open, its result stored

    monkeypatch.setattr(TTLStore, "save", save)
    runs: list[int] = []

    def body(x: int) -> _Box:
        runs.append(x)
        return _Box(x)

    load = singleflight(ttl=60)(as_kind(kind, body))
    leader = Caller(load, 1)
    leader.start()
    wait(stored)
    assert load.cache_info().in_flight == 1  # the flight has not left yet
    late = run(load, 1)
    leave.set()
    assert leader.result() is late
    assert runs == [1]


# --------------------------------------------------------------------------- S6


@pytest.mark.parametrize("options", CACHES.values(), ids=CACHES.keys())
def test_s6_hit_never_waits_on_another_threads_flight(
    kind: str, options: Callable[[], dict[str, Any]]
) -> None:
    """S6: a hit on a cached key returns while another thread's flight for another key blocks."""
    release = threading.Event()
    entered = threading.Event()

    def body(x: str) -> str:
        if x == "slow":
            entered.set()
            wait(release)
        return x.upper()

    load = singleflight(**options())(as_kind(kind, body))
    assert run(load, "cached") == "CACHED"
    slow = Caller(load, "slow")
    slow.start()
    wait(entered)
    hit = Caller(load, "cached")
    hit.start()
    assert hit.result() == "CACHED"
    assert slow.is_alive()
    assert load.cache_info().in_flight == 1
    release.set()
    assert slow.result() == "SLOW"


# --------------------------------------------------------------------------- S14


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
@pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork.*:DeprecationWarning")
@pytest.mark.parametrize("options", ALL_OPTIONS.values(), ids=ALL_OPTIONS.keys())
def test_s14_fork_child_inherits_no_flight(
    kind: str, options: Callable[[], dict[str, Any]]
) -> None:
    """S14: a forked child runs a key itself although the parent had it in flight."""
    parent = os.getpid()
    entered = threading.Event()
    release = threading.Event()

    def body(x: int) -> str:
        if os.getpid() == parent:
            entered.set()
            wait(release)
            return "parent"
        return "child"

    load = singleflight(**options())(as_kind(kind, body))
    leader = Caller(load, 1)
    leader.start()
    wait(entered)
    try:

        def child() -> tuple[str, str, int]:
            return run(load, 1), run(load, 2), load.cache_info().in_flight

        assert in_forked_child(child) == ("child", "child", 0)
    finally:
        release.set()
    assert leader.result() == "parent"
