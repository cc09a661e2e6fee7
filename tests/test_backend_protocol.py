"""SPEC section 8 and R1-R9: ``backend=`` is the ``Backend`` protocol, and it is enough.

``MemoryBackend`` below is a backend written only against ``coalesce.Backend``: one
dict that every decoration of a name shares, as processes share one Redis. Two
decorations of the same function stand for two processes (each has its own flights
and local copies). That it serves ``def`` and ``async def`` through the decorator,
invalidation included, shows that the protocol says all a backend needs.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Hashable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from _core_support import WAIT, run

import coalesce
from coalesce import AsyncBinding, Backend, Binding, singleflight
from coalesce._backend import (
    ASYNC_BINDING_METHODS,
    BACKEND_ATTRIBUTES,
    BACKEND_METHODS,
    BINDING_METHODS,
)

mypy_api = pytest.importorskip("mypy.api", reason="mypy is in the lint extra")

R = TypeVar("R")
HERE = Path(__file__).parent


class MemoryBackend:
    """Values in one dict, one execution per key among all decorations (threads)."""

    def __init__(self, *, local_ttl: float | None = None) -> None:
        self.local_ttl = local_ttl
        self.values: dict[tuple[str, Hashable], Any] = {}
        self.running: set[tuple[str, Hashable]] = set()
        self.log: list[tuple[str, str, Hashable]] = []  # (operation, name, key)
        self.bound: list[tuple[str, float, bool]] = []  # (name, ttl, is_async)
        self.changed = threading.Condition()
        self.waiting = 0

    def bind(
        self, func: Callable[..., Any], *, name: str, ttl: float, is_async: bool
    ) -> MemoryBinding | MemoryAsyncBinding:
        self.bound.append((name, ttl, is_async))
        return MemoryAsyncBinding(self, name) if is_async else MemoryBinding(self, name)

    def lead_or_read(self, slot: tuple[str, Hashable]) -> tuple[bool, Any]:
        """``(True, value)`` if the store has it; else ``(False, None)``: the caller leads."""
        with self.changed:
            while slot in self.running:
                self.waiting += 1
                self.changed.notify_all()
                self.changed.wait(WAIT)
                self.waiting -= 1
            if slot in self.values:
                return True, self.values[slot]
            self.running.add(slot)
            return False, None

    def land(self, slot: tuple[str, Hashable], value: Any, *, store: bool) -> None:
        with self.changed:
            if store:
                self.values[slot] = value
            self.running.discard(slot)
            self.changed.notify_all()

    def drop(self, name: str, key: Hashable | None) -> bool:
        with self.changed:
            if key is not None:
                return self.values.pop((name, key), self) is not self
            for slot in [slot for slot in self.values if slot[0] == name]:
                del self.values[slot]
            return True


class MemoryBinding:
    """A ``Binding``: one ``def`` function's view of a ``MemoryBackend``."""

    def __init__(self, backend: MemoryBackend, name: str) -> None:
        self.backend = backend
        self.name = name

    def call(self, key: Hashable, compute: Callable[[], R]) -> R:
        self.backend.log.append(("call", self.name, key))
        slot = (self.name, key)
        found, value = self.backend.lead_or_read(slot)
        if found:
            return value  # type: ignore[no-any-return]
        try:
            result = compute()
        except BaseException:
            self.backend.land(slot, None, store=False)
            raise
        self.backend.land(slot, result, store=True)
        return result

    def invalidate(self, key: Hashable) -> bool:
        self.backend.log.append(("invalidate", self.name, key))
        return self.backend.drop(self.name, key)

    def clear(self) -> None:
        self.backend.log.append(("clear", self.name, None))
        self.backend.drop(self.name, None)


