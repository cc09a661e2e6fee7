"""Where results live and when they expire (S3, S6, S13, S17, S19, section 3).

Two stores share one interface: ``lookup``, ``save``, ``invalidate``, ``clear``,
``currsize``, ``maxsize_info``; ``mark``/``unmark``/``scrub`` (a key being computed); and for
the freshness options ``stale_value``, ``rescue``, ``save_error`` and ``can_refresh``.

- ``TTLStore``, the built-in one: a plain ``dict`` of ``key -> entry``, an entry being a
  tuple whose fields are named below (``VALUE``, ``FRESH``, ...). Hits read it without
  a lock (one dictionary lookup and one clock read, S6); every write holds the store's
  lock. Entries are also kept in the order they were stored: with one ``ttl`` for
  every result that is the order they expire in, so the store evicts from the front,
  expired entries first, then the oldest past ``maxsize``; with a ``ttl`` callable
  (lifetimes differ per result) expired entries are swept before a live one is evicted.
  Kept errors (``error_ttl=``) are bounded the same way.
- ``MappingStore`` wraps a mapping the user passed (``cache=``). Every touch holds the
  one reentrant guard that belongs to that mapping, whichever function touches it
  (S17, S19); the mapping decides what expires.

Expiry reads ``time.monotonic`` at call time (S13), so freezegun controls it; while
time-machine is loaded, the wall clock is read too (see ``wall_clock_too``).
"""

from __future__ import annotations

import math
import random
import sys
import threading
import time as _time
import traceback as traceback_module
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator, MutableMapping
from types import TracebackType
from typing import Any, Final

from ._fork import at_fork
from ._keys import hashed, unhashed
from ._pinned import callable, getattr, id, isinstance, iter, len, max, next
from ._seconds import returned

__all__ = (
    "BORN",
    "BORN_WALL",
    "DELTA",
    "FRESH",
    "FRESH_WALL",
    "MISSING",
    "TTL",
    "VALUE",
    "CachedError",
    "Entry",
    "LocalCopies",
    "MappingStore",
    "Store",
    "TTLStore",
    "TTLView",
    "xfetch_gap",
)


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<missing>"


MISSING: Final[Any] = _Missing()


class CachedError:
    """A kept exception (``error_ttl=``, F4): re-raised to callers, not run again."""

    __slots__ = ("error", "traceback")

    def __init__(self, error: BaseException, traceback: TracebackType | None) -> None:
        self.error = error
        # Raised again with the traceback it was kept with, so that every re-raise
        # does not add its frames to the one shared object.
        self.traceback = traceback


def wall_clock_too() -> bool:
    """Whether expiry should also read the wall clock, decided when decorating.

    time-machine moves only the wall clock: it does not mock ``time.monotonic``. When
    it is loaded (its pytest plugin loads it before any test module), expiry reads
    ``time.time()`` as well, and a result expires when either clock says so; so
    ``travel``/``shift`` control expiry, as freezegun and a patched
    ``time.monotonic`` do. Otherwise only ``time.monotonic`` is read.
    """
    return "time_machine" in sys.modules


# An entry of the built-in store: a plain tuple, the cheapest thing to read. Its
# fields by name (the compiled wrappers read VALUE, FRESH and FRESH_WALL, _compile.py):
# the result; until when it is fresh by the monotonic clock and by the wall clock
# (time-machine, see wall_clock_too); when it was stored, by each clock; its ttl; and
# how long computing it took (for early=).
VALUE, FRESH, FRESH_WALL, BORN, BORN_WALL, TTL, DELTA = range(7)
Entry = tuple[Any, float, float, float, float, float, float]
_INF: Final = math.inf
# Born and fresh at minus infinity: older than every window, so never served.
_TOMBSTONE: Final[Entry] = (None, -_INF, -_INF, -_INF, -_INF, 0.0, 0.0)


