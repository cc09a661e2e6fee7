"""``singleflight()``: decide once, run lean.

At decoration time this picks sync or async, the store (none, the built-in TTL store
or the user's mapping) and the key plan, then has ``_compile.py`` build a wrapper
specialised for that choice: the per-call path has no option checks left in it. A hit
is one key, one dictionary lookup, one clock read and one counter step; everything
else goes through the function's group (``Group`` or ``AsyncGroup``), which the
decorator is built on.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import operator
import time
from collections.abc import Callable, Coroutine, Hashable, MutableMapping
from typing import (
    Any,
    Concatenate,
    Final,
    Generic,
    NamedTuple,
    ParamSpec,
    Protocol,
    Self,
    TypeVar,
    cast,
    overload,
)

from . import _observe
from ._backend import (
    AsyncBinding,
    Backend,
    Binding,
    CountsTakeovers,
    DatesAsyncValues,
    DatesValues,
    Fleet,
    FollowsCopies,
    bind_async,
    bind_sync,
    check_backend,
    takes_fleet,
)
from ._batch import BatchDecorator, batch_method
from ._compile import Compiled, compile_wrapper
from ._flight import AsyncGroup, Group, Stats
from ._keys import check_key_callable, plan_key, qualname, unhashed
from ._pinned import callable, getattr, hash, isinstance, iter, next
from ._seconds import seconds
from ._store import LocalCopies, MappingStore, Store, TTLStore, TTLView

__all__ = (
    "AsyncSingleflightFunction",
    "BoundSingleflightFunction",
    "CacheInfo",
    "SingleflightClassMethod",
    "SingleflightFunction",
    "singleflight",
)

P = ParamSpec("P")
P2 = ParamSpec("P2")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)
S = TypeVar("S")
T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)
S_contra = TypeVar("S_contra", contravariant=True)


class _CacheInfoFields(NamedTuple):
    hits: int
    """Calls answered from the cache."""
    misses: int
    """Calls that were not: each started an execution or joined one."""
    coalesced: int
    """Misses that joined an execution already in flight."""
    errors: int
    """Executions that raised."""
    in_flight: int
    """Executions running now, in every thread and event loop."""
    currsize: int
    """Results kept now (0 without a cache)."""
    maxsize: int | None
    """The cache's bound (``None``: unbounded, or no cache)."""


class CacheInfo(_CacheInfoFields):
    """What ``cache_info()`` reports (S12): a named tuple of seven counters and sizes.

    The freshness counters come after them as attributes, outside the tuple, so that
    the tuple stays the seven values of the contract (``info == (1, 0, ...)`` and
    unpacking keep working):

    - ``stale``: hits answered with a stale result while a refresh ran (``stale=``);
    - ``refreshes``: background refreshes started (``stale=``, ``early=``).
    """

    stale: int
    refreshes: int

    def __new__(
        cls,
        hits: int,
        misses: int,
        coalesced: int,
        errors: int,
        in_flight: int,
        currsize: int,
        maxsize: int | None,
        stale: int = 0,
        refreshes: int = 0,
    ) -> CacheInfo:
        info = super().__new__(cls, hits, misses, coalesced, errors, in_flight, currsize, maxsize)
        info.stale = stale
        info.refreshes = refreshes
        return info

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, stale={self.stale}, refreshes={self.refreshes})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (CacheInfo, (*self, self.stale, self.refreshes))


class _Default:
    __slots__ = ()

    def __repr__(self) -> str:
        return "1024"


_DEFAULT_MAXSIZE: Final[Any] = _Default()


