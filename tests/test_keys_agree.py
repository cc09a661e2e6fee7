"""S4 written once: the wrapper's key, cache_key() and their errors agree (STYLE habit 15)."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Hashable
from typing import Any

import pytest
from _core_support import as_kind, run

from coalesce import singleflight

Call = tuple[tuple[Any, ...], dict[str, Any]]


@dataclasses.dataclass
class Built:
    """One decorated callable, seen as a user sees it."""

    call: Callable[..., Any]  # what a user calls: a function, bound method, ...
    key_of: Callable[..., Hashable]  # cache_key() for the same arguments
    invalidate: Callable[..., bool]
    forget: Callable[..., bool]
    stored: Callable[[], list[Hashable]]  # the keys results were stored under
    own: Callable[..., Any] | None  # the undecorated callable, for its own errors


@dataclasses.dataclass
class Case:
    """A signature and options, with calls that bind and calls that do not."""

    id: str
    build: Callable[[str, dict[str, Any]], Built]
    good: list[Call]
    bad: list[Call]


def _store(options: dict[str, Any]) -> tuple[dict[str, Any], Callable[[Any], list[Hashable]]]:
    """Fresh store options: a user's dict, or the built-in TTL store."""
    if options.get("cache") is not None:
        mapping: dict[Any, Any] = {}
        return {"cache": mapping}, lambda fn: list(mapping)
    return {"ttl": 60}, lambda fn: list(fn.cache)


def _function(
    body: Callable[..., Any], **key_options: Any
) -> Callable[[str, dict[str, Any]], Built]:
    def build(kind: str, store: dict[str, Any]) -> Built:
        options, stored = _store(store)
        fn: Any = singleflight(**options, **key_options)(as_kind(kind, body))
        own = None if callable(key_options.get("key")) else body
        return Built(fn, fn.cache_key, fn.invalidate, fn.forget, lambda: stored(fn), own)

    return build


def _method(kind: str, store: dict[str, Any]) -> Built:
    options, stored = _store(store)

    def fetch(self: Any, item: int, *, fresh: bool = False) -> str:
        return f"{item}{fresh}"

    class Repo:
        get: Any = singleflight(**options)(as_kind(kind, fetch))

    repo = Repo()
    return Built(
        repo.get,
        lambda *a, **k: repo.get.cache_key(repo, *a, **k),
        lambda *a, **k: repo.get.invalidate(repo, *a, **k),
        lambda *a, **k: repo.get.forget(repo, *a, **k),
        lambda: stored(Repo.get),
        lambda *a, **k: fetch(repo, *a, **k),
    )


def _classmethod(kind: str, store: dict[str, Any]) -> Built:
    options, stored = _store(store)

    def make(cls: type, x: int, y: int = 0) -> str:
        return f"{cls.__name__}{x}{y}"

    class Factory:
        build: Any = singleflight(**options)(classmethod(as_kind(kind, make)))

    return Built(
        Factory.build,
        lambda *a, **k: Factory.build.cache_key(Factory, *a, **k),
        lambda *a, **k: Factory.build.invalidate(Factory, *a, **k),
        lambda *a, **k: Factory.build.forget(Factory, *a, **k),
        lambda: stored(Factory.build),
        lambda *a, **k: make(Factory, *a, **k),
    )


def _staticmethod(kind: str, store: dict[str, Any]) -> Built:
    options, stored = _store(store)

    def double(x: int, /, scale: int = 2) -> int:
        return x * scale

    class Holder:
        twice: Any = singleflight(**options)(staticmethod(as_kind(kind, double)))

    fn = Holder.twice
    return Built(fn, fn.cache_key, fn.invalidate, fn.forget, lambda: stored(fn), double)


def one(x: int) -> int:
    return x


def plain(x: int, y: int = 5) -> int:
    return x + y


def mixed(a: int, /, b: int = 2, *rest: int, c: int = 3, **extra: int) -> int:
    return a + b + sum(rest) + c + sum(extra.values())


def kwonly(a: int, *, k: int, j: int = 1) -> int:
    return a + k + j


def posonly(a: int, b: int = 1, /) -> int:
    return a + b


def star(*args: int, **kwargs: int) -> int:
    return sum(args) + sum(kwargs.values())


def shadows(_sf_key: int, next: int = 1, *, tuple: int = 2, type: int = 3) -> int:
    return _sf_key + next + tuple + type


class NoSignature:
    """A callable whose signature cannot be read (``inspect.signature`` raises)."""

    __signature__ = "unreadable"

    def __call__(self, *args: int, **kwargs: int) -> int:
        return sum(args) + sum(kwargs.values())