class MemoryAsyncBinding:
    """An ``AsyncBinding``: one ``async def`` function's view of a ``MemoryBackend``."""

    def __init__(self, backend: MemoryBackend, name: str) -> None:
        self.backend = backend
        self.name = name

    async def acall(self, key: Hashable, compute: Callable[[], Awaitable[R]]) -> R:
        self.backend.log.append(("call", self.name, key))
        slot = (self.name, key)
        found, value = self.backend.lead_or_read(slot)  # never waits: one loop, in order
        if found:
            return value  # type: ignore[no-any-return]
        try:
            result = await compute()
        except BaseException:
            self.backend.land(slot, None, store=False)
            raise
        self.backend.land(slot, result, store=True)
        return result

    async def ainvalidate(self, key: Hashable) -> bool:
        self.backend.log.append(("invalidate", self.name, key))
        return self.backend.drop(self.name, key)

    async def aclear(self) -> None:
        self.backend.log.append(("clear", self.name, None))
        self.backend.drop(self.name, None)


def decorate(kind: str, backend: Backend, ran: list[str], label: str, **options: Any) -> Any:
    """``report(day)`` of ``kind``, decorated with ``backend``; each run appends ``label``."""
    options = {"ttl": 30, "backend": backend, "name": "report", **options}
    if kind == "sync":

        def report(day: str) -> str:
            ran.append(label)
            return f"{day} by {label}"

        return singleflight(**options)(report)

    async def areport(day: str) -> str:
        ran.append(label)
        return f"{day} by {label}"

    return singleflight(**options)(areport)


def invalidate(kind: str, f: Any, *args: Any) -> bool:
    """``f.invalidate(...)``, or ``await f.ainvalidate(...)`` for ``async def`` (to the backend)."""
    result: bool = run(f.ainvalidate if kind == "async" else f.invalidate, *args)
    return result


def cache_clear(kind: str, f: Any) -> None:
    run(f.acache_clear if kind == "async" else f.cache_clear)


# ------------------------------------------------------------------------- the protocol


@pytest.mark.timeout(300)
def test_redis_backend_is_a_backend_for_type_checkers() -> None:
    """Section 8: mypy --strict accepts RedisBackend as a Backend and rejects half a backend."""
    stdout, stderr, status = mypy_api.run(
        [
            "--strict",
            "--no-incremental",
            "--config-file",
            str(HERE.parent / "pyproject.toml"),
            str(HERE / "typing" / "check_backend.py"),
        ]
    )
    assert status == 0, stdout + stderr


def test_redis_backend_and_its_bindings_satisfy_the_runtime_protocols() -> None:
    """Section 8: a RedisBackend, and what it binds for def and async def, pass isinstance."""
    redis = pytest.importorskip("redis", reason="redis-py is not installed (the 'redis' extra)")
    redis_asyncio = pytest.importorskip("redis.asyncio")
    from coalesce.redis import RedisBackend

    def report(day: str) -> str:
        return day

    async def areport(day: str) -> str:
        return day

    sync_backend = RedisBackend(redis.Redis())  # no connection is made until a command
    async_backend = RedisBackend(redis_asyncio.Redis())
    assert isinstance(sync_backend, Backend)
    assert isinstance(async_backend, Backend)
    sync = sync_backend.bind(report, name="report", ttl=1.0, is_async=False)
    asynchronous = async_backend.bind(areport, name="report", ttl=1.0, is_async=True)
    assert isinstance(sync, Binding)
    assert not isinstance(sync, AsyncBinding)
    assert isinstance(asynchronous, AsyncBinding)
    assert not isinstance(asynchronous, Binding)


def test_the_checked_names_are_the_protocols_members() -> None:
    """Section 8: the decoration-time check looks for exactly what the protocols declare."""

    def members(protocol: type) -> set[str]:
        return {name for name in vars(protocol) if not name.startswith("_")}

    assert members(Backend) == set(BACKEND_METHODS) | set(BACKEND_ATTRIBUTES)
    assert members(Binding) == set(BINDING_METHODS)
    assert members(AsyncBinding) == set(ASYNC_BINDING_METHODS)
    assert {"Backend", "Binding", "AsyncBinding"} <= set(coalesce.__all__)


# ------------------------------------------------------------- a backend of one's own


