"""A key is hashed once per call: on a miss, a hit, a coalesced call, with every store.

A key class counts its ``__hash__`` calls; each call of the decorated function (sync
or async) must add exactly one, however many dict operations the store, the flights
and a cachetools cache do with the key.
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
    "ttlcache": lambda: {"cache": cachetools.TTLCache(maxsize=10, ttl=60)},
}


class Key:
    """A key that counts how often it is hashed."""

    hashes = 0

    def __init__(self, n: int) -> None:
        self.n = n

    def __hash__(self) -> int:
        type(self).hashes += 1
        return hash(self.n)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Key) and other.n == self.n


def _fresh_key_class() -> type[Key]:
    class Counted(Key):
        hashes = 0

    return Counted


@pytest.mark.parametrize("store", STORES)
@pytest.mark.parametrize("shape", ["one", "two", "named"])
def test_hash_once_miss_and_hit_sync(store: str, shape: str) -> None:
    """S4/S6: def: a miss and a hit each hash the key once (one parameter, two, key=name)."""
    K = _fresh_key_class()
    options = STORES[store]()
    if shape == "one":
        f: Any = singleflight(**options)(lambda k: k.n)
        call = lambda k: f(k)  # noqa: E731
    elif shape == "two":
        f = singleflight(**options)(lambda k, scale=1: k.n * scale)
        call = lambda k: f(k, 2)  # noqa: E731
    else:
        f = singleflight(key="k", **options)(lambda k, verbose=False: k.n)
        call = lambda k: f(k, verbose=True)  # noqa: E731
    key = K(3)
    call(key)
    assert K.hashes == 1, "a miss"
    call(key)
    assert K.hashes == 2, "a hit (or, without a store, a second miss)"
    f.invalidate(*([key, 2] if shape == "two" else [key]))
    assert K.hashes == 3, "invalidate()"
    f.cache_key(key)
    assert K.hashes == 4, "cache_key()"


@pytest.mark.parametrize("store", STORES)
def test_hash_once_miss_and_hit_async(store: str) -> None:
    """S4/S6: async def: a miss and a hit each hash the key once."""
    K = _fresh_key_class()

    @singleflight(**STORES[store]())
    async def f(k: Key) -> int:
        await asyncio.sleep(0)
        return k.n

    async def main() -> None:
        key = K(3)
        await f(key)
        assert K.hashes == 1, "a miss"
        await f(key)
        assert K.hashes == 2, "a hit (or, without a store, a second miss)"
        await f.ainvalidate(key)
        assert K.hashes == 3

    asyncio.run(main())


@pytest.mark.parametrize("store", STORES)
def test_hash_once_coalesced_sync(store: str) -> None:
    """S1/S4: def: a call that joins an execution in flight hashes its key once."""
    K = _fresh_key_class()
    started, release = threading.Event(), threading.Event()

    @singleflight(**STORES[store]())
    def f(k: Key) -> int:
        started.set()
        wait(release, "release")
        return k.n

    leader = Caller(f, K(1))
    leader.start()
    wait(started, "the execution")
    assert K.hashes == 1
    joiner = Caller(f, K(1))
    joiner.start()
    eventually(lambda: f.cache_info().coalesced == 1, "the second caller joined")
    assert K.hashes == 2
    release.set()
    assert leader.result() == joiner.result() == 1
    assert K.hashes == 2  # leaving the registry and storing hash nothing again


@pytest.mark.parametrize("store", STORES)
def test_hash_once_coalesced_async(store: str) -> None:
    """S1/S4: async def: a call that joins an execution in flight hashes its key once."""
    K = _fresh_key_class()

    async def main() -> None:
        release = asyncio.Event()

        @singleflight(**STORES[store]())
        async def f(k: Key) -> int:
            await release.wait()
            return k.n

        leader = asyncio.create_task(f(K(1)))
        await aeventually(lambda: f.cache_info().in_flight == 1, "the execution")
        joiner = asyncio.create_task(f(K(1)))
        await aeventually(lambda: f.cache_info().coalesced == 1, "the second caller")
        assert K.hashes == 2
        release.set()
        assert await await_bounded(leader) == await await_bounded(joiner) == 1
        assert K.hashes == 2

    asyncio.run(asyncio.wait_for(main(), WAIT))


def test_hashed_key_is_transparent() -> None:
    """S4: the key kept for a hashed-once argument equals the argument and hashes as it."""
    K = _fresh_key_class()
    cache: dict[Any, Any] = {}
    f = singleflight(cache=cache)(lambda k: k.n)
    g = singleflight(cache=cache)(lambda k, m: k.n + m)
    key = K(5)
    assert f(key) == 5
    assert g(key, 1) == 6
    assert f.cache_key(key) == key
    assert hash(f.cache_key(key)) == hash(key)
    assert key in cache
    assert cache[key] == 5
    assert cache[(key, 1)] == 6
    assert g.cache_key(key, 1) == (key, 1)
    assert repr(f.cache_key(key)) == repr(key)


class _RecordingBackend:
    """A minimal backend of the test's own: it records the keys it is given."""

    local_ttl = None

    def __init__(self) -> None:
        self.keys: list[Any] = []

    def bind(self, func: Any, /, *, name: str, ttl: float, is_async: bool) -> Any:
        backend = self

        class Binding:
            def call(self, key: Any, compute: Callable[[], Any]) -> Any:
                backend.keys.append(key)
                return compute()

            def invalidate(self, key: Any) -> bool:
                backend.keys.append(key)
                return False

            def clear(self) -> None:
                pass

        return Binding()


def test_backend_gets_the_key_as_built() -> None:
    """S4/R2: a backend is given the key itself (its digest is the value's), hashed once."""
    K = _fresh_key_class()
    backend = _RecordingBackend()
    f = singleflight(ttl=60, backend=backend)(lambda k: k.n)
    key = K(4)
    assert f(key) == 4
    f.invalidate(key)
    assert [type(k) for k in backend.keys] == [K, K]
    assert backend.keys == [key, key]
    g = singleflight(ttl=60, backend=backend)(lambda k, m: k.n + m)
    assert g(key, 1) == 5
    assert backend.keys[-1] == (key, 1)
    assert type(backend.keys[-1]) is not K


def test_mapping_callbacks_get_the_key_back_as_value() -> None:
    """S4 (docs/keys.md): a TLRUCache ``ttu`` sees a non-plain key's wrapper; ``.value`` is it."""
    K = _fresh_key_class()
    seen: list[Any] = []

    def ttu(key: Any, value: Any, now: float) -> float:
        seen.append(key)
        return now + 60

    cache = cachetools.TLRUCache(maxsize=10, ttu=ttu)
    f = singleflight(cache=cache)(lambda k: k.n)
    g = singleflight(cache=cache)(lambda k, m: k.n + m)
    key = K(7)
    assert f(key) == 7
    assert g(key, 1) == 8
    assert seen[0] == key
    assert seen[0].value is key
    assert seen[1] == (key, 1)
    assert isinstance(seen[1], tuple)
    assert K.hashes == 2, "the mapping never hashes the key again"
