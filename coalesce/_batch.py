"""``f.batch``: one call of a batch function for many keys, joined with single calls.

``@f.batch`` decorates ``users(ids) -> Mapping[id, value]`` beside ``user(id)``, a
function decorated with ``@singleflight`` and keyed by its one id. Both share one
cache and one flight registry (``_flight.py``): every id of a batch is a flight of
its own there, so the two kinds of call meet per id::

    users([1, 2, 3, 4])          1: cached        -> served, no call        (hit)
                                 2: user(2) runs  -> joined                 (coalesced)
                                 3, 4: neither    -> one users([3, 4]) call (misses)
    user(3), while it runs       3: in the batch  -> joined, no second call (B3)
    users([3, 4]) leaves 4 out   4: not found     -> absent from the result; user(4)
                                    callers waiting on it run user itself     (B4)

With ``collect=`` the misses of ``user(id)`` themselves are gathered into calls of the
batch function (B6). This module checks what may be batched, turns ids into keys (the
key of a function keyed by one parameter is that parameter's value, as ``_keys.py``
plans it) and assembles results; the registry does the joining and settling.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
import warnings
from collections.abc import Callable, Coroutine, Hashable, Iterable, Mapping
from typing import Any, Protocol, TypeVar, overload

from ._flight import NOT_FOUND, AsyncGroup, BatchClaim, Group
from ._keys import ONE_ARGUMENT, Hashed, hashed, qualname
from ._pinned import callable, enumerate, hash, isinstance, len, zip
from ._seconds import seconds
from ._store import MISSING, CachedError, Store, TTLStore

__all__ = ("AsyncBatchFunction", "BatchDecorator", "BatchFunction", "batch_method")

K = TypeVar("K")
V = TypeVar("V")


class BatchFunction(Protocol[K, V]):
    """What ``@f.batch`` makes of a ``def`` batch function.

    ``users(ids)`` returns a ``dict`` of the ids found, each once, in the order of
    ``ids``; ids ``f`` has cached are served from its cache, ids in flight are joined,
    and only the rest reach the batch function (SPEC section 9).
    """

    @property
    def __wrapped__(self) -> Callable[[list[K]], Mapping[K, V]]: ...

    def __call__(self, ids: Iterable[K], /) -> dict[K, V]: ...


class AsyncBatchFunction(Protocol[K, V]):
    """What ``@f.batch`` makes of an ``async def`` batch function: awaited for the dict."""

    @property
    def __wrapped__(self) -> Callable[[list[K]], Coroutine[Any, Any, Mapping[K, V]]]: ...

    def __call__(self, ids: Iterable[K], /) -> Coroutine[Any, Any, dict[K, V]]: ...


def _why_not(func: Callable[..., Any], key: object, typed: bool, backend: object) -> str | None:
    """Why ``f`` cannot have a batch function (B1, B8), or ``None``."""
    name = f"{qualname(func)}()"
    if backend is not None:
        return (
            f"{name}.batch() does not work with backend= yet: its cached ids are not read "
            "in one round trip, nor does each fetched id take its own lease (SPEC B8); "
            "call the function once per id, or drop backend= to batch with the built-in "
            "cache"
        )
    if typed:
        return (
            f"{name}.batch() needs the function keyed by the id itself; typed=True keys it "
            "by the id and its type: leave typed= out"
        )
    if callable(key):
        return (
            f"{name}.batch() needs the function keyed by exactly one parameter, not by a key "
            "callable: pass key='name' (the parameter holding the id)"
        )
    if isinstance(key, str):
        return None
    if key is not None:
        return (
            f"{name}.batch() needs the function keyed by exactly one parameter; key={key!r} "
            "makes tuple keys: pass key='name' with the one parameter holding the id"
        )
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        params = []
    if len(params) == 1 and params[0].kind in ONE_ARGUMENT:
        return None
    shown = ", ".join(p.name for p in params) or "none that can be read"
    return (
        f"{name}.batch() needs the function keyed by exactly one parameter: it takes "
        f"parameters ({shown}) and is keyed by all of them; pass key='name' (the parameter "
        "holding the id) to singleflight()"
    )


def _check_max_batch(max_batch: object) -> int | None:
    if max_batch is None:
        return None
    if isinstance(max_batch, bool) or not isinstance(max_batch, int):
        raise TypeError(
            f"max_batch must be a positive int or None (no bound), "
            f"not {type(max_batch).__name__} ({max_batch!r})"
        )
    if max_batch < 1:
        raise ValueError(f"max_batch must be at least 1 (or None for no bound), not {max_batch}")
    return max_batch


def _check_collect(collect: object, is_async: bool, name: str) -> float | None:
    if collect is None:
        return None
    window = seconds("collect", collect, zero_is_off=True, none_is_off=True)
    if window == 0 and not is_async:
        raise TypeError(
            f"collect=0 gathers the misses of one event-loop iteration, which {name}, a def "
            "function, does not have: give collect= a number of seconds (e.g. 0.002) to "
            "gather the misses of that window"
        )
    return window


def _ids(name: str, ids: object) -> list[Hashable]:
    """The ids of a batch call as keys: each once, in the order first given."""
    if isinstance(ids, str | bytes):
        raise TypeError(f"{name}() takes an iterable of ids (a list, a set, ...), not a str")
    try:
        seq = ids if ids.__class__ is list else list(ids)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(
            f"{name}() takes an iterable of ids (a list, a set, ...), not {type(ids).__name__}"
        ) from None
    try:
        return list(dict.fromkeys(seq))
    except TypeError:
        for i, value in enumerate(seq):
            try:
                hash(value)
            except TypeError:
                raise TypeError(
                    f"{name}(): the id at position {i} ({value!r}) is unhashable "
                    f"({type(value).__name__}); ids are the function's keys and must be "
                    "hashable"
                ) from None
        raise


def _checked(name: str, found: object, ids: list[Any]) -> Mapping[Any, Any]:
    """The batch function's answer, checked: a mapping; extra ids warned of and ignored."""
    if found.__class__ is not dict and not isinstance(found, Mapping):
        raise TypeError(
            f"{name}() returned {type(found).__name__}, not a mapping: a batch function "
            "returns a Mapping (e.g. a dict) of id -> value for the ids it found"
        )
    if len(found) > len(ids) or not set(ids).issuperset(found):
        asked = set(ids)
        extra = [k for k in found if k not in asked]
        if extra:
            shown = ", ".join(repr(k) for k in extra[:3]) + (", ..." if len(extra) > 3 else "")
            warnings.warn(
                f"{name}() returned {len(extra)} id(s) it was not asked for ({shown}); "
                "they are ignored: a batch function returns values for the ids it is given "
                "(check that its keys have the ids' type)",
                RuntimeWarning,
                stacklevel=2,
            )
    return found


