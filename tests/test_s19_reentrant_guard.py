"""S19: the guard of a ``cache=`` mapping is reentrant.

A key's ``__hash__``/``__eq__`` and a cache's own callbacks run while the guard is
held; when they call the same function (or its helpers) again in that thread, a plain
lock would deadlock. Each call here runs in a daemon thread joined with a bound, so a
deadlock fails the test instead of hanging the suite.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import cachetools
from _core_support import WAIT, as_kind, run

from coalesce import singleflight


def _bounded(fn: Callable[[], Any]) -> Any:
    """Run ``fn()`` in a daemon thread; fail (instead of hanging) if it deadlocks."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(WAIT)
    assert not thread.is_alive(), "deadlocked: the call never returned"
    if "error" in out:
        raise out["error"]
    return out["value"]


def _reenter(f: Any, kind: str) -> None:
    """What a callback does: call the function again (``def``) and its helpers (both)."""
    f.cache_info()
    if kind == "sync":
        assert f(0) == 0


def test_s19_cachetools_getsizeof_calls_the_same_function(kind: str) -> None:
    """S19: a cachetools getsizeof callback that calls the same function does not deadlock."""
    f: Any = None
    entered = []

    def sizer(value: Any) -> int:
        if value != 0:
            entered.append(value)
            _reenter(f, kind)
        return 1

    cache: cachetools.LRUCache[Any, Any] = cachetools.LRUCache(maxsize=100, getsizeof=sizer)
    f = singleflight(cache=cache)(as_kind(kind, lambda x: x))
    assert _bounded(lambda: run(f, 5)) == 5
    assert entered == [5]
    assert _bounded(lambda: run(f, 5)) == 5  # a hit
    assert f.cache_info().hits == 1
    assert cache[f.cache_key(5)] == 5


def test_s19_guard_is_shared_and_reentrant_across_functions(kind: str) -> None:
    """S19: a callback of a mapping shared by two functions may call the other one."""
    g: Any = None

    def sizer(value: Any) -> int:
        if value == "f":
            g.cache_info()
            g.invalidate(2)
            if kind == "sync":
                assert g(2) == "g"
        return 1

    cache: cachetools.LRUCache[Any, Any] = cachetools.LRUCache(maxsize=100, getsizeof=sizer)
    f = singleflight(cache=cache)(as_kind(kind, lambda n: "f"))
    g = singleflight(cache=cache)(as_kind(kind, lambda n: "g"))
    assert _bounded(lambda: run(f, 1)) == "f"
    assert _bounded(lambda: run(g, 2)) == "g"
    assert f.cache_info().misses == 1


class _EqCalls:
    """A key whose ``__eq__`` calls the decorated function (all instances collide)."""

    target: Any = None
    kind = "sync"
    calls = 0

    def __init__(self, n: int) -> None:
        self.n = n

    def __hash__(self) -> int:
        return 7

    def __eq__(self, other: object) -> bool:
        type(self).calls += 1
        _reenter(type(self).target, type(self).kind)
        return isinstance(other, _EqCalls) and other.n == self.n


class _HashCalls:
    """A key whose ``__hash__`` calls the decorated function."""

    target: Any = None
    kind = "sync"
    calls = 0

    def __init__(self, n: int) -> None:
        self.n = n

    def __hash__(self) -> int:
        type(self).calls += 1
        _reenter(type(self).target, type(self).kind)
        return hash(self.n)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _HashCalls) and other.n == self.n


def test_s19_key_eq_calls_the_same_function(kind: str) -> None:
    """S19: a key whose __eq__ calls the same function (under the guard) does not deadlock."""

    class Key(_EqCalls):
        pass

    f = singleflight(cache=cachetools.LRUCache(maxsize=100))(as_kind(kind, lambda k: k))
    Key.target, Key.kind = f, kind
    first, second = Key(1), Key(2)
    assert _bounded(lambda: run(f, first)) is first
    assert _bounded(lambda: run(f, second)) is second  # compared with the first: __eq__ runs
    assert Key.calls > 0
    assert _bounded(lambda: run(f, Key(1))) is first  # equal: a hit


def test_s19_key_hash_calls_the_same_function(kind: str) -> None:
    """S19: a key whose __hash__ calls the same function (under the guard) does not deadlock."""

    class Key(_HashCalls):
        pass

    f = singleflight(cache=cachetools.LRUCache(maxsize=100))(as_kind(kind, lambda k: k))
    Key.target, Key.kind = f, kind
    key = Key(1)
    assert _bounded(lambda: run(f, key)) is key
    assert _bounded(lambda: run(f, Key(1))) is key
    assert Key.calls > 0
    info = f.cache_info()
    assert info.hits >= 1


def test_s19_plain_dict_guard_reentrant_in_invalidate(kind: str) -> None:
    """S19: invalidate() and cache_clear() with a reentrant key work on a plain dict too."""

    class Key(_EqCalls):
        pass

    f = singleflight(cache={})(as_kind(kind, lambda k: getattr(k, "n", k)))
    Key.target, Key.kind = f, kind
    assert _bounded(lambda: run(f, Key(1))) == 1
    assert _bounded(lambda: f.invalidate(Key(2))) is False  # collides: __eq__ reenters
    assert _bounded(lambda: f.invalidate(Key(1))) is True
    _bounded(f.cache_clear)