class SingleflightFunction(Protocol[P, R_co]):
    """The type of a function decorated with ``@singleflight``.

    Calling it calls the function, sharing executions (and, with a cache, results)
    among equal calls. Its helpers:

    - ``cache``: the mapping results are kept in (with ``ttl=``, a view of the live
      results: writing to it stores a result as the function would), or ``None``;
    - ``cache_key(*args, **kwargs)``: the key these arguments map to;
    - ``cache_info()``: the counters and sizes, a :class:`CacheInfo`;
    - ``cache_clear()``: empty the cache and reset the counters; executions in flight
      are detached (they answer their callers and store nothing);
    - ``invalidate(*args, **kwargs)``: drop the cached result for these arguments and
      detach the execution in flight for them, so the next call runs anew
      (read-your-writes); ``True`` if a live result was dropped;
    - ``forget(*args, **kwargs)``: later callers start a new execution instead of
      joining the one in flight; ``True`` if one was in flight.
    - ``batch(max_batch=None, collect=None)``: decorate a batch function
      ``(ids: list[K]) -> Mapping[K, V]`` sharing this one's cache and flights
      (section 9 of the contract, docs/batches.md).

    ``__wrapped__`` is the undecorated function.
    """

    @property
    def __wrapped__(self) -> Callable[P, R_co]: ...
    @property
    def cache(self) -> MutableMapping[Any, Any] | None: ...

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...
    def cache_key(self, *args: P.args, **kwargs: P.kwargs) -> Hashable: ...
    def cache_info(self) -> CacheInfo: ...
    def cache_clear(self) -> None: ...
    def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> bool: ...
    def forget(self, *args: P.args, **kwargs: P.kwargs) -> bool: ...
    def batch(
        self, *, max_batch: int | None = None, collect: float | None = None
    ) -> BatchDecorator: ...

    @overload
    def __get__(self, instance: None, owner: type[Any] | None = None) -> Self: ...
    @overload
    def __get__(
        self: SingleflightFunction[Concatenate[S, P2], R],
        instance: S,
        owner: type[Any] | None = None,
    ) -> BoundSingleflightFunction[S, P2, R]: ...


class AsyncSingleflightFunction(
    SingleflightFunction[P, Coroutine[Any, Any, R_co]], Protocol[P, R_co]
):
    """The type of an ``async def`` function decorated with ``@singleflight``.

    Calling it gives a coroutine (as calling the ``async def`` does), so
    ``asyncio.create_task(f(...))`` and ``asyncio.run(f(...))`` type-check.

    Adds awaitable helpers that also reach an async Redis backend:
    ``await f.ainvalidate(*args, **kwargs)`` and ``await f.acache_clear()``.
    """

    async def ainvalidate(self, *args: P.args, **kwargs: P.kwargs) -> bool: ...
    async def acache_clear(self) -> None: ...


class BoundSingleflightFunction(Protocol, Generic[S_contra, P, R_co]):
    """A decorated method, reached through an instance.

    Calling it passes the instance as ``self``. Its helpers are the function's own and
    take ``self`` explicitly, like every other argument of the key:
    ``obj.method.invalidate(obj, 42)``.
    """

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...
    def cache_key(self, instance: S_contra, /, *args: P.args, **kwargs: P.kwargs) -> Hashable: ...
    def cache_info(self) -> CacheInfo: ...
    def cache_clear(self) -> None: ...
    def invalidate(self, instance: S_contra, /, *args: P.args, **kwargs: P.kwargs) -> bool: ...
    def forget(self, instance: S_contra, /, *args: P.args, **kwargs: P.kwargs) -> bool: ...


class SingleflightClassMethod(Protocol[T_contra, P, R_co]):
    """The type of a decorated ``classmethod`` (``@singleflight`` above or below it).

    Reached through the class or an instance, it is bound to the class: calling it
    passes ``cls``. Its helpers take ``cls`` explicitly, like every other argument of
    the key: ``Prices.currencies.invalidate(Prices)``. (For an ``async def`` class
    method, ``R_co`` is the coroutine its call gives.)
    """

    @property
    def __wrapped__(self) -> Callable[Concatenate[type[T_contra], P], R_co]: ...

    def __call__(self, cls: type[T_contra], /, *args: P.args, **kwargs: P.kwargs) -> R_co: ...
    def __get__(
        self, instance: object, owner: type[Any] | None = None
    ) -> BoundSingleflightFunction[type[T_contra], P, R_co]: ...