def _kept_traceback(error: BaseException) -> TracebackType | None:
    """The traceback an error is kept with (F4): where it was raised, not who called.

    The library's own frames at its head (which hold the call's arguments) are left
    out, and the function's frames below are cleared of their locals, so a kept
    error keeps no argument or result alive (S16); file names and line numbers stay,
    so it prints as it did. The error is given that traceback too.
    """
    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_globals.get("__name__", "").startswith("coalesce."):
        tb = tb.tb_next
    traceback_module.clear_frames(tb)
    error.__traceback__ = tb
    return tb


class TTLStore:
    """The built-in store: a dict of entries read without a lock (S6).

    An entry is ``(value, fresh_until, fresh_until_wall, born, born_wall, ttl,
    delta)``: the hit path reads only the first three. ``born`` is when the result
    was stored and ``delta`` how long computing it took (for ``early=``). The
    freshness options (section 3) are windows after ``ttl``: ``stale`` (served while
    one refresh runs in the background), ``stale_if_error`` (served when the
    recomputation fails).
    """

    __slots__ = (
        "__weakref__",
        "cache_if",
        "can_refresh",
        "data",
        "dual",
        "early",
        "error_ttl",
        "errors",
        "keep",
        "lock",
        "marks",
        "maxsize",
        "name",
        "order",
        "stale",
        "stale_if_error",
        "ttl",
        "varies",
    )

    def __init__(
        self,
        ttl: float | Callable[[Any], float],
        maxsize: int | None,
        *,
        name: str = "",
        stale: float = 0.0,
        early: float = 0.0,
        stale_if_error: float = 0.0,
        error_ttl: float = 0.0,
        cache_if: Callable[[Any], object] | None = None,
        dual: bool | None = None,
    ) -> None:
        # A plain dict: the fastest read there is. The order results were stored in
        # is kept beside it (key -> entry, oldest first): a replaced result moves to
        # the back, an invalidated or evicted one leaves both, so neither keeps a
        # result (or its key) alive once it is gone from ``data`` (S16).
        self.data: dict[Hashable, Entry] = {}
        self.order: OrderedDict[Hashable, Entry] = OrderedDict()
        # Tombstones in ``data`` (keys being computed, see mark): they are not
        # results, so neither maxsize nor currsize counts them.
        self.marks = 0
        self.errors: dict[Hashable, tuple[BaseException, float, float, TracebackType | None]] = {}
        self.ttl = ttl
        self.varies = callable(ttl)  # lifetimes differ per result (see save)
        self.maxsize = maxsize
        self.name = name
        self.stale = stale
        self.early = early
        self.stale_if_error = stale_if_error
        self.error_ttl = error_ttl
        self.cache_if = cache_if
        self.keep = max(stale, stale_if_error)  # how long past ttl an entry may serve
        self.can_refresh = bool(stale or early)  # flights may run beside a usable result
        self.dual = wall_clock_too() if dual is None else dual
        self.lock = threading.Lock()
        at_fork(self)

    def _after_fork(self) -> None:
        self.lock = threading.Lock()

    def now(self) -> tuple[float, float]:
        """``(monotonic, wall)``; wall is 0.0 unless time-machine is in play."""
        return _time.monotonic(), (_time.time() if self.dual else 0.0)

    def _age(self, entry: Entry, mono: float, wall: float) -> float:
        age = mono - entry[BORN]
        if self.dual:
            age = max(age, wall - entry[BORN_WALL])
        return age

    def lookup(self, key: Hashable) -> Any:
        """The fresh value, a :class:`CachedError`, or ``MISSING``."""
        mono, wall = self.now()
        entry = self.data.get(key)
        if entry is not None and self._age(entry, mono, wall) < entry[TTL]:
            return entry[VALUE]
        if self.errors:
            kept = self.errors.get(key)
            if kept is not None:
                if kept[1] > mono and (not self.dual or kept[2] > wall):
                    return CachedError(kept[0], kept[3])
                with self.lock:
                    if self.errors.get(key) is kept:
                        del self.errors[key]
        return MISSING

    def _within(self, key: Hashable, window: float) -> Any:
        entry = self.data.get(key)
        if entry is None or not window:
            return MISSING
        mono, wall = self.now()
        if self._age(entry, mono, wall) < entry[TTL] + window:
            return entry[VALUE]
        return MISSING

    def stale_value(self, key: Hashable) -> Any:
        """The value if past ``ttl`` but within ``stale`` (F1), else ``MISSING``."""
        return self._within(key, self.stale)

    def rescue(self, key: Hashable) -> Any:
        """The old value if within ``stale_if_error`` past its expiry (F3), else ``MISSING``."""
        return self._within(key, self.stale_if_error)

    def refresh_early(self, entry: Entry) -> bool:
        """XFetch (F2): recompute before expiry, likelier as it nears, scaled by delta."""
        gap = xfetch_gap(entry[DELTA], self.early)
        return _time.monotonic() + gap >= entry[FRESH] or (
            self.dual and _time.time() + gap >= entry[FRESH_WALL]
        )

    def _lifetime(self, value: Any) -> float:
        ttl = self.ttl
        if not callable(ttl):
            return ttl
        return returned(f"the ttl callable of {self.name}()", ttl(value))

    def _lifetime_of(self, key: Hashable, value: Any) -> float:
        """How long ``value``, stored for ``key`` now, stays fresh."""
        return self._lifetime(value)

    def save(self, key: Hashable, value: Any, started: float = 0.0, flight: Any = None) -> None:
        """Keep ``value`` for its ttl; ``started`` is when computing it began (or 0).

        ``flight`` (with a ``discard`` flag) is the execution storing it: an
        ``invalidate()`` or ``cache_clear()`` that marked it while ``cache_if`` or a
        ttl callable ran still wins, since the flag is read again under the lock (F6).
        """
        if self.cache_if is not None and not self.cache_if(value):
            self.unmark(key)
            return
        ttl = self._lifetime_of(key, value)
        if ttl <= 0:
            self.unmark(key)
            return
        self._keep(((key, value, started, flight),), ttl)

    @property
    def saves_all(self) -> bool:
        """Whether :meth:`save_all` may store a batch: one ttl for all, no ``cache_if``."""
        ttl = self.ttl
        return self.cache_if is None and not self.varies and not callable(ttl) and ttl > 0

    def save_all(self, items: Iterable[tuple[Hashable, Any, float, Any]]) -> None:
        """:meth:`save` for many ``(key, value, started, flight)`` at once, under one
        hold of the lock (a batch's results, section 9); only while :attr:`saves_all`."""
        ttl = self.ttl
        assert not callable(ttl)
        self._keep(items, ttl)

    def _keep(self, items: Iterable[tuple[Hashable, Any, float, Any]], ttl: float) -> None:
        mono, wall = self.now()
        fresh, fresh_wall = mono + ttl, (wall + ttl if self.dual else _INF)
        data = self.data
        order = self.order
        maxsize = self.maxsize
        with self.lock:
            for key, value, started, flight in items:
                old = data.get(key)
                if flight is not None and flight.discard:
                    if old is _TOMBSTONE:
                        del data[key]
                        self.marks -= 1
                    continue
                delta = mono - started if started else 0.0
                entry = (value, fresh, fresh_wall, mono, wall, ttl, delta)
                data[key] = entry
                if old is _TOMBSTONE:
                    self.marks -= 1
                elif old is not None:
                    order.pop(key, None)  # the replaced result leaves the order too
                order[key] = entry
                if self.errors:
                    self.errors.pop(key, None)
            if self.varies and maxsize is not None and len(data) - self.marks > maxsize:
                # Lifetimes differ per result, so what was stored first need not end
                # first: drop every entry past its windows before evicting a live one.
                self._drop_expired(mono, wall)
            # The front holds what was stored first, which (one ttl for all) also
            # ends first: drop entries past every window and, while over maxsize
            # (results only: keys in flight are not counted), the oldest. Amortised
            # O(1) per save.
            while order:
                old_key, old_entry = next(iter(order.items()))
                if data.get(old_key) is not old_entry:
                    order.popitem(last=False)  # its key's hash changed: not ours to drop
                elif self._age(old_entry, mono, wall) >= old_entry[TTL] + self.keep or (
                    maxsize is not None and len(data) - self.marks > maxsize
                ):
                    del data[old_key]
                    order.popitem(last=False)
                else:
                    break

    def mark(self, key: Hashable) -> None:
        """An execution of ``key`` starts: put a tombstone where its result will go.

        Its callers' lock-free lookups then find an entry that is never fresh (and go
        on to join the execution) instead of raising ``KeyError``, which costs more
        than the rest of the lookup. Every other reader sees no result there.
        """
        data = self.data
        with self.lock:
            if key not in data:
                data[key] = _TOMBSTONE
                self.marks += 1

    def mark_all(self, keys: Iterable[Hashable]) -> None:
        """:meth:`mark` for many keys, under one hold of the lock (a batch's, section 9)."""
        data = self.data
        with self.lock:
            for key in keys:
                if key not in data:
                    data[key] = _TOMBSTONE
                    self.marks += 1

    def unmark(self, key: Hashable) -> None:
        """The execution of ``key`` stored nothing: take its tombstone away."""
        data = self.data
        if data.get(key) is _TOMBSTONE:
            with self.lock:
                if data.get(key) is _TOMBSTONE:
                    del data[key]
                    self.marks -= 1

    def scrub(self, key: Hashable) -> None:
        """Take the tombstone of ``key`` away when its ``__eq__`` or ``__hash__`` fails.

        The tombstone is found by identity and the dict rebuilt in place (other keys
        are stored again). Only a key that breaks Python's hash contract comes here.
        """
        data = self.data
        with self.lock:
            kept = [(k, e) for k, e in list(data.items()) if not (k is key and e is _TOMBSTONE)]
            if len(kept) == len(data):
                return
            data.clear()
            marks = 0
            for k, e in kept:
                try:
                    data[k] = e
                except Exception:
                    continue  # a broken key of another flight: its result is not kept
                marks += e is _TOMBSTONE
            self.marks = marks

    def save_error(self, key: Hashable, error: BaseException) -> None:
        """Keep ``error`` for ``error_ttl`` (F4), if that option is on.

        Kept errors are bounded like results: the oldest go first past ``maxsize``,
        and expired ones are dropped as new ones come (one ``error_ttl`` for all, so
        the order they were kept in is the order they expire in).
        """
        if not self.error_ttl:
            return
        traceback = _kept_traceback(error)
        mono, wall = self.now()
        kept = (error, mono + self.error_ttl, wall + self.error_ttl, traceback)
        errors = self.errors
        data = self.data
        with self.lock:
            replaced = data.get(key)
            if (
                replaced is not None
                and replaced is not _TOMBSTONE
                and self._age(replaced, mono, wall) >= replaced[TTL] + self.keep
            ):
                # The result the failed call would have replaced is past every window:
                # it goes now, not when it reaches the front of the order.
                del data[key]
                self.order.pop(key, None)
            errors.pop(key, None)  # kept again: to the back of the order
            errors[key] = kept
            while errors:
                old_key = next(iter(errors))
                old = errors[old_key]
                expired = old[1] <= mono or (self.dual and old[2] <= wall)
                if not expired and (self.maxsize is None or len(errors) <= self.maxsize):
                    break
                del errors[old_key]

    def _drop_expired(self, mono: float, wall: float) -> None:
        """Drop every entry past all its windows, and every expired kept error (locked)."""
        data = self.data
        order = self.order
        for key, entry in list(data.items()):
            if entry is not _TOMBSTONE and self._age(entry, mono, wall) >= entry[TTL] + self.keep:
                del data[key]
                order.pop(key, None)
        errors = self.errors
        for key, kept in list(errors.items()):
            if kept[1] <= mono or (self.dual and kept[2] <= wall):
                del errors[key]

    def invalidate(self, key: Hashable) -> bool:
        """Drop the result (and kept error) for ``key``; ``True`` if one could still serve."""
        with self.lock:
            entry = self.data.pop(key, None)
            if entry is _TOMBSTONE:
                self.marks -= 1
            elif entry is not None:
                self.order.pop(key, None)
            self.errors.pop(key, None)
        if entry is None:
            return False
        mono, wall = self.now()
        return self._age(entry, mono, wall) < entry[TTL] + self.stale

    def clear(self) -> None:
        with self.lock:
            self.data.clear()
            self.order.clear()
            self.errors.clear()
            self.marks = 0

    def _purge(self) -> None:
        """Drop every entry past all its windows."""
        mono, wall = self.now()
        with self.lock:
            self._drop_expired(mono, wall)

    def currsize(self) -> int:
        """Results kept now: entries past every window are dropped first."""
        self._purge()
        return len(self.data) - self.marks

    def maxsize_info(self) -> int | None:
        return self.maxsize