def test_r1_a_value_is_shared_through_the_backend(kind: str) -> None:
    """R1: what one decoration stored, another decoration of the name gets without running."""
    backend = MemoryBackend()
    ran: list[str] = []
    here = decorate(kind, backend, ran, "here")
    there = decorate(kind, backend, ran, "there")
    assert run(here, "mon") == "mon by here"
    assert run(there, "mon") == "mon by here"
    assert run(there, "tue") == "tue by there"
    assert ran == ["here", "there"]
    is_async = kind == "async"
    assert backend.bound == [("report", 30.0, is_async), ("report", 30.0, is_async)]
    key = here.cache_key("mon")
    assert backend.log[:2] == [("call", "report", key), ("call", "report", key)]
    assert here.cache_info().misses == 1  # without local_ttl, each call asks the backend


def test_r2_the_binding_gets_the_functions_name_without_name(kind: str) -> None:
    """R2: without name=, the binding is named after the function's qualified name."""
    backend = MemoryBackend()
    f = decorate(kind, backend, [], "here", name=None)
    assert run(f, "mon") == "mon by here"
    assert backend.bound[0][0] == f.__qualname__


def test_r1_invalidate_and_cache_clear_reach_the_backend(kind: str) -> None:
    """R1: f.invalidate (f.ainvalidate) and f.cache_clear (f.acache_clear) go to the binding."""
    backend = MemoryBackend()
    ran: list[str] = []
    here = decorate(kind, backend, ran, "here")
    there = decorate(kind, backend, ran, "there")
    run(here, "mon")
    run(here, "tue")
    assert invalidate(kind, there, "mon") is True
    assert invalidate(kind, there, "mon") is False
    assert ("invalidate", "report", there.cache_key("mon")) in backend.log
    assert run(there, "mon") == "mon by there"
    assert run(there, "tue") == "tue by here"
    cache_clear(kind, here)
    assert ("clear", "report", None) in backend.log
    assert backend.values == {}
    assert run(there, "tue") == "tue by there"
    assert ran == ["here", "here", "there", "there"]


def test_r9_an_error_reaches_the_caller_unchanged_and_is_not_stored(kind: str) -> None:
    """R9: the exception compute() raised is the one the caller gets; nothing is stored."""
    backend = MemoryBackend()
    boom = LookupError("no such day")
    calls: list[str] = []

    def fail(day: str) -> str:
        calls.append(day)
        raise boom

    async def afail(day: str) -> str:
        return fail(day)

    f = singleflight(ttl=30, backend=backend, name="fail")(fail if kind == "sync" else afail)
    for _ in range(2):
        with pytest.raises(LookupError) as info:
            run(f, "mon")
        assert info.value is boom
    assert calls == ["mon", "mon"]
    assert backend.values == {}
    assert backend.running == set()


def test_r8_local_ttl_keeps_a_copy_in_front_of_the_backend(kind: str) -> None:
    """R8: with the backend's local_ttl, a repeated call is a hit that never reaches it."""
    backend = MemoryBackend(local_ttl=60.0)
    f = decorate(kind, backend, [], "here")
    assert run(f, "mon") == run(f, "mon") == "mon by here"
    assert [entry[0] for entry in backend.log] == ["call"]
    info = f.cache_info()
    assert (info.hits, info.misses, info.currsize) == (1, 1, 1)
    assert invalidate(kind, f, "mon") is True  # the local copy and the backend's value
    assert run(f, "mon") == "mon by here"
    assert [entry[0] for entry in backend.log] == ["call", "invalidate", "call"]


def test_r1_concurrent_callers_of_two_decorations_share_one_execution() -> None:
    """R1: two decorations (two processes' worth of flights) run a key once, concurrently."""
    backend = MemoryBackend()
    inside = threading.Event()
    release = threading.Event()
    ran: list[str] = []

    def make(label: str) -> Any:
        def report(day: str) -> str:
            ran.append(label)
            inside.set()
            assert release.wait(WAIT)
            return f"{day} by {label}"

        return singleflight(ttl=30, backend=backend, name="report")(report)

    here, there = make("here"), make("there")
    results: dict[str, str] = {}
    first = threading.Thread(target=lambda: results.update(here=here("mon")))
    first.start()
    assert inside.wait(WAIT)
    second = threading.Thread(target=lambda: results.update(there=there("mon")))
    second.start()
    with backend.changed:
        assert backend.changed.wait_for(lambda: backend.waiting == 1, WAIT)
    release.set()
    first.join(WAIT)
    second.join(WAIT)
    assert results == {"here": "mon by here", "there": "mon by here"}
    assert ran == ["here"]


