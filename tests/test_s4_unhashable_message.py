"""S4: the unhashable-argument error names the argument the user passed.

For a ``**kwargs`` function it is the keyword given (``opts``), not the ``**kw``
parameter (whose slot is a tuple of items); for ``*args``, the position in it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from _core_support import as_kind, run

from coalesce import singleflight

STORES: dict[str, Callable[[], dict[str, Any]]] = {
    "none": dict,
    "ttl": lambda: {"ttl": 60},
    "cache": lambda: {"cache": {}},
}


def _kw(a: int, **kw: Any) -> int:
    return a


def _var(*args: Any) -> int:
    return len(args)


def _mixed(a: int, b: Any = None, *rest: Any, c: Any = None, **kw: Any) -> int:
    return a


@pytest.mark.parametrize("store", STORES)
def test_s4_kwargs_names_the_keyword_given(kind: str, store: str) -> None:
    """S4: f(1, opts={...}) on a **kw function names 'opts' (a dict), not 'kw' (a tuple)."""
    f = singleflight(**STORES[store]())(as_kind(kind, _kw))
    with pytest.raises(TypeError) as error:
        run(f, 1, opts={"x": 1})
    message = str(error.value)
    assert "unhashable argument 'opts' of _kw() (a dict)" in message, message
    assert "'kw'" not in message
    assert "tuple" not in message
    assert "key=" in message


@pytest.mark.parametrize("store", STORES)
def test_s4_varargs_names_the_position(kind: str, store: str) -> None:
    """S4: g(1, [2]) on a *args function names args[1] (a list)."""
    g = singleflight(**STORES[store]())(as_kind(kind, _var))
    with pytest.raises(
        TypeError, match=re.escape("unhashable argument args[1] of _var() (a list)")
    ):
        run(g, 1, [2])


@pytest.mark.parametrize(
    ("args", "kwargs", "named"),
    [
        ((1, [2]), {}, "'b' of _mixed() (a list)"),
        ((1, 2, 3, {4}), {}, "rest[1] of _mixed() (a set)"),
        ((1,), {"c": [3]}, "'c' of _mixed() (a list)"),
        ((1,), {"z": 0, "extra": {}}, "'extra' of _mixed() (a dict)"),
    ],
)
def test_s4_every_kind_of_parameter_is_named(
    kind: str, args: tuple[Any, ...], kwargs: dict[str, Any], named: str
) -> None:
    """S4: positional, *rest, keyword-only and **kw arguments are each named as passed."""
    f = singleflight(ttl=60)(as_kind(kind, _mixed))
    with pytest.raises(TypeError, match=re.escape(f"unhashable argument {named}")):
        run(f, *args, **kwargs)


def test_s4_helpers_name_the_keyword_too(kind: str) -> None:
    """S4: invalidate(), forget() and cache_key() users get the same message as a call."""
    f = singleflight(ttl=60)(as_kind(kind, _kw))
    for helper in (f.invalidate, f.forget):
        with pytest.raises(TypeError, match="unhashable argument 'opts' of _kw"):
            helper(1, opts=[1])
