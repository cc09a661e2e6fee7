"""SPEC section 1: the decorator's forms, attributes and helpers; S13 time; ``__all__``."""

from __future__ import annotations
import __future__

import asyncio
import functools
import inspect
import threading
from collections.abc import Callable, MutableMapping
from typing import Any

import cachetools
import freezegun
import pytest
import time_machine
from _core_support import Caller, aeventually, as_kind, eventually, run, wait

import coalesce
from coalesce import CacheInfo, singleflight

# --------------------------------------------------------------------------- the package


def test_all_is_exactly_what_star_import_exports() -> None:
    """Section 1: ``from coalesce import *`` exports exactly ``__all__``, and each name exists."""
    namespace: dict[str, Any] = {}
    exec("from coalesce import *", namespace)
    namespace.pop("__builtins__")
    assert set(namespace) == set(coalesce.__all__)
    assert len(set(coalesce.__all__)) == len(coalesce.__all__)
    for name in coalesce.__all__:
        assert getattr(coalesce, name) is namespace[name]


def test_all_holds_the_section_1_names() -> None:
    """Section 1: the public names of the core are all exported."""
    for name in ("singleflight", "Group", "AsyncGroup", "CacheInfo", "ReentrantCallError"):
        assert name in coalesce.__all__


def test_all_covers_every_public_attribute() -> None:
    """Section 1: every public name defined by the package is listed in ``__all__``."""
    public = {
        name
        for name, value in vars(coalesce).items()
        if not name.startswith("_")
        and not inspect.ismodule(value)
        and not isinstance(value, __future__._Feature)  # from __future__ import annotations
    }
    assert public <= set(coalesce.__all__)


def test_singleflight_signature() -> None:
    """Section 1: func is positional-only and every option keyword-only, with its default."""
    params = inspect.signature(singleflight).parameters
    assert params["func"].kind is inspect.Parameter.POSITIONAL_ONLY
    for name, default in [("key", None), ("ttl", None), ("cache", None), ("typed", False)]:
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
        assert params[name].default is default
    assert params["maxsize"].kind is inspect.Parameter.KEYWORD_ONLY


def test_cache_info_fields() -> None:
    """S12: CacheInfo is a named tuple of the seven counters, in the documented order."""
    assert CacheInfo._fields == (
        "hits",
        "misses",
        "coalesced",
        "errors",
        "in_flight",
        "currsize",
        "maxsize",
    )


# --------------------------------------------------------------------------- the wrapper


@pytest.mark.parametrize("form", ["bare", "called-empty", "called-ttl"])
def test_wrapper_keeps_name_doc_signature_and_wrapped(kind: str, form: str) -> None:
    """Section 1: the decorated function keeps its name, docstring, signature and __wrapped__."""

    def fetch_user(user_id: int, *, verbose: bool = False) -> str:
        """Fetch one user."""
        return str(user_id)

    original = as_kind(kind, fetch_user)
    if form == "bare":
        decorated = singleflight(original)
    elif form == "called-empty":
        decorated = singleflight()(original)
    else:
        decorated = singleflight(key="user_id", ttl=30, maxsize=10)(original)
    assert decorated.__name__ == "fetch_user"
    assert decorated.__qualname__ == original.__qualname__
    assert decorated.__doc__ == "Fetch one user."
    assert decorated.__module__ == original.__module__
    assert decorated.__wrapped__ is original
    assert inspect.signature(decorated) == inspect.signature(fetch_user)
    assert inspect.iscoroutinefunction(decorated) is (kind == "async")
    assert run(decorated, 7) == "7"


@pytest.mark.parametrize("options", [None, {"key": "user_id", "ttl": 30}], ids=["bare", "key-ttl"])
def test_wrapper_keeps_the_kind_of_call(kind: str, options: dict[str, Any] | None) -> None:
    """Section 1: a decorated def returns its value, a decorated async def a coroutine (FastAPI)."""

    def fetch_user(user_id: int) -> int:
        return user_id

    original = as_kind(kind, fetch_user)
    decorated = singleflight(original) if options is None else singleflight(**options)(original)
    assert inspect.iscoroutinefunction(decorated) is (kind == "async")
    outcome = decorated(3)
    if kind == "async":
        assert inspect.iscoroutine(outcome)
        outcome = asyncio.run(outcome)
    assert outcome == 3