def _chunks(pairs: list[Any], size: int | None) -> list[list[Any]]:
    if size is None or len(pairs) <= size:
        return [pairs] if pairs else []
    return [pairs[i : i + size] for i in range(0, len(pairs), size)]


def _kept(hits: dict[Hashable, Any]) -> CachedError | None:
    for value in hits.values():
        if value.__class__ is CachedError:
            return value
    return None


class _Plan:
    """What a batch function needs: its function, group, store and options."""

    __slots__ = ("collect", "func", "group", "is_async", "max_batch", "store")

    def __init__(
        self,
        func: Callable[..., Any],
        group: Group | AsyncGroup,
        store: Store | None,
        is_async: bool,
        max_batch: int | None,
        collect: float | None,
    ) -> None:
        self.func = func
        self.group = group
        self.store = store
        self.is_async = is_async
        self.max_batch = max_batch
        self.collect = collect


class BatchDecorator:
    """What ``f.batch(...)`` returns: apply it to the batch function."""

    __slots__ = ("_plan",)

    def __init__(self, plan: _Plan) -> None:
        self._plan = plan

    def __repr__(self) -> str:
        return f"<batch decorator of {qualname(self._plan.func)}()>"

    @overload
    def __call__(
        self, fn: Callable[[list[K]], Coroutine[Any, Any, Mapping[K, V]]], /
    ) -> AsyncBatchFunction[K, V]: ...
    @overload
    def __call__(self, fn: Callable[[list[K]], Mapping[K, V]], /) -> BatchFunction[K, V]: ...
    def __call__(self, fn: Callable[[list[Any]], Any], /) -> Any:
        plan = self._plan
        of = f"{qualname(plan.func)}()"
        if not callable(fn):
            raise TypeError(f"{of}.batch() decorates a function, not {type(fn).__name__}")
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise TypeError(
                f"{of}.batch() cannot decorate the generator function {qualname(fn)}(): "
                "a batch function returns a Mapping of id -> value"
            )
        fn_async = inspect.iscoroutinefunction(fn)
        if fn_async != plan.is_async:
            kind, other = ("async def", "def") if plan.is_async else ("def", "async def")
            raise TypeError(
                f"{qualname(fn)}() is a {other} function, but {of} is {kind}: a batch "
                f"function is of the same kind as its single-key function; write it as {kind}"
            )
        try:
            inspect.signature(fn).bind([])
        except TypeError:
            raise TypeError(
                f"{qualname(fn)}() must take the list of ids as its one argument, "
                "(ids: list[K]) -> Mapping[K, V]"
            ) from None
        except ValueError:
            pass  # no signature to read: called as documented
        name = qualname(fn)
        front = _async_front(plan, fn, name) if plan.is_async else _sync_front(plan, fn, name)
        functools.update_wrapper(front, fn)
        if plan.collect is not None:
            group = plan.group
            if group._collector is not None:
                raise TypeError(
                    f"{of} already has a batch function gathering its misses (collect=): "
                    "give collect= to one of its batch functions only"
                )
            fetch = front._fetch  # type: ignore[attr-defined]
            if plan.is_async:
                group._collector = _AsyncCollector(fetch, plan.max_batch, plan.collect)
            else:
                group._collector = _Collector(fetch, plan.max_batch, plan.collect)
        return front


