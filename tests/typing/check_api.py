"""What users write keeps its types.

Type-checked by tests/test_typing.py (mypy --strict) and tests/test_typing_pyright.py
(pyright --strict).

Not run by pytest itself. Each ``# type: ignore[...]`` marks a line mypy must reject:
with ``warn_unused_ignores`` (part of --strict), a line it stops rejecting fails.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Hashable
from typing import Any, assert_type

import cachetools

from coalesce import AsyncGroup, CacheInfo, Group, SingleflightClassMethod, singleflight


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
    reveal = assert_type(fetch_user(2), Coroutine[Any, Any, dict[str, int]])
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


# V5: a decorated async def gives a coroutine, as the async def does.
async def tasks() -> None:
    task = asyncio.create_task(fetch_user(1))
    assert_type(task, asyncio.Task[dict[str, int]])
    assert_type(await task, dict[str, int])
    assert_type(
        await asyncio.gather(fetch_user(1), fetch_user(2)), tuple[dict[str, int], dict[str, int]]
    )
    assert_type(await asyncio.wait_for(fetch_user(1), 1.0), dict[str, int])
    assert_type(await Svc.alookup_cls(1), int)
    assert_type(await asyncio.create_task(Svc().alookup_cls(1)), int)


def run_it() -> None:
    assert_type(asyncio.run(fetch_user(1)), dict[str, int])
    assert_type(asyncio.run(Svc.alookup_cls(1)), int)


# V5: classmethod in both decorator orders, as the keys docs write it.
class Prices:
    @singleflight(ttl=60)
    @classmethod
    def currencies(cls) -> tuple[str, ...]:
        return ("EUR", "USD")


class Svc:
    @singleflight
    @classmethod
    def below(cls, n: int) -> int:
        return n

    @classmethod
    @singleflight
    def above(cls, n: int) -> int:
        return n

    @singleflight(ttl=5)
    @classmethod
    async def alookup_cls(cls, n: int) -> int:
        return n


def class_methods() -> None:
    assert_type(Prices.currencies(), tuple[str, ...])
    assert_type(Prices().currencies(), tuple[str, ...])
    assert_type(Prices.currencies.invalidate(Prices), bool)
    assert_type(Prices.currencies.cache_info(), CacheInfo)
    assert_type(Svc.below(1), int)
    assert_type(Svc().below(1), int)
    assert_type(Svc.above(1), int)
    assert_type(Svc().above(1), int)
    assert_type(Svc.below.cache_key(Svc, 1), Hashable)
    decorated: SingleflightClassMethod[Any, [int], int] = Svc.__dict__["below"]
    assert_type(decorated, SingleflightClassMethod[Any, [int], int])
    Svc.below("x")  # type: ignore[arg-type]
    Svc().above("x")  # type: ignore[arg-type]
    Prices.currencies(1)  # type: ignore[call-arg]