def test_callable_object_with_async_call_is_async() -> None:
    """Section 1: an object whose __call__ is async def is decorated as async."""

    class Fetcher:
        async def __call__(self, x: int) -> int:
            await asyncio.sleep(0)
            return x * 2

    fetch = singleflight(ttl=10)(Fetcher())
    assert asyncio.run(fetch(2)) == 4
    assert asyncio.run(fetch(2)) == 4
    assert fetch.cache_info().hits == 1


def test_partial_is_decorated() -> None:
    """Section 1: any callable works, a functools.partial included."""

    def add(a: int, b: int) -> int:
        return a + b

    add_one = singleflight(ttl=10)(functools.partial(add, 1))
    assert add_one(2) == 3
    assert add_one(b=2) == 3
    assert add_one.cache_info().misses == 1


# --------------------------------------------------------------------------- .cache


def test_cache_attribute_is_none_without_a_cache(kind: str) -> None:
    """Section 1: .cache is None for pure coalescing."""
    load = singleflight(as_kind(kind, lambda x: x))
    assert load.cache is None
    assert tuple(load.cache_info()) == (0, 0, 0, 0, 0, 0, None)


def test_cache_attribute_is_the_users_mapping(kind: str) -> None:
    """Section 1: with cache=, .cache is the mapping itself and holds the results."""
    mapping: dict[Any, Any] = {}

    def body(x: int) -> int:
        return x * 3

    load = singleflight(cache=mapping)(as_kind(kind, body))
    assert load.cache is mapping
    assert run(load, 2) == 6
    assert mapping[load.cache_key(2)] == 6
    assert load.cache_info().currsize == 1


def test_cache_attribute_with_ttl_is_a_mapping_of_results(kind: str) -> None:
    """Section 1: with ttl=, .cache is a mapping of the kept results by key."""

    def body(x: int) -> int:
        return x * 3

    load = singleflight(ttl=60)(as_kind(kind, body))
    assert isinstance(load.cache, MutableMapping)
    run(load, 2)
    assert load.cache[load.cache_key(2)] == 6
    assert len(load.cache) == 1
    assert list(load.cache) == [load.cache_key(2)]


# --------------------------------------------------------------------------- cache_info


def test_cache_info_sizes_for_each_store() -> None:
    """S12: currsize and maxsize come from the built-in cache, a dict or a cachetools cache."""

    def double(x: int) -> int:
        return x * 2

    builtin = singleflight(ttl=60, maxsize=2)(double)
    unbounded = singleflight(ttl=60, maxsize=None)(double)
    plain = singleflight(cache={})(double)
    lru = singleflight(cache=cachetools.LRUCache(maxsize=2))(double)
    default = singleflight(ttl=60)(double)
    for fn in (builtin, unbounded, plain, lru, default):
        for x in range(3):
            fn(x)
    assert builtin.cache_info()[5:] == (2, 2)
    assert unbounded.cache_info()[5:] == (3, None)
    assert plain.cache_info()[5:] == (3, None)
    assert lru.cache_info()[5:] == (2, 2)
    assert default.cache_info()[5:] == (3, 1024)


def test_cache_info_with_cachetools_currsize_uses_getsizeof() -> None:
    """S12: with a cachetools cache, currsize is the mapping's own currsize."""
    cache: cachetools.LRUCache[Any, Any] = cachetools.LRUCache(maxsize=100, getsizeof=len)

    @singleflight(cache=cache)
    def word(n: int) -> str:
        return "x" * n

    word(3)
    word(4)
    assert word.cache_info()[5:] == (7, 100)


def test_builtin_cache_evicts_down_to_maxsize() -> None:
    """Section 1: the built-in cache keeps at most maxsize results."""
    runs: list[int] = []

    @singleflight(ttl=60, maxsize=3)
    def load(x: int) -> int:
        runs.append(x)
        return x

    for x in range(10):
        load(x)
    assert load.cache_info().currsize == 3
    assert len(load.cache) == 3
    load(9)
    assert runs.count(9) == 1


