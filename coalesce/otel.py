"""OpenTelemetry metrics for every decorated function and middleware (SPEC section 10).

::

    from coalesce.otel import instrument, uninstrument

    instrument()                 # publish through the global MeterProvider
    instrument(meter_provider)   # or through this one

Installed with the ``otel`` extra (``opentelemetry-api``); add ``opentelemetry-sdk`` and
an exporter to see the numbers. ``import coalesce`` never imports OpenTelemetry: only
importing this module does (O3).

The counters and gauges are observable instruments: their callbacks read the library's
own counters (the ones ``cache_info()`` reads) when a reader collects, so instrumenting
adds nothing to a call, and a hit costs what it cost before (P11). Only the histogram
``coalesce.execution.duration`` is recorded as it happens, once per ended execution,
and only while instrumented.

Every data point carries ``coalesce.function``: the decorated function's qualified name
(or its ``name=``), or ``asgi:<app>``/``wsgi:<app>`` for a middleware; never a key's
value. Functions decorated before or after :func:`instrument` are covered alike; a
function that is garbage-collected leaves the observable instruments at the next
collection (O2). Sources with the same name are added together.

The counters count from when the function was decorated, and ``cache_clear()`` does not
reset them (an OpenTelemetry counter never goes down); ``cache_info()`` counts from the
last ``cache_clear()``.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from typing import Final

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation

from . import __version__, _observe
from ._flight import Stats, Totals

__all__ = ("FUNCTION", "OUTCOME", "RESULT", "instrument", "uninstrument")

FUNCTION: Final = "coalesce.function"
"""The attribute every data point carries: the function's (or middleware's) name."""
RESULT: Final = "coalesce.result"
"""``coalesce.calls``'s attribute: ``hit``, ``stale``, ``joined`` or ``executed``."""
OUTCOME: Final = "coalesce.outcome"
"""``coalesce.executions``'s attribute: ``ok``, ``error`` or ``cancelled``."""

# Seconds: from a fast cache fill to a slow report (the defaults are for milliseconds).
_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
    7.5, 10.0, 30.0, 60.0,
)  # fmt: skip

_RESULTS: Final = (("hit", 0), ("stale", 1), ("joined", 2), ("executed", 3))
_OUTCOMES: Final = (("ok", 4), ("error", 5), ("cancelled", 6))
_REFRESHES: Final = 7
_TAKEOVERS: Final = 8
_IN_FLIGHT: Final = 9
# The counters that read one column of the totals: name, column, unit, description.
_COLUMN_COUNTERS: Final = (
    (
        "coalesce.refreshes",
        _REFRESHES,
        "{refresh}",
        "Background refreshes started (stale=, early=).",
    ),
    (
        "coalesce.lease.takeovers",
        _TAKEOVERS,
        "{takeover}",
        "Leases taken over from a leader in another process that died or gave up (Redis backend).",
    ),
)


def _by_function() -> dict[str, list[int]]:
    """Every live source's totals, added up per ``coalesce.function`` name."""
    sums: dict[str, list[int]] = {}
    for source in _observe.sources():
        totals: Totals = source.stats.totals()
        row = sums.get(source.name)
        if row is None:
            sums[source.name] = list(totals)
        else:
            for i, value in enumerate(totals):
                row[i] += value
    return sums


