"""S20: no option is silently ignored.

Every pair of ``singleflight`` options, with every store (none, ``ttl=``, ``cache=``,
``backend=`` with a real ``RedisBackend``), is either honoured, as a probe per option
shows, or refused at decoration time with a ``TypeError`` that names the options.
Also: misspelt options, key callables that cannot take the arguments, classes.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import operator
import time
from collections.abc import Callable, Iterator
from typing import Any

import cachetools
import pytest
from _core_support import as_kind
from _redis_fixture import RedisServer, running_server
from freezegun import freeze_time

from coalesce import singleflight
from coalesce.redis import RedisBackend

# One value per option, read from singleflight's signature so that a new option is
# probed too; "key_fn"/"key_name" and "ttl"/"ttl_fn" are two forms of one option.
FORMS = {"key": ("key_fn", "key_name"), "ttl": ("ttl", "ttl_fn")}
OPTIONS = tuple(
    form
    for name, parameter in inspect.signature(singleflight).parameters.items()
    if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    for form in FORMS.get(name, (name,))
)
STORES = ("none", "ttl", "cache", "backend")
KEYWORD = {"key_fn": "key", "key_name": "key", "ttl_fn": "ttl"}
WINDOWS = {"stale", "early", "stale_if_error", "error_ttl"}


class Boom(Exception):
    """What the probed function raises when told to fail."""


class Probe:
    """The decorated function's body and what it was asked to do."""

    def __init__(self) -> None:
        self.runs = 0
        self.fail = False
        self.clock: Any = None
        self.tick_once = 0.0
        self.ttl_seen: list[Any] = []

    def body(self, a: Any, b: Any = 0) -> Any:
        self.runs += 1
        if self.tick_once and self.clock is not None:
            self.clock.tick(self.tick_once)  # computing took this long (early=)
            self.tick_once = 0.0
        if self.fail:
            raise Boom(f"run {self.runs}")
        return "skip" if a == 2 else ("v", a, self.runs)


def _combo(store: str, pair: tuple[str, ...]) -> set[str]:
    given = set(pair)
    if store == "ttl":
        given.add("ttl" if "ttl_fn" not in given else "ttl_fn")
    elif store in ("cache", "backend"):
        given.add(store)
        if store == "backend" and "ttl_fn" not in given:
            given.add("ttl")
    return given


def _refusal(given: set[str]) -> set[str]:
    """The options (keywords) a refusal must name, or an empty set: the contract's rules."""
    bad: set[str] = set()
    ttl = bool(given & {"ttl", "ttl_fn"})
    windows = given & WINDOWS
    if {"typed", "key_fn"} <= given:
        bad |= {"typed", "key"}
    if "cache" in given and ttl:
        bad |= {"cache", "ttl"}
    if {"cache", "maxsize"} <= given:
        bad |= {"cache", "maxsize"}
    if "backend" in given:
        if "cache" in given:
            bad |= {"backend", "cache"}
        if not ttl:
            bad |= {"backend", "ttl"}
        # The freshness options work with a RedisBackend (R10); maxsize= bounds its
        # local copies, which these tests' backends do not keep.
        for other in given & {"maxsize"}:
            bad |= {"backend", KEYWORD.get(other, other)}
    elif "name" in given:
        bad |= {"name", "backend"}
    if windows and not ttl:
        bad |= windows | {"ttl"}
    if windows and "cache" in given:
        bad |= windows | {"cache"}
    if "cache_if" in given and not ttl and "cache" not in given:
        bad |= {"cache_if", "ttl", "cache"}
    if "maxsize" in given and not ttl and "cache" not in given and "backend" not in given:
        bad |= {"maxsize", "ttl"}
    return bad


def _kwargs(given: set[str], probe: Probe, kind: str, server: RedisServer) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    for option in given:
        if option == "key_fn":
            kw["key"] = lambda a, b=0: ("k", a)
        elif option == "key_name":
            kw["key"] = "a"
        elif option == "ttl":
            kw["ttl"] = 60
        elif option == "ttl_fn":
            kw["ttl"] = lambda result: probe.ttl_seen.append(result) or 60
        elif option == "maxsize":
            kw["maxsize"] = 2
        elif option == "cache":
            kw["cache"] = cachetools.LRUCache(maxsize=10)
        elif option == "typed":
            kw["typed"] = True
        elif option in ("stale", "stale_if_error", "error_ttl"):
            kw[option] = 30
        elif option == "early":
            kw["early"] = 1e9  # with 10 s of compute time, a refresh 5 s early is all but sure
        elif option == "cache_if":
            kw["cache_if"] = lambda result: result != "skip"
        elif option == "backend":
            client = server.client() if kind == "sync" else server.async_client()
            kw["backend"] = RedisBackend(client, prefix="s20")
        elif option == "name":
            kw["name"] = "matrix"
    return kw


def _settled(f: Any, call_wait: Callable[[Callable[[], bool]], None]) -> None:
    call_wait(lambda: f.cache_info().in_flight == 0)


