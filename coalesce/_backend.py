"""Backends: what ``@singleflight(backend=...)`` needs from a store shared by processes.

This file is the whole contract; ``coalesce.redis.RedisBackend`` is one implementation
of it, and a memcached backend, or a second Redis mode, is another. The shape::

    backend.local_ttl                  # float | None, read once when decorating
    backend.bind(func, name=..., ttl=..., is_async=...)  # once per decorated function
        -> Binding        (is_async=False: for a def function)
        -> AsyncBinding   (is_async=True: for an async def function)

    binding.call(key, compute)         # the value for key, shared by the fleet
    binding.invalidate(key) -> bool    # drop that value from the store
    binding.clear()                    # drop every value of this function
    # AsyncBinding: the same as coroutines, acall / ainvalidate / aclear

Who does what. The decorator keeps the in-process work: it builds the key (S4) and
passes it as the call made it, a hashable, normalised key (``f.cache_key(...)``); it
coalesces first, so one call per key per process (per event loop, for ``async def``)
reaches the binding at a time; with ``local_ttl`` it keeps a copy of each value in
front of the backend (R8); it counts, and gives the function its helpers, whose
``invalidate()`` and ``cache_clear()`` reach ``invalidate``/``clear`` (or their
``a``-prefixed forms). The binding does the rest, for one function:

- ``call(key, compute)``: return the value for ``key`` from the store, or from an
  execution running in another process, or by calling ``compute()`` (which runs the
  function once with the call's arguments) and storing what it returns for ``ttl``
  seconds. An exception from ``compute()`` propagates unchanged (``BaseException``
  too: release whatever the call held first); one learnt from another process is
  raised as :class:`coalesce.RemoteError` (R9). When the store fails, run
  ``compute()`` here rather than fail the call, unless asked to raise (R6).
- ``bind()`` checks what it can when decorating (a sync client for an ``async def``,
  a bad ``name``) and raises a ``TypeError`` or ``ValueError`` that says the fix.

``coalesce._payload`` has the parts any backend shares, so that none copies them:
the stable key digest (R2: ``prefix:name:digest``, never ``hash()``), the pickle and
JSON serialisers (R7) and sealed payloads, HMAC-signed with ``signing_key`` and
refused before deserialising when they fail (R7), errors carried across (R9).

Freshness across the fleet (R10, R11) is a capability: a backend whose ``bind()``
takes ``fleet=`` receives a :class:`Fleet` (the decorator's freshness options and a
:class:`Tally` to count hits, stale serves and waits on other processes in
``cache_info()``), and then owns those decisions for the whole fleet. A backend
without it keeps working; the freshness options are refused with it.

``singleflight()`` checks the object it is given with :func:`check_backend`, and each
binding with :func:`bind_sync` or :func:`bind_async`: a missing method is a
``TypeError`` at decoration time that names it. A capability added later (a batch of
keys in one round trip, freshness across the fleet) gets a protocol of its own here,
so a backend without it keeps working.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Final, Protocol, TypeVar, cast, runtime_checkable

__all__ = (
    "AsyncBinding",
    "Backend",
    "Binding",
    "Copies",
    "CountsTakeovers",
    "DatesAsyncValues",
    "DatesValues",
    "Fleet",
    "FollowsCopies",
    "Tally",
    "bind_async",
    "bind_sync",
    "check_backend",
    "takes_fleet",
)

R = TypeVar("R")


@runtime_checkable
class Binding(Protocol):
    """A backend's view of one ``def`` function: what :meth:`Backend.bind` returns."""

    def call(self, key: Hashable, compute: Callable[[], R], /) -> R:
        """The value for ``key``: from the store, from another process, or ``compute()``."""
        ...

    def invalidate(self, key: Hashable, /) -> bool:
        """Drop the value for ``key`` from the store; ``True`` if one was there."""
        ...

    def clear(self) -> None:
        """Drop every value of this function from the store."""
        ...


@runtime_checkable
class AsyncBinding(Protocol):
    """A backend's view of one ``async def`` function: what :meth:`Backend.bind` returns."""

    async def acall(self, key: Hashable, compute: Callable[[], Awaitable[R]], /) -> R:
        """The value for ``key``: from the store, from another process, or ``await compute()``."""
        ...

    async def ainvalidate(self, key: Hashable, /) -> bool:
        """Drop the value for ``key`` from the store; ``True`` if one was there."""
        ...

    async def aclear(self) -> None:
        """Drop every value of this function from the store."""
        ...