# --------------------------------------------------------------------------- cache_clear


def test_cache_clear_empties_and_resets(kind: str) -> None:
    """Section 1: cache_clear() empties the cache and resets the counters."""
    runs: list[int] = []

    def body(x: int) -> int:
        runs.append(x)
        return x

    for options in ({"ttl": 60}, {"cache": {}}, {"cache": cachetools.LRUCache(10)}):
        runs.clear()
        load = singleflight(**options)(as_kind(kind, body))
        run(load, 1)
        run(load, 1)
        load.cache_clear()
        assert load.cache_info()[:6] == (0, 0, 0, 0, 0, 0)
        run(load, 1)
        assert runs == [1, 1]


# --------------------------------------------------------------------------- invalidate


@pytest.mark.parametrize(
    "options",
    [
        lambda: {"ttl": 60},
        lambda: {"cache": {}},
        lambda: {"cache": cachetools.TTLCache(10, 60)},
    ],
    ids=["ttl", "dict", "ttlcache"],
)
def test_invalidate_drops_a_live_result(kind: str, options: Callable[[], dict[str, Any]]) -> None:
    """Section 1: invalidate() drops the result, True only if a live one was dropped."""
    runs: list[int] = []

    def body(x: int, y: int = 0) -> int:
        runs.append(x)
        return x

    load = singleflight(**options())(as_kind(kind, body))
    assert load.invalidate(1) is False
    run(load, 1)
    assert load.invalidate(x=1, y=0) is True  # same key, spelled differently
    assert load.invalidate(1) is False
    run(load, 1)
    assert runs == [1, 1]


def test_invalidate_without_a_cache_is_false(kind: str) -> None:
    """Section 1: invalidate() on a function without a cache returns False."""
    load = singleflight(as_kind(kind, lambda x: x))
    run(load, 1)
    assert load.invalidate(1) is False


def test_invalidate_of_an_expired_result_is_false() -> None:
    """Section 1: invalidate() returns False when the result had already expired (S13)."""
    with freezegun.freeze_time("2024-01-01") as frozen:

        @singleflight(ttl=10)
        def load(x: int) -> int:
            return x

        load(1)
        frozen.tick(11)
        assert load.invalidate(1) is False


def test_invalidate_unhashable_arguments(kind: str) -> None:
    """S4: invalidate() with unhashable arguments raises the S4 TypeError."""

    def body(x: Any) -> int:
        return 0

    load = singleflight(ttl=60)(as_kind(kind, body))
    with pytest.raises(TypeError, match="key="):
        load.invalidate([1])
    with pytest.raises(TypeError, match="key="):
        load.forget([1])


# --------------------------------------------------------------------------- forget


def test_forget_sync_later_callers_start_a_new_execution() -> None:
    """Section 1: forget() is True when in flight; later callers start a new execution."""
    release = threading.Event()
    entered = threading.Event()
    runs: list[int] = []

    @singleflight
    def load(x: int) -> str:
        runs.append(x)
        if len(runs) == 1:
            entered.set()
            wait(release)
            return "old"
        return "new"

    first = Caller(load, 1)
    first.start()
    wait(entered)
    joined = Caller(load, 1)
    joined.start()
    eventually(lambda: load.cache_info().coalesced == 1)
    assert load.forget(1) is True
    assert load.forget(1) is False
    assert load(1) == "new"
    release.set()
    assert first.result() == "old"
    assert joined.result() == "old"
    assert load.forget(1) is False
    assert runs == [1, 1]


def test_forget_async_later_callers_start_a_new_execution() -> None:
    """Section 1: forget() on an async function: later callers start a new execution."""
    runs: list[int] = []

    async def main() -> None:
        release = asyncio.Event()
        entered = asyncio.Event()

        @singleflight
        async def load(x: int) -> str:
            runs.append(x)
            if len(runs) == 1:
                entered.set()
                await release.wait()
                return "old"
            return "new"

        first = asyncio.create_task(load(1))
        await asyncio.wait_for(entered.wait(), 10)
        joined = asyncio.create_task(load(1))
        await aeventually(lambda: load.cache_info().coalesced == 1, "a caller to join")
        assert load.forget(x=1) is True
        assert load.forget(1) is False
        assert await load(1) == "new"
        release.set()
        assert await asyncio.wait_for(first, 10) == "old"
        assert await asyncio.wait_for(joined, 10) == "old"

    asyncio.run(main())
    assert runs == [1, 1]


