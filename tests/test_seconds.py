"""Durations: one rule for every option given in seconds (section 1, F1-F4, R3-R8, H5).

Every duration option (``singleflight``'s ``ttl``, ``stale``, ``early``,
``stale_if_error``, ``error_ttl``; ``RedisBackend``'s ``lease_ttl``, ``wait_timeout``,
``local_ttl``, ``outage_cooldown`` and a binding's ``ttl``; both middlewares' ``ttl``)
takes an int or a float greater than 0 and at most 1e9 seconds, as docs/semantics.md
says. Anything else fails where the option is given, with a message that names the
option, the value and the range, never later in Redis or in a clock's arithmetic.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from _redis_fixture import RedisServer, running_server

from coalesce import singleflight
from coalesce.asgi import CoalesceMiddleware as ASGIMiddleware
from coalesce.redis import RedisBackend
from coalesce.wsgi import CoalesceMiddleware as WSGIMiddleware

pytestmark = pytest.mark.timeout(30)

MAX = 1_000_000_000
"""The documented upper bound of every duration, in seconds (about 31 years)."""


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    """One redis-server for the module (its tests only build backends, or use own keys)."""
    with running_server() as running:
        yield running


def _short(value: object) -> str:
    """A test id: the value's repr, cut short (10**400 has 401 digits)."""
    text = repr(value)
    return text if len(text) < 24 else f"{text[:8]}...({len(text)} chars)"


def _plain(x: int) -> int:
    return x


async def _asgi_app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("never called")


def _wsgi_app(environ: Any, start_response: Any) -> list[bytes]:
    raise AssertionError("never called")


Build = Callable[[RedisServer, object], object]


def _decorate(option: str) -> Build:
    """Build ``singleflight`` with ``option=value`` (and ``ttl=10`` for a window)."""

    def build(server: RedisServer, value: object) -> object:
        extra: dict[str, Any] = {} if option == "ttl" else {"ttl": 10}
        return singleflight(**extra, **{option: value})(_plain)

    return build


def _backend(option: str) -> Build:
    def build(server: RedisServer, value: object) -> object:
        return RedisBackend(server.client(), **{option: value})

    return build


def _bound(server: RedisServer, value: object) -> object:
    """A binding's ttl, given to ``singleflight(backend=...)``."""
    backend = RedisBackend(server.client())
    return singleflight(ttl=value, backend=backend, name="bound")(_plain)  # type: ignore[call-overload]


def _bind(server: RedisServer, value: object) -> object:
    """A binding's ttl, given to ``RedisBackend.bind`` itself."""
    backend = RedisBackend(server.client())
    return backend.bind(_plain, name="bind", ttl=value, is_async=False)  # type: ignore[arg-type]


def _asgi(server: RedisServer, value: object) -> object:
    return ASGIMiddleware(_asgi_app, ttl=value)  # type: ignore[arg-type]


def _wsgi(server: RedisServer, value: object) -> object:
    return WSGIMiddleware(_wsgi_app, ttl=value)  # type: ignore[arg-type]


# (name, builder, the least value accepted, whether 0 means off, whether None is taken)
SITES: list[tuple[str, Build, float, bool, bool]] = [
    ("ttl", _decorate("ttl"), 0.0, False, True),
    ("stale", _decorate("stale"), 0.0, True, True),
    ("early", _decorate("early"), 0.0, True, True),
    ("stale_if_error", _decorate("stale_if_error"), 0.0, True, True),
    ("error_ttl", _decorate("error_ttl"), 0.0, True, True),
    ("ttl", _bound, 0.0, False, False),
    ("ttl", _bind, 0.0, False, False),
    ("lease_ttl", _backend("lease_ttl"), 0.1, False, False),
    ("wait_timeout", _backend("wait_timeout"), 0.0, False, False),
    ("local_ttl", _backend("local_ttl"), 0.0, False, True),
    ("outage_cooldown", _backend("outage_cooldown"), 0.0, True, False),
    ("ttl", _asgi, 0.0, False, True),
    ("ttl", _wsgi, 0.0, False, True),
]
IDS = [
    "singleflight-ttl",
    "singleflight-stale",
    "singleflight-early",
    "singleflight-stale_if_error",
    "singleflight-error_ttl",
    "singleflight-backend-ttl",
    "bind-ttl",
    "RedisBackend-lease_ttl",
    "RedisBackend-wait_timeout",
    "RedisBackend-local_ttl",
    "RedisBackend-outage_cooldown",
    "asgi-ttl",
    "wsgi-ttl",
]