class Tally(Protocol):
    """What a backend tells ``cache_info()`` about a call it answered (R10).

    The decorator counts every call that reaches the backend as a miss; the backend
    corrects that: ``hit()`` (answered from the store), ``stale()`` (a stale value
    served while a refresh runs), ``waited()`` (waited on another process's
    execution: a miss that coalesced), ``refreshed()`` (a background refresh started
    here), ``running()`` and ``settled()`` (a background task of this process
    starts and ends: it is in ``in_flight`` meanwhile),
    ``failed()`` (an execution failed and the old value was served instead),
    ``kept()`` (a kept error was raised, after ``hit()``: not a new failure).

    Executions and their outcomes (``errors``, ``coalesce.executions``) are counted by
    the decorator itself, around each run of the function the backend makes, so
    ``failed()`` and ``kept()`` are reports a backend may make, and change no count.
    """

    def hit(self) -> None: ...
    def stale(self) -> None: ...
    def waited(self) -> None: ...
    def refreshed(self) -> None: ...
    def failed(self) -> None: ...
    def kept(self) -> None: ...
    def running(self) -> None: ...
    def settled(self) -> None: ...


class Fleet:
    """The freshness options (SPEC section 3) of one function, for a backend (R10).

    ``ttl`` is seconds or a callable ``(result) -> seconds`` (F5); ``stale``,
    ``early``, ``stale_if_error`` and ``error_ttl`` are 0.0 when off; ``cache_if`` is
    ``None`` when every result is kept.
    """

    __slots__ = ("cache_if", "early", "error_ttl", "stale", "stale_if_error", "tally", "ttl")

    def __init__(
        self,
        *,
        ttl: float | Callable[[Any], float],
        stale: float = 0.0,
        early: float = 0.0,
        stale_if_error: float = 0.0,
        error_ttl: float = 0.0,
        cache_if: Callable[[Any], object] | None = None,
        tally: Tally | None = None,
    ) -> None:
        self.ttl = ttl
        self.stale = stale
        self.early = early
        self.stale_if_error = stale_if_error
        self.error_ttl = error_ttl
        self.cache_if = cache_if
        self.tally = tally

    @property
    def keep(self) -> float:
        """How long past its ttl a value may still serve: the longest window."""
        return max(self.stale, self.stale_if_error)

    def __repr__(self) -> str:
        return (
            f"Fleet(ttl={self.ttl!r}, stale={self.stale}, early={self.early}, "
            f"stale_if_error={self.stale_if_error}, error_ttl={self.error_ttl}, "
            f"cache_if={self.cache_if!r})"
        )


@runtime_checkable
class Backend(Protocol):
    """What ``@singleflight(backend=...)`` accepts, such as ``coalesce.redis.RedisBackend``."""

    @property
    def local_ttl(self) -> float | None:
        """Seconds a value is also kept in each process, in front of the backend (R8);
        ``None``: not kept."""
        ...

    def bind(
        self, func: Callable[..., Any], /, *, name: str, ttl: float, is_async: bool
    ) -> Binding | AsyncBinding:
        """Prepare for one decorated function; called once, when decorating.

        :param func: the function being decorated.
        :param name: its name in the store's keys: the decorator's ``name=``, else the
            function's qualified name.
        :param ttl: seconds a value is kept in the store.
        :param is_async: ``True`` for an ``async def`` function: return an
            :class:`AsyncBinding`; else a :class:`Binding`.

        A backend that keeps freshness across the fleet (R10) also takes
        ``fleet: Fleet`` (the decorator checks for it by name); ``ttl`` may then be a
        callable.
        """
        ...


@runtime_checkable
class CountsTakeovers(Protocol):
    """Optional, for a binding whose backend has leases: it counts lease takeovers.

    A takeover is a call that waited on a leader in another process and then took the
    lease itself (the leader died, or gave the run up): ``coalesce.lease.takeovers``
    (SPEC O1). The decorator calls ``count_takeovers(tick)`` once, when decorating; the
    binding calls ``tick()`` once per takeover, from any thread (it is one atomic step).
    A binding without this method simply reports none.
    """

    def count_takeovers(self, tick: Callable[[], object], /) -> None:
        """Call ``tick()`` from now on, once each time a caller takes a lease over."""
        ...


@runtime_checkable
class DatesValues(Protocol):
    """Optional, for a :class:`Binding`: it says how long the value it returns stays fresh.

    With ``local_ttl`` the decorator then calls ``call_fresh`` instead of ``call`` and
    keeps its local copy for ``min(local_ttl, fresh_for)`` seconds, so a copy never
    outlives the value it copies (R8); ``fresh_for <= 0`` (a stale value, one the
    store keeps for no time) keeps no copy. A binding without it has each copy kept
    for ``local_ttl``.
    """

    def call_fresh(self, key: Hashable, compute: Callable[[], R], /) -> tuple[R, float]:
        """``call(key, compute)`` and the seconds from now its value stays fresh."""
        ...


@runtime_checkable
class DatesAsyncValues(Protocol):
    """:class:`DatesValues` for an :class:`AsyncBinding`."""

    async def acall_fresh(
        self, key: Hashable, compute: Callable[[], Awaitable[R]], /
    ) -> tuple[R, float]:
        """``acall(key, compute)`` and the seconds from now its value stays fresh."""
        ...


