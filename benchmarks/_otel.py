"""P11: hits with ``coalesce.otel.instrument()`` on, beside the same hits with it off.

The hit benchmarks (``_hits.py``) add a row ``coalesce (instrumented)``: a function
decorated like the ``coalesce`` row, measured with ``instrument()`` on for each of its
samples and off again after it, so every other row is measured uninstrumented in the
same run. The provider is the SDK's with an in-memory reader; after the scenario the
reader collects once, to show the instruments saw the hits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from benchmarks._method import Measure, Table

ROW = "coalesce (instrumented)"
"""The row of the hit tables measured with ``instrument()`` on."""


class Instrumented:
    """An SDK meter provider read in memory, turned on around each sample of one row."""

    def __init__(self) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])

    def around(self, measure: Measure) -> Measure:
        """``measure`` with ``instrument()`` on while it runs."""
        from coalesce.otel import instrument, uninstrument

        def run() -> float:
            instrument(self.provider)
            try:
                return measure()
            finally:
                uninstrument()

        return run

    def hits_seen(self, fn: Any) -> int:
        """The hits the instruments report for ``fn`` (collected once, instrumented)."""
        from coalesce.otel import instrument, uninstrument

        instrument(self.provider)
        try:
            data = self.reader.get_metrics_data()
        finally:
            uninstrument()
            self.provider.shutdown()
        name = fn.__qualname__
        return sum(
            point.value
            for resource in (data.resource_metrics if data is not None else ())
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == "coalesce.calls"
            for point in metric.data.data_points
            if dict(point.attributes or {}) == {"coalesce.function": name, "coalesce.result": "hit"}
        )


def add_row(
    table: Table, functions: dict[str, Callable[..., Any]], make: Callable[[], Any], fn: Any
) -> Instrumented | None:
    """Add the instrumented row to ``functions`` (``make()(fn)``); ``None`` without the SDK."""
    try:
        instrumented = Instrumented()
    except ImportError as exc:
        table.notes.append(f"{ROW}: skipped, not installed ({exc.name}).")
        return None
    functions[ROW] = make()(fn)
    return instrumented


def wrap(measures: dict[str, Measure], instrumented: Instrumented | None) -> dict[str, Measure]:
    """The measures, the instrumented row's turned on around each of its samples."""
    if instrumented is not None and ROW in measures:
        measures[ROW] = instrumented.around(measures[ROW])
    return measures


def note(table: Table, functions: dict[str, Callable[..., Any]], inst: Instrumented | None) -> None:
    """Say how the row was measured, and what the instruments saw."""
    if inst is None or ROW not in functions:
        return
    seen = inst.hits_seen(functions[ROW])
    table.notes.append(
        f"`{ROW}` is the `coalesce` row with `coalesce.otel.instrument()` on (an SDK "
        f"MeterProvider read in memory) for each of its samples and off for every other "
        f"row (P11); its instruments counted {seen:,} hits."
    )
