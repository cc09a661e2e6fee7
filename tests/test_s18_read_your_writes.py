"""S18: invalidation is read-your-writes.

``invalidate()``/``cache_clear()`` (and ``ainvalidate()``/``acache_clear()``) detach the
execution in flight, as ``forget`` does: a call that starts afterwards runs anew and
sees the write, while the detached execution still answers the callers that had
joined it and stores nothing. Threads and asyncio, with every store.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import cachetools
import pytest
from _core_support import WAIT, Caller, aeventually, await_bounded, eventually, wait

from coalesce import singleflight

STORES: dict[str, Callable[[], dict[str, Any]]] = {
    "none": dict,
    "ttl": lambda: {"ttl": 60},
    "dict": lambda: {"cache": {}},
    "lru": lambda: {"cache": cachetools.LRUCache(maxsize=10)},
}
CLEARS = ("invalidate", "cache_clear")


class Db:
    """The data behind the cached function, and a gate that holds its first read."""

    def __init__(self, kind: str) -> None:
        self.rows = {"k": "old", "j": "old-j"}
        self.runs = 0
        self.read = threading.Event()  # the first execution has read the old value
        self.release = threading.Event() if kind == "sync" else asyncio.Event()


def _sync_reader(db: Db, options: dict[str, Any]) -> Any:
    @singleflight(**options)
    def read(k: str) -> str:
        db.runs += 1
        value = db.rows[k]
        if db.runs == 1:
            db.read.set()
            wait(db.release, "release")  # type: ignore[arg-type]
        return value

    return read


def _async_reader(db: Db, options: dict[str, Any]) -> Any:
    @singleflight(**options)
    async def read(k: str) -> str:
        db.runs += 1
        value = db.rows[k]
        if db.runs == 1:
            db.read.set()
            await await_bounded(db.release.wait())  # type: ignore[union-attr]
        return value

    return read


def _clear(read: Any, how: str, key: str) -> None:
    if how == "invalidate":
        read.invalidate(key)
    else:
        read.cache_clear()


@pytest.mark.parametrize("how", CLEARS)
@pytest.mark.parametrize("store", STORES)
def test_s18_sync_read_after_write_sees_the_write(store: str, how: str) -> None:
    """S18: def: write, invalidate (or cache_clear), read: the read sees the write."""
    db = Db("sync")
    read = _sync_reader(db, STORES[store]())
    old = Caller(read, "k")
    old.start()
    wait(db.read, "the first read")
    joined = Caller(read, "k")
    joined.start()
    eventually(lambda: read.cache_info().coalesced == 1, "a caller joined")
    db.rows["k"] = "new"
    _clear(read, how, "k")
    assert read("k") == "new"  # runs anew: never the result read before the write
    assert db.runs == 2
    db.release.set()
    assert old.result() == "old"  # the detached execution still answers its callers
    assert joined.result() == "old"
    eventually(lambda: read.cache_info().in_flight == 0, "the old execution ended")
    assert read("k") == "new"  # it stored nothing over the new result
    assert db.runs == (2 if store != "none" else 3)


@pytest.mark.parametrize("how", ["invalidate", "cache_clear", "ainvalidate", "acache_clear"])
@pytest.mark.parametrize("store", STORES)
def test_s18_async_read_after_write_sees_the_write(store: str, how: str) -> None:
    """S18: async def (the issue's repro): invalidate while a read runs, read: sees the write."""
    db = Db("async")

    async def main() -> None:
        read = _async_reader(db, STORES[store]())
        old = asyncio.create_task(read("k"))
        joined = asyncio.create_task(read("k"))
        await aeventually(
            lambda: db.read.is_set() and read.cache_info().coalesced == 1, "a caller joined"
        )
        db.rows["k"] = "new"
        if how == "ainvalidate":
            await read.ainvalidate("k")
        elif how == "acache_clear":
            await read.acache_clear()
        else:
            _clear(read, how, "k")
        assert await await_bounded(read("k")) == "new"
        assert db.runs == 2
        db.release.set()  # type: ignore[union-attr]
        assert await await_bounded(old) == "old"
        assert await await_bounded(joined) == "old"
        assert read.cache_info().in_flight == 0
        assert await await_bounded(read("k")) == "new"
        assert db.runs == (2 if store != "none" else 3)

    asyncio.run(asyncio.wait_for(main(), WAIT))


def test_s18_sync_cache_clear_detaches_every_key() -> None:
    """S18: cache_clear() detaches the executions of every key, in every thread."""
    rows = {"a": "old-a", "b": "old-b"}
    started = {"a": threading.Event(), "b": threading.Event()}
    release = threading.Event()
    first = {"a": True, "b": True}

    @singleflight(ttl=60)
    def read(k: str) -> str:
        value = rows[k]
        if first[k]:
            first[k] = False
            started[k].set()
            wait(release, "release")
        return value

    callers = [Caller(read, "a"), Caller(read, "b")]
    for caller in callers:
        caller.start()
    for event in started.values():
        wait(event, "both executions started")
    rows.update(a="new-a", b="new-b")
    read.cache_clear()
    assert read.cache_info().in_flight == 2  # detached, still running (S12)
    assert (read("a"), read("b")) == ("new-a", "new-b")
    release.set()
    assert [c.result() for c in callers] == ["old-a", "old-b"]
    eventually(lambda: read.cache_info().in_flight == 0, "the old executions ended")
    assert (read("a"), read("b")) == ("new-a", "new-b")
    assert read.cache_info().hits == 2


def test_s18_async_cache_clear_detaches_every_loop() -> None:
    """S18: async cache_clear() in one thread detaches an execution running in another loop."""
    rows = {"k": "old"}
    started = threading.Event()
    release = threading.Event()
    runs = []

    @singleflight(ttl=60)
    async def read(k: str) -> str:
        runs.append(k)
        value = rows[k]
        if len(runs) == 1:
            started.set()
            await asyncio.to_thread(wait, release, "release")
        return value

    other = Caller(read, "k")  # its own thread and event loop
    other.start()
    wait(started, "the other loop's execution")
    rows["k"] = "new"
    read.cache_clear()
    assert asyncio.run(asyncio.wait_for(read("k"), WAIT)) == "new"
    release.set()
    assert other.result() == "old"
    assert asyncio.run(asyncio.wait_for(read("k"), WAIT)) == "new"
    assert len(runs) == 2


def test_s18_invalidate_other_key_leaves_flight_joined() -> None:
    """S18: invalidating one key does not detach the execution of another key."""
    release = threading.Event()
    started = threading.Event()
    runs = []

    @singleflight(ttl=60)
    def read(k: str) -> str:
        runs.append(k)
        started.set()
        wait(release, "release")
        return k

    first = Caller(read, "a")
    first.start()
    wait(started, "the execution of 'a'")
    read.invalidate("b")
    second = Caller(read, "a")
    second.start()
    eventually(lambda: read.cache_info().coalesced == 1, "the second caller joined")
    release.set()
    assert first.result() == second.result() == "a"
    assert runs == ["a"]