OUT_OF_RANGE = [-1, -0.5, math.nan, math.inf, -math.inf, MAX + 1, 1e16, 1e17, 1e308, 10**400]
NOT_NUMBERS = [True, False, "10", b"10", [10], object()]


@pytest.mark.parametrize("value", OUT_OF_RANGE, ids=_short)
@pytest.mark.parametrize(("option", "build", "least", "zero_off", "none_ok"), SITES, ids=IDS)
def test_out_of_range_is_a_value_error_naming_option_value_and_range(
    server: RedisServer,
    option: str,
    build: Build,
    least: float,
    zero_off: bool,
    none_ok: bool,
    value: float,
) -> None:
    """Section 1, F1-F4, R3-R8, H5: negative, NaN, infinite or past 1e9: ValueError where given."""
    with pytest.raises(ValueError, match=rf"^{option}\b") as caught:
        build(server, value)
    message = str(caught.value)
    assert "1e9" in message, message
    shown = "10000" if isinstance(value, int) and value > MAX * 10 else repr(value)
    assert shown in message, message


@pytest.mark.parametrize(("option", "build", "least", "zero_off", "none_ok"), SITES, ids=IDS)
def test_zero_is_off_or_a_value_error(
    server: RedisServer, option: str, build: Build, least: float, zero_off: bool, none_ok: bool
) -> None:
    """F1-F4, R6: 0 turns a window or the cooldown off; any other duration refuses it."""
    if zero_off:
        assert build(server, 0) is not None
        assert build(server, 0.0) is not None
        return
    with pytest.raises(ValueError, match=rf"^{option}\b.*, not 0\b"):
        build(server, 0)


@pytest.mark.parametrize("value", NOT_NUMBERS, ids=_short)
@pytest.mark.parametrize(("option", "build", "least", "zero_off", "none_ok"), SITES, ids=IDS)
def test_not_a_number_is_a_type_error(
    server: RedisServer,
    option: str,
    build: Build,
    least: float,
    zero_off: bool,
    none_ok: bool,
    value: object,
) -> None:
    """Section 1, F1-F4, R3-R8, H5: a bool, a string or any non-number is a TypeError naming it."""
    with pytest.raises(TypeError, match=rf"^{option}\b.* must be a number") as caught:
        build(server, value)
    assert type(value).__name__ in str(caught.value)


@pytest.mark.parametrize(("option", "build", "least", "zero_off", "none_ok"), SITES, ids=IDS)
def test_none_is_taken_only_where_documented(
    server: RedisServer, option: str, build: Build, least: float, zero_off: bool, none_ok: bool
) -> None:
    """Section 1, R3-R8, H5: None is the default of optional durations and refused elsewhere."""
    if none_ok:
        assert build(server, None) is not None
        return
    with pytest.raises(TypeError, match=rf"\b{option}\b"):
        build(server, None)


@pytest.mark.parametrize("value", [0.001, 1, 2.5, 3600, MAX - 0.5, MAX, float(MAX)], ids=_short)
@pytest.mark.parametrize(("option", "build", "least", "zero_off", "none_ok"), SITES, ids=IDS)
def test_values_in_range_are_accepted(
    server: RedisServer,
    option: str,
    build: Build,
    least: float,
    zero_off: bool,
    none_ok: bool,
    value: float,
) -> None:
    """Section 1, F1-F4, R3-R8, H5: any number from the least value up to 1e9 is accepted."""
    if value < least:
        with pytest.raises(ValueError, match=rf"^{option} must be .*from {least:g} to 1e9"):
            build(server, value)
        assert build(server, least) is not None
        return
    assert build(server, value) is not None


