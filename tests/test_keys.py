"""Keys: S4 (default key, key=, typed=), S5 (keys per function), S11 (methods)."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from typing import Any

import pytest
from _core_support import Caller, as_kind, eventually, run, wait

from coalesce import singleflight

# --------------------------------------------------------------------------- S4


def test_s4_positional_keyword_and_default_are_one_key(kind: str) -> None:
    """S4: f(1), f(x=1) and f(1, y=<default>) are one key and run once."""
    runs: list[tuple[int, int]] = []

    def body(x: int, y: int = 5) -> int:
        runs.append((x, y))
        return x + y

    load = singleflight(ttl=60)(as_kind(kind, body))
    assert load.cache_key(1) == load.cache_key(x=1) == load.cache_key(1, 5)
    assert load.cache_key(1) == load.cache_key(1, y=5) == load.cache_key(y=5, x=1)
    for call in (lambda: run(load, 1), lambda: run(load, x=1), lambda: run(load, 1, y=5)):
        assert call() == 6
    assert runs == [(1, 5)]
    assert run(load, 1, 6) == 7
    assert runs == [(1, 5), (1, 6)]


def test_s4_keyword_order_does_not_matter(kind: str) -> None:
    """S4: keyword arguments given in another order make the same key."""
    runs: list[int] = []

    def body(a: int, b: int, *, c: int = 0, d: int = 0) -> int:
        runs.append(1)
        return a + b + c + d

    load = singleflight(ttl=60)(as_kind(kind, body))
    assert run(load, a=1, b=2, c=3, d=4) == 10
    assert run(load, d=4, c=3, b=2, a=1) == 10
    assert run(load, 1, 2, d=4, c=3) == 10
    assert len(runs) == 1


def test_s4_var_positional_and_var_keyword(kind: str) -> None:
    """S4: *args/**kwargs functions work; extra keywords in any order share a key."""
    runs: list[Any] = []

    def body(*args: int, **kwargs: int) -> int:
        runs.append((args, kwargs))
        return sum(args) + sum(kwargs.values())

    load = singleflight(ttl=60)(as_kind(kind, body))
    assert run(load, 1, 2, a=3, b=4) == 10
    assert run(load, 1, 2, b=4, a=3) == 10
    assert len(runs) == 1
    assert run(load, 1) == 1
    assert run(load, a=1) == 1  # a keyword is not a positional argument
    assert run(load, 1, 2) == 3
    assert run(load) == 0
    assert len(runs) == 5
    assert load.cache_key(1, a=2) != load.cache_key(1, 2)
    assert load.cache_key(1, a=2) != load.cache_key(a=1, b=2)


def test_s4_mixed_signature(kind: str) -> None:
    """S4: positional-only, defaults, *args, keyword-only and **kwargs bind to one key."""

    def body(a: int, /, b: int = 2, *rest: int, c: int = 3, **extra: int) -> int:
        return a + b + sum(rest) + c + sum(extra.values())

    load = singleflight(as_kind(kind, body))
    assert load.cache_key(1) == load.cache_key(1, 2) == load.cache_key(1, b=2, c=3)
    assert load.cache_key(1, 2, 9) != load.cache_key(1, 2)
    assert load.cache_key(1, z=1, y=2) == load.cache_key(1, y=2, z=1)
    assert run(load, 1, 2, 3, c=4, z=5) == 15


def test_s4_wrong_arguments_raise_like_the_call(kind: str) -> None:
    """S4: arguments that do not bind raise the TypeError the function's own call would."""

    def body(x: int) -> int:
        return x

    load = singleflight(ttl=60)(as_kind(kind, body))
    with pytest.raises(TypeError):
        run(load, 1, 2)
    with pytest.raises(TypeError):
        run(load, y=1)
    with pytest.raises(TypeError):
        run(load)
    assert load.cache_info().in_flight == 0


@pytest.mark.parametrize("options", [{}, {"ttl": 60}, {"cache": {}}], ids=["none", "ttl", "dict"])
@pytest.mark.parametrize(
    ("args", "kwargs"), [(([1, 2],), {}), ((), {"items": {"a": 1}})], ids=["positional", "keyword"]
)
def test_s4_unhashable_argument_error_names_function_and_key(
    kind: str, options: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    """S4: an unhashable argument raises a TypeError naming the function and suggesting key=."""
    runs: list[int] = []

    def load_items(items: Any, limit: int = 3) -> int:
        runs.append(1)
        return 0

    load = singleflight(**options)(as_kind(kind, load_items))
    with pytest.raises(TypeError, match=r"load_items") as info:
        run(load, *args, **kwargs)
    assert "key=" in str(info.value)
    assert runs == []
    assert load.cache_info().in_flight == 0


def test_s4_unhashable_varargs_error(kind: str) -> None:
    """S4: an unhashable value passed through *args or **kwargs gets the same error."""

    def gather_all(*args: Any, **kwargs: Any) -> int:
        return 0

    load = singleflight(as_kind(kind, gather_all))
    with pytest.raises(TypeError, match=r"gather_all[\s\S]*key="):
        run(load, 1, [2])
    with pytest.raises(TypeError, match=r"gather_all[\s\S]*key="):
        run(load, a={})


def test_s4_key_by_name_applies_defaults(kind: str) -> None:
    """S4: key="user_id" keys on that argument alone, however it is passed."""
    runs: list[int] = []

    def fetch_user(user_id: int, *, verbose: bool = False) -> str:
        runs.append(user_id)
        return f"user {user_id}"

    fetch = singleflight(key="user_id", ttl=60)(as_kind(kind, fetch_user))
    assert run(fetch, 1) == "user 1"
    assert run(fetch, user_id=1, verbose=True) == "user 1"
    assert run(fetch, 2) == "user 2"
    assert runs == [1, 2]
    assert fetch.cache_key(1) == fetch.cache_key(user_id=1, verbose=True)


@pytest.mark.parametrize("names", [("user_id", "region"), ["user_id", "region"]])
def test_s4_key_by_names(kind: str, names: Any) -> None:
    """S4: a sequence of names keys on those bound arguments, defaults applied."""
    runs: list[Any] = []

    def fetch(user_id: int, region: str = "eu", trace: object = None) -> str:
        runs.append((user_id, region))
        return f"{user_id}@{region}"

    load = singleflight(key=names, ttl=60)(as_kind(kind, fetch))
    assert run(load, 1) == "1@eu"
    assert run(load, 1, "eu", trace=object()) == "1@eu"
    assert run(load, region="eu", user_id=1) == "1@eu"
    assert run(load, 1, "us") == "1@us"
    assert runs == [(1, "eu"), (1, "us")]


def test_s4_key_name_ignores_unhashable_other_arguments(kind: str) -> None:
    """S4: with key= naming hashable parameters, other arguments may be unhashable."""

    def fetch(user_id: int, payload: list[int]) -> int:
        return user_id + len(payload)

    load = singleflight(key="user_id", ttl=60)(as_kind(kind, fetch))
    assert run(load, 1, [1, 2]) == 3
    assert run(load, 1, [1, 2, 3, 4]) == 3  # cached by user_id


@pytest.mark.parametrize("key", ["nope", ("user_id", "nope"), ["nope"]])
def test_s4_unknown_key_name_fails_at_decoration(key: Any) -> None:
    """S4: a key name that is not a parameter is a TypeError when decorating."""

    def fetch(user_id: int) -> int:
        return user_id

    with pytest.raises(TypeError, match="nope"):
        singleflight(key=key)(fetch)


def test_s4_key_callable(kind: str) -> None:
    """S4: a key callable gets the call's arguments and its result is the key."""
    runs: list[int] = []
    seen: list[Any] = []

    def key(user_id: int, *, verbose: bool = False) -> int:
        seen.append((user_id, verbose))
        return user_id % 10

    def fetch(user_id: int, *, verbose: bool = False) -> int:
        runs.append(user_id)
        return user_id

    load = singleflight(key=key, ttl=60)(as_kind(kind, fetch))
    assert run(load, 1) == 1
    assert run(load, 11, verbose=True) == 1  # same key: cached result
    assert run(load, 2) == 2
    assert runs == [1, 2]
    assert (11, True) in seen
    assert load.cache_key(21) == 1


def test_s4_key_callable_returning_unhashable(kind: str) -> None:
    """S4: a key callable returning an unhashable value gives a clear TypeError."""

    def fetch_report(day: int) -> int:
        return day

    load = singleflight(key=lambda day: [day], ttl=60)(as_kind(kind, fetch_report))
    with pytest.raises(TypeError, match=r"fetch_report[\s\S]*hashable|hashable[\s\S]*fetch_report"):
        run(load, 1)
    bare = singleflight(key=lambda day: {day: 1})(as_kind(kind, fetch_report))
    with pytest.raises(TypeError, match="hashable"):
        run(bare, 1)


def test_s4_typed_separates_equal_values_of_other_types(kind: str) -> None:
    """S4: typed=True keys f(1) and f(1.0) apart, typed=False shares them."""
    runs: list[Any] = []

    def body(x: Any) -> str:
        runs.append(x)
        return type(x).__name__

    typed = singleflight(ttl=60, typed=True)(as_kind(kind, body))
    assert run(typed, 1) == "int"
    assert run(typed, 1.0) == "float"
    assert run(typed, x=1) == "int"
    assert runs == [1, 1.0]
    assert typed.cache_key(1) != typed.cache_key(1.0)

    runs.clear()
    untyped = singleflight(ttl=60)(as_kind(kind, body))
    assert run(untyped, 1) == "int"
    assert run(untyped, 1.0) == "int"
    assert runs == [1]


def test_s4_typed_with_key_names(kind: str) -> None:
    """S4: typed=True also separates types when the key names parameters."""

    def body(x: Any, other: int = 0) -> str:
        return type(x).__name__

    load = singleflight(key="x", ttl=60, typed=True)(as_kind(kind, body))
    assert run(load, 1) == "int"
    assert run(load, 1.0) == "float"
    assert run(load, True) == "bool"


def test_s4_callers_spelling_arguments_differently_share_a_flight() -> None:
    """S4/S1: concurrent callers binding to the same arguments join one execution."""
    release = threading.Event()
    runs: list[int] = []

    @singleflight
    def load(x: int, *, scale: int = 1) -> object:
        runs.append(x)
        wait(release)
        return object()

    callers = [Caller(load, 1), Caller(load, x=1), Caller(load, 1, scale=1)]
    callers[0].start()
    eventually(lambda: load.cache_info().in_flight == 1)
    for caller in callers[1:]:
        caller.start()
    eventually(lambda: load.cache_info().coalesced == 2)
    release.set()
    values = [caller.result() for caller in callers]
    assert values[0] is values[1] is values[2]
    assert runs == [1]


# --------------------------------------------------------------------------- S5


def test_s5_two_functions_never_share_a_flight() -> None:
    """S5: two decorated functions called with equal arguments each run their own execution."""
    together = threading.Barrier(2)  # passable only if both run at once

    @singleflight
    def one(x: int) -> str:
        together.wait(10)
        return "one"

    @singleflight
    def two(x: int) -> str:
        together.wait(10)
        return "two"

    callers = [Caller(one, 1), Caller(two, 1)]
    for caller in callers:
        caller.start()
    assert [caller.result() for caller in callers] == ["one", "two"]


def test_s5_two_async_functions_never_share_a_flight() -> None:
    """S5: two async functions called with equal arguments each run their own execution."""

    async def main() -> list[str]:
        together = asyncio.Barrier(2)

        @singleflight(cache={})
        async def one(x: int) -> str:
            await together.wait()
            return "one"

        @singleflight(cache={})
        async def two(x: int) -> str:
            await together.wait()
            return "two"

        return list(await asyncio.wait_for(asyncio.gather(one(1), two(1)), 10))

    assert asyncio.run(main()) == ["one", "two"]


def test_s5_results_shared_only_through_the_same_mapping(kind: str) -> None:
    """S5: functions share results only when given the same cache= mapping and equal keys."""
    shared: dict[Any, Any] = {}

    def first(x: int) -> str:
        return f"first {x}"

    def second(x: int) -> str:
        return f"second {x}"

    one = singleflight(cache=shared)(as_kind(kind, first))
    two = singleflight(cache=shared)(as_kind(kind, second))
    other = singleflight(cache={})(as_kind(kind, second))
    assert run(one, 1) == "first 1"
    assert run(two, 1) == "first 1"  # same mapping, equal key: a hit
    assert two.cache_info().hits == 1
    assert run(other, 1) == "second 1"  # another mapping
    assert run(two, 2) == "second 2"


def test_s5_builtin_caches_are_per_function(kind: str) -> None:
    """S5: with ttl=, each function keeps its own results."""

    def first(x: int) -> str:
        return f"first {x}"

    def second(x: int) -> str:
        return f"second {x}"

    one = singleflight(ttl=60)(as_kind(kind, first))
    two = singleflight(ttl=60)(as_kind(kind, second))
    assert run(one, 1) == "first 1"
    assert run(two, 1) == "second 1"


def test_s5_same_mapping_different_keys_do_not_share(kind: str) -> None:
    """S5: functions sharing a mapping but producing different keys keep their results apart."""
    shared: dict[Any, Any] = {}

    def first(x: int) -> str:
        return "first"

    def second(x: int) -> str:
        return "second"

    one = singleflight(cache=shared, key=lambda x: ("first", x))(as_kind(kind, first))
    two = singleflight(cache=shared, key=lambda x: ("second", x))(as_kind(kind, second))
    assert run(one, 1) == "first"
    assert run(two, 1) == "second"
    assert len(shared) == 2


# --------------------------------------------------------------------------- S11


def test_s11_methods_key_on_self(kind: str) -> None:
    """S11: self is part of the default key: instances do not share results, calls do."""
    runs: list[Any] = []

    def area(self: Any, scale: int = 1) -> int:
        runs.append((self.name, scale))
        return self.side * self.side * scale

    class Square:
        def __init__(self, name: str, side: int) -> None:
            self.name = name
            self.side = side

    Square.area = singleflight(ttl=60)(as_kind(kind, area))  # type: ignore[attr-defined]
    a, b = Square("a", 2), Square("b", 3)
    assert run(a.area) == 4  # type: ignore[attr-defined]
    assert run(a.area, scale=1) == 4  # type: ignore[attr-defined]
    assert run(b.area) == 9  # type: ignore[attr-defined]
    assert run(Square.area, a) == 4  # type: ignore[attr-defined]
    assert runs == [("a", 1), ("b", 1)]
    assert Square.area.cache_key(a) != Square.area.cache_key(b)  # type: ignore[attr-defined]
    assert a.area.invalidate(a) is True  # type: ignore[attr-defined]
    assert run(a.area) == 4  # type: ignore[attr-defined]
    assert len(runs) == 3


def test_s11_threads_calling_one_instance_share() -> None:
    """S11/S1: threads calling a method of one instance share one execution."""
    release = threading.Event()
    runs: list[int] = []

    class Service:
        @singleflight
        def fetch(self, x: int) -> object:
            runs.append(x)
            wait(release)
            return object()

    service = Service()
    callers = [Caller(service.fetch, 1) for _ in range(4)]
    callers.append(Caller(Service().fetch, 1))  # another instance: its own execution
    for caller in callers:
        caller.start()
    eventually(lambda: Service.fetch.cache_info().coalesced == 3)
    release.set()
    values = [caller.result() for caller in callers]
    assert values[0] is values[1] is values[2] is values[3]
    assert values[4] is not values[0]
    assert runs == [1, 1]


@pytest.mark.parametrize("order", ["singleflight-outside", "singleflight-inside"])
def test_s11_classmethod(kind: str, order: str) -> None:
    """S11: classmethod works in both decorator orders, keyed on the class."""
    runs: list[Any] = []

    def make(cls: type, x: int) -> str:
        runs.append((cls.__name__, x))
        return f"{cls.__name__}:{x}"

    fn = as_kind(kind, make)
    if order == "singleflight-outside":
        method: Any = singleflight(ttl=60)(classmethod(fn))
    else:
        method = classmethod(singleflight(ttl=60)(fn))

    class Base:
        build = method

    class Child(Base):
        pass

    assert run(Base.build, 1) == "Base:1"
    assert run(Base().build, 1) == "Base:1"
    assert run(Child.build, 1) == "Child:1"
    assert runs == [("Base", 1), ("Child", 1)]
    assert Base.build.cache_info().hits == 1


@pytest.mark.parametrize("order", ["singleflight-outside", "singleflight-inside"])
def test_s11_staticmethod(kind: str, order: str) -> None:
    """S11: staticmethod works in both decorator orders."""
    runs: list[int] = []

    def make(x: int) -> int:
        runs.append(x)
        return x * 2

    fn = as_kind(kind, make)
    if order == "singleflight-outside":
        method: Any = singleflight(ttl=60)(staticmethod(fn))
    else:
        method = staticmethod(singleflight(ttl=60)(fn))

    class Holder:
        double = method

    assert run(Holder.double, 2) == 4
    assert run(Holder().double, 2) == 4
    assert runs == [2]
    assert Holder.double.cache_info().hits == 1


def test_s11_unhashable_self_gets_the_s4_error(kind: str) -> None:
    """S11: a method of an unhashable instance (non-frozen dataclass) gets the S4 TypeError."""

    @dataclasses.dataclass
    class Point:
        x: int

    def norm(self: Point) -> int:
        return abs(self.x)

    Point.norm = singleflight(ttl=60)(as_kind(kind, norm))  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match=r"norm[\s\S]*key=") as info:
        run(Point(3).norm)  # type: ignore[attr-defined]
    assert "self" in str(info.value)


def test_s11_unhashable_self_with_key_name_works(kind: str) -> None:
    """S11: key= naming other parameters lets an unhashable instance's method be used."""

    @dataclasses.dataclass
    class Repo:
        name: str

    def get(self: Repo, item: int) -> str:
        return f"{self.name}:{item}"

    Repo.get = singleflight(key="item", ttl=60)(as_kind(kind, get))  # type: ignore[attr-defined]
    assert run(Repo("a").get, 1) == "a:1"  # type: ignore[attr-defined]
