"""Type-checked by tests/test_typing_batch.py (mypy --strict) and pyright: ``f.batch`` types.

Not run by pytest itself. Each ``# type: ignore[...]`` marks a line mypy must reject.
"""

from __future__ import annotations

from collections.abc import Coroutine, Mapping
from typing import Any, assert_type

from coalesce import AsyncBatchFunction, BatchFunction, singleflight


class User:
    def __init__(self, user_id: int) -> None:
        self.user_id = user_id


@singleflight(key="user_id", ttl=60)
async def user(user_id: int) -> User:
    return User(user_id)


@user.batch(max_batch=100, collect=0)
async def users(ids: list[int]) -> Mapping[int, User]:
    return {i: User(i) for i in ids}


@singleflight(ttl=60)
def price(sku: str) -> float:
    return 1.0


@price.batch()
def prices(skus: list[str]) -> dict[str, float]:
    return dict.fromkeys(skus, 1.0)


async def use() -> None:
    assert_type(users, AsyncBatchFunction[int, User])
    pending = assert_type(users([1, 2]), Coroutine[Any, Any, dict[int, User]])
    found = await pending
    assert_type(found, dict[int, User])
    assert_type(await users(range(3)), dict[int, User])
    await users(["a"])  # type: ignore[list-item]


def use_sync() -> None:
    assert_type(prices, BatchFunction[str, float])
    assert_type(prices(["a", "b"]), dict[str, float])
    assert_type(prices({"a", "b"}), dict[str, float])
    prices([1])  # type: ignore[list-item]
