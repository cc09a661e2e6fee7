"""Memory per cached entry, as tracemalloc sees it, against ``cachetools.TTLCache``.

The keys and the value are made before tracing starts, so what is counted is what the
cache itself allocates per entry: its key object, links, timestamps, dictionary slots.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable
from typing import Any

from benchmarks import _peers
from benchmarks._method import Budget, Table

ENTRIES = 10_000
_VALUE = object()


def _value(x: Any) -> Any:
    return _VALUE


def _bytes_per_entry(decorate: _peers.Decorator, entries: int) -> float:
    keys = list(range(1_000_000, 1_000_000 + entries))
    f: Callable[[int], Any] = decorate(_value)
    f(keys[0])  # first call: the decorator's lazily built parts are not per entry
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for key in keys[1:]:
            f(key)
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return (after - before) / (entries - 1)


def memory(budget: Budget) -> Table:
    """Bytes per cached entry for ``f(i)`` with ``ttl``, maxsize large enough for all."""
    entries = 2_000 if budget.quick else ENTRIES
    table = Table(
        key="memory",
        title=f"Memory per cached entry ({entries:,} entries, tracemalloc)",
        unit="bytes/entry",
        baseline="cachetools",
    )
    contenders: dict[str, Callable[[], _peers.Decorator]] = {
        "coalesce": lambda: _coalesce(entries),
        "cachetools": lambda: _cachetools(entries),
        "lru_cache": lambda: _lru(entries),
    }
    for name, make in contenders.items():
        try:
            table.samples[name] = [_bytes_per_entry(make(), entries)]
        except ImportError as exc:
            table.notes.append(f"{name}: skipped, not installed ({exc.name}).")
        except Exception as exc:
            table.errors[name] = f"{type(exc).__name__}: {exc}"
    table.notes.append(
        "cachebox keeps entries in Rust memory that tracemalloc does not see, so it is left out."
    )
    return table


def _coalesce(entries: int) -> _peers.Decorator:
    from coalesce import singleflight

    return singleflight(ttl=_peers.TTL, maxsize=entries * 2)


def _cachetools(entries: int) -> _peers.Decorator:
    import cachetools

    return cachetools.cached(cachetools.TTLCache(maxsize=entries * 2, ttl=_peers.TTL))


def _lru(entries: int) -> _peers.Decorator:
    import functools

    return functools.lru_cache(maxsize=entries * 2)