@contextlib.contextmanager
def _caller(kind: str) -> Iterator[tuple[Any, Any, asyncio.Runner | None]]:
    """``(call, wait, runner)``: make one call of a decorated function; wait for a condition."""
    if kind == "sync":

        def wait(predicate: Callable[[], bool]) -> None:
            for _ in range(20_000):  # counted, not timed: the clock may be frozen
                if predicate():
                    return
                time.sleep(0.0005)
            raise AssertionError("timed out")

        yield (lambda f, *a: f(*a)), wait, None
        return
    with asyncio.Runner() as runner:

        async def await_until(predicate: Callable[[], bool]) -> None:
            for _ in range(20_000):
                if predicate():
                    return
                await asyncio.sleep(0)
            raise AssertionError("timed out")

        def wait_async(predicate: Callable[[], bool]) -> None:
            runner.run(await_until(predicate))

        yield (lambda f, *a: runner.run(f(*a))), wait_async, runner


def _honour(option: str, given: set[str], kind: str, server: RedisServer) -> None:
    """Run the probe that shows ``option`` doing what the contract says, with ``given``."""
    probe = Probe()
    kw = _kwargs(given, probe, kind, server)
    f = singleflight(**kw)(as_kind(kind, probe.body))
    # With a backend too: each process judges a value's age by its own clock (R10).
    frozen = True
    with (
        freeze_time("2026-01-01") if frozen else contextlib.nullcontext() as clock,
        _caller(kind) as (call, wait, runner),
    ):
        probe.clock = clock
        if option == "key_fn":
            assert f.cache_key(1, 5) == ("k", 1)
        elif option == "key_name":
            assert f.cache_key(1, 5) == f.cache_key(1, 6) != f.cache_key(3, 5)
        elif option == "typed":
            assert f.cache_key(1) != f.cache_key(1.0)
        elif option in ("ttl", "ttl_fn"):
            first = call(f, 1)
            assert call(f, 1) == first
            assert probe.runs == 1
            if option == "ttl_fn":
                assert probe.ttl_seen == [first]
            if frozen:
                clock.tick(61)
                call(f, 1)
                _settled(f, wait)
                assert probe.runs == 2
        elif option == "maxsize":
            for n in (1, 3, 4):
                call(f, n)
            assert f.cache_info().maxsize == 2
            assert f.cache_info().currsize == 2
        elif option == "cache":
            call(f, 1)
            assert f.cache_key(1) in kw["cache"]
        elif option == "stale":
            first = call(f, 1)
            clock.tick(61)
            assert call(f, 1) == first  # stale, at once
            _settled(f, wait)
            assert f.cache_info().stale == 1
            assert probe.runs == 2
        elif option == "early":
            probe.tick_once = 10.0
            call(f, 1)
            clock.tick(55)
            call(f, 1)  # a hit, which starts a refresh early
            _settled(f, wait)
            assert f.cache_info().refreshes == 1
            assert probe.runs == 2
        elif option == "stale_if_error":
            first = call(f, 1)
            clock.tick(61)
            probe.fail = True
            assert call(f, 1) == first
            _settled(f, wait)
            assert probe.runs == 2
        elif option == "error_ttl":
            probe.fail = True
            with pytest.raises(Boom) as one:
                call(f, 1)
            with pytest.raises(Boom) as two:
                call(f, 1)
            assert one.value is two.value
            assert probe.runs == 1
        elif option == "cache_if":
            call(f, 2)
            call(f, 2)
            assert probe.runs == 2  # "skip" is not kept
            call(f, 1)
            call(f, 1)
            assert probe.runs == 3
        elif option == "backend":
            client = server.client()
            try:
                assert call(f, 1) == ("v", 1, 1)
                assert client.keys("s20:*")
            finally:
                client.close()
        elif option == "name":
            client = server.client()
            try:
                call(f, 1)
                assert client.keys("s20:matrix:*")
            finally:
                client.close()
        backend = kw.get("backend")
        if backend is not None and runner is not None:
            runner.run(backend.client.aclose())
        elif backend is not None:
            backend.client.close()


@pytest.fixture(scope="module")
def matrix_redis() -> Iterator[RedisServer]:
    """One redis-server for the whole matrix (each probe flushes it)."""
    with running_server() as server:
        yield server


