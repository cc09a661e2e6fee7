"""The in-flight registry: one execution per key at a time (S1-S3, S7-S10, S12, S14).

A flight's life, the same in ``Group`` (threads) and ``AsyncGroup`` (asyncio)::

    caller A  misses: _call finds no flight for the key, so it creates one,
              registers it and leads it: runs fn (async: as a task of its own)
    caller B  misses: _call finds the flight, joins it (takers += 1) and waits
    fn ends   _end: _outcome keeps what it leaves (stores the result, S3, or counts
              the error, serves stale_if_error, keeps error_ttl), then the flight
              leaves the registry and wakes B; A and B get the same object (S1, S2)
    after     nothing but the stored result (S16): the next call hits, or creates
              a new flight

Who creates a flight: the first caller to miss, or a refresh (F1, F2: a background
flight that nobody waits for). Who joins: every caller of an equal key while it is
registered; ``forget``/``invalidate`` detach it, so later callers create a new one.
Who ends it: the leading thread, or the execution's own task. Two other endings: a
thread leader that dies of a ``BaseException`` hands the flight to one waiter (S8,
``_abort``); when every async caller has gone, the last one cancels the task (S7).

The two groups differ only in how callers wait: a thread blocks on its flight's own
lock (so a key's completion wakes only that key's waiters, P4); a task awaits its own
future (so cancelling one caller never touches the others, S7). Given a store, a
caller that finds no flight looks in the store once more inside the critical section
(a result may have been stored since its lock-free miss).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import operator
import queue
import sys
import threading
import time as _time
import types
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from typing import Any, Final, NamedTuple, ParamSpec, TypeVar

from . import _fork, _observe
from ._errors import ReentrantCallError
from ._fork import at_fork
from ._pinned import getattr, hash, isinstance, len, next, zip
from ._store import MISSING, CachedError, Store, TTLStore

__all__ = ("NOT_FOUND", "AsyncGroup", "BatchClaim", "Group", "Stats", "Totals")

P = ParamSpec("P")
R = TypeVar("R")


class _NotFound:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<not found>"


# What a batch caller joined on a key receives when the batch left that key out (B4).
NOT_FOUND: Final[Any] = _NotFound()
_NOT_WAITING: Final[Any] = object()

# Flight states.
_RUNNING: Final = 0
_DONE: Final = 1
_FAILED: Final = 2
_HANDOFF: Final = 3  # the leader aborted (S8): the first waiter to wake runs it again
_CANCELLED: Final = 4
_ABANDONED: Final = 5  # aborted with nobody waiting


class Counts(NamedTuple):
    hits: int
    misses: int
    coalesced: int
    errors: int
    in_flight: int
    stale: int
    refreshes: int


class Totals(NamedTuple):
    """Every count since the counters were made (never reset): what the instruments
    read (O1). Each call is exactly one of ``hit``, ``stale``, ``joined`` and
    ``executed``; each ended execution one of ``ok``, ``error`` and ``cancelled``."""

    hit: int
    stale: int
    joined: int
    executed: int
    ok: int
    error: int
    cancelled: int
    refreshes: int
    takeovers: int
    in_flight: int


# The counters. A hit is counted on the hot path, so a step must be cheap and atomic.
# Under the GIL, ``next()`` on ``itertools.repeat(None, n)`` is one atomic step that
# makes no int (cheaper than ``itertools.count``), and how many steps remain reads
# exactly, without stepping it, through ``operator.length_hint``. Free-threaded builds
# step ``repeat`` without atomicity, so there ``itertools.count`` serves (atomic there),
# read by stepping it too: reads take turns under a lock, each taking away the reads
# made before it.
_LOTS: Final = sys.maxsize


@functools.cache
def _free_threaded() -> bool:
    import sysconfig

    return bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


class Stats:
    """Exact counters shared by a group and the decorator built on it (S12).

    Counting needs no lock (see ``_LOTS``). ``cache_clear()`` resets by remembering a
    baseline, so nothing on the hot path ever has to be swapped.

    Each call steps exactly one of ``hits`` (fresh), ``stale``, ``coalesced`` and
    ``executed``, so a reader never sees a call half counted; ``cache_info()``'s hits
    are ``hits + stale`` and its misses ``executed + coalesced``.

    With a backend that reports what it did (``coalesce.Tally``, R10), a call that
    reached the backend was counted ``executed``; the backend then steps ``answered``
    (it answered from its store: a hit), ``answered_stale`` (of those, a stale serve)
    or ``waited`` (it waited on another process's execution: a miss that joined), and
    the decorator counts the function's own runs in ``ran_ok``, ``ran_errors`` and
    ``ran_cancelled`` (``runs`` is then true). :meth:`snapshot` and :meth:`totals`
    read the calls and executions corrected by those, so ``cache_info()`` and the
    instruments (O1) agree.
    """

    # In the order read: a backend steps its counter after the group's step for the same
    # call, so reading the backend's first keeps every correction within what it corrects.
    _RESETTABLE = (
        "answered_stale",
        "waited",
        "answered",
        "ran_errors",
        "hits",
        "executed",
        "coalesced",
        "errors",
        "stale",
        "refreshes",
    )

    __slots__ = (
        "_base",
        "_reading",
        "_reads",
        "answered",
        "answered_stale",
        "cancelled",
        "coalesced",
        "ended",
        "errors",
        "executed",
        "hits",
        "label",
        "ok",
        "ran_cancelled",
        "ran_errors",
        "ran_ok",
        "refreshes",
        "runs",
        "stale",
        "started",
        "takeovers",
        "waited",
    )

    def __init__(self) -> None:
        self.hits = self._counter()  # fresh hits
        self.executed = self._counter()  # misses that started an execution
        self.coalesced = self._counter()  # misses that joined one
        self.errors = self._counter()  # executions that raised
        self.ok = self._counter()  # executions that returned
        self.cancelled = self._counter()  # executions cancelled (async, S7)
        self.stale = self._counter()  # stale results served (F1)
        self.refreshes = self._counter()  # background refreshes started (F1, F2)
        self.takeovers = self._counter()  # leases taken over from a leader elsewhere (R4)
        self.started = self._counter()
        self.ended = self._counter()
        # Through a backend that reports what it did (R10; see the class docstring):
        self.answered = self._counter()  # calls it answered from its store (hits)
        self.answered_stale = self._counter()  # of those, stale serves
        self.waited = self._counter()  # calls that waited on another process (joined)
        self.ran_ok = self._counter()  # runs of the function here that returned
        self.ran_errors = self._counter()  # ... that raised
        self.ran_cancelled = self._counter()  # ... that were cancelled
        self.runs = False  # True: executions are the ran_* counters, not ok/errors/...
        self.label: str | None = None  # the coalesce.function name, once registered (O1)
        self._base = (0,) * len(self._RESETTABLE)
        self._reading = threading.Lock()
        self._reads: dict[str, int] = {}

    @staticmethod
    def _counter(start: int = 0) -> itertools.repeat[None] | itertools.count[int]:
        """A counter at ``start``: ``next()`` counts one."""
        if _free_threaded():
            return itertools.count(start)
        return itertools.repeat(None, _LOTS - start)

    def _read(self, name: str) -> int:
        """The count of ``name`` now."""
        counter = getattr(self, name)
        if counter.__class__ is itertools.repeat:
            return _LOTS - operator.length_hint(counter)
        with self._reading:
            # Stepping it counts this read and the earlier ones too.
            reads = self._reads.get(name, 0)
            self._reads[name] = reads + 1
            value: int = next(counter)
        return value - reads

    def snapshot(self) -> Counts:
        """Every counter since the last reset, and ``in_flight`` now."""
        ended = self._read("ended")
        read = {
            name: self._read(name) - base
            for name, base in zip(self._RESETTABLE, self._base, strict=True)
        }
        in_flight = self._read("started") - ended
        answered = read["answered"]
        return Counts(
            read["hits"] + read["stale"] + answered,
            max(0, read["executed"] + read["coalesced"] - answered),
            read["coalesced"] + read["waited"],
            read["ran_errors"] if self.runs else read["errors"],
            in_flight,
            read["stale"] + read["answered_stale"],
            read["refreshes"],
        )

    def totals(self) -> Totals:
        """Every count since these counters were made (``cache_clear()`` resets none)."""
        read = self._read
        ended = read("ended")
        answered_stale = read("answered_stale")
        waited = read("waited")
        answered = read("answered")
        if self.runs:
            ok, error, cancelled = read("ran_ok"), read("ran_errors"), read("ran_cancelled")
        else:
            ok, error, cancelled = read("ok"), read("errors"), read("cancelled")
        return Totals(
            read("hits") + answered - answered_stale,
            read("stale") + answered_stale,
            read("coalesced") + waited,
            read("executed") - answered - waited,
            ok,
            error,
            cancelled,
            read("refreshes"),
            read("takeovers"),
            read("started") - ended,
        )

    def after_fork(self) -> None:
        """In a forked child: the parent's executions are not running here."""
        self._reading = threading.Lock()  # another thread may have held it at the fork
        self.ended = self._counter(self._read("started"))
        self._reads["ended"] = 0

    def reset(self) -> None:
        self._base = tuple(self._read(name) for name in self._RESETTABLE)


_log = logging.getLogger("coalesce")


def _log_failure(store: Store, exc: BaseException, rescued: bool, background: bool) -> None:
    if rescued:
        _log.warning(
            "coalesce: %s() failed (%s: %s); serving its previous result (stale_if_error)",
            store.name,
            type(exc).__name__,
            exc,
            exc_info=exc,
        )
    elif background:
        _log.warning(
            "coalesce: background refresh of %s() failed (%s: %s); "
            "the cached result stays until it expires",
            store.name,
            type(exc).__name__,
            exc,
            exc_info=exc,
        )


# What each key of a batch call steps when it ends (section 9): counters nobody reads.
# The execution of a batch is the call of its batch function, counted once by the
# batch (ok, error or cancelled, and its duration, O1); each key still counts as one
# call (hit, stale, joined or executed) and as one key in flight while it is fetched.
_PER_KEY: Final = Stats()


def _unmark(store: Store, key: Hashable) -> None:
    """Take the tombstone of ``key`` away, even when the key's ``__eq__`` fails."""
    try:
        store.unmark(key)
    except Exception:
        store.scrub(key)


def _unlisted(flights: dict[Any, Any], flight: object) -> dict[Any, Any]:
    """``flights`` without ``flight``, found by identity (its key cannot be trusted).

    Only used when the key's ``__hash__`` or ``__eq__`` failed or its hash changed:
    the other flights are listed again; one whose key cannot be (its own key is
    broken too) is dropped from the registry, as ``forget`` would.
    """
    kept: dict[Any, Any] = {}
    for fkey, other in list(flights.items()):
        if other is flight:
            continue
        try:
            kept[fkey] = other
        except Exception:
            other.listed = False
    return kept


def _outcome(
    store: Store | None,
    stats: Stats,
    key: Hashable,
    flight: _Flight | _AsyncFlight,
    ok: bool,
    value: Any,
) -> tuple[bool, Any]:
    """What an ended execution leaves, for threads and asyncio alike: ``(ok, value)``.

    A result is stored before the flight leaves the registry (S3), unless the flight
    was invalidated or forgotten. A failure (an exception other than a cancellation)
    is counted, then served as the old result within ``stale_if_error`` (F3), else
    kept for ``error_ttl`` (F4), except for a background refresh, whose failure must
    not hide the stale result it is refreshing.
    """
    timer = _observe.timer
    if timer is not None and flight.began:
        timer(stats, _time.perf_counter() - flight.began)
    if store is None:
        if ok:
            next(stats.ok)
        elif isinstance(value, asyncio.CancelledError):
            next(stats.cancelled)
        else:
            next(stats.errors)
        return ok, value
    if ok:
        if flight.discard:
            _unmark(store, key)
            next(stats.ok)
            return ok, value
        try:
            store.save(key, value, flight.started, flight)
            next(stats.ok)
            return ok, value
        except Exception as exc:
            # The function succeeded; keeping its result failed (cache_if, a ttl
            # callable, the key's __eq__ raised). That is not the function's error:
            # its callers get it, it is logged, and nothing is kept (F4).
            _unmark(store, key)
            next(stats.errors)
            _log.error(
                "coalesce: %s() returned, but storing its result failed (%s: %s); "
                "its callers get this error and nothing is kept",
                store.name,
                type(exc).__name__,
                exc,
                exc_info=exc,
            )
            return False, exc
    _unmark(store, key)
    if isinstance(value, asyncio.CancelledError):
        next(stats.cancelled)
        return ok, value
    next(stats.errors)
    if isinstance(value, Exception):
        try:
            rescued = store.rescue(key)
        except Exception:
            rescued = MISSING  # the key's __eq__ raised: no old result to serve
        _log_failure(store, value, rescued is not MISSING, flight.background)
        if rescued is not MISSING:
            return True, rescued
        if not flight.discard and not flight.background:
            try:
                store.save_error(key, value)
            except Exception as exc:
                _log.error(
                    "coalesce: %s() failed, and keeping its error failed too (%s: %s); "
                    "its callers get the function's error and nothing is kept",
                    store.name,
                    type(exc).__name__,
                    exc,
                    exc_info=exc,
                )
    return ok, value


def _batch_ended(stats: Stats, began: float, outcome: Any) -> None:
    """A call of a batch function ended: one execution (``outcome``: the counter of
    ``ok``, ``errors`` or ``cancelled``), and its duration while instrumented (O1)."""
    next(outcome)
    timer = _observe.timer
    if timer is not None and began:
        timer(stats, _time.perf_counter() - began)


def _rescued(store: Store | None, key: Hashable, exc: BaseException) -> Any:
    """F3 for one key of a failed batch call, as for a failed single call: its old
    result while within ``stale_if_error`` past its expiry, else ``MISSING``."""
    if store is None or not isinstance(exc, Exception):
        return MISSING
    try:
        return store.rescue(key)
    except Exception:
        return MISSING  # the key's __eq__ raised: no old result to serve


def _consult(
    store: Store, stats: Stats, key: Hashable, flight: object | None, raises: bool = True
) -> tuple[Any, bool]:
    """What the store answers a call that missed the lock-free lookup.

    ``(value, stale)``: a value to return at once (a hit; ``stale`` when it is past
    its ttl and a refresh should run behind it, F1), or ``(MISSING, False)``.
    A kept error is raised (F4), unless ``raises`` is false (a batch call, which
    hands it to its key's caller): then it is the value.
    """
    if flight is not None and not store.can_refresh:
        # A flight is running, so there is no fresh result: only a refresh (stale=,
        # early=) runs beside a usable one.
        return MISSING, False
    value = store.lookup(key)
    if value is not MISSING:
        next(stats.hits)
        if value.__class__ is CachedError and raises:
            # The same exception object, with the traceback it was kept with (F4).
            raise value.error.with_traceback(value.traceback)
        return value, False
    if store.stale:
        value = store.stale_value(key)
        if value is not MISSING:
            next(stats.stale)  # a hit, counted apart from fresh ones (see Stats)
            return value, True
    return MISSING, False


class BatchClaim:
    """A batch call's keys, sorted (B2): what it serves, what it joins, what it fetches."""

    __slots__ = ("hits", "joined", "led", "stale")

    def __init__(self) -> None:
        self.hits: dict[Hashable, Any] = {}  # values (or kept errors, F4) to serve at once
        self.joined: list[tuple[Hashable, Any, Any]] = []  # (key, flight, future or None)
        self.led: list[tuple[Hashable, Any]] = []  # (key, flight) this call fetches
        self.stale: list[tuple[Hashable, Any]] = []  # (key, flight) refreshed behind it

    @classmethod
    def of(cls, pairs: list[tuple[Hashable, Any]]) -> BatchClaim:
        claim = cls()
        claim.led = pairs
        return claim


class _Workers:
    """Daemon threads that run background refreshes (F1, F2).

    An idle worker takes the next refresh at once, so the caller that starts one
    does not wait for a thread to start; a new worker starts only when none is idle,
    and a worker idle for a while ends. Daemon threads never keep the process from
    exiting.
    """

    IDLE_SECONDS = 30.0

    def __init__(self) -> None:
        self._after_fork()
        at_fork(self)

    def _after_fork(self) -> None:
        self.jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.idle = 0
        self.lock = threading.Lock()

    def submit(self, job: Callable[[], None]) -> None:
        with self.lock:
            self.jobs.put(job)
            if self.idle:
                self.idle -= 1  # that worker is taken
                return
        worker = threading.Thread(target=self._work, name="coalesce-refresh", daemon=True)
        worker.start()

    def _work(self) -> None:
        while True:
            try:
                job = self.jobs.get(timeout=self.IDLE_SECONDS)
            except queue.Empty:
                with self.lock:
                    if self.jobs.empty():
                        self.idle -= 1
                        return
                continue
            try:
                job()
            except BaseException:
                _log.exception("coalesce: a background refresh ended abnormally")
            del job
            with self.lock:
                self.idle += 1


_workers = _Workers()


def _nested(depth: int, fn: Callable[..., None], *args: Any) -> None:
    """Call ``fn`` a few frames below here.

    freezegun gives real time to code within its ``call_stack_inspection_limit``
    (5) frames of a thread's entry point; a refresh thread starts this deep so that
    the user's function and the store see the frozen clock, as callers do.
    """
    if depth:
        _nested(depth - 1, fn, *args)
    else:
        fn(*args)


def _no_describe(key: object, args: tuple[Any, ...], kwargs: dict[str, Any]) -> TypeError:
    return TypeError(f"unhashable key {key!r}: keys must be hashable")


Describe = Callable[[object, tuple[Any, ...], dict[str, Any]], TypeError]


# --------------------------------------------------------------------------- threads


class _Flight:
    """One execution of one key, and the callers waiting for it (threads)."""

    __slots__ = (
        "background",
        "began",
        "discard",
        "epoch",
        "listed",
        "lock",
        "owner",
        "started",
        "state",
        "takers",
        "value",
        "waiting",
    )

    def __init__(self, owner: int) -> None:
        self.background = False  # a refresh nobody waits for (F1, F2)
        self.began = 0.0  # perf_counter() at its start, while instrumented (O1)
        self.started = 0.0  # when it began, for early= (F2)
        # Made by the first caller to join, already acquired on the leader's behalf;
        # the leader releases it when the execution ends. A call nobody joins needs no lock.
        self.lock: threading.Lock | None = None
        self.owner = owner  # thread running it, for S9
        self.state = _RUNNING
        self.value: Any = None  # the result, or the exception when FAILED
        self.waiting = 0  # callers blocked on the lock right now
        self.takers = 1  # callers that will receive this outcome
        self.discard = False  # do not store the result (forgotten or invalidated)
        self.epoch = _fork.epoch  # started in this process, not in a parent (S14)
        self.listed = False  # in the group's registry


class _Registry:
    """What :class:`Group` and :class:`AsyncGroup` share: the flights in progress.

    ``_flights`` maps a flight's key (``(loop, key)`` for asyncio) to it; every
    removal holds ``_lock`` (see ``_unlist``), and so does every addition of threads;
    asyncio's loop threads add without it (see :class:`AsyncGroup`).
    """

    __slots__ = ("__weakref__", "_collector", "_describe", "_flights", "_lock", "_stats")

    def __init__(self) -> None:
        self._collector: Any = None  # set by f.batch(collect=...): see _batch.py (B6)
        self._flights: dict[Any, Any] = {}
        self._lock = threading.Lock()
        self._stats = Stats()
        self._describe: Describe = _no_describe
        at_fork(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} in_flight={len(self._flights)}>"

    def _after_fork(self) -> None:
        self._flights = {}
        self._lock = threading.Lock()  # another thread may have held it at the fork
        self._stats.after_fork()

    def __len__(self) -> int:
        """``len(group)``: how many executions are in flight now."""
        return len(self._flights)

    def _unlist(self, fkey: Hashable, flight: _Flight | _AsyncFlight, sole: bool = False) -> bool:
        """Take ``flight`` out of the registry (locked), whatever its key does.

        A compare-and-delete: a check then a delete without the lock could remove a
        flight that was registered in between, which would let a second leader of
        that key start (V4). False when it had left already. ``sole``: nobody can
        list a flight for ``fkey`` meanwhile (threads list under the lock, a loop's
        thread lists its own), so one ``pop`` serves, and one of another key that
        is equal now goes back.
        """
        if not flight.listed:
            return False
        flight.listed = False
        flights = self._flights
        try:
            if sole:
                other = flights.pop(fkey, None)
                if other is flight:
                    return True
                if other is not None:
                    flights[fkey] = other
            elif flights.get(fkey) is flight:
                del flights[fkey]
                return True
        except Exception:
            pass
        # The key's __hash__ or __eq__ raised, or its hash changed since the flight
        # was listed: find the flight by identity, so nobody ever joins it again.
        self._flights = _unlisted(flights, flight)
        return True


class Group(_Registry):
    """Go's ``singleflight.Group`` for threads: one execution per key at a time.

    >>> group = Group()
    >>> group.do("answer", lambda: 42)
    42
    """

    __slots__ = ()
    _flights: dict[Hashable, _Flight]

    def do(self, key: Hashable, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run ``fn(*args, **kwargs)`` unless a call for ``key`` is running; share its outcome."""
        result: R = self._call(key, fn, args, kwargs, None)[0]
        return result

    def do_shared(
        self, key: Hashable, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> tuple[R, bool]:
        """As :meth:`do`, also telling whether the outcome went to more than one caller."""
        value, flight = self._call(key, fn, args, kwargs, None)
        return value, flight is not None and flight.takers > 1

    def forget(self, key: Hashable) -> bool:
        """Let later callers of ``key`` start a new execution instead of joining this one."""
        with self._lock:
            flight = self._flights.pop(key, None)
            if flight is not None:
                flight.discard = True
                flight.listed = False
        return flight is not None

    def _discard(self, key: Hashable) -> None:
        """Detach the execution in flight for ``key`` (S18), as :meth:`forget` does.

        It still answers the callers that joined it and stores nothing; a call that
        starts after this returns runs anew, so it never gets a result read before
        an invalidation.
        """
        self.forget(key)

    def _discard_all(self) -> None:
        """Detach every execution in flight (S18, ``cache_clear()``)."""
        with self._lock:
            for flight in self._flights.values():
                flight.discard = True
                flight.listed = False
            self._flights.clear()

    def __contains__(self, key: object) -> bool:
        """``key in group``: whether an execution of ``key`` is in flight now."""
        try:
            return key in self._flights
        except TypeError:
            return False

    def _call(
        self,
        key: Hashable,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        store: Store | None,
    ) -> tuple[Any, _Flight | None]:
        """Join the flight for ``key`` or lead a new one; ``(value, flight)``.

        ``flight`` is ``None`` when the value came from ``store`` (a hit).
        """
        stats = self._stats
        me = threading.get_ident()
        refresh = None
        lock = self._lock
        lock.acquire()
        try:
            try:
                flight = self._flights.get(key)
            except TypeError:
                raise self._describe(key, args, kwargs) from None
            if store is not None:
                value, stale = _consult(store, stats, key, flight)
                if value is not MISSING:
                    if stale and flight is None:
                        refresh = self._background_flight()
                        self._flights[key] = refresh
                        refresh.listed = True
                        self._count_background()
                    return value, None
            if flight is None:
                flight = _Flight(me)
                self._flights[key] = flight  # a key whose __eq__ raises: nothing listed
                flight.listed = True
                if store is not None:
                    try:
                        store.mark(key)
                    except BaseException:
                        self._unlist(key, flight)
                        raise
                leader = True
            elif flight.owner == me:
                raise ReentrantCallError(
                    f"this call of key {key!r} would wait on an execution of the same key "
                    "that its own thread is running, which would deadlock"
                )
            else:
                flight.waiting += 1
                flight.takers += 1
                if flight.lock is None:
                    flight.lock = threading.Lock()
                    flight.lock.acquire()
                leader = False
        except BaseException:
            refresh = None  # not listed, or nothing to refresh
            del fn, args, kwargs  # an error kept (F4) holds this frame: not the arguments
            raise
        finally:
            lock.release()
            if refresh is not None:
                self._start_background(key, refresh, fn, args, kwargs, store)
        try:
            if leader:
                next(stats.executed)
                next(stats.started)
                collector = self._collector
                if collector is not None:
                    # f.batch(collect=...): this miss is fetched with others (B6).
                    return collector.gather(self, key, flight, fn, args, kwargs, store), flight
                return self._lead(key, flight, fn, args, kwargs, store), flight
            next(stats.coalesced)
            return self._wait(key, flight, fn, args, kwargs, store), flight
        except BaseException:
            del fn, args, kwargs  # an error kept (F4) holds this frame: not the arguments
            raise

    def _background_flight(self) -> _Flight:
        flight = _Flight(0)
        flight.background = True
        flight.takers = 0
        return flight

    def _count_background(self) -> None:
        """A background flight is listed: it counts as started (and in flight)."""
        next(self._stats.started)
        next(self._stats.refreshes)

    def _refresh(
        self,
        key: Hashable,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        store: Store,
    ) -> None:
        """Start one background refresh of ``key`` unless a flight for it is running (F2)."""
        with self._lock:
            if key in self._flights:
                return
            flight = self._background_flight()
            self._flights[key] = flight
            flight.listed = True
            self._count_background()
        self._start_background(key, flight, fn, args, kwargs, store)

    def _start_background(
        self,
        key: Hashable,
        flight: _Flight,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        store: Store | None,
    ) -> None:
        try:
            _workers.submit(
                functools.partial(
                    _nested, 6, self._run_background, key, flight, fn, args, kwargs, store
                )
            )
        except BaseException:
            self._abort(key, flight)
            raise

    def _run_background(
        self,
        key: Hashable,
        flight: _Flight,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        store: Store | None,
    ) -> None:
        with self._lock:
            flight.owner = threading.get_ident()
        try:
            self._lead(key, flight, fn, args, kwargs, store)
        except Exception:
            pass  # logged and counted by _lead; callers that joined have it

    def _lead(
        self,
        key: Hashable,
        flight: _Flight,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        store: Store | None,
    ) -> Any:
        flight.started = _time.monotonic() if store is not None and store.early else 0.0
        flight.began = _time.perf_counter() if _observe.timer is not None else 0.0
        try:
            value = fn(*args, **kwargs) if kwargs else fn(*args)  # no dict to merge
        except Exception as exc:
            ok, value = self._end(key, flight, store, False, exc)
        except BaseException:
            if store is not None:
                _unmark(store, key)
            self._abort(key, flight)
            raise
        else:
            ok, value = self._end(key, flight, store, True, value)
        if not ok:
            del fn, args, kwargs  # an error kept (F4) holds this frame: not the arguments
            raise value
        return value

    def _end(
        self,
        key: Hashable,
        flight: _Flight,
        store: Store | None,
        ok: bool,
        value: Any,
        counts: Stats | None = None,
    ) -> tuple[bool, Any]:
        """The execution ended: keep its outcome (S3), leave the registry, wake the waiters.

        ``counts``: where its outcome is counted (``_PER_KEY`` for a key of a batch).
        """
        ok, value = _outcome(store, counts or self._stats, key, flight, ok, value)
        flight.value = value
        flight.state = _DONE if ok else _FAILED
        lock = self._lock  # acquire() and release(), not ``with``: see AsyncGroup._detach
        lock.acquire()
        try:
            self._unlist(key, flight, True)  # threads list flights under the lock
            waiters = flight.lock  # nobody can join once it has left the registry
        finally:
            lock.release()
        if flight.epoch == _fork.epoch:  # a parent's execution was never counted here
            next(self._stats.ended)
        if waiters is not None:
            waiters.release()  # wakes this key's first waiter, which wakes the next
        return ok, value

    def _abort(self, key: Hashable, flight: _Flight) -> None:
        """S8: the leader ended with a BaseException; hand the run to a waiter."""
        timer = _observe.timer
        if timer is not None and flight.began:
            timer(self._stats, _time.perf_counter() - flight.began)
        next(self._stats.errors)
        with self._lock:
            if not flight.background:
                flight.takers -= 1  # the aborted caller gets its own exception
            if flight.waiting:
                flight.state = _HANDOFF
                flight.owner = 0
            else:
                flight.state = _ABANDONED
                self._unlist(key, flight)
            waiters = flight.lock
        if flight.epoch == _fork.epoch:  # a parent's execution was never counted here
            next(self._stats.ended)
        if waiters is not None:
            waiters.release()

    def _wait(
        self,
        key: Hashable,
        flight: _Flight,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        store: Store | None,
    ) -> Any:
        waiters = flight.lock
        assert waiters is not None  # made when this caller joined
        try:
            waiters.acquire()
        except BaseException:
            # Interrupted while waiting (Ctrl-C): this caller leaves; a hand-off
            # nobody is left to take must not stay registered.
            with self._lock:
                flight.waiting -= 1
                flight.takers -= 1
                if flight.state == _HANDOFF and not flight.waiting:
                    flight.state = _ABANDONED
                    self._unlist(key, flight)
            raise
        with self._lock:
            flight.waiting -= 1
            state = flight.state
            if state == _HANDOFF:
                # We hold the flight's lock now: we are its leader.
                flight.state = _RUNNING
                flight.owner = threading.get_ident()
        if state == _HANDOFF:
            next(self._stats.started)
            return self._lead(key, flight, fn, args, kwargs, store)
        waiters.release()  # pass the wake-up on to the next waiter
        if state == _FAILED:
            del fn, args, kwargs  # an error kept (F4) holds this frame: not the arguments
            raise flight.value
        return flight.value

    # ------------------------------------------------------------ batches (section 9)
    #
    # As in AsyncGroup: each key of a batch is a flight of its own in this registry,
    # led by the thread that calls the batch function. A key the batch leaves out is
    # handed off as an aborted execution is (S8): the first single call waiting on it
    # runs the function itself (B4); a batch call waiting on it passes it on.

    def _batch_claim(self, keys: list[Hashable], store: Store | None) -> BatchClaim:
        """Sort a batch call's keys (B2): hits, keys in flight to join, keys to fetch."""
        stats = self._stats
        me = threading.get_ident()
        flights = self._flights
        claim = BatchClaim()
        with self._lock:
            try:
                for key in keys:
                    flight = flights.get(key)
                    if store is not None:
                        value, stale = _consult(store, stats, key, flight, raises=False)
                        if value is not MISSING:
                            if stale and flight is None:
                                flight = self._background_flight()
                                flights[key] = flight
                                flight.listed = True
                                self._count_background()
                                claim.stale.append((key, flight))
                            claim.hits[key] = value
                            continue
                    if flight is not None:
                        if flight.owner == me:
                            raise ReentrantCallError(
                                f"this batch call of key {key!r} would wait on an execution "
                                "of the same key that its own thread is running, which "
                                "would deadlock"
                            )
                        flight.waiting += 1
                        flight.takers += 1
                        if flight.lock is None:
                            flight.lock = threading.Lock()
                            flight.lock.acquire()
                        next(stats.coalesced)
                        claim.joined.append((key, flight, None))
                        continue
                    flight = _Flight(me)
                    flights[key] = flight
                    flight.listed = True
                    claim.led.append((key, flight))
                    next(stats.executed)
                    next(stats.started)
                    if store is not None:
                        store.mark(key)
            except BaseException:
                self._batch_unclaim(claim, store)
                raise
        return claim

    def _batch_unclaim(self, claim: BatchClaim, store: Store | None) -> None:
        """Give up what :meth:`_batch_claim` took (under the registry's lock)."""
        for key, flight in (*claim.led, *claim.stale):
            self._unlist(key, flight)
            if store is not None:
                _unmark(store, key)
            flight.state = _ABANDONED
            next(self._stats.ended)
        for key, flight, _ in claim.joined:
            self._unjoin(key, flight)
        claim.led.clear()
        claim.stale.clear()
        claim.joined.clear()

    def _unjoin(self, key: Hashable, flight: _Flight) -> None:
        """A batch caller that joined ``flight`` will not wait on it after all (locked)."""
        flight.waiting -= 1
        flight.takers -= 1
        if flight.state == _HANDOFF and not flight.waiting:
            flight.state = _ABANDONED
            self._unlist(key, flight)

    def _batch_release(self, claim: BatchClaim, store: Store | None) -> None:
        with self._lock:
            self._batch_unclaim(claim, store)

    def _batch_lead(
        self,
        pairs: list[tuple[Hashable, Any]],
        fn: Callable[[list[Any]], Any],
        store: Store | None,
        keep: Hashable = MISSING,
    ) -> tuple[dict[Hashable, tuple[bool, Any]], BaseException | None]:
        """Call the batch function for these keys' flights in this thread; settle each.

        ``(outcome, error)``: ``outcome`` maps each key found to ``(ok, value)``.
        ``keep``: a key whose flight this thread goes on to lead itself when the batch
        leaves it out (a miss gathered by ``collect=``, B4).
        """
        me = threading.get_ident()
        started = _time.monotonic() if store is not None and store.early else 0.0
        with self._lock:
            for _, flight in pairs:
                flight.owner = me  # S9: the batch function calling one of them fails fast
                flight.started = started
        stats = self._stats
        began = _time.perf_counter() if _observe.timer is not None else 0.0
        try:
            found = fn([key for key, _ in pairs])
        except Exception as exc:
            _batch_ended(stats, began, stats.errors)
            outcome = self._batch_settle(pairs, store, None, exc, keep)
            return outcome, (exc if len(outcome) < len(pairs) else None)  # F3: all served
        except BaseException:
            _batch_ended(stats, began, stats.errors)  # counted as a single call's (S8)
            self._batch_settle(pairs, store, None, None, keep)  # S8: handed off
            raise
        _batch_ended(stats, began, stats.ok)
        return self._batch_settle(pairs, store, found, None, keep), None

    def _batch_settle(
        self,
        pairs: list[tuple[Hashable, Any]],
        store: Store | None,
        found: Any,
        exc: Exception | None,
        keep: Hashable,
    ) -> dict[Hashable, tuple[bool, Any]]:
        stats = self._stats
        outcome: dict[Hashable, tuple[bool, Any]] = {}
        for key, flight in pairs:
            if exc is not None:
                # B5: the same exception to every caller of every key; nothing kept;
                # but a key's old result within stale_if_error is served (F3).
                if store is not None:
                    _unmark(store, key)
                old = _rescued(store, key, exc)
                if old is MISSING:
                    flight.value = exc
                    flight.state = _FAILED
                else:
                    outcome[key] = (True, old)
                    flight.value = old
                    flight.state = _DONE
                with self._lock:
                    self._unlist(key, flight)
                    waiters = flight.lock
                next(stats.ended)
                if waiters is not None:
                    waiters.release()
                continue
            value = MISSING if found is None else found.get(key, MISSING)
            if value is not MISSING:
                outcome[key] = self._end(key, flight, store, True, value, _PER_KEY)
                continue
            if key == keep:
                continue
            # B4: not found; the first single call waiting on it runs the function.
            if store is not None:
                _unmark(store, key)
            with self._lock:
                if not flight.background:
                    flight.takers -= 1
                if flight.waiting:
                    flight.state = _HANDOFF
                    flight.owner = 0
                else:
                    flight.state = _ABANDONED
                    self._unlist(key, flight)
                waiters = flight.lock
            next(stats.ended)
            if waiters is not None:
                waiters.release()
        if exc is not None and outcome and store is not None:
            _log_failure(store, exc, True, False)
        return outcome

    def _batch_wait(self, key: Hashable, flight: _Flight, store: Store | None) -> tuple[bool, Any]:
        """A batch caller waits on a flight it joined: ``(ok, value)``, or ``NOT_FOUND``."""
        waiters = flight.lock
        assert waiters is not None  # made when this caller joined
        try:
            waiters.acquire()
        except BaseException:
            with self._lock:
                self._unjoin(key, flight)
            raise
        with self._lock:
            flight.waiting -= 1
            state = flight.state
            if state == _HANDOFF:
                # Not found (or its leader aborted): a batch caller does not run the
                # single-key function; it passes the flight on, or ends it.
                flight.takers -= 1
                if not flight.waiting:
                    flight.state = _ABANDONED
                    self._unlist(key, flight)
                    waiters = None
        if state == _HANDOFF:
            if waiters is not None:
                waiters.release()
            return True, NOT_FOUND
        assert waiters is not None
        waiters.release()  # pass the wake-up on to the next waiter
        return state == _DONE, flight.value

    def _batch_background(
        self, pairs: list[tuple[Hashable, Any]], fn: Callable[[list[Any]], Any], store: Store
    ) -> None:
        """Refresh stale keys with one call of the batch function, in a worker (F1)."""
        exc = self._batch_lead(pairs, fn, store)[1]
        if exc is not None:
            _log_failure(store, exc, False, True)

    def _batch_refresh(
        self, pairs: list[tuple[Hashable, Any]], fn: Callable[[list[Any]], Any], store: Store
    ) -> None:
        try:
            _workers.submit(functools.partial(_nested, 6, self._batch_background, pairs, fn, store))
        except BaseException:
            with self._lock:
                self._batch_unclaim(BatchClaim.of(pairs), store)
            raise


# --------------------------------------------------------------------------- asyncio

# The execution's task. On 3.12+ it starts eagerly: its first step runs at once,
# inside the first call, as that task (so ``current_task()``, an ``asyncio.timeout``
# or a ``TaskGroup`` there belong to the execution), and a function that returns
# without suspending costs no task switch. On 3.11 it is a plain task.
_EAGER: Final = sys.version_info >= (3, 12)
# Typed loosely: ``eager_start=`` is passed only where it exists (3.12+).
_Task: Any = asyncio.Task
_get_running_loop = asyncio.get_running_loop
_current_task = asyncio.current_task
_CoroutineType = types.CoroutineType


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    """A coroutine for an awaitable that is not one (a task runs only coroutines)."""
    return await awaitable


class _AsyncFlight:
    """One execution of one key in one event loop, and the futures of its callers.

    What most flights never change is a class default, so that a flight is quick to
    make (every miss makes one): set, it goes in the instance's ``__dict__``.
    """

    __slots__ = ("__dict__", "epoch", "listed", "state", "task", "value", "waiters", "work")

    background = False  # a refresh nobody waits for (F1, F2)
    began = 0.0  # perf_counter() at its start, while instrumented (O1)
    started = 0.0  # when it began, for early= (F2)
    takers = 1
    discard = False
    batch: _AsyncBatch | None = None  # the batch execution fetching this key (B2)
    # How a single call of this key runs the function, kept for when the batch
    # leaves the key out (B4): (fn, args, kwargs) of the first single call to join.
    call: tuple[Callable[..., Awaitable[Any]], tuple[Any, ...], dict[str, Any]] | None = None

    def __init__(self) -> None:
        # The execution's task, once made; while an eager task takes its first step
        # (3.12+) it is not made yet, and ``work``, its coroutine, tells it apart.
        self.task: asyncio.Task[Any] | None = None
        self.work: Coroutine[Any, Any, Any] | None = None
        self.state = _RUNNING
        self.value: Any = None
        # A caller's future -> True when that caller is a batch (section 9), which
        # takes "not found" for an answer; a single call (None) never does (B4).
        self.waiters: dict[asyncio.Future[Any], bool | None] | None = None
        self.epoch = _fork.epoch  # started in this process, not in a parent (S14)
        self.listed = False  # in the group's registry


class _AsyncBatch:
    """One call of a batch function (section 9): several keys, each a flight of its own."""

    __slots__ = ("began", "done", "loop", "pairs", "task")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        pairs: list[tuple[Hashable, _AsyncFlight]],
        done: asyncio.Future[dict[Hashable, tuple[bool, Any]]] | None,
    ) -> None:
        self.began = 0.0  # perf_counter() when its batch function was called, instrumented
        self.loop = loop
        self.pairs = pairs  # (key, flight), in the order the batch function gets them
        self.done = done  # the outcome, for the batch caller leading it (None: no such)
        self.task: asyncio.Task[None] | None = None


def _resolve(waiters: dict[asyncio.Future[Any], bool | None], flight: _AsyncFlight) -> None:
    """Give the settled ``flight``'s outcome to every caller still waiting on it."""
    state = flight.state
    value = flight.value
    for fut in waiters:
        if fut.done():
            continue
        if state == _DONE:
            fut.set_result(value)
        elif state == _FAILED:
            fut.set_exception(value)
        else:
            fut.cancel()
    waiters.clear()


_FlightKey = tuple[asyncio.AbstractEventLoop, Hashable]
_Outcome = tuple[Any, "_AsyncFlight | None"]


class AsyncGroup(_Registry):
    """Go's ``singleflight.Group`` for asyncio: one execution per key at a time.

    The execution runs apart from its callers, in a copy of the first caller's
    context (S7); a flight belongs to one event loop, and callers in another loop
    get flights of their own (S10).
    """

    __slots__ = ()
    # Keyed by (loop, key): one flat dict, nothing to tidy when a loop goes.
    # Only a loop's own thread adds its flights (when none is there), so adding
    # needs no lock; removing holds ``_lock`` (see ``_detach``).
    _flights: dict[_FlightKey, _AsyncFlight]

    async def do(
        self,
        key: Hashable,
        fn: Callable[P, Awaitable[R]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> R:
        """Await ``fn(*args, **kwargs)`` unless a call for ``key`` is running; share its outcome."""
        out = self._call(key, fn, args, kwargs, None)
        if not isinstance(out, tuple):
            out = await out
        result: R = out[0]
        return result

    async def do_shared(
        self,
        key: Hashable,
        fn: Callable[P, Awaitable[R]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> tuple[R, bool]:
        """As :meth:`do`, also telling whether the outcome went to more than one caller."""
        out = self._call(key, fn, args, kwargs, None)
        if not isinstance(out, tuple):
            out = await out
        value, flight = out
        return value, flight is not None and flight.takers > 1

    def _matching(self, key: object) -> list[tuple[_FlightKey, _AsyncFlight]]:
        try:
            hash(key)
        except TypeError:
            return []
        return [(fkey, f) for fkey, f in list(self._flights.items()) if fkey[1] == key]

    def _detach(self, fkey: _FlightKey, flight: _AsyncFlight) -> bool:
        """Take ``flight`` out of the registry if it is still the one for ``fkey``.

        Under the lock (``forget()`` may run in any thread): see ``_unlist``.
        (``acquire()`` and ``release()``, not ``with``: half the cost, on every miss.)
        """
        lock = self._lock
        lock.acquire()
        try:
            return self._unlist(fkey, flight)
        finally:
            lock.release()

    def forget(self, key: Hashable) -> bool:
        """Let later callers of ``key`` start a new execution instead of joining this one."""
        found = False
        for fkey, flight in self._matching(key):
            if self._detach(fkey, flight):
                flight.discard = True
                found = True
        return found

    def _discard(self, key: Hashable) -> None:
        """Detach the executions in flight for ``key``, in every loop (S18)."""
        self.forget(key)

    def _discard_all(self) -> None:
        """Detach every execution in flight, in every loop (S18, ``cache_clear()``).

        Under the lock, as every removal, and flight by flight: loops in other
        threads keep registering flights meanwhile (without the lock), so iterating
        the registry itself could fail, and a flight listed after the snapshot must
        stay (clearing it would make its ``_detach`` rebuild the registry) (V4).
        """
        with self._lock:
            for fkey, flight in list(self._flights.items()):
                flight.discard = True
                self._unlist(fkey, flight)

    def __contains__(self, key: object) -> bool:
        """``key in group``: whether an execution of ``key`` is in flight, in any loop."""
        return bool(self._matching(key))

    def _call(
        self,
        key: Hashable,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        store: Store | None,
    ) -> _Outcome | Coroutine[Any, Any, _Outcome]:
        """Join the flight for ``key`` or lead a new one.

        Returns ``(value, flight)`` when the outcome is known at once (a hit, or an
        execution that finished in its first step), else a coroutine to await for
        it; ``flight`` is ``None`` for a hit. Not itself a coroutine, so a call that
        never suspends costs no extra frame.
        """
        loop = _get_running_loop()
        fkey = (loop, key)
        flights = self._flights
        try:
            flight = flights.get(fkey)
        except TypeError:
            raise self._describe(key, args, kwargs) from None
        stats = self._stats
        if store is not None:
            try:
                value, stale = _consult(store, stats, key, flight)
            except BaseException:
                del fn, args, kwargs  # a kept error (F4) holds this frame: not the arguments
                raise
            if value is not MISSING:
                if stale and flight is None:
                    self._start_background(loop, fkey, fn, args, kwargs, store)
                return value, None
        if flight is not None:
            me = _current_task(loop)
            task = flight.task
            if (
                me is task
                if task is not None
                else me is not None and me.get_coro() is flight.work is not None
            ):
                raise ReentrantCallError(
                    f"this call of key {key!r} would wait on an execution of the same key "
                    "that its own task is running, which would deadlock"
                )
            next(stats.coalesced)
            flight.takers += 1
            if flight.call is None and flight.batch is not None:
                flight.call = (fn, args, kwargs)  # if the batch leaves this key out (B4)
            return self._wait(loop, fkey, flight)
        flight = _AsyncFlight()
        flights[fkey] = flight  # a key whose __eq__ raises: nothing listed
        flight.listed = True
        collector = self._collector
        if collector is not None:
            # f.batch(collect=...): this miss waits to be fetched with others (B6);
            # its key is marked in the store with theirs, when their batch starts.
            next(stats.executed)
            next(stats.started)
            flight.call = (fn, args, kwargs)
            collector.add(self, loop, key, flight, store)
            return self._wait(loop, fkey, flight)
        if store is not None:
            try:
                store.mark(key)
            except BaseException:
                self._detach(fkey, flight)
                raise
        next(stats.executed)
        next(stats.started)
        if store is not None and store.early:
            flight.started = _time.monotonic()
        timer = _observe.timer
        if timer is not None:
            flight.began = _time.perf_counter()
        try:
            work = fn(*args, **kwargs) if kwargs else fn(*args)  # no dict to merge
            if work.__class__ is not _CoroutineType:
                work = _awaited(work)
            flight.work = work
            # The task runs in a copy of the current context (S7). (3.12's eager
            # start needs the loop given: it asks that argument if it is running.)
            task = _Task(work, loop=loop, eager_start=True) if _EAGER else _Task(work, loop=loop)
        except BaseException as exc:
            # The call raised before its coroutine existed, or the first step ended
            # with KeyboardInterrupt or SystemExit (which asyncio raises on).
            self._end(fkey, flight, store, False, exc)
            raise
        if task.done():
            # Finished in its first step (3.12+): settled here, as _ended would.
            try:
                value = task.result()
            except BaseException as exc:
                self._end(fkey, flight, store, False, exc)
            else:
                if store is None and timer is None and not flight.waiters:
                    # A result kept nowhere that nobody joined (dedup only, P5): what
                    # _end and _wake would do, without their two calls.
                    next(stats.ok)
                    flight.state = _DONE
                    flight.value = value
                    flight.work = None
                    lock = self._lock  # _detach, without its own call
                    lock.acquire()
                    try:
                        self._unlist(fkey, flight, True)  # this loop's thread lists fkey
                    finally:
                        lock.release()
                    if flight.epoch == _fork.epoch:
                        next(stats.ended)
                    return value, flight
                self._end(fkey, flight, store, True, value)
            state = flight.state
            if state == _DONE:
                return flight.value, flight
            if state == _FAILED:
                del fn, args, kwargs  # a kept error (F4) holds this frame: not the arguments
                raise flight.value
            raise asyncio.CancelledError
        flight.task = task
        task.add_done_callback(functools.partial(self._ended, fkey, flight, store))
        return self._wait(loop, fkey, flight)

    def _start_background(
        self,
        loop: asyncio.AbstractEventLoop,
        fkey: _FlightKey,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        store: Store,
    ) -> None:
        """A refresh as a task on the caller's loop; the registry keeps it alive."""
        flight = _AsyncFlight()
        self._flights[fkey] = flight
        flight.listed = True
        flight.background = True
        flight.takers = 0
        if store.early:
            flight.started = _time.monotonic()
        next(self._stats.started)
        next(self._stats.refreshes)
        if _observe.timer is not None:
            flight.began = _time.perf_counter()
        try:
            work = fn(*args, **kwargs)
            if work.__class__ is not _CoroutineType:
                work = _awaited(work)
            task = loop.create_task(work)
        except BaseException as exc:
            self._end(fkey, flight, store, False, exc)  # logged there
            if isinstance(exc, Exception):
                return  # the hit that started it still returns its stale result
            raise
        flight.work = work
        flight.task = task
        task.add_done_callback(functools.partial(self._ended, fkey, flight, store))

    def _refresh(
        self,
        key: Hashable,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        store: Store,
    ) -> None:
        """Start one background refresh of ``key`` unless a flight for it is running (F2)."""
        loop = _get_running_loop()
        fkey = (loop, key)
        if fkey not in self._flights:
            self._start_background(loop, fkey, fn, args, kwargs, store)

    def _ended(
        self, fkey: _FlightKey, flight: _AsyncFlight, store: Store | None, task: asyncio.Task[Any]
    ) -> None:
        """The execution's task is done (or was cancelled before it began): settle it."""
        try:
            value = task.result()
        except BaseException as exc:  # its failure, or its cancellation
            self._end(fkey, flight, store, False, exc)
        else:
            self._end(fkey, flight, store, True, value)

    def _end(
        self, fkey: _FlightKey, flight: _AsyncFlight, store: Store | None, ok: bool, value: Any
    ) -> None:
        """The execution ended: keep its outcome (S3), leave the registry, wake the waiters."""
        if store is not None or not ok:
            ok, value = _outcome(store, self._stats, fkey[1], flight, ok, value)
        else:  # what _outcome does for a result kept nowhere, inline (O1)
            next(self._stats.ok)
            timer = _observe.timer
            if timer is not None and flight.began:
                timer(self._stats, _time.perf_counter() - flight.began)
        self._wake(fkey, flight, ok, value)

    def _wake(self, fkey: _FlightKey, flight: _AsyncFlight, ok: bool, value: Any) -> None:
        """The flight has its outcome: leave the registry and wake every waiting caller."""
        if ok:
            flight.state = _DONE
        elif isinstance(value, asyncio.CancelledError):
            flight.state = _CANCELLED
        else:
            flight.state = _FAILED
        flight.value = value
        flight.work = None
        self._detach(fkey, flight)
        if flight.epoch == _fork.epoch:  # a parent's execution was never counted here
            next(self._stats.ended)
        waiters = flight.waiters
        if not waiters:
            return
        _resolve(waiters, flight)

    async def _wait(
        self, loop: asyncio.AbstractEventLoop, fkey: _FlightKey, flight: _AsyncFlight
    ) -> _Outcome:
        fut = loop.create_future()
        waiters = flight.waiters
        if waiters is None:
            waiters = flight.waiters = {}
        waiters[fut] = None
        try:
            return await fut, flight
        except BaseException:  # cancelled, or its coroutine closed (GeneratorExit)
            self._leave(fkey, flight, fut)
            raise

    def _leave(self, fkey: _FlightKey, flight: _AsyncFlight, fut: asyncio.Future[Any]) -> None:
        """A caller waiting on ``fut`` was cancelled: only its wait ends (S7)."""
        if fut.done() and not fut.cancelled():
            fut.exception()  # its failure is the flight's, not left for asyncio to log (O3)
        if flight.state != _RUNNING:
            return
        waiters = flight.waiters
        if waiters is None or waiters.pop(fut, _NOT_WAITING) is _NOT_WAITING:
            return
        flight.takers -= 1
        if waiters or flight.background:
            return
        if flight.task is None:
            if flight.work is None and flight.batch is None:
                # A miss gathered by collect= whose batch has not started (B7): it
                # leaves its window and the registry now; an emptied window calls
                # no batch function.
                flight.discard = True
                flight.call = None
                if self._collector is not None:
                    self._collector.drop(fkey[0], flight)
                self._wake(fkey, flight, False, asyncio.CancelledError())
            return
        if flight.batch is not None:
            self._batch_left(flight.batch)
            return
        # Every caller has gone: stop the execution, leave nothing in flight.
        flight.discard = True
        self._detach(fkey, flight)
        flight.task.cancel()

    # ------------------------------------------------------------ batches (section 9)
    #
    # A batch execution fetches several keys in one call, and each of its keys is a
    # flight of its own in the same registry, marked with the batch (``flight.batch``)
    # and run by the batch's task. So a single call of a key joins it as it joins any
    # flight (B3), a batch call joins single executions and other batches the same
    # way (B2), and each key is settled, stored, invalidated and cancelled on its own
    # (B7). A key the batch leaves out is handed to the single calls waiting on it:
    # the first one's execution runs in the same flight (B4).

    def _batch_claim(self, keys: list[Hashable], store: Store | None) -> BatchClaim:
        """Sort a batch call's keys (B2): hits, keys in flight to join, keys to fetch.

        Each key counts once (B7). A stale result is served and its key gets a
        background flight, refreshed with the other stale keys of this call (F1).
        """
        loop = _get_running_loop()
        flights = self._flights
        stats = self._stats
        current = _current_task(loop)
        claim = BatchClaim()
        try:
            for key in keys:
                fkey = (loop, key)
                flight = flights.get(fkey)
                if store is not None:
                    value, stale = _consult(store, stats, key, flight, raises=False)
                    if value is not MISSING:
                        if stale and flight is None:
                            flight = _AsyncFlight()
                            flights[fkey] = flight
                            flight.listed = True
                            flight.background = True
                            flight.takers = 0
                            next(stats.started)
                            next(stats.refreshes)
                            claim.stale.append((key, flight))
                        claim.hits[key] = value
                        continue
                if flight is not None:
                    if flight.task is not None and flight.task is current:
                        raise ReentrantCallError(
                            f"this batch call of key {key!r} would wait on an execution of "
                            "the same key that its own task is running, which would deadlock"
                        )
                    next(stats.coalesced)
                    flight.takers += 1
                    fut = loop.create_future()
                    waiters = flight.waiters
                    if waiters is None:
                        waiters = flight.waiters = {}
                    waiters[fut] = True
                    claim.joined.append((key, flight, fut))
                    continue
                flight = _AsyncFlight()
                flights[fkey] = flight
                flight.listed = True
                claim.led.append((key, flight))
                next(stats.executed)
                next(stats.started)
                if store is not None:
                    store.mark(key)
                    if store.early:
                        flight.started = _time.monotonic()
        except BaseException:
            self._batch_release(claim, store)
            raise
        return claim

    def _batch_release(self, claim: BatchClaim, store: Store | None) -> None:
        """Give up what :meth:`_batch_claim` took: a caller that will not fetch or wait."""
        loop = _get_running_loop()
        for key, flight in (*claim.led, *claim.stale):
            if flight.state == _RUNNING and flight.batch is None:
                if store is not None:
                    _unmark(store, key)
                self._wake((loop, key), flight, False, asyncio.CancelledError())
        for key, flight, fut in claim.joined:
            self._leave((loop, key), flight, fut)
        claim.led.clear()
        claim.stale.clear()
        claim.joined.clear()

    def _batch_start(
        self,
        pairs: list[tuple[Hashable, Any]],
        fn: Callable[[list[Any]], Awaitable[Any]],
        store: Store | None,
        *,
        led: bool,
    ) -> _AsyncBatch:
        """Start one call of the batch function for these keys' flights, as a task.

        ``led``: a batch caller awaits the outcome (``batch.done``); otherwise the
        flights' own callers do (a refresh, or misses gathered by ``collect=``).
        """
        loop = _get_running_loop()
        done: asyncio.Future[dict[Hashable, tuple[bool, Any]]] | None = (
            loop.create_future() if led else None
        )
        batch = _AsyncBatch(loop, pairs, done)
        coro = self._batch_run(batch, fn, [key for key, _ in pairs], store)
        task = loop.create_task(coro)  # in a copy of the current context (S7)
        batch.task = task
        for _, flight in pairs:
            flight.batch = batch
            flight.task = task
        # 3.11: a task cancelled before its first step never runs _batch_run.
        task.add_done_callback(functools.partial(self._batch_unstarted, batch, store))
        return batch

    def _batch_unstarted(self, batch: _AsyncBatch, store: Store | None, task: object) -> None:
        self._batch_end(batch, store, None, asyncio.CancelledError())

    async def _batch_run(
        self,
        batch: _AsyncBatch,
        fn: Callable[[list[Any]], Awaitable[Any]],
        ids: list[Any],
        store: Store | None,
    ) -> None:
        """The batch task's coroutine: await the batch function, then settle each key."""
        if _observe.timer is not None:
            batch.began = _time.perf_counter()
        try:
            found = await fn(ids)
        except BaseException as exc:
            self._batch_end(batch, store, None, exc)
            if not isinstance(exc, Exception):
                raise
        else:
            self._batch_end(batch, store, found, None)

    def _batch_end(
        self,
        batch: _AsyncBatch,
        store: Store | None,
        found: Any,
        exc: BaseException | None,
    ) -> None:
        """Settle every key of a batch: stored and shared (B2), or failed (B5), or
        handed to the single calls waiting on it when the batch left it out (B4).

        One pass, for the batch rather than per key (P9): each key's outcome is kept,
        every settled flight leaves the registry under one hold of the lock, then
        their callers' futures are resolved.
        """
        loop = batch.loop
        stats = self._stats
        if not batch.pairs:
            return  # ended already: this is the task's done callback (_batch_unstarted)
        if exc is None:
            _batch_ended(stats, batch.began, stats.ok)
        elif isinstance(exc, asyncio.CancelledError):
            _batch_ended(stats, batch.began, stats.cancelled)
        else:
            _batch_ended(stats, batch.began, stats.errors)
        outcome: dict[Hashable, tuple[bool, Any]] = {}
        settled: list[tuple[Hashable, _AsyncFlight]] = []
        failed = False  # a key got the batch's exception (not its old result, F3)
        if exc is None and isinstance(store, TTLStore) and store.saves_all:
            settled = self._batch_save(batch, store, found, outcome)
        for key, flight in batch.pairs:
            if flight.state != _RUNNING or flight.batch is not batch:
                continue  # settled already (cancelled, or this ran twice)
            flight.batch = None
            if exc is not None:
                # B5: the same exception to every caller of every key; nothing kept;
                # but a key's old result within stale_if_error is served (F3).
                if store is not None:
                    _unmark(store, key)
                old = _rescued(store, key, exc)
                if old is not MISSING:
                    outcome[key] = (True, old)
                    flight.state = _DONE
                    flight.value = old
                else:
                    failed = True
                    cancelled = isinstance(exc, asyncio.CancelledError)
                    flight.state = _CANCELLED if cancelled else _FAILED
                    flight.value = exc
                settled.append((key, flight))
                continue
            try:
                value = found.get(key, NOT_FOUND)
            except Exception as error:  # the key's __eq__ raised: its callers get that
                if store is not None:
                    _unmark(store, key)
                flight.state = _FAILED
                flight.value = error
                settled.append((key, flight))
                continue
            if value is not NOT_FOUND:
                ok = True
                if store is not None:
                    ok, value = _outcome(store, _PER_KEY, key, flight, True, value)
                outcome[key] = (ok, value)
                flight.state = _DONE if ok else _FAILED  # not ok: storing it raised
                flight.value = value
                settled.append((key, flight))
                continue
            waiters = flight.waiters
            call = flight.call
            if call is not None and waiters and None in waiters.values():
                # B4: a single call waits on this key; its own execution runs now, in
                # the same flight, and the batch callers hear "not found".
                for fut, batcher in list(waiters.items()):
                    if batcher:
                        del waiters[fut]
                        flight.takers -= 1
                        if not fut.done():
                            fut.set_result(NOT_FOUND)
                flight.call = None
                flight.task = None
                fn, args, kwargs = call
                self._relaunch((loop, key), flight, fn, args, kwargs, store)
                continue
            if store is not None:
                _unmark(store, key)
            flight.state = _DONE
            flight.value = NOT_FOUND
            settled.append((key, flight))
        if settled:
            self._wake_all(loop, settled)
        if exc is not None and outcome and store is not None:
            _log_failure(store, exc, True, False)
        done = batch.done
        batch.done = None
        batch.pairs = []
        if done is not None and not done.done():
            if exc is None or (outcome and not failed):  # F3: every key served
                done.set_result(outcome)
            elif isinstance(exc, asyncio.CancelledError):
                done.cancel()
            else:
                done.set_exception(exc)

    def _batch_save(
        self,
        batch: _AsyncBatch,
        store: TTLStore,
        found: Any,
        outcome: dict[Hashable, tuple[bool, Any]],
    ) -> list[tuple[Hashable, _AsyncFlight]]:
        """Store the values a batch found under one hold of the store's lock (P9) and
        settle their flights; the keys not found (B4) are left to the caller."""
        kept = []
        try:
            for key, flight in batch.pairs:
                if flight.state == _RUNNING and flight.batch is batch:
                    value = found.get(key, NOT_FOUND)
                    if value is not NOT_FOUND:
                        kept.append((key, value, flight.started, flight))
            store.save_all(kept)
        except Exception:
            return []  # a key's __eq__ raised: the caller settles each key on its own
        settled = []
        for key, value, _, flight in kept:
            outcome[key] = (True, value)
            flight.batch = None
            flight.state = _DONE
            flight.value = value
            settled.append((key, flight))
        return settled

    def _wake_all(
        self, loop: asyncio.AbstractEventLoop, settled: list[tuple[Hashable, _AsyncFlight]]
    ) -> None:
        """:meth:`_wake` for many flights whose state and value are set: they leave the
        registry under one hold of the lock, then every waiting caller is woken."""
        with self._lock:
            flights = self._flights
            for key, flight in settled:
                flight.work = None
                if not flight.listed:
                    continue
                flight.listed = False
                try:
                    if flights.get((loop, key)) is flight:
                        del flights[loop, key]
                        continue
                except Exception:
                    pass
                flights = self._flights = _unlisted(flights, flight)  # its key is broken
        epoch = _fork.epoch
        ended = self._stats.ended
        for _, flight in settled:
            if flight.epoch == epoch:  # a parent's execution was never counted here
                next(ended)
            waiters = flight.waiters
            if not waiters:
                continue
            if flight.state != _DONE:
                _resolve(waiters, flight)
                continue
            value = flight.value  # found: the common case, resolved here (P9)
            for fut in waiters:
                if not fut.done():
                    fut.set_result(value)
            waiters.clear()

    def _relaunch(
        self,
        fkey: _FlightKey,
        flight: _AsyncFlight,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        store: Store | None,
    ) -> None:
        """B4: run the single-key function in ``flight``, which a batch left out."""
        if _observe.timer is not None:
            flight.began = _time.perf_counter()
        try:
            work = fn(*args, **kwargs)
            if work.__class__ is not _CoroutineType:
                work = _awaited(work)
            task = fkey[0].create_task(work)
        except BaseException as exc:
            self._end(fkey, flight, store, False, exc)
            if isinstance(exc, Exception):
                return
            raise
        flight.work = work
        flight.task = task
        task.add_done_callback(functools.partial(self._ended, fkey, flight, store))

    def _batch_gathered(
        self, pending: list[tuple[Hashable, Any]], store: Store | None
    ) -> list[tuple[Hashable, Any]]:
        """The misses gathered by ``collect=`` that still have a caller (S7), their keys
        marked in the store together (one hold of its lock, P9); the rest end."""
        loop = _get_running_loop()
        pairs = []
        for key, flight in pending:
            if flight.state != _RUNNING:
                continue
            if flight.takers > 0:
                pairs.append((key, flight))
                continue
            flight.discard = True  # never marked: nothing to take away
            self._wake((loop, key), flight, False, asyncio.CancelledError())
        if store is None or not pairs:
            return pairs
        try:
            store.mark_all([key for key, _ in pairs])
        except Exception:
            pairs = self._marked(loop, pairs, store)
        if store.early:
            now = _time.monotonic()
            for _, flight in pairs:
                flight.started = now
        return pairs

    def _marked(
        self, loop: asyncio.AbstractEventLoop, pairs: list[tuple[Hashable, Any]], store: Store
    ) -> list[tuple[Hashable, Any]]:
        """Mark each key on its own: a key whose ``__eq__`` raises fails its callers."""
        kept = []
        for key, flight in pairs:
            try:
                store.mark(key)
            except Exception as exc:
                self._wake((loop, key), flight, False, exc)
                continue
            kept.append((key, flight))
        return kept

    def _batch_left(self, batch: _AsyncBatch) -> None:
        """A caller left (S7): when none of the batch's keys has a caller, cancel it."""
        if batch.done is not None:
            return  # its batch caller still waits
        running = [(key, f) for key, f in batch.pairs if f.state == _RUNNING and f.batch is batch]
        if any(flight.waiters for _, flight in running):
            return
        if any(flight.background for _, flight in running):
            return  # a refresh runs on with nobody waiting (F1)
        for key, flight in running:
            flight.discard = True
            self._detach((batch.loop, key), flight)
        if batch.task is not None:
            batch.task.cancel()

    def _batch_abandon(self, batch: _AsyncBatch) -> None:
        """The batch caller leading ``batch`` left before its outcome (S7)."""
        done = batch.done
        if done is None:
            return
        batch.done = None
        if not done.done():
            done.cancel()
        self._batch_left(batch)