# ----------------------------------------------------------------------- what is refused


class Lacking:
    """Has bind() but no local_ttl."""

    def bind(self, func: Callable[..., Any], **options: Any) -> MemoryBinding:
        return MemoryBinding(MemoryBackend(), "x")


@pytest.mark.parametrize(
    ("backend", "lacks"),
    [
        (object(), "no bind() or local_ttl"),
        ({"bind": None}, "no bind() or local_ttl"),
        (Lacking(), "no local_ttl"),
    ],
    ids=["object", "dict", "no-local-ttl"],
)
def test_r1_an_object_that_is_not_a_backend_is_refused_when_decorating(
    backend: object, lacks: str
) -> None:
    """R1: backend= of the wrong shape is a TypeError naming what it lacks and what to pass."""
    with pytest.raises(TypeError) as info:
        singleflight(ttl=30, backend=backend)  # type: ignore[call-overload]
    message = str(info.value)
    assert lacks in message
    assert "coalesce.redis.RedisBackend" in message
    assert "bind(func, *, name, ttl, is_async) and local_ttl" in message
    assert type(backend).__name__ in message


def test_r1_a_backend_class_is_refused_with_a_hint_to_instantiate_it() -> None:
    """R1: backend=MemoryBackend (the class, not an instance) says to pass an instance."""
    with pytest.raises(TypeError, match=r"not the class MemoryBackend: pass an instance"):
        singleflight(ttl=30, backend=MemoryBackend)  # type: ignore[call-overload]


class NoAsync(MemoryBackend):
    """Binds async def functions to a binding without acall/ainvalidate/aclear."""

    def bind(
        self, func: Callable[..., Any], *, name: str, ttl: float, is_async: bool
    ) -> MemoryBinding | MemoryAsyncBinding:
        return MemoryBinding(self, name)


def test_r1_a_binding_of_the_wrong_kind_is_refused_when_decorating() -> None:
    """R1: a bind() whose result lacks the methods for the function's kind is a TypeError."""
    backend = NoAsync()
    f = decorate("sync", backend, [], "here")
    assert f("mon") == "mon by here"  # a def function: call/invalidate/clear are there
    with pytest.raises(TypeError) as info:
        decorate("async", backend, [], "here")
    message = str(info.value)
    assert "NoAsync.bind(..., is_async=True) returned MemoryBinding" in message
    assert "no acall() or ainvalidate() or aclear()" in message
    assert "coalesce.AsyncBinding (acall(), ainvalidate(), aclear())" in message


def test_r8_a_backend_whose_local_ttl_is_not_seconds_is_refused_when_decorating() -> None:
    """R8: local_ttl is read when decorating, and must be None or seconds above 0."""
    backend = MemoryBackend()
    backend.local_ttl = "soon"  # type: ignore[assignment]
    with pytest.raises(TypeError, match=r"local_ttl must be a number of seconds.*'soon'"):
        decorate("sync", backend, [], "here")
    backend.local_ttl = -1.0
    with pytest.raises(ValueError, match=r"local_ttl must be None or a number of seconds greater"):
        decorate("sync", backend, [], "here")


def test_r1_no_backend_options_without_ttl() -> None:
    """R1: backend= still needs ttl= (checked before the backend's shape)."""
    with pytest.raises(TypeError, match="pass ttl= too"):
        singleflight(backend=MemoryBackend())


def test_the_docs_show_every_member_of_the_protocols() -> None:
    """Section 8: the shape shown in docs/backends.md names every member of the protocols."""
    text = (HERE.parent / "docs" / "backends.md").read_text(encoding="utf-8")
    for name in (*BACKEND_METHODS, *BACKEND_ATTRIBUTES, *BINDING_METHODS, *ASYNC_BINDING_METHODS):
        assert f"def {name}(self" in text, name
