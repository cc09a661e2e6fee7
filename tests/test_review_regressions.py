"""Regressions found by the review of issues 11 and 12, each named for its SPEC item."""

from __future__ import annotations

import inspect
import uuid

import pytest

from coalesce import singleflight


class StrictKey:
    """A key whose ``__eq__`` says False (not NotImplemented) to anything but its class."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __hash__(self) -> int:
        return hash(self.n)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StrictKey) and other.n == self.n


def test_ttl_cache_written_by_hand_is_read_by_calls() -> None:
    """S4: a result written to ``f.cache`` under a key is what a call with that key returns."""
    runs: list[int] = []

    @singleflight(ttl=60)
    def load(k: StrictKey) -> str:
        runs.append(k.n)
        return "computed"

    load.cache[StrictKey(1)] = "warmed"
    assert load(StrictKey(1)) == "warmed"
    assert runs == []
    assert len(load.cache) == 1
    del load.cache[StrictKey(1)]
    assert load(StrictKey(1)) == "computed"
    assert runs == [1]


def test_ttl_cache_iterates_the_keys_calls_made() -> None:
    """S4: iterating ``f.cache`` gives the keys as the caller's code made them."""

    @singleflight(ttl=60)
    def load(k: uuid.UUID) -> str:
        return k.hex

    key = uuid.UUID(int=7)
    load(key)
    (stored,) = list(load.cache)
    assert type(stored) is uuid.UUID
    assert stored == key
    assert load.cache[stored] == key.hex


def test_asgi_middleware_refuses_a_wsgi_middleware() -> None:
    """S20: the ASGI middleware refuses a WSGI app that is itself a WSGI middleware."""
    from coalesce import asgi, wsgi

    def app(environ: object, start_response: object) -> list[bytes]:
        return [b""]

    inner = wsgi.CoalesceMiddleware(app)
    assert list(inspect.signature(inner).parameters) == ["environ", "start_response"]
    assert "app" in inspect.signature(wsgi.CoalesceMiddleware).parameters
    with pytest.raises(TypeError, match=r"is a WSGI app.*coalesce\.wsgi\.CoalesceMiddleware"):
        asgi.CoalesceMiddleware(inner)
    assert wsgi.CoalesceMiddleware(inner).app is inner
