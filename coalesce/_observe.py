"""What the library can tell about itself: the live sources of its metrics (SPEC O1, O2).

Every decorated function and every middleware registers its counters here when it is
made (a :class:`Source`: the ``coalesce.function`` name, the counters, the cache's
size). ``coalesce.otel`` reads the live sources at collection time, so nothing on a
call's path changes when it is on. The registry holds each owner weakly: a function
that is garbage-collected leaves it (and its instruments) by itself.

Nothing here imports OpenTelemetry (O3): ``coalesce.otel`` does, when it is imported.
The hooks an execution sees are :data:`timer` and :data:`run_timer`: ``None`` unless
instrumented, else called once per ended execution with its duration
(``coalesce.execution.duration``).
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from ._flight import Stats

__all__ = ("Source", "register", "run_timer", "sources", "timer")


class Source:
    """One decorated function's (or middleware's) counters, as the instruments read them."""

    __slots__ = ("name", "owner", "size", "stats")

    def __init__(
        self,
        name: str,
        stats: Stats,
        size: Callable[[], int],
        owner: weakref.ref[object],
    ) -> None:
        self.name = name  # the coalesce.function attribute
        self.stats = stats
        self.size = size  # results kept now (coalesce.cache.size)
        self.owner = owner  # the function or middleware, weakly: its callback unregisters

    def __repr__(self) -> str:
        return f"<Source {self.name!r}>"


# token -> source. Entries are added by one atomic store and removed by one atomic pop
# (from the owner's weakref callback, which may run in any thread, inside a garbage
# collection: so no lock is taken there); readers copy the values in one step.
_sources: Final[dict[int, Source]] = {}
_tokens: Final = itertools.count()


def _no_size() -> int:
    return 0


def register(owner: object, name: str, stats: Stats, size: Callable[[], int] | None) -> None:
    """Publish ``stats`` as ``name`` for as long as ``owner`` lives."""
    token = next(_tokens)

    def gone(_ref: weakref.ref[object], token: int = token) -> None:
        _sources.pop(token, None)

    stats.label = name
    _sources[token] = Source(name, stats, size or _no_size, weakref.ref(owner, gone))


def sources() -> list[Source]:
    """The sources whose owners are alive now."""
    return [source for source in list(_sources.values()) if source.owner() is not None]


# Set by coalesce.otel.instrument() (and back to None by uninstrument()): called with
# the execution's counters and its duration in seconds, once per ended execution.
timer: Callable[[Stats, float], None] | None = None

# The same, for a function bound to a backend that reports what it did (``Stats.runs``):
# called once per run of the function in this process, where it runs (a flight of such
# a function is often no execution here: a hit in Redis, a wait on another process).
run_timer: Callable[[Stats, float], None] | None = None
