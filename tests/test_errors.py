"""Errors: bad options (section 1), S15 generators, S2 error identity, ReentrantCallError."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterator
from typing import Any

import cachetools
import pytest
from _core_support import as_kind, run

from coalesce import ReentrantCallError, singleflight


def _plain(x: int) -> int:
    return x


@pytest.mark.parametrize("ttl", [0, -1, -0.5, math.nan, math.inf, -math.inf])
def test_ttl_out_of_range_is_a_value_error(ttl: float) -> None:
    """Section 1: ttl <= 0, NaN or infinite is a ValueError that names ttl."""
    with pytest.raises(ValueError, match="ttl"):
        singleflight(ttl=ttl)(_plain)


@pytest.mark.parametrize("ttl", [True, False, "10", b"1", [1]])
def test_ttl_of_wrong_type_is_a_type_error(ttl: Any) -> None:
    """Section 1: a ttl that is not a number of seconds (bool, str, ...) is a TypeError."""
    with pytest.raises(TypeError, match="ttl"):
        singleflight(ttl=ttl)(_plain)


@pytest.mark.parametrize("ttl", [1, 0.001, 3600, 1e9])
def test_ttl_accepts_positive_numbers(ttl: float) -> None:
    """Section 1: any finite positive int or float is a valid ttl."""
    assert singleflight(ttl=ttl)(_plain)(2) == 2


@pytest.mark.parametrize("maxsize", [0, -1])
def test_maxsize_below_one_is_a_value_error(maxsize: int) -> None:
    """Section 1: maxsize 0 or negative is a ValueError that names maxsize."""
    with pytest.raises(ValueError, match="maxsize"):
        singleflight(ttl=10, maxsize=maxsize)(_plain)


@pytest.mark.parametrize("maxsize", [10.0, "10", True])
def test_maxsize_of_wrong_type_is_a_type_error(maxsize: Any) -> None:
    """Section 1: a maxsize that is not an int (float, str, bool) is a TypeError."""
    with pytest.raises(TypeError, match="maxsize"):
        singleflight(ttl=10, maxsize=maxsize)(_plain)


def test_cache_with_ttl_is_a_type_error() -> None:
    """Section 1: cache= together with ttl= is a TypeError naming both."""
    with pytest.raises(TypeError, match=r"(?=[\s\S]*ttl)(?=[\s\S]*cache)"):
        singleflight(cache={}, ttl=10)(_plain)


@pytest.mark.parametrize("maxsize", [1024, 10, None])
def test_cache_with_maxsize_in_any_form_is_a_type_error(maxsize: Any) -> None:
    """Section 1: cache= with maxsize given in any form (even the default 1024) is a TypeError."""
    with pytest.raises(TypeError, match=r"(?=[\s\S]*maxsize)(?=[\s\S]*cache)"):
        singleflight(cache=cachetools.LRUCache(10), maxsize=maxsize)(_plain)


@pytest.mark.parametrize("cache", [[], 42, "cache", frozenset()])
def test_cache_that_is_not_a_mutable_mapping(cache: Any) -> None:
    """Section 1: a cache= that is not a MutableMapping is a TypeError."""
    with pytest.raises(TypeError, match="cache"):
        singleflight(cache=cache)(_plain)


@pytest.mark.parametrize("thing", [42, object(), "user_id", ("a", "b"), 1.5])
def test_decorating_a_non_callable_is_a_type_error(thing: Any) -> None:
    """Section 1: decorating something that is not callable is a TypeError."""
    with pytest.raises(TypeError, match="singleflight"):
        singleflight(thing)
    with pytest.raises(TypeError):
        singleflight(ttl=1)(thing)


def test_non_callable_string_hints_at_key() -> None:
    """Section 1: @singleflight("user_id") says that key= was probably meant."""
    with pytest.raises(TypeError, match="key="):
        singleflight("user_id")  # type: ignore[call-overload]


def test_options_are_keyword_only() -> None:
    """Section 1: options cannot be passed positionally."""
    with pytest.raises(TypeError):
        singleflight(_plain, "x")  # type: ignore[call-overload]


@pytest.mark.parametrize("key", [42, 1.5, object(), [1, "a"]])
def test_key_of_wrong_type(key: Any) -> None:
    """Section 1: key= that is neither a name, names nor a callable is a TypeError."""
    with pytest.raises(TypeError, match="key"):
        singleflight(key=key)(_plain)


# --------------------------------------------------------------------------- S15


def _gen(n: int) -> Iterator[int]:
    yield n


async def _agen(n: int) -> AsyncIterator[int]:
    yield n


@pytest.mark.parametrize("fn", [_gen, _agen], ids=["generator", "async-generator"])
@pytest.mark.parametrize("options", [{}, {"ttl": 10}, {"cache": {}}], ids=["bare", "ttl", "cache"])
def test_s15_generators_are_refused_at_decoration(fn: Any, options: dict[str, Any]) -> None:
    """S15: generator and async generator functions are a TypeError when decorating."""
    with pytest.raises(TypeError, match=fn.__name__):
        singleflight(**options)(fn)
    if not options:
        with pytest.raises(TypeError, match=fn.__name__):
            singleflight(fn)


@pytest.mark.parametrize("wrap", [classmethod, staticmethod])
def test_s15_generator_methods_are_refused(wrap: Any) -> None:
    """S15: a generator wrapped in classmethod or staticmethod is refused too."""
    with pytest.raises(TypeError):
        singleflight(wrap(_gen))


# --------------------------------------------------------------------------- S2


def test_s2_caller_gets_the_functions_own_exception_object(kind: str) -> None:
    """S2: the caller raises the very exception object the function raised."""
    error = LookupError("the original")

    def body(x: int) -> int:
        raise error

    load = singleflight(ttl=10)(as_kind(kind, body))
    with pytest.raises(LookupError) as info:
        run(load, 1)
    assert info.value is error


def test_s2_base_exception_reaches_the_sync_caller() -> None:
    """S8: a KeyboardInterrupt in a lone def execution reaches its caller unchanged."""
    interrupt = KeyboardInterrupt()

    @singleflight
    def load(x: int) -> int:
        raise interrupt

    with pytest.raises(KeyboardInterrupt) as info:
        load(1)
    assert info.value is interrupt


def test_reentrant_call_error_is_a_runtime_error() -> None:
    """S9: ReentrantCallError is a RuntimeError, so existing handlers catch it."""
    assert issubclass(ReentrantCallError, RuntimeError)