CASES = [
    Case("one-parameter", _function(one), [((1,), {}), ((), {"x": 1})], [((), {}), ((1, 2), {})]),
    Case(
        "defaults",
        _function(plain),
        [((1,), {}), ((1, 6), {}), ((), {"y": 2, "x": 1})],
        [((), {}), ((1, 2, 3), {}), ((1,), {"z": 1}), ((1,), {"x": 1})],
    ),
    Case(
        "positional-only",
        _function(posonly),
        [((1,), {}), ((1, 2), {})],
        [((), {"a": 1}), ((1, 2, 3), {})],
    ),
    Case(
        "keyword-only",
        _function(kwonly),
        [((1,), {"k": 2}), ((), {"k": 2, "a": 1, "j": 3})],
        [((1,), {}), ((1, 2), {}), ((1,), {"k": 1, "q": 1})],
    ),
    Case(
        "mixed",
        _function(mixed),
        [((1,), {}), ((1, 2, 9), {"z": 1, "y": 2}), ((1,), {"b": 4, "c": 5})],
        [((), {}), ((), {"a": 1}), ((1, 2), {"b": 2})],
    ),
    Case("star-args-kwargs", _function(star), [((), {}), ((1, 2), {"b": 1, "a": 2})], []),
    Case(
        "names-like-the-template",
        _function(shadows),
        [((1,), {}), ((), {"_sf_key": 1, "next": 2, "tuple": 3, "type": 4})],
        [((), {}), ((1,), {"_sf_x": 1})],
    ),
    Case(
        "method", _method, [((1,), {}), ((), {"item": 1, "fresh": True})], [((), {}), ((1, 2), {})]
    ),
    Case("classmethod", _classmethod, [((1,), {}), ((1,), {"y": 2})], [((), {}), ((1, 2, 3), {})]),
    Case("staticmethod", _staticmethod, [((1,), {}), ((1, 3), {})], [((), {"x": 1})]),
    Case("key-name", _function(plain, key="y"), [((1,), {}), ((1, 7), {})], [((), {"y": 1})]),
    Case("key-names", _function(plain, key=["y", "x"]), [((1,), {}), ((1,), {"y": 2})], [((), {})]),
    Case("key-one-name-in-a-tuple", _function(plain, key=("x",)), [((1,), {})], [((), {})]),
    Case(
        "key-names-of-star-parameters",
        _function(mixed, key=("rest", "extra")),
        [((1, 2, 3), {"q": 1})],
        [((), {})],
    ),
    Case(
        "key-callable",
        _function(plain, key=lambda x, y=0: (x, y)),
        [((1,), {}), ((1,), {"y": 2})],
        [((), {}), ((1,), {"z": 1})],
    ),
    Case("typed", _function(one, typed=True), [((1,), {}), ((1.0,), {}), ((True,), {})], []),
    Case(
        "typed-mixed",
        _function(mixed, typed=True),
        [((1, 2, 3.0), {"q": 1}), ((1.0,), {"c": 4})],
        [((), {})],
    ),
    Case("typed-key-name", _function(plain, key="x", typed=True), [((1,), {})], [((), {})]),
    Case(
        "typed-key-names", _function(plain, key=("x", "y"), typed=True), [((1.0,), {})], [((), {})]
    ),
    Case("no-signature", _function(NoSignature()), [((1, 2), {}), ((1,), {"a": 2})], []),
    Case(
        "no-signature-typed",
        _function(NoSignature(), typed=True),
        [((1, 2), {}), ((1,), {"a": 2.0})],
        [],
    ),
]
STORES = [{"cache": True}, {"ttl": True}]


def test_no_signature_case_is_unreadable() -> None:
    """S4: the no-signature cases below test what they say: inspect cannot read it."""
    with pytest.raises((TypeError, ValueError)):  # TypeError on 3.11, ValueError on 3.12+
        inspect.signature(NoSignature())


@pytest.mark.parametrize("store", STORES, ids=["mapping", "ttl"])
@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_s4_wrapper_key_equals_cache_key(kind: str, case: Case, store: dict[str, Any]) -> None:
    """S4: the key a call is stored under is cache_key() of the same arguments, and hits."""
    built = case.build(kind, store)
    for args, kwargs in case.good:
        before = set(built.stored())
        run(built.call, *args, **kwargs)
        key = built.key_of(*args, **kwargs)
        assert key in built.stored(), (args, kwargs, key, built.stored())
        assert set(built.stored()) - before <= {key}
        hits = built.call.cache_info().hits
        run(built.call, *args, **kwargs)
        assert built.call.cache_info().hits == hits + 1
        assert built.invalidate(*args, **kwargs) is True
        assert key not in built.stored()


@pytest.mark.parametrize("case", [case for case in CASES if case.bad], ids=lambda case: case.id)
def test_s4_wrong_calls_raise_the_same_words_everywhere(kind: str, case: Case) -> None:
    """S4: a call that does not bind raises one TypeError message from every path."""
    built = case.build(kind, {"ttl": True})
    for args, kwargs in case.bad:
        messages = []
        paths = [built.call, built.key_of, built.invalidate, built.forget]
        if built.own is not None:
            paths.append(built.own)  # the function's own call, undecorated
        for path in paths:
            with pytest.raises(TypeError) as info:
                run(path, *args, **kwargs)
            messages.append(str(info.value))
        assert len(set(messages)) == 1, (args, kwargs, messages)
    assert built.call.cache_info().in_flight == 0


def test_s4_unhashable_error_names_an_argument_of_the_key(kind: str) -> None:
    """S4: with key= naming parameters, the unhashable-argument error names one of them."""

    def get(payload: Any, item: Any) -> int:
        return 0

    load = singleflight(key="item", ttl=60)(as_kind(kind, get))
    for path in (load, load.invalidate, load.forget):
        with pytest.raises(TypeError, match=r"unhashable argument 'item' of .*get\(\)"):
            run(path, [1], [2])