@pytest.mark.timeout(240)
@pytest.mark.parametrize("store", STORES)
def test_s20_every_option_pair_is_honoured_or_refused(
    store: str, kind: str, matrix_redis: RedisServer
) -> None:
    """S20: each pair of options, with this store, is honoured or refused naming the options."""
    honoured = refused = 0
    for pair in itertools.combinations(OPTIONS, 2):
        if {"key_fn", "key_name"} <= set(pair) or {"ttl", "ttl_fn"} <= set(pair):
            continue  # two values for one option
        given = _combo(store, pair)
        if store == "ttl" and given & {"ttl", "ttl_fn"} == {"ttl", "ttl_fn"}:
            continue
        must_name = _refusal(given)
        probe = Probe()
        kw = _kwargs(given, probe, kind, matrix_redis)
        what = f"singleflight({', '.join(sorted(kw))}) [{store}, {kind}]"
        if must_name:
            with pytest.raises(TypeError) as refusal:
                singleflight(**kw)(as_kind(kind, probe.body))
            message = str(refusal.value)
            assert any(name in message for name in must_name), (what, message)
            refused += 1
            continue
        try:
            singleflight(**kw)(as_kind(kind, probe.body))
        except TypeError as exc:  # pragma: no cover - shown on failure
            raise AssertionError(f"{what} was refused: {exc}") from exc
        for option in sorted(given):
            matrix_redis.client().flushall()
            _honour(option, given, kind, matrix_redis)
        honoured += 1
    assert honoured
    assert refused


@pytest.mark.parametrize(
    ("options", "names"),
    [
        ({"stale": 5}, ["stale="]),
        ({"early": 1.0}, ["early="]),
        ({"stale_if_error": 600}, ["stale_if_error="]),
        ({"error_ttl": 5}, ["error_ttl="]),
        ({"cache_if": bool}, ["cache_if="]),
        ({"ttl": lambda r: 5}, ["ttl="]),
        ({"stale": 5, "stale_if_error": 600}, ["stale=", "stale_if_error="]),
    ],
)
def test_s20_backend_refuses_what_it_would_ignore(
    options: dict[str, Any], names: list[str], matrix_redis: RedisServer
) -> None:
    """S20: freshness options work with a RedisBackend (R10) and are a TypeError naming them
    with a backend whose bind() takes no fleet=, which would ignore them."""
    client = matrix_redis.client()
    try:
        kw: dict[str, Any] = {"ttl": 60, **options}
        decorated = singleflight(backend=RedisBackend(client), **kw)(lambda x: {"x": x})
        assert decorated(3) == {"x": 3}
        with pytest.raises(TypeError, match="would ignore") as refusal:
            singleflight(backend=_FleetlessBackend(), **kw)(lambda x: x)
        for name in names:
            assert name in str(refusal.value)
    finally:
        client.close()


class _FleetlessBackend:
    """A backend without the fleet capability: its bind() takes no fleet=."""

    local_ttl = None

    def bind(self, func: Any, /, *, name: str, ttl: float, is_async: bool) -> Any:
        raise AssertionError("refused before binding")


def test_s20_maxsize_without_ttl_is_refused(kind: str) -> None:
    """S20: maxsize= without ttl= is a TypeError that says to pass ttl=."""
    for maxsize in (10, None):
        with pytest.raises(TypeError, match=r"maxsize=.*pass ttl= too"):
            singleflight(maxsize=maxsize)(as_kind(kind, lambda x: x))
    assert singleflight(ttl=5, maxsize=10)(as_kind(kind, lambda x: x)).cache_info().maxsize == 10


def test_s20_misspelt_option_gets_a_suggestion() -> None:
    """S20: @singleflight(tll=5) says "did you mean 'ttl'?"; an unknown name lists the options."""
    with pytest.raises(TypeError, match=r"'tll'; did you mean 'ttl'\?"):
        singleflight(tll=5)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=r"did you mean 'stale_if_error'\?"):
        singleflight(stale_if_eror=5)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=r"unexpected option 'zzz' \(options: key, ttl"):
        singleflight(zzz=1)  # type: ignore[call-overload]


def test_s20_key_callable_that_cannot_take_the_arguments_is_refused(kind: str) -> None:
    """S20: a key= callable whose signature cannot take the function's arguments fails at once."""

    def fetch(user_id: int, region: str = "eu", *, verbose: bool = False) -> int:
        return user_id

    body = as_kind(kind, fetch)
    for bad in (lambda: 1, lambda user_id: user_id, lambda a, b, c, d: a):
        with pytest.raises(TypeError, match=r"key callable .* cannot take the arguments of"):
            singleflight(key=bad)(body)
    for good in (
        lambda user_id, region="eu", *, verbose=False: user_id,
        lambda *args, **kwargs: args,
        lambda user_id, **rest: user_id,  # region may come by name
        lambda user_id, *rest, verbose=False: user_id,
    ):
        assert singleflight(key=good)(body).cache_key(7) is not None
    # A callable whose signature cannot be read is accepted (nothing to check).
    f = singleflight(key=operator.itemgetter(0))(as_kind(kind, lambda pair: pair))
    assert f.cache_key(("a", 1)) == "a"


def test_s20_class_is_refused() -> None:
    """S20: @singleflight on a class is a TypeError (it would replace the class by a function)."""
    with pytest.raises(TypeError, match=r"not the class .*Client; decorate one of its methods"):

        @singleflight
        class Client:
            pass

    with pytest.raises(TypeError, match="not the class"):

        @singleflight(ttl=5)
        class Other:
            pass