class LocalCopies(TTLStore):
    """Copies of a backend's values kept in the process (R8), each no longer than
    ``local_ttl`` nor than the value it copies stays fresh.

    A backend's binding tells that freshness with each value (``call_fresh``); the
    decorator's execution notes it here (:meth:`note`) before it returns, and the save
    that follows reads it back. A value that is stale, or that the backend keeps for
    no time, gets no copy. A value written through ``f.cache`` (no note) lives
    ``local_ttl``.
    """

    __slots__ = ("local_ttl", "notes")

    def __init__(self, local_ttl: float, maxsize: int | None, *, name: str = "") -> None:
        super().__init__(local_ttl, maxsize, name=name)
        self.local_ttl = local_ttl
        self.varies = True
        # key -> (value, seconds fresh): set by an execution, taken by its save.
        self.notes: dict[Hashable, tuple[Any, float]] = {}

    def note(self, key: Hashable, value: Any, fresh_for: float) -> None:
        """``value``, about to be stored for ``key``, stays fresh ``fresh_for`` seconds."""
        self.notes[key] = (value, fresh_for)

    def _lifetime_of(self, key: Hashable, value: Any) -> float:
        noted = self.notes.pop(key, None)
        local_ttl = self.local_ttl
        if noted is None:
            return local_ttl
        # Another event loop's execution of the same key may have noted in between:
        # its note is not about this value, so this one gets no copy.
        return min(local_ttl, noted[1]) if noted[0] is value else 0.0

    def unmark(self, key: Hashable) -> None:
        self.notes.pop(key, None)  # the execution stored nothing: nor is its note read
        super().unmark(key)