def _is_async(func: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(func):
        return True
    call = getattr(type(func), "__call__", None)
    return call is not None and not inspect.isfunction(func) and inspect.iscoroutinefunction(call)


@overload
def singleflight(func: classmethod[T, P, R], /) -> SingleflightClassMethod[T, P, R]: ...
@overload
def singleflight(
    func: Callable[Concatenate[type[T], P], R], /
) -> SingleflightClassMethod[T, P, R]: ...
@overload
def singleflight(
    func: Callable[P, Coroutine[Any, Any, R]],
    /,
) -> AsyncSingleflightFunction[P, R]: ...
@overload
def singleflight(func: Callable[P, R], /) -> SingleflightFunction[P, R]: ...
@overload
def singleflight(
    func: None = None,
    /,
    *,
    key: str | tuple[str, ...] | list[str] | Callable[..., Hashable] | None = None,
    ttl: float | Callable[[Any], float] | None = None,
    maxsize: int | None = ...,
    cache: MutableMapping[Any, Any] | None = None,
    typed: bool = False,
    stale: float | None = None,
    early: float | None = None,
    stale_if_error: float | None = None,
    error_ttl: float | None = None,
    cache_if: Callable[[Any], object] | None = None,
    backend: Backend | None = None,
    name: str | None = None,
) -> _Decorator: ...
def singleflight(
    func: Callable[..., Any] | classmethod[Any, Any, Any] | None = None,
    /,
    *,
    key: str | tuple[str, ...] | list[str] | Callable[..., Hashable] | None = None,
    ttl: float | Callable[[Any], float] | None = None,
    maxsize: int | None = _DEFAULT_MAXSIZE,
    cache: MutableMapping[Any, Any] | None = None,
    typed: bool = False,
    stale: float | None = None,
    early: float | None = None,
    stale_if_error: float | None = None,
    error_ttl: float | None = None,
    cache_if: Callable[[Any], object] | None = None,
    backend: Backend | None = None,
    name: str | None = None,
    **unknown: Any,
) -> Any:
    """Share one execution of the decorated function among concurrent equal calls.

    Works on ``def`` and ``async def`` functions, methods, ``classmethod`` and
    ``staticmethod``. Use it bare (``@singleflight``) or with options
    (``@singleflight(key="user_id", ttl=30)``).

    :param key: what identifies a call: ``None`` for every argument (normalised),
        a parameter name or a sequence of names, or a callable taking the function's
        arguments and returning a hashable key.
    :param ttl: seconds a result stays cached; ``None`` for coalescing only; or a
        callable ``(result) -> seconds`` for per-result lifetimes (0 or less: do not
        keep that result).
    :param maxsize: bound of the built-in cache (default 1024; ``None``: unbounded).
        Past it the result stored first is dropped first (FIFO, not LRU: a hit does
        not move a result); expired results go before live ones.
    :param cache: a ``MutableMapping`` (``dict``, any ``cachetools`` cache) to keep
        results in instead of the built-in cache.
    :param typed: as in :func:`functools.lru_cache`: ``f(1)`` and ``f(1.0)`` differ.
    :param stale: seconds past ``ttl`` a result is still served, at once, while one
        refresh runs in the background (stale-while-revalidate).
    :param early: XFetch's beta (1.0 is a good start): a hit may refresh early, in the
        background, likelier as expiry nears and the longer the key took to compute.
    :param stale_if_error: seconds past ``ttl`` the old result is served when the
        recomputation fails (the error is logged and counted).
    :param error_ttl: seconds an exception is kept and re-raised without running the
        function again (negative caching).
    :param cache_if: ``(result) -> bool``: keep a result only when true (callers in
        flight still share it).
    :param backend: a :class:`coalesce.Backend` to coordinate processes, such as
        :class:`coalesce.redis.RedisBackend`.
    :param name: the function's name in the backend's keys (default: its qualified name).

    Every combination of options is honoured or refused with a ``TypeError`` when
    decorating (S20); a misspelt option gets a "did you mean" suggestion.
    """
    if unknown:
        _reject_unknown(unknown)
    options = _Options(
        key, ttl, maxsize, cache, typed, backend, name,
        _Freshness(stale, early, stale_if_error, error_ttl, cache_if),
    )  # fmt: skip
    if func is None:
        return _Decorator(options)
    if not callable(func) and not isinstance(func, classmethod | staticmethod):
        hint = f"; did you mean key={func!r}?" if isinstance(func, str | tuple) else ""
        raise TypeError(
            f"singleflight() decorates a function, not {type(func).__name__} ({func!r}){hint}"
        )
    return options.decorate(func)


_OPTION_NAMES: Final = (
    "key",
    "ttl",
    "maxsize",
    "cache",
    "typed",
    "stale",
    "early",
    "stale_if_error",
    "error_ttl",
    "cache_if",
    "backend",
    "name",
)


def _reject_unknown(unknown: dict[str, Any]) -> None:
    """A ``TypeError`` for options ``singleflight()`` does not take, with a suggestion."""
    import difflib  # only on this error path

    name = next(iter(unknown))
    close = difflib.get_close_matches(name, _OPTION_NAMES, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise TypeError(
        f"singleflight() got an unexpected option {name!r}{hint} "
        f"(options: {', '.join(_OPTION_NAMES)})"
    )


class _Options:
    """The validated options of one ``singleflight(...)`` call."""

    __slots__ = ("backend", "cache", "fresh", "key", "maxsize", "name", "ttl", "typed")

    def __init__(
        self,
        key: object,
        ttl: object,
        maxsize: object,
        cache: object,
        typed: object,
        backend: object,
        name: object,
        fresh: _Freshness,
    ) -> None:
        maxsize_given = maxsize is not _DEFAULT_MAXSIZE
        if ttl is not None and not callable(ttl):
            ttl = seconds("ttl", ttl)
        if cache is not None and fresh.needs_ttl():
            raise TypeError(
                f"{fresh.needs_ttl()} work with the built-in cache (ttl=), not with "
                "cache=: they are windows past its ttl; use ttl= (and maxsize=) instead "
                "of cache=, or leave them out"
            )
        if fresh.needs_ttl() and ttl is None:
            raise TypeError(f"{fresh.needs_ttl()} measure time past a result's ttl: pass ttl= too")
        if fresh.cache_if is not None and ttl is None and cache is None:
            raise TypeError("cache_if= decides what is cached: pass ttl= or cache= too")
        if maxsize_given and ttl is None and cache is None and backend is None:
            raise TypeError(
                f"maxsize={maxsize!r} bounds the built-in cache, which only ttl= turns on: "
                "pass ttl= too (e.g. ttl=60, maxsize=...), or leave maxsize= out"
            )
        if cache is not None:
            if not isinstance(cache, MutableMapping):
                raise TypeError(
                    f"cache must be a MutableMapping (a dict, a cachetools cache, ...), "
                    f"not {type(cache).__name__}"
                )
            if ttl is not None:
                raise TypeError(
                    "pass either ttl= (the built-in TTL cache) or cache= (your own "
                    "mapping), not both; for a TTL with your own mapping use "
                    "cache=cachetools.TTLCache(maxsize, ttl)"
                )
            if maxsize_given:
                raise TypeError(
                    "maxsize= sizes the built-in cache and cannot apply to cache=; "
                    "bound your mapping itself (e.g. cachetools.LRUCache(maxsize))"
                )
        if maxsize is _DEFAULT_MAXSIZE:
            maxsize = 1024
        elif maxsize is not None:
            if isinstance(maxsize, bool) or not isinstance(maxsize, int):
                raise TypeError(
                    f"maxsize must be a positive int or None (unbounded), "
                    f"not {type(maxsize).__name__} ({maxsize!r})"
                )
            if maxsize < 1:
                raise ValueError(
                    f"maxsize must be at least 1 (or None for unbounded), not {maxsize}; "
                    "to cache nothing, leave out ttl="
                )
        if name is not None and (not isinstance(name, str) or not name):
            raise TypeError(f"name must be a non-empty str, not {name!r}")
        if backend is not None:
            if cache is not None:
                raise TypeError("pass either backend= or cache=, not both")
            if ttl is None:
                raise TypeError(
                    "backend= keeps results in the backend for ttl seconds: pass ttl= too"
                )
            backend = check_backend(backend)
            if not takes_fleet(backend):
                # S20: what this backend cannot do is refused, never ignored.
                ignored = [f"{n}=" for n in fresh.given()]
                if callable(ttl):
                    ignored.insert(0, "ttl= (a callable)")
                if ignored:
                    raise TypeError(
                        f"{type(backend).__name__} does not keep freshness across processes "
                        f"(its bind() takes no fleet=), so it would ignore "
                        f"{', '.join(ignored)}: use a backend that does, such as "
                        "coalesce.redis.RedisBackend, or leave them out"
                    )
            if maxsize_given and not backend.local_ttl:
                raise TypeError(
                    "maxsize= with backend= bounds the backend's local cache, which this "
                    "backend does not keep (no local_ttl=): leave maxsize= out, or give "
                    "the backend local_ttl="
                )
        elif name is not None:
            raise TypeError("name= names the function in a backend's keys: pass backend= too")
        self.fresh = fresh
        self.key = key
        self.ttl: float | Callable[[Any], float] | None = ttl
        self.maxsize: int | None = maxsize
        self.cache: MutableMapping[Any, Any] | None = cache
        self.typed = typed
        self.backend: Backend | None = backend
        self.name: str | None = name

    def decorate(self, func: Any) -> Any:
        if isinstance(func, classmethod | staticmethod):
            return type(func)(self.decorate(func.__func__))
        if isinstance(func, type):
            raise TypeError(
                f"singleflight() decorates a function, not the class {func.__qualname__}; "
                "decorate one of its methods instead (the class itself would be replaced "
                "by a function, and isinstance() would break)"
            )
        if not callable(func):
            raise TypeError(f"singleflight() decorates a function, not {type(func).__name__}")
        if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
            raise TypeError(
                f"singleflight() cannot decorate the generator function {qualname(func)}(): "
                "its callers would share one iterator; decorate a function that returns "
                "a list (or other value) instead"
            )
        if callable(self.key):
            check_key_callable(func, self.key)
        return _build(func, self)


class _Freshness:
    """The freshness options (section 3), validated."""

    __slots__ = ("cache_if", "early", "error_ttl", "stale", "stale_if_error")

    def __init__(
        self,
        stale: object,
        early: object,
        stale_if_error: object,
        error_ttl: object,
        cache_if: object,
    ) -> None:
        self.stale = _check_window("stale", stale)
        self.early = _check_window("early", early, unit="")  # XFetch's beta, a factor
        self.stale_if_error = _check_window("stale_if_error", stale_if_error)
        self.error_ttl = _check_window("error_ttl", error_ttl)
        if cache_if is not None and not callable(cache_if):
            raise TypeError(
                f"cache_if must be a callable (result) -> bool, not {type(cache_if).__name__}"
            )
        self.cache_if: Callable[[Any], object] | None = cache_if

    def needs_ttl(self) -> str:
        """The names of the options given that only make sense with ``ttl=``."""
        given = [
            name
            for name in ("stale", "early", "stale_if_error", "error_ttl")
            if getattr(self, name)
        ]
        return ", ".join(f"{name}=" for name in given)

    def given(self) -> list[str]:
        """The names of the freshness options given (not left off)."""
        names = [n for n in ("stale", "early", "stale_if_error", "error_ttl") if getattr(self, n)]
        return [*names, "cache_if"] if self.cache_if is not None else names


def _check_window(name: str, value: object, unit: str = "seconds") -> float:
    """A freshness option: ``None`` or 0 (off), or a number > 0 (of ``unit``)."""
    if value is None:
        return 0.0
    return seconds(name, value, zero_is_off=True, none_is_off=True, unit=unit)


class _Decorator:
    """What ``singleflight(...)`` with options returns: apply it to a function."""

    __slots__ = ("_options",)

    def __init__(self, options: _Options) -> None:
        self._options = options

    @overload
    def __call__(self, func: classmethod[T, P, R], /) -> SingleflightClassMethod[T, P, R]: ...
    @overload
    def __call__(
        self, func: Callable[Concatenate[type[T], P], R], /
    ) -> SingleflightClassMethod[T, P, R]: ...
    @overload
    def __call__(
        self, func: Callable[P, Coroutine[Any, Any, R]], /
    ) -> AsyncSingleflightFunction[P, R]: ...
    @overload
    def __call__(self, func: Callable[P, R], /) -> SingleflightFunction[P, R]: ...
    def __call__(self, func: Callable[..., Any] | classmethod[Any, Any, Any], /) -> Any:
        return self._options.decorate(func)

    def __repr__(self) -> str:
        return "<singleflight decorator>"


def _build(func: Callable[..., Any], options: _Options) -> Any:
    is_async = _is_async(func)
    plan = plan_key(func, options.key, options.typed)  # type: ignore[arg-type]
    group: Group | AsyncGroup = AsyncGroup() if is_async else Group()
    name = qualname(func)
    bound: Binding | None = None
    abound: AsyncBinding | None = None
    store: Store | None
    run: Callable[..., Any] = func
    keyed = False
    tally: StatsTally | None = None
    if options.backend is not None:
        backend = options.backend
        ttl = cast("float | Callable[[Any], float]", options.ttl)  # _Options refuses None
        fleet: Fleet | None = None
        if takes_fleet(backend):
            tally = StatsTally(group._stats)
            fresh = options.fresh
            fleet = Fleet(
                ttl=ttl,
                stale=fresh.stale,
                early=fresh.early,
                stale_if_error=fresh.stale_if_error,
                error_ttl=fresh.error_ttl,
                cache_if=fresh.cache_if,
                tally=tally,
            )
        counts = None if tally is None else group._stats
        if counts is not None:
            counts.runs = True  # executions are counted where the function runs
        if is_async:
            abound = bind_async(backend, func, name=options.name or name, ttl=ttl, fleet=fleet)
        else:
            bound = bind_sync(backend, func, name=options.name or name, ttl=ttl, fleet=fleet)
        binding = abound if bound is None else bound
        if isinstance(binding, CountsTakeovers):
            binding.count_takeovers(group._stats.takeovers.__next__)  # O1
        local_ttl = backend.local_ttl
        if local_ttl is not None:
            local_ttl = seconds("local_ttl", local_ttl, none_is_off=True)
        if not local_ttl:
            store = None
        elif isinstance(binding, DatesAsyncValues if is_async else DatesValues):
            store = LocalCopies(local_ttl, options.maxsize, name=name)  # dated copies (R8)
        else:
            store = TTLStore(local_ttl, options.maxsize, name=name)
        run = (
            _through_binding(func, bound, counts, store)
            if bound is not None
            else _through_async_binding(func, cast(AsyncBinding, abound), counts, store)
        )
        if store is not None and isinstance(binding, FollowsCopies):
            binding.follow(_FleetCopies(group, store))  # R12
        keyed = True
    elif options.cache is not None:
        store = MappingStore(options.cache, name=name, cache_if=options.fresh.cache_if)
    elif options.ttl is not None:
        fresh = options.fresh
        store = TTLStore(
            options.ttl,
            options.maxsize,
            name=name,
            stale=fresh.stale,
            early=fresh.early,
            stale_if_error=fresh.stale_if_error,
            error_ttl=fresh.error_ttl,
            cache_if=fresh.cache_if,
        )
    else:
        store = None

    compiled = compile_wrapper(plan, run, keyed, is_async, group, store)
    group._describe = compiled.describe
    wrapper = compiled.wrapper
    functools.update_wrapper(wrapper, func)
    _attach(wrapper, compiled, group, store, bound, abound, is_async)
    wrapper.batch = batch_method(  # type: ignore[attr-defined]
        func, options.key, bool(options.typed), options.backend, group, store, is_async
    )
    # Its counters, published for as long as the wrapper lives (O1, O2).
    _observe.register(
        wrapper, options.name or name, group._stats, None if store is None else store.currsize
    )
    return wrapper


def _stepping(counter: str) -> Callable[[StatsTally], None]:
    """A :class:`StatsTally` report that steps its ``Stats`` counter ``counter``."""
    step = operator.attrgetter(f"stats.{counter}")

    def report(self: StatsTally) -> None:
        next(step(self))

    return report


class _FleetCopies:
    """A function's local copies (``local_ttl=``), for a backend that follows the fleet
    (``coalesce.Copies``, R12): what ``invalidate()`` and ``cache_clear()`` do in this
    process, without the backend and without resetting the counters."""

    __slots__ = ("group", "store")

    def __init__(self, group: Group | AsyncGroup, store: TTLStore) -> None:
        self.group = group
        self.store = store

    def drop(self, key: Hashable) -> None:
        self.group._discard(key)
        self.store.invalidate(key)

    def drop_all(self) -> None:
        self.group._discard_all()
        self.store.clear()

    def holds(self, key: Hashable) -> bool:
        try:
            return key in self.store.data
        except Exception:
            return False  # a key whose __eq__ raises: the copy goes with the next prune

    def after_fork(self) -> None:
        store = self.store
        store._after_fork()  # a lock no parent's thread holds; then nothing it kept
        store.clear()


class StatsTally:
    """What a backend reports about the calls it answered (``coalesce.Tally``, R10).

    The group counted each such call as a miss that executed; the backend's reports
    step the counters that correct that (see :class:`~coalesce._flight.Stats`): its
    hits and stale serves become hits, its waits on other processes joined misses. The
    function's own runs are counted where it runs (:func:`_counted`), so ``failed()``
    and ``kept()`` change no count: the failed run, if it ran here, was counted as it
    ended, and a kept error raised again ran nowhere.
    """

    __slots__ = ("stats",)

    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    hit = _stepping("answered")
    stale = _stepping("answered_stale")
    waited = _stepping("waited")
    refreshed = _stepping("refreshes")
    running = _stepping("started")
    settled = _stepping("ended")

    def failed(self) -> None:
        pass  # counted by _counted, in the process that ran it

    def kept(self) -> None:
        pass  # answered() counted it as a hit; no run: no error


class _Run:
    """One run of the function through a backend, counted and timed as it ends (O1)."""

    __slots__ = ("began", "stats")

    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    def __enter__(self) -> None:
        self.began = time.perf_counter()

    def __exit__(self, kind: object, error: BaseException | None, tb: object) -> None:
        stats = self.stats
        timer = _observe.run_timer
        if timer is not None:
            timer(stats, time.perf_counter() - self.began)
        if error is None:
            next(stats.ran_ok)
        elif isinstance(error, asyncio.CancelledError):
            next(stats.ran_cancelled)
        else:
            next(stats.ran_errors)


def _counted(stats: Stats, compute: Callable[[], Any]) -> Callable[[], Any]:
    """``compute``, counting and timing each run of it (a backend runs it, or not)."""

    def run() -> Any:
        with _Run(stats):
            return compute()

    return run


def _acounted(stats: Stats, compute: Callable[[], Any]) -> Callable[[], Any]:
    """:func:`_counted` for ``async def`` functions."""

    async def run() -> Any:
        with _Run(stats):
            return await compute()

    return run


def _through_binding(
    func: Callable[..., Any], bound: Binding, stats: Stats | None, store: Store | None
) -> Callable[..., Any]:
    """The execution when a backend coordinates processes: it goes through ``bound``.

    With ``stats`` (a backend that reports what it did), each run of ``func`` is
    counted there, as it runs. With :class:`LocalCopies` (``local_ttl``, a binding that
    dates its values), it notes how long the value stays fresh for the save that
    follows (R8).
    """
    if isinstance(store, LocalCopies) and isinstance(bound, DatesValues):
        dated = bound
        copies = store

        def run_dated(key: Hashable, *args: Any, **kwargs: Any) -> Any:
            compute = functools.partial(func, *args, **kwargs)
            value, fresh_for = dated.call_fresh(
                unhashed(key), compute if stats is None else _counted(stats, compute)
            )
            copies.note(key, value, fresh_for)
            return value

        return run_dated

    def run(key: Hashable, *args: Any, **kwargs: Any) -> Any:
        compute = functools.partial(func, *args, **kwargs)
        return bound.call(unhashed(key), compute if stats is None else _counted(stats, compute))

    return run


def _through_async_binding(
    func: Callable[..., Any], bound: AsyncBinding, stats: Stats | None, store: Store | None
) -> Callable[..., Any]:
    """:func:`_through_binding` for ``async def`` functions."""
    if isinstance(store, LocalCopies) and isinstance(bound, DatesAsyncValues):
        dated = bound
        copies = store

        async def run_dated(key: Hashable, *args: Any, **kwargs: Any) -> Any:
            compute = functools.partial(func, *args, **kwargs)
            value, fresh_for = await dated.acall_fresh(
                unhashed(key), compute if stats is None else _acounted(stats, compute)
            )
            copies.note(key, value, fresh_for)
            return value

        return run_dated

    async def run(key: Hashable, *args: Any, **kwargs: Any) -> Any:
        compute = functools.partial(func, *args, **kwargs)
        return await bound.acall(
            unhashed(key), compute if stats is None else _acounted(stats, compute)
        )

    return run


def _attach(
    wrapper: Any,
    compiled: Compiled,
    group: Group | AsyncGroup,
    store: Store | None,
    bound: Binding | None,
    abound: AsyncBinding | None,
    is_async: bool,
) -> None:
    """Give the wrapper its helpers: ``cache``, ``cache_key()``, ``cache_info()``, ..."""
    cache_key = compiled.cache_key  # the wrapper's own binding and key (_compile.py)
    describe = compiled.describe
    stats: Stats = group._stats

    def checked_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
        key = cache_key(*args, **kwargs)
        try:
            hash(key)
        except TypeError:
            raise describe(key, args, kwargs) from None
        return key

    def cache_info() -> CacheInfo:
        """Counters and sizes: hits, misses, coalesced, errors, in_flight, currsize,
        maxsize, stale, refreshes."""
        counts = stats.snapshot()  # with a backend's reports folded in (R10)
        return CacheInfo(
            counts.hits,
            counts.misses,
            counts.coalesced,
            counts.errors,
            counts.in_flight,
            store.currsize() if store is not None else 0,
            store.maxsize_info() if store is not None else None,
            counts.stale,
            counts.refreshes,
        )

    def clear_here() -> None:
        group._discard_all()
        if store is not None:
            store.clear()
        stats.reset()

    def invalidate_here(key: Hashable) -> bool:
        group._discard(key)
        return store.invalidate(key) if store is not None else False

    def cache_clear() -> None:
        """Empty the cache and reset the counters; executions in flight are detached.

        As :meth:`invalidate` does for one key (S18), every execution in flight still
        answers the callers that had joined it, stores nothing, and later calls run
        anew.

        With a Redis backend and a sync client, the function's keys in Redis go too;
        with an async client, ``await f.acache_clear()`` does that.
        """
        clear_here()
        if bound is not None:
            bound.clear()

    def invalidate(*args: Any, **kwargs: Any) -> bool:
        """Drop the cached result for these arguments; ``True`` if a live one was dropped.

        Read-your-writes (S18): an execution of that key already in flight is
        detached, as by :meth:`forget`: it still answers the callers that had joined
        it but stores nothing, and a call that starts after this returns runs anew.
        With a Redis backend and a sync
        client, the value in Redis goes too; with an async client, ``await
        f.ainvalidate(...)`` does that.
        """
        key = checked_key(args, kwargs)
        dropped = invalidate_here(key)
        if bound is not None:
            dropped = bound.invalidate(unhashed(key)) or dropped
        return dropped

    async def ainvalidate(*args: Any, **kwargs: Any) -> bool:
        """:meth:`invalidate` for ``async def`` functions: also drops the value in Redis."""
        key = checked_key(args, kwargs)
        dropped = invalidate_here(key)
        if abound is not None:
            dropped = await abound.ainvalidate(unhashed(key)) or dropped
        return dropped

    async def acache_clear() -> None:
        """:meth:`cache_clear` for ``async def`` functions: also clears Redis."""
        clear_here()
        if abound is not None:
            await abound.aclear()

    def forget(*args: Any, **kwargs: Any) -> bool:
        """Later callers start a new execution instead of joining the one in flight.

        ``True`` if one was in flight. The forgotten execution still answers the
        callers that joined it, and does not store its result.
        """
        return group.forget(checked_key(args, kwargs))

    if isinstance(store, MappingStore):
        wrapper.cache = store.mapping
    elif isinstance(store, TTLStore):
        wrapper.cache = TTLView(store)
    else:
        wrapper.cache = None
    wrapper.cache_key = cache_key
    wrapper.cache_info = cache_info
    wrapper.cache_clear = cache_clear
    wrapper.invalidate = invalidate
    wrapper.forget = forget
    if is_async:
        wrapper.ainvalidate = ainvalidate
        wrapper.acache_clear = acache_clear
