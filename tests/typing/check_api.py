"""Type-checked by tests/test_typing.py (mypy --strict): what users write keeps its types.

Not run by pytest itself. Each ``# type: ignore[...]`` marks a line mypy must reject:
with ``warn_unused_ignores`` (part of --strict), a line it stops rejecting fails.
"""

from __future__ import annotations

from collections.abc import Awaitable, Hashable
from typing import assert_type

import cachetools

from coalesce import AsyncGroup, CacheInfo, Group, singleflight


@singleflight
def load(path: str) -> bytes:
    return path.encode()


@singleflight(key="user_id", ttl=30, maxsize=10_000)
async def fetch_user(user_id: int, *, verbose: bool = False) -> dict[str, int]:
    return {"id": user_id}


@singleflight(cache=cachetools.LRUCache(maxsize=128), typed=True)
def square(x: float) -> float:
    return x * x


class Service:
    @singleflight(ttl=5)
    def lookup(self, name: str) -> int:
        return len(name)

    @singleflight
    async def alookup(self, name: str) -> int:
        return len(name)

    @staticmethod
    @singleflight
    def build(n: int) -> list[int]:
        return [n]


async def use() -> None:
    assert_type(load("a"), bytes)
    assert_type(await fetch_user(1), dict[str, int])
    assert_type(await fetch_user(1, verbose=True), dict[str, int])
    assert_type(square(2.0), float)
    service = Service()
    assert_type(service.lookup("x"), int)
    assert_type(await service.alookup("x"), int)
    assert_type(Service.build(3), list[int])
    assert_type(load.cache_info(), CacheInfo)
    assert_type(load.cache_key("a"), Hashable)
    assert_type(fetch_user.invalidate(1), bool)
    assert_type(fetch_user.forget(1), bool)
    assert_type(await fetch_user.ainvalidate(1), bool)
    await fetch_user.acache_clear()
    assert_type(service.lookup.invalidate(service, "x"), bool)
    load.cache_clear()
    reveal = fetch_user(2)
    assert_type(reveal, Awaitable[dict[str, int]])
    await reveal

    group = Group()
    assert_type(group.do("k", load.__wrapped__, "p"), bytes)
    assert_type(group.do_shared("k", len, "abc"), tuple[int, bool])
    agroup = AsyncGroup()
    assert_type(await agroup.do("k", fetch_user.__wrapped__, 3), dict[str, int])

    # Wrong arguments are flagged.
    load(1)  # type: ignore[arg-type]
    await fetch_user("one")  # type: ignore[arg-type]
    await fetch_user(1, verbose="yes")  # type: ignore[arg-type]
    service.lookup(3)  # type: ignore[arg-type]
    group.do("k", load.__wrapped__, 3)  # type: ignore[arg-type]
    load.invalidate(b"x")  # type: ignore[arg-type]
    load.ainvalidate("x")  # type: ignore[attr-defined]