def xfetch_gap(delta: float, beta: float) -> float:
    """XFetch's draw (F2): refresh when fewer seconds than this are left of a result's
    ttl. ``delta`` is how long computing it took, ``beta`` the ``early=`` factor. The
    built-in store and a backend's fleet-wide freshness (R10) both decide with it."""
    return -delta * beta * math.log(1.0 - random.random())


class TTLView(MutableMapping[Hashable, Any]):
    """``.cache`` of a function with ``ttl=``: its live results, as a mapping.

    Reading shows only results that have not expired; writing stores a result as the
    function would (its ``ttl`` counts from now); deleting drops one.
    """

    __slots__ = ("_store",)

    def __init__(self, store: TTLStore) -> None:
        self._store = store

    # Keys are held as the function holds them (_keys.hashed): a key written here must
    # be found by the function's calls, whatever the key's own __eq__ says of a wrapper;
    # iterating gives back the keys as the user's code made them.
    def __getitem__(self, key: Hashable) -> Any:
        value = self._store.lookup(hashed(key))
        if value is MISSING or isinstance(value, CachedError):
            raise KeyError(key)
        return value

    def __setitem__(self, key: Hashable, value: Any) -> None:
        self._store.save(hashed(key), value)

    def __delitem__(self, key: Hashable) -> None:
        if not self._store.invalidate(hashed(key)):
            raise KeyError(key)

    def _live(self) -> list[Hashable]:
        store = self._store
        mono, wall = store.now()
        return [
            unhashed(key)
            for key, entry in list(store.data.items())
            if store._age(entry, mono, wall) < entry[TTL]
        ]

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._live())

    def __len__(self) -> int:
        return len(self._live())

    def __repr__(self) -> str:
        return f"<TTLView of {len(self)} live results, ttl={self._store.ttl}>"