def test_the_largest_durations_work_against_redis(server: RedisServer, kind: str) -> None:
    """R1, R3, R4: ttl, lease_ttl and wait_timeout of 1e9 are accepted by Redis on every call."""
    client: Any = server.async_client() if kind == "async" else server.client()
    backend = RedisBackend(client, prefix=f"max{kind}", lease_ttl=MAX, wait_timeout=MAX)
    runs: list[int] = []

    def body(x: int) -> int:
        runs.append(x)
        return x * 2

    if kind == "async":

        @singleflight(ttl=MAX, backend=backend, name="largest")
        async def alargest(x: int) -> int:
            return body(x)

        async def twice() -> list[int]:
            try:
                return [await alargest(21), await alargest(21)]
            finally:
                await client.aclose()

        assert asyncio.run(twice()) == [42, 42]
    else:

        @singleflight(ttl=MAX, backend=backend, name="largest")
        def largest(x: int) -> int:
            return body(x)

        assert [largest(21), largest(21)] == [42, 42]
    assert runs == [21], "the second call is a hit from Redis"
    check = server.client()
    # The value's key is prefix:name:digest (docs/redis.md); leases and hand-offs add parts.
    (value_key,) = [k for k in check.keys(f"max{kind}:largest:*") if k.count(b":") == 2]
    assert MAX * 1000 - 60_000 < check.pttl(value_key) <= MAX * 1000


@pytest.mark.parametrize("returned", [MAX + 1, 1e308, math.inf, math.nan, 10**400], ids=_short)
def test_a_ttl_callable_past_the_range_is_a_clear_error(returned: float) -> None:
    """F5: a ttl callable returning a lifetime past 1e9 seconds raises a ValueError naming it."""

    @singleflight(ttl=lambda result: returned)
    def lifetimes(x: int) -> int:
        return x

    with pytest.raises(ValueError, match=r"^the ttl callable of .*lifetimes\(\) returned .*1e9"):
        lifetimes(1)
    assert lifetimes.cache_info().in_flight == 0


@pytest.mark.parametrize("returned", [-(10**400), -1e308, -1, 0], ids=_short)
def test_a_ttl_callable_at_or_below_zero_keeps_nothing(returned: float) -> None:
    """F5: a ttl callable returning 0 or less (even a huge negative int) keeps nothing."""
    runs: list[int] = []

    @singleflight(ttl=lambda result: returned)
    def load(x: int) -> int:
        runs.append(x)
        return x

    assert [load(1), load(1)] == [1, 1]
    assert runs == [1, 1]
    assert load.cache_info().currsize == 0


def test_a_ttl_callable_may_return_the_largest_duration() -> None:
    """F5: a ttl callable returning exactly 1e9 seconds keeps the result."""
    runs: list[int] = []

    @singleflight(ttl=lambda result: MAX)
    def load(x: int) -> int:
        runs.append(x)
        return x

    assert [load(1), load(1)] == [1, 1]
    assert runs == [1]


def test_messages_read_as_advice(server: RedisServer) -> None:
    """Section 1, R3, H5: the message names the owner, the value and the accepted range."""
    with pytest.raises(ValueError) as caught:
        singleflight(ttl=1e308)(_plain)
    assert str(caught.value) == (
        "ttl must be a number of seconds greater than 0, at most 1e9 (about 31 years), not 1e+308"
    )
    with pytest.raises(ValueError) as caught:
        RedisBackend(server.client(), lease_ttl=0.05)
    assert str(caught.value) == (
        "lease_ttl must be a number of seconds from 0.1 to 1e9 (about 31 years), not 0.05"
    )
    with pytest.raises(ValueError) as caught:
        WSGIMiddleware(_wsgi_app, ttl=-1)
    assert str(caught.value).startswith(
        "ttl of coalesce.wsgi.CoalesceMiddleware() must be None or a number of seconds "
        "greater than 0, at most 1e9 (about 31 years), not -1"
    )
    with pytest.raises(ValueError) as caught:
        singleflight(ttl=10, early=math.inf)(_plain)
    assert str(caught.value) == "early must be None or a number from 0 (off) to 1e9, not inf"
