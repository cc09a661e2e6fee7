"""Batches at their edges (SPEC section 9 with O3, S7, F3): the parameter forms a
one-parameter function takes (B1), cancelled batch callers whose chunks or joined ids
have failed (O3), gathered misses whose callers all left (B7, S7), a failing batch
fetch of an expired id with ``stale_if_error=`` (F3), and aborts counted as single
calls count them (S8, S12).

Calls synchronise on events and on the library's counters, never on sleeps; every
wait is bounded (``WAIT``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from test_batch import Calls, run_case

from coalesce import singleflight

# --------------------------------------------------------------------------- B1


def _one_parameter(kind: str, form: str, singles: list[int]) -> Any:
    """``f`` of one parameter ``a`` in ``form``, recording its calls in ``singles``."""
    if kind == "sync":
        if form == "positional-only":

            def f(a: int, /) -> int:
                singles.append(a)
                return a * 10

        elif form == "positional-or-keyword":

            def f(a: int) -> int:
                singles.append(a)
                return a * 10

        else:

            def f(*, a: int) -> int:
                singles.append(a)
                return a * 10

        return singleflight(ttl=60)(f)
    if form == "positional-only":

        async def af(a: int, /) -> int:
            singles.append(a)
            return a * 10

    elif form == "positional-or-keyword":

        async def af(a: int) -> int:
            singles.append(a)
            return a * 10

    else:

        async def af(*, a: int) -> int:
            singles.append(a)
            return a * 10

    return singleflight(ttl=60)(af)


FORMS = ("positional-only", "positional-or-keyword", "keyword-only")


@pytest.mark.parametrize("form", FORMS)
def test_b1_a_one_parameter_function_of_any_form(kind: str, form: str) -> None:
    """B1: a function of exactly one parameter, positional-only, positional-or-keyword
    or keyword-only, has a batch function; the batch and f share one cache (B2), and an
    id the batch leaves out is computed by f itself (B4)."""
    singles: list[int] = []
    fetched: list[list[int]] = []
    f = _one_parameter(kind, form, singles)

    def answer(ids: list[int]) -> dict[int, int]:
        fetched.append(list(ids))
        return {i: i * 100 for i in ids if i != 3}

    if kind == "sync":

        @f.batch()
        def fs(ids: list[int]) -> Mapping[int, int]:
            return answer(ids)

    else:

        @f.batch()
        async def fs(ids: list[int]) -> Mapping[int, int]:
            return answer(ids)

    def one(i: int) -> Any:
        return f(a=i) if form == "keyword-only" else f(i)

    async def body(calls: Calls) -> None:
        assert await calls.call(fs, [1, 2, 3]) == {1: 100, 2: 200}
        assert fetched == [[1, 2, 3]]
        assert await calls.call(one, 1) == 100  # stored as f(1) stores it: a hit
        assert await calls.call(one, 3) == 30  # left out: f runs (B4)
        assert await calls.call(fs, [2, 3]) == {2: 200, 3: 30}  # both hits
        assert singles == [3]
        assert fetched == [[1, 2, 3]]
        info = f.cache_info()
        assert (info.hits, info.misses, info.currsize) == (3, 4, 3)

    run_case(kind, body)