class _Guard:
    """The one lock of one user mapping, shared by every function given it (S17).

    Reentrant (S19): a key's ``__hash__``/``__eq__`` or a cache's own callback
    (cachetools' ``getsizeof``, ``timer``, ...) runs while the guard is held, and may
    call a function that uses the same mapping; a plain lock would deadlock there, as
    ``functools.lru_cache`` and cachetools' decorators know.
    """

    __slots__ = ("__weakref__", "lock")

    def __init__(self) -> None:
        self.lock = threading.RLock()
        at_fork(self)

    def _after_fork(self) -> None:
        self.lock = threading.RLock()


# id(mapping) -> guard. Each MappingStore keeps its mapping and its guard alive, so an
# id is only reused after every store of the old mapping, and so its guard, is gone.
_guards: weakref.WeakValueDictionary[int, _Guard] = weakref.WeakValueDictionary()


class _GuardRegistry:
    """The lock of ``_guards``, replaced in a forked child (S14): a thread of the
    parent may have held it at the fork, and would never release it there."""

    __slots__ = ("__weakref__", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        at_fork(self)

    def _after_fork(self) -> None:
        self.lock = threading.Lock()


_guard_registry = _GuardRegistry()


def guard_for(mapping: object) -> _Guard:
    with _guard_registry.lock:
        guard = _guards.get(id(mapping))
        if guard is None:
            guard = _guards[id(mapping)] = _Guard()
        return guard


class MappingStore:
    """A mapping the user passed with ``cache=``, touched only under its guard.

    The mapping decides when results expire, so the freshness windows (which are
    measured from a ``ttl``) do not apply here; ``cache_if`` does.
    """

    __slots__ = ("cache_if", "guard", "mapping", "name")

    early = 0.0
    stale = 0.0
    can_refresh = False

    def __init__(
        self,
        mapping: MutableMapping[Any, Any],
        *,
        name: str = "",
        cache_if: Callable[[Any], object] | None = None,
    ) -> None:
        self.mapping = mapping
        self.guard = guard_for(mapping)
        self.name = name
        self.cache_if = cache_if

    def stale_value(self, key: Hashable) -> Any:
        return MISSING

    def rescue(self, key: Hashable) -> Any:
        return MISSING

    def save_error(self, key: Hashable, error: BaseException) -> None:
        pass

    def scrub(self, key: Hashable) -> None:
        pass

    def mark(self, key: Hashable) -> None:
        pass

    def mark_all(self, keys: Iterable[Hashable]) -> None:
        pass

    def unmark(self, key: Hashable) -> None:
        pass

    def lookup(self, key: Hashable) -> Any:
        lock = self.guard.lock
        lock.acquire()
        try:
            return self.mapping[key]
        except KeyError:
            return MISSING
        finally:
            lock.release()

    def save(self, key: Hashable, value: Any, started: float = 0.0, flight: Any = None) -> None:
        if self.cache_if is not None and not self.cache_if(value):
            return
        with self.guard.lock:
            if flight is not None and flight.discard:
                return  # invalidated or cleared meanwhile (F6)
            try:
                self.mapping[key] = value
            except ValueError:
                # cachetools refuses a value larger than the cache's maxsize: the
                # result is still returned, it is just not kept (as cachetools.cached).
                pass

    def invalidate(self, key: Hashable) -> bool:
        with self.guard.lock:
            try:
                del self.mapping[key]
            except KeyError:
                return False
            return True

    def clear(self) -> None:
        with self.guard.lock:
            self.mapping.clear()

    def currsize(self) -> int:
        with self.guard.lock:
            size = getattr(self.mapping, "currsize", None)
            return int(size) if isinstance(size, int) else len(self.mapping)

    def maxsize_info(self) -> int | None:
        size = getattr(self.mapping, "maxsize", None)
        return size if isinstance(size, int) else None


Store = TTLStore | MappingStore
