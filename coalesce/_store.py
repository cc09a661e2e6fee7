"""Where results live and when they expire (S3, S6, S13, S17).

Two stores share one small interface (``lookup``, ``save``, ``invalidate``,
``clear``, ``currsize``, ``maxsize``):

- ``TTLStore``, the built-in one: a plain ``dict`` of ``key -> (value, expires_at)``.
  Hits read it without a lock (one dictionary lookup and one clock read, S6); every
  write holds the store's lock. Entries are kept in the order they were stored and,
  since a function's ``ttl`` is one number, that is also the order they expire in: the
  store evicts from the front, expired entries first, then the oldest.
- ``MappingStore`` wraps a mapping the user passed (``cache=``). Every touch holds the
  one guard that belongs to that mapping, whichever function touches it (S17).

Expiry reads ``time.monotonic`` at call time (S13), so freezegun and time-machine
control it.
"""

from __future__ import annotations

import threading
import time as _time
import weakref
from collections import deque
from collections.abc import Hashable, Iterator, MutableMapping
from typing import Any, Final

from ._fork import at_fork

__all__ = ("MISSING", "MappingStore", "Store", "TTLStore", "TTLView")


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<missing>"


MISSING: Final[Any] = _Missing()


def _expiry(item: tuple[Hashable, tuple[Any, float]]) -> float:
    return item[1][1]


class TTLStore:
    """The built-in store: a dict of ``(value, expires_at)`` read without a lock."""

    __slots__ = ("__weakref__", "data", "lock", "maxsize", "order", "ttl")

    def __init__(self, ttl: float, maxsize: int | None) -> None:
        # A plain dict: the fastest read there is. The order entries were stored in
        # is kept beside it, as (key, entry) records; a record whose entry is no
        # longer the key's current one is stale and skipped.
        self.data: dict[Hashable, tuple[Any, float]] = {}
        self.order: deque[tuple[Hashable, tuple[Any, float]]] = deque()
        self.ttl = ttl
        self.maxsize = maxsize
        self.lock = threading.Lock()
        at_fork(self)

    def _after_fork(self) -> None:
        self.lock = threading.Lock()

    def lookup(self, key: Hashable) -> Any:
        entry = self.data.get(key)
        if entry is not None and entry[1] > _time.monotonic():
            return entry[0]
        return MISSING

    def save(self, key: Hashable, value: Any) -> None:
        now = _time.monotonic()
        entry = (value, now + self.ttl)
        data = self.data
        order = self.order
        maxsize = self.maxsize
        with self.lock:
            data[key] = entry
            order.append((key, entry))
            # The front holds what was stored first, which (one ttl for all) also
            # expires first: drop stale records, expired entries and, while over
            # maxsize, the oldest. Amortised O(1) per save.
            while order:
                old_key, old_entry = order[0]
                if data.get(old_key) is not old_entry:
                    order.popleft()
                elif old_entry[1] <= now or (maxsize is not None and len(data) > maxsize):
                    del data[old_key]
                    order.popleft()
                else:
                    break
            if len(order) > 2 * len(data) + 16:
                # Many stale records behind the front: rebuild, in expiry order.
                order.clear()
                order.extend(sorted(data.items(), key=_expiry))

    def invalidate(self, key: Hashable) -> bool:
        with self.lock:
            entry = self.data.pop(key, None)
        return entry is not None and entry[1] > _time.monotonic()

    def clear(self) -> None:
        with self.lock:
            self.data.clear()
            self.order.clear()

    def currsize(self) -> int:
        return len(self.data)

    def maxsize_info(self) -> int | None:
        return self.maxsize


class TTLView(MutableMapping[Hashable, Any]):
    """``.cache`` of a function with ``ttl=``: its live results, as a mapping.

    Reading shows only results that have not expired; writing stores a result as the
    function would (its ``ttl`` counts from now); deleting drops one.
    """

    __slots__ = ("_store",)

    def __init__(self, store: TTLStore) -> None:
        self._store = store

    def __getitem__(self, key: Hashable) -> Any:
        value = self._store.lookup(key)
        if value is MISSING:
            raise KeyError(key)
        return value

    def __setitem__(self, key: Hashable, value: Any) -> None:
        self._store.save(key, value)

    def __delitem__(self, key: Hashable) -> None:
        if not self._store.invalidate(key):
            raise KeyError(key)

    def _live(self) -> list[Hashable]:
        now = _time.monotonic()
        return [k for k, entry in list(self._store.data.items()) if entry[1] > now]

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._live())

    def __len__(self) -> int:
        return len(self._live())

    def __repr__(self) -> str:
        return f"<TTLView of {len(self)} live results, ttl={self._store.ttl}>"


class _Guard:
    """The one lock of one user mapping, shared by every function given it (S17)."""

    __slots__ = ("__weakref__", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        at_fork(self)

    def _after_fork(self) -> None:
        self.lock = threading.Lock()


# id(mapping) -> guard. Each MappingStore keeps its mapping and its guard alive, so an
# id is only reused after every store of the old mapping, and so its guard, is gone.
_guards: weakref.WeakValueDictionary[int, _Guard] = weakref.WeakValueDictionary()
_guards_lock = threading.Lock()


def guard_for(mapping: object) -> _Guard:
    with _guards_lock:
        guard = _guards.get(id(mapping))
        if guard is None:
            guard = _guards[id(mapping)] = _Guard()
        return guard


class MappingStore:
    """A mapping the user passed with ``cache=``, touched only under its guard."""

    __slots__ = ("guard", "mapping")

    def __init__(self, mapping: MutableMapping[Any, Any]) -> None:
        self.mapping = mapping
        self.guard = guard_for(mapping)

    def lookup(self, key: Hashable) -> Any:
        lock = self.guard.lock
        lock.acquire()
        try:
            return self.mapping[key]
        except KeyError:
            return MISSING
        finally:
            lock.release()

    def save(self, key: Hashable, value: Any) -> None:
        with self.guard.lock:
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