def batch_method(
    func: Callable[..., Any],
    key: object,
    typed: bool,
    backend: object,
    group: Group | AsyncGroup,
    store: Store | None,
    is_async: bool,
) -> Callable[..., BatchDecorator]:
    """``f.batch`` for the decorated ``func``."""

    def batch(*, max_batch: int | None = None, collect: float | None = None) -> BatchDecorator:
        """Decorate a batch function ``(ids: list[K]) -> Mapping[K, V]`` of this one.

        The result, ``users(ids) -> dict[K, V]`` (awaitable for ``async def``), serves
        the ids this function has cached, joins those in flight, and fetches the rest
        with at most ``max_batch`` ids per call of the batch function; each value is
        cached as a single call would cache it. An id the batch function leaves out is
        not found: absent from the result. ``collect=0`` (``async def``: one event-loop
        iteration) or ``collect=seconds`` also gathers this function's own misses into
        calls of the batch function. See docs/batches.md.
        """
        problem = _why_not(func, key, typed, backend)
        if problem is not None:
            raise TypeError(problem)
        size = _check_max_batch(max_batch)
        window = _check_collect(collect, is_async, f"{qualname(func)}()")
        return BatchDecorator(_Plan(func, group, store, is_async, size, window))

    return batch


# --------------------------------------------------------------------------- fronts
#
# What the ``def`` and ``async def`` fronts share; they differ only in how they wait.


def _claim(
    group: Group | AsyncGroup, store: Store | None, name: str, ids: object
) -> tuple[list[Hashable], list[Hashable], BatchClaim]:
    """A batch call's ids, their keys, and what the registry gave them (B2)."""
    given = _ids(name, ids)
    keys = [hashed(i) for i in given]  # as f's own calls hold them (hashed once)
    claim = group._batch_claim(keys, store)
    if isinstance(store, TTLStore) and store.error_ttl:
        kept = _kept(claim.hits)
        if kept is not None:  # F4: a kept error, raised as a single call raises it
            group._batch_release(claim, store)
            raise kept.error.with_traceback(kept.traceback)
    return given, keys, claim


def _unhashed(keys: list[Any]) -> list[Any]:
    """The ids as the batch function takes them: the keys as the caller gave them."""
    return [k.value if k.__class__ is Hashed else k for k in keys]