class _Instruments:
    """The instruments of one meter provider; they report only while ``active``."""

    __slots__ = ("active", "duration")

    def __init__(self, meter: Meter) -> None:
        self.active = False
        meter.create_observable_counter(
            "coalesce.calls",
            [self._calls],
            unit="{call}",
            description="Calls of a coalesced function, each exactly one of: answered from "
            "the cache (hit), answered with a stale result (stale), joined an execution "
            "in flight (joined), started an execution (executed).",
        )
        meter.create_observable_counter(
            "coalesce.executions",
            [self._executions],
            unit="{execution}",
            description="Executions that ended, by outcome: ok, error, cancelled.",
        )
        for name, column, unit, description in _COLUMN_COUNTERS:
            meter.create_observable_counter(
                name, [self._column(column)], unit=unit, description=description
            )
        meter.create_observable_gauge(
            "coalesce.in_flight",
            [self._column(_IN_FLIGHT)],
            unit="{execution}",
            description="Executions running now.",
        )
        meter.create_observable_gauge(
            "coalesce.cache.size",
            [self._sizes],
            unit="{result}",
            description="Results kept in the cache now (0 without one).",
        )
        self.duration = meter.create_histogram(
            "coalesce.execution.duration",
            unit="s",
            description="How long each execution took, from its start to its outcome.",
            explicit_bucket_boundaries_advisory=_BUCKETS,
        )

    def record(self, stats: Stats, seconds: float) -> None:
        """The duration of one ended execution (``_observe.timer`` while instrumented).

        Not for a function whose runs are timed where they run (``stats.runs``: through a
        backend, where a flight may be a hit in Redis or a wait on another process).
        """
        label = stats.label
        if label is not None and self.active and not stats.runs:
            self.duration.record(seconds, {FUNCTION: label})

    def record_run(self, stats: Stats, seconds: float) -> None:
        """The duration of one run through a backend (``_observe.run_timer``)."""
        label = stats.label
        if label is not None and self.active:
            self.duration.record(seconds, {FUNCTION: label})

    def _calls(self, options: CallbackOptions) -> Iterable[Observation]:
        if not self.active:
            return []
        return [
            Observation(row[i], {FUNCTION: name, RESULT: result})
            for name, row in _by_function().items()
            for result, i in _RESULTS
        ]

    def _executions(self, options: CallbackOptions) -> Iterable[Observation]:
        if not self.active:
            return []
        return [
            Observation(row[i], {FUNCTION: name, OUTCOME: outcome})
            for name, row in _by_function().items()
            for outcome, i in _OUTCOMES
        ]

    def _column(self, i: int) -> metrics.CallbackT:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            if not self.active:
                return []
            return [Observation(row[i], {FUNCTION: name}) for name, row in _by_function().items()]

        return observe

    def _sizes(self, options: CallbackOptions) -> Iterable[Observation]:
        if not self.active:
            return []
        sizes: dict[str, int] = {}
        for source in _observe.sources():
            sizes[source.name] = sizes.get(source.name, 0) + source.size()
        return [Observation(size, {FUNCTION: name}) for name, size in sizes.items()]


# One set of instruments per meter provider, made the first time it is instrumented
# (an instrument cannot be taken back from a provider, so a later instrument() call
# turns the same ones on again rather than making duplicates).
_made: Final[weakref.WeakKeyDictionary[MeterProvider, _Instruments]] = weakref.WeakKeyDictionary()
_lock: Final = threading.Lock()
_current: list[_Instruments] = []  # the active set, if any


def instrument(meter_provider: MeterProvider | None = None) -> None:
    """Publish every decorated function's and middleware's metrics (SPEC O1).

    :param meter_provider: where to publish; ``None`` (the default) uses the global one
        (``opentelemetry.metrics.get_meter_provider()``). Calling it again with another
        provider moves the metrics there; with the same one, it does nothing more.
    """
    provider = metrics.get_meter_provider() if meter_provider is None else meter_provider
    if not isinstance(provider, MeterProvider):
        raise TypeError(
            "instrument() takes an opentelemetry.metrics.MeterProvider (for example "
            "opentelemetry.sdk.metrics.MeterProvider(metric_readers=[...])), or None for "
            f"the global one; not {type(provider).__name__}"
        )
    with _lock:
        instruments = _made.get(provider)
        if instruments is None:
            meter = provider.get_meter("coalesce", __version__)
            instruments = _made[provider] = _Instruments(meter)
        for old in _current:
            old.active = False
        _current[:] = [instruments]
        instruments.active = True
        _observe.timer = instruments.record
        _observe.run_timer = instruments.record_run


def uninstrument() -> None:
    """Stop publishing (SPEC O2): the instruments report nothing from the next collection.

    Executions stop recording durations at once. Calling it when not instrumented does
    nothing.
    """
    with _lock:
        _observe.timer = None
        _observe.run_timer = None
        for old in _current:
            old.active = False
        _current.clear()
