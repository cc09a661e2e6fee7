"""The Backend protocol.

Type-checked by tests/test_backend_protocol.py (mypy --strict) and tests/test_typing_pyright.py
(pyright --strict).

Not run by pytest itself. ``RedisBackend`` is a ``Backend`` (its bindings are a
``Binding`` and an ``AsyncBinding``), so is a backend written outside coalesce, and an
object that lacks part of the shape is rejected. Each ``# type: ignore[...]`` marks a
line mypy must reject: with ``warn_unused_ignores`` (part of --strict), a line it
stops rejecting fails.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar

import redis
import redis.asyncio

from coalesce import AsyncBinding, Backend, Binding, singleflight
from coalesce.redis import RedisBackend

R = TypeVar("R")

sync_backend: Backend = RedisBackend(redis.Redis())
async_backend: Backend = RedisBackend(redis.asyncio.Redis(), local_ttl=1.0)


@singleflight(ttl=30, backend=RedisBackend(redis.Redis()), name="report")
def report(day: str) -> dict[str, int]:
    return {"rows": len(day)}


class DictBinding:
    """Both kinds of binding at once, over a dict."""

    def __init__(self) -> None:
        self.values: dict[Hashable, Any] = {}

    def call(self, key: Hashable, compute: Callable[[], R]) -> R:
        value: R = self.values[key] if key in self.values else compute()
        self.values[key] = value
        return value

    def invalidate(self, key: Hashable) -> bool:
        return self.values.pop(key, self) is not self

    def clear(self) -> None:
        self.values.clear()

    async def acall(self, key: Hashable, compute: Callable[[], Awaitable[R]]) -> R:
        value: R = self.values[key] if key in self.values else await compute()
        self.values[key] = value
        return value

    async def ainvalidate(self, key: Hashable) -> bool:
        return self.invalidate(key)

    async def aclear(self) -> None:
        self.clear()


class DictBackend:
    local_ttl: float | None = None

    def bind(
        self, func: Callable[..., Any], *, name: str, ttl: float, is_async: bool
    ) -> DictBinding:
        return DictBinding()


class NoLocalTtl:
    def bind(
        self, func: Callable[..., Any], *, name: str, ttl: float, is_async: bool
    ) -> DictBinding:
        return DictBinding()


class NoClear:
    def call(self, key: Hashable, compute: Callable[[], R]) -> R:
        return compute()

    def invalidate(self, key: Hashable) -> bool:
        return False


class BindsWithoutClear:
    local_ttl = None

    def bind(self, func: Callable[..., Any], *, name: str, ttl: float, is_async: bool) -> NoClear:
        return NoClear()


mine: Backend = DictBackend()
both: Binding = DictBinding()
both_async: AsyncBinding = DictBinding()


@singleflight(ttl=5, backend=DictBackend())
async def fetch(user_id: int) -> int:
    return user_id


def wrong() -> None:
    lacking: Backend = NoLocalTtl()  # type: ignore[assignment]
    partial: Backend = BindsWithoutClear()  # type: ignore[assignment]
    not_a_binding: Binding = NoClear()  # type: ignore[assignment]
    singleflight(ttl=5, backend=object())  # type: ignore[call-overload]
    print(lacking, partial, not_a_binding)