def _answer(
    given: list[Hashable],
    keys: list[Hashable],
    values: dict[Hashable, Any],
    errors: list[BaseException] | None = None,
) -> dict[Any, Any]:
    """The result of a batch call: each id found, once, in the order given; or the
    first error met (B5)."""
    if errors:
        raise errors[0]
    return {i: values[k] for i, k in zip(given, keys, strict=True) if k in values}


def _async_front(plan: _Plan, fn: Callable[[list[Any]], Any], name: str) -> Callable[..., Any]:
    group = plan.group
    assert isinstance(group, AsyncGroup)
    store = plan.store
    size = plan.max_batch

    async def fetch(keys: list[Any]) -> Mapping[Any, Any]:
        ids = _unhashed(keys)
        return _checked(name, await fn(ids), ids)

    async def front(ids: Iterable[Any], /) -> dict[Any, Any]:
        given, keys, claim = _claim(group, store, name, ids)
        values = claim.hits
        for chunk in _chunks(claim.stale, size):
            group._batch_start(chunk, fetch, store, led=False)
        batches = [
            group._batch_start(chunk, fetch, store, led=True) for chunk in _chunks(claim.led, size)
        ]
        if not batches and not claim.joined:
            return _answer(given, keys, values)
        dones = [batch.done for batch in batches]
        errors: list[BaseException] = []
        try:
            for done in dones:
                assert done is not None
                try:
                    outcome = await done
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    errors.append(exc)
                    continue
                for key, (ok, value) in outcome.items():
                    if ok:
                        values[key] = value
                    else:
                        errors.append(value)
            for key, _, fut in claim.joined:
                try:
                    value = await fut
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    errors.append(exc)
                    continue
                if value is not NOT_FOUND:
                    values[key] = value
        except BaseException:
            # Cancelled (S7): only this call's waits end.
            loop = asyncio.get_running_loop()
            for batch, done in zip(batches, dones, strict=True):
                if done is not None and done.done() and not done.cancelled():
                    done.exception()  # a chunk that failed: not left for asyncio to log (O3)
                group._batch_abandon(batch)
            for key, flight, fut in claim.joined:
                group._leave((loop, key), flight, fut)
            raise
        return _answer(given, keys, values, errors)

    front._fetch = fetch  # type: ignore[attr-defined]
    return front


def _sync_front(plan: _Plan, fn: Callable[[list[Any]], Any], name: str) -> Callable[..., Any]:
    group = plan.group
    assert isinstance(group, Group)
    store = plan.store
    size = plan.max_batch

    def fetch(keys: list[Any]) -> Mapping[Any, Any]:
        ids = _unhashed(keys)
        return _checked(name, fn(ids), ids)

    def front(ids: Iterable[Any], /) -> dict[Any, Any]:
        given, keys, claim = _claim(group, store, name, ids)
        values = claim.hits
        if claim.stale and store is not None:
            for chunk in _chunks(claim.stale, size):
                group._batch_refresh(chunk, fetch, store)
        chunks = _chunks(claim.led, size)
        errors: list[BaseException] = []
        joined = claim.joined
        waited = 0
        led = 0  # chunks started: one that raises has handed its own keys off
        try:
            for chunk in chunks:
                led += 1
                outcome, exc = group._batch_lead(chunk, fetch, store)
                if exc is not None:
                    errors.append(exc)
                for key, (ok, value) in outcome.items():
                    if ok:
                        values[key] = value
                    else:
                        errors.append(value)
            for key, flight, _ in joined:
                waited += 1
                ok, value = group._batch_wait(key, flight, store)
                if not ok:
                    errors.append(value)
                elif value is not NOT_FOUND:
                    values[key] = value
        except BaseException:
            # Interrupted (S8): hand off what this call will not fetch or wait for.
            rest = [pair for chunk in chunks[led:] for pair in chunk]
            if rest:
                group._batch_settle(rest, store, None, None, MISSING)
            with group._lock:
                for key, flight, _ in joined[waited:]:
                    group._unjoin(key, flight)
            raise
        return _answer(given, keys, values, errors)

    front._fetch = fetch  # type: ignore[attr-defined]
    return front


# --------------------------------------------------------------------------- collect=


