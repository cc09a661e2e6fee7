"""A batch settled in one pass (P9): marks, stores and wake-ups for all of its ids at once.

The async batch path marks the gathered keys of ``collect=`` together when their batch
starts, stores what the batch found under one hold of the store's lock and wakes every
caller in one pass. These tests pin what that must not change: invalidation before the
batch starts (S18), an answer whose keys fail to compare (B5), and a caller cancelled
before its batch starts (S7), with nothing left behind (S16).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from _core_support import WAIT
from test_batch import until

from coalesce import singleflight


class Touchy:
    """An id that hashes fine but whose ``__eq__`` raises once ``broken`` is set."""

    broken = False

    def __init__(self, n: int) -> None:
        self.n = n

    def __hash__(self) -> int:
        return hash(self.n)

    def __eq__(self, other: object) -> bool:
        if Touchy.broken and other is not self:
            raise RuntimeError("broken __eq__")
        return isinstance(other, Touchy) and other.n == self.n

    def __repr__(self) -> str:
        return f"Touchy({self.n})"


def gathered(batches: list[list[int]], answer: Callable[[int], int]) -> Any:
    """``user(user_id)`` whose misses wait for a window that the third miss closes (not
    time), then are fetched by one batch call, recorded in ``batches``, answering ``answer``."""

    @singleflight(key="user_id", ttl=60)
    async def user(user_id: int) -> int:
        return user_id

    @user.batch(collect=WAIT, max_batch=3)
    async def users(ids: list[int]) -> Mapping[int, int]:
        batches.append(list(ids))
        return {i: answer(i) for i in ids}

    return user


def test_gathered_key_invalidated_before_its_batch_starts_is_not_stored() -> None:
    """S18: invalidate(id) before its gathered batch starts: callers get the value, none is kept."""
    batches: list[list[int]] = []
    user = gathered(batches, lambda i: i * 10)

    async def body() -> None:
        calls = [asyncio.ensure_future(user(i)) for i in (1, 2)]
        await until(lambda: user.cache_info().misses == 2)
        assert batches == []  # gathered, their batch not started: the third miss starts it
        user.invalidate(1)
        assert await asyncio.wait_for(asyncio.gather(*calls, user(3)), WAIT) == [10, 20, 30]
        assert batches == [[1, 2, 3]]
        assert sorted(user.cache) == [2, 3]
        assert user.cache_info().in_flight == 0

    asyncio.run(body())


def test_batch_stores_every_found_id_and_counts_each_once() -> None:
    """B2/B7: 250 gathered misses, max_batch=100: three batch calls, all stored, counted once."""
    sizes: list[int] = []

    @singleflight(key="user_id", ttl=60, maxsize=None)
    async def user(user_id: int) -> int:
        return user_id

    @user.batch(collect=0, max_batch=100)
    async def users(ids: list[int]) -> Mapping[int, int]:
        sizes.append(len(ids))
        return {i: -i for i in ids if i % 50}  # multiples of 50 are not found

    async def body() -> None:
        values = await asyncio.gather(*(user(i) for i in range(1, 251)))
        assert values == [i if i % 50 == 0 else -i for i in range(1, 251)]

    asyncio.run(body())
    assert sizes == [100, 100, 50]
    assert len(user.cache) == 250  # the batch's 245 and the five f(id) ran itself (B4)
    info = user.cache_info()
    assert (info.hits, info.misses, info.coalesced, info.in_flight) == (0, 250, 0, 0)


def test_an_answer_whose_keys_fail_to_compare_fails_its_batch() -> None:
    """B5: an answer whose keys cannot be compared with the ids fails all its callers."""

    @singleflight(key="item", ttl=60)
    async def one(item: Touchy) -> int:
        return item.n

    @one.batch(collect=0)
    async def many(items: list[Touchy]) -> Mapping[Touchy, int]:
        Touchy.broken = True
        return {Touchy(item.n): item.n for item in items}  # equal keys, other objects

    async def body() -> list[object]:
        calls = [asyncio.ensure_future(one(Touchy(n))) for n in (1, 2)]
        return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), WAIT)

    try:
        outcome = asyncio.run(body())
    finally:
        Touchy.broken = False
    assert [type(o) for o in outcome] == [RuntimeError, RuntimeError]
    assert outcome[0] is outcome[1]
    assert list(one.cache) == []
    assert one.cache_info().in_flight == 0


def test_cancelled_gathered_callers_leave_nothing() -> None:
    """S7/S16: a gathered miss whose caller left before its batch starts is not fetched or kept."""
    batches: list[list[int]] = []
    user = gathered(batches, lambda i: i)

    async def body() -> None:
        calls = [asyncio.ensure_future(user(i)) for i in (1, 2)]
        await until(lambda: user.cache_info().misses == 2)
        calls[0].cancel()
        await asyncio.wait([calls[0]], timeout=WAIT)
        assert calls[0].cancelled()
        assert batches == []
        # The cancelled miss left the window: two more misses fill it.
        together = asyncio.gather(calls[1], user(3), user(4))
        assert await asyncio.wait_for(together, WAIT) == [2, 3, 4]
        assert batches == [[2, 3, 4]]
        assert sorted(user.cache) == [2, 3, 4]
        assert user.cache_info().in_flight == 0

    asyncio.run(body())
