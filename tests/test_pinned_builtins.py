"""The store never calls a builtin that user code replaced (issue 12, hash-once section).

A ``len`` decorated with ``@singleflight(ttl=...)`` and installed as ``builtins.len``
must not be reached from inside the library: the store and the flights use the
builtins bound when coalesce was imported. Run with ``def`` only: asyncio's own event
loop calls ``len`` on its queues, so a cached ``len`` would break the loop itself.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterator
from typing import Any

import cachetools
import pytest

from coalesce import singleflight

REAL_LEN = builtins.len


@pytest.fixture
def cached_len() -> Iterator[Callable[..., int]]:
    """Install a ``@singleflight(ttl=60)`` len as builtins.len; restore it afterwards."""
    calls: list[Any] = []

    @singleflight(ttl=60)
    def len(obj: Any) -> int:  # a user's replacement of len
        calls.append(obj)
        return REAL_LEN(obj)

    len.calls = calls  # type: ignore[attr-defined]
    yield len
    builtins.len = REAL_LEN


@pytest.mark.parametrize(
    "options",
    [
        {"ttl": 60},
        {"ttl": 60, "maxsize": 2},
        {"ttl": lambda result: 60},
        {"cache": {}},
        {"cache": cachetools.LRUCache(maxsize=4)},
        {},
    ],
    ids=["ttl", "maxsize", "ttl-callable", "dict", "lru", "none"],
)
def test_store_uses_the_builtins_of_import_time(
    options: dict[str, Any], cached_len: Callable[..., int]
) -> None:
    """S17/S6: with a cached len installed as builtins.len, a cached function never calls it."""
    runs: list[int] = []

    @singleflight(**options)
    def double(x: int, y: int = 1) -> int:
        runs.append(x)
        return 2 * x * y

    builtins.len = cached_len
    try:
        results = [double(n) for n in (1, 2, 3, 1, 2, 3)]
        results.append(double(x=4, y=2))
        info = double.cache_info()
        double.invalidate(1)
        double.forget(2)
        double.cache_clear()
    finally:
        builtins.len = REAL_LEN
    assert results == [2, 4, 6, 2, 4, 6, 16]
    assert info.misses + info.hits == 7
    assert cached_len.calls == []  # type: ignore[attr-defined]