def test_forget_with_ttl_keeps_the_new_result() -> None:
    """Section 1: after forget(), the new execution's result is the one kept in the cache."""
    release = threading.Event()
    entered = threading.Event()
    runs: list[int] = []

    @singleflight(ttl=60)
    def load(x: int) -> str:
        runs.append(x)
        if len(runs) == 1:
            entered.set()
            wait(release)
            return "old"
        return "new"

    first = Caller(load, 1)
    first.start()
    wait(entered)
    assert load.forget(1) is True
    assert load(1) == "new"
    release.set()
    assert first.result() == "old"
    assert load(1) == "new"


# --------------------------------------------------------------------------- S13


def test_s13_freezegun_tick_controls_expiry(kind: str) -> None:
    """S13: freezegun's tick moves a result past its ttl."""
    runs: list[int] = []

    def body(x: int) -> int:
        runs.append(x)
        return x

    with freezegun.freeze_time("2024-01-01 12:00:00") as frozen:
        load = singleflight(ttl=10)(as_kind(kind, body))
        run(load, 1)
        frozen.tick(9)
        run(load, 1)
        assert runs == [1]
        frozen.tick(2)
        run(load, 1)
        assert runs == [1, 1]
        frozen.tick(5)
        run(load, 1)
        assert runs == [1, 1]


def test_s13_freezegun_move_to_controls_expiry(kind: str) -> None:
    """S13: freezegun's move_to moves a result past its ttl."""
    runs: list[int] = []

    def body(x: int) -> int:
        runs.append(x)
        return x

    with freezegun.freeze_time("2024-01-01 12:00:00") as frozen:
        load = singleflight(ttl=60)(as_kind(kind, body))
        run(load, 1)
        frozen.move_to("2024-01-01 12:00:59")
        run(load, 1)
        assert runs == [1]
        frozen.move_to("2024-01-01 12:01:01")
        run(load, 1)
        assert runs == [1, 1]


def test_s13_freezegun_decorated_before_freezing(kind: str) -> None:
    """S13: the clock is read at call time, so freezing after decorating still works."""
    runs: list[int] = []

    def body(x: int) -> int:
        runs.append(x)
        return x

    load = singleflight(ttl=10)(as_kind(kind, body))
    with freezegun.freeze_time("2024-01-01") as frozen:
        run(load, 1)
        run(load, 1)
        frozen.tick(11)
        run(load, 1)
    assert runs == [1, 1]


def test_s13_time_machine_shift_controls_expiry(kind: str) -> None:
    """S13: time-machine's travel(tick=False) and shift move a result past its ttl."""
    runs: list[int] = []

    def body(x: int) -> int:
        runs.append(x)
        return x

    load = singleflight(ttl=10)(as_kind(kind, body))
    with time_machine.travel(0, tick=False) as traveller:
        run(load, 1)
        traveller.shift(9)
        run(load, 1)
        assert runs == [1]
        traveller.shift(2)
        run(load, 1)
        assert runs == [1, 1]


def test_s13_expired_key_is_recomputed_once_by_concurrent_callers() -> None:
    """S13/S1: when a result expires, concurrent callers still run the function once."""
    runs: list[int] = []

    @singleflight(ttl=10)
    async def load(x: int) -> int:
        runs.append(x)
        await asyncio.sleep(0)
        return len(runs)

    async def stampede() -> list[int]:
        return list(await asyncio.gather(*(load(1) for _ in range(10))))

    with freezegun.freeze_time("2024-01-01") as frozen:
        assert asyncio.run(stampede()) == [1] * 10
        frozen.tick(11)
        assert asyncio.run(stampede()) == [2] * 10
    assert runs == [1, 1]