class Copies(Protocol):
    """This process's local copies of one function's values (``local_ttl=``, R8), as the
    decorator hands them to a binding that keeps them in step with the fleet (R12).

    ``drop(key)`` removes the copy of ``key`` and detaches an execution of it in flight
    (it answers its callers but keeps nothing), as ``invalidate()`` does in this process
    only; ``drop_all()`` does that for every key, as ``cache_clear()`` does (the counters
    stay); ``holds(key)``: whether a copy or an execution of ``key`` is there now;
    ``after_fork()``: the child of ``os.fork`` drops what its parent kept (it takes no
    lock a parent's thread may have held). Any thread may call them.
    """

    def drop(self, key: Hashable, /) -> None: ...
    def drop_all(self) -> None: ...
    def holds(self, key: Hashable, /) -> bool: ...
    def after_fork(self) -> None: ...


@runtime_checkable
class FollowsCopies(Protocol):
    """Optional, for a binding that keeps local copies in step with the fleet (R12).

    With ``local_ttl``, the decorator calls ``follow(copies)`` once, when decorating.
    From then on the binding drops a copy when another process invalidates or replaces
    its value or clears the function, and keeps none while it cannot hear of that
    (its ``call_fresh()`` then says the value stays fresh for no time, so no copy is
    kept; see :class:`DatesValues`).
    """

    def follow(self, copies: Copies, /) -> None:
        """Keep ``copies`` in step with what other processes do to the store."""
        ...


# What the checks below look for: the members of the protocols above (a test keeps
# them equal).
BACKEND_METHODS: Final = ("bind",)
BACKEND_ATTRIBUTES: Final = ("local_ttl",)
BINDING_METHODS: Final = ("call", "invalidate", "clear")
ASYNC_BINDING_METHODS: Final = ("acall", "ainvalidate", "aclear")


def check_backend(backend: object) -> Backend:
    """``backend`` as a :class:`Backend`, or a ``TypeError`` that names what it lacks."""
    if isinstance(backend, type):
        raise TypeError(
            f"backend must be a backend object, not the class {backend.__name__}: "
            f"pass an instance, e.g. {backend.__name__}(...)"
        )
    missing = [
        f"{name}()" for name in BACKEND_METHODS if not callable(getattr(backend, name, None))
    ] + [name for name in BACKEND_ATTRIBUTES if not hasattr(backend, name)]
    if missing:
        raise TypeError(
            f"backend must be a coalesce backend such as coalesce.redis.RedisBackend(client), "
            f"not {type(backend).__name__}, which has no {' or '.join(missing)}; a backend "
            "offers bind(func, *, name, ttl, is_async) and local_ttl (see coalesce.Backend)"
        )
    return cast(Backend, backend)


def takes_fleet(backend: Backend) -> bool:
    """Whether ``backend.bind()`` takes ``fleet=`` (freshness across the fleet, R10)."""
    try:
        parameters = inspect.signature(backend.bind).parameters
    except (TypeError, ValueError):
        return False
    return "fleet" in parameters


def _bind(
    backend: Backend,
    func: Callable[..., Any],
    name: str,
    ttl: Any,
    is_async: bool,
    fleet: Fleet | None,
) -> object:
    if fleet is None:
        return backend.bind(func, name=name, ttl=ttl, is_async=is_async)
    bind: Callable[..., object] = backend.bind
    return bind(func, name=name, ttl=ttl, is_async=is_async, fleet=fleet)


def bind_sync(
    backend: Backend,
    func: Callable[..., Any],
    *,
    name: str,
    ttl: float | Callable[[Any], float],
    fleet: Fleet | None = None,
) -> Binding:
    """``backend.bind()`` for a ``def`` function, checked to be a :class:`Binding`."""
    binding = _bind(backend, func, name, ttl, False, fleet)
    _check_binding(backend, binding, BINDING_METHODS, "is_async=False", "Binding")
    return cast(Binding, binding)


def bind_async(
    backend: Backend,
    func: Callable[..., Any],
    *,
    name: str,
    ttl: float | Callable[[Any], float],
    fleet: Fleet | None = None,
) -> AsyncBinding:
    """``backend.bind()`` for an ``async def`` function, checked to be an :class:`AsyncBinding`."""
    binding = _bind(backend, func, name, ttl, True, fleet)
    _check_binding(backend, binding, ASYNC_BINDING_METHODS, "is_async=True", "AsyncBinding")
    return cast(AsyncBinding, binding)


def _check_binding(
    backend: Backend, binding: object, methods: tuple[str, ...], mode: str, protocol: str
) -> None:
    missing = [f"{name}()" for name in methods if not callable(getattr(binding, name, None))]
    if missing:
        raise TypeError(
            f"{type(backend).__name__}.bind(..., {mode}) returned {type(binding).__name__}, "
            f"which has no {' or '.join(missing)}: it must return a coalesce.{protocol} "
            f"({', '.join(f'{name}()' for name in methods)})"
        )