class _AsyncCollector:
    """B6 for ``async def``: a miss of ``f`` waits to be fetched with the others.

    The first miss on a loop opens a window: the rest of this event-loop iteration
    (``collect=0``, one ``call_soon``), or ``collect`` seconds (``call_later``). A
    window that reaches ``max_batch`` misses is fetched at once.
    """

    __slots__ = ("fetch", "max_batch", "pending", "seconds")

    def __init__(
        self, fetch: Callable[[list[Any]], Any], max_batch: int | None, window: float
    ) -> None:
        self.fetch = fetch
        self.max_batch = max_batch
        self.seconds = window
        # One open window per loop; only a loop's own thread touches its entry.
        self.pending: dict[asyncio.AbstractEventLoop, list[tuple[Hashable, Any]]] = {}

    def add(
        self,
        group: AsyncGroup,
        loop: asyncio.AbstractEventLoop,
        key: Hashable,
        flight: Any,
        store: Store | None,
    ) -> None:
        pending = self.pending.get(loop)
        if pending is None:
            pending = self.pending[loop] = []
            if self.seconds:
                loop.call_later(self.seconds, self.flush, group, loop, pending, store)
            else:
                loop.call_soon(self.flush, group, loop, pending, store)
        pending.append((key, flight))
        if self.max_batch is not None and len(pending) >= self.max_batch:
            self.flush(group, loop, pending, store)

    def drop(self, loop: asyncio.AbstractEventLoop, flight: Any) -> None:
        """Take a miss whose callers have all gone out of its window (B7, S16)."""
        pending = self.pending.get(loop)
        if pending:
            pending[:] = [pair for pair in pending if pair[1] is not flight]

    def flush(
        self,
        group: AsyncGroup,
        loop: asyncio.AbstractEventLoop,
        pending: list[tuple[Hashable, Any]],
        store: Store | None,
    ) -> None:
        if self.pending.get(loop) is pending:
            del self.pending[loop]
        if not pending:
            return
        pairs = group._batch_gathered(pending, store)
        pending.clear()
        if pairs:
            group._batch_start(pairs, self.fetch, store, led=False)


class _Window:
    __slots__ = ("full", "pairs")

    def __init__(self) -> None:
        self.pairs: list[tuple[Hashable, Any]] = []
        self.full = threading.Event()


class _Collector:
    """B6 for ``def``: misses within ``collect`` seconds are fetched in one batch call.

    The first miss opens a window and, when it closes (after ``collect`` seconds, or
    at once when ``max_batch`` misses are in it), calls the batch function in its own
    thread for every miss gathered; the others wait on their flights meanwhile.
    """

    __slots__ = ("fetch", "lock", "max_batch", "seconds", "window")

    def __init__(
        self, fetch: Callable[[list[Any]], Any], max_batch: int | None, window: float
    ) -> None:
        self.fetch = fetch
        self.max_batch = max_batch
        self.seconds = window
        self.lock = threading.Lock()
        self.window: _Window | None = None

    def gather(
        self,
        group: Group,
        key: Hashable,
        flight: Any,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        store: Store | None,
    ) -> Any:
        with self.lock:
            window = self.window
            opener = window is None
            if window is None:
                window = self.window = _Window()
            else:
                with group._lock:
                    # Wait on this flight as a caller that joined it does.
                    flight.waiting += 1
                    if flight.lock is None:
                        flight.lock = threading.Lock()
                        flight.lock.acquire()
            window.pairs.append((key, flight))
            if self.max_batch is not None and len(window.pairs) >= self.max_batch:
                self.window = None
                window.full.set()
        if not opener:
            return group._wait(key, flight, fn, args, kwargs, store)
        window.full.wait(self.seconds)
        with self.lock:
            if self.window is window:
                self.window = None
        try:
            outcome, exc = group._batch_lead(window.pairs, self.fetch, store, keep=key)
        except BaseException:
            group._abort(key, flight)
            raise
        found = outcome.get(key)
        if found is not None:  # its value, or its old one if the batch failed (F3)
            if not found[0]:
                raise found[1]
            return found[1]
        if exc is not None:
            raise exc
        # B4: left out; this caller runs the function itself.
        return group._lead(key, flight, fn, args, kwargs, store)
