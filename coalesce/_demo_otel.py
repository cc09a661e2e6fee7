"""``python -m coalesce demo --otel``: the stampede, then what the OpenTelemetry
instruments of ``coalesce.otel`` say about it (SPEC section 10).

Imported only with ``--otel``: it needs ``opentelemetry-sdk`` beside the ``otel`` extra.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ("OtelDemo", "check_sdk")

INSTALL = 'pip install "python-coalesce[otel]" opentelemetry-sdk'


def check_sdk() -> None:
    """Exit with one line saying what to install when the SDK is missing."""
    try:
        import opentelemetry.sdk.metrics  # noqa: F401
    except ImportError:
        print(
            f"demo --otel needs the OpenTelemetry SDK, which is not installed: {INSTALL}",
            file=sys.stderr,
        )
        raise SystemExit(1) from None


class OtelDemo:
    """Instruments the demo's functions and prints the instruments after it."""

    def __init__(self) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        from .otel import instrument

        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])
        self.functions: list[Any] = []  # kept alive until read: collected ones leave
        instrument(self.provider)

    def keep(self, fn: Any) -> None:
        self.functions.append(fn)

    def table(self) -> str:
        """The instruments, one row per demo function."""
        from opentelemetry.sdk.metrics.export import HistogramDataPoint, NumberDataPoint

        from .otel import uninstrument

        rows: dict[str, dict[str, str]] = {}
        data = self.reader.get_metrics_data()
        names = {fn.__qualname__ for fn in self.functions}
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        attrs = dict(point.attributes or {})
                        name = str(attrs.pop("coalesce.function", ""))
                        if name not in names:
                            continue
                        row = rows.setdefault(name, {})
                        if isinstance(point, HistogramDataPoint):
                            mean = point.sum / point.count if point.count else 0.0
                            row["duration"] = f"{point.count} x {mean * 1000:.0f} ms"
                        elif isinstance(point, NumberDataPoint):
                            column = next(iter(attrs.values()), metric.name.split(".")[-1])
                            row[str(column)] = str(point.value)
        uninstrument()
        self.provider.shutdown()
        head = (
            "coalesce.function",
            "hit",
            "stale",
            "joined",
            "executed",
            "ok",
            "error",
            "cancelled",
            "in_flight",
            "size",
            "duration",
        )
        body = [
            (name, *(row.get(column, "0") for column in head[1:]))
            for name, row in sorted(rows.items())
        ]
        widths = [max(len(line[i]) for line in (head, *body)) for i in range(len(head))]

        def fmt(line: tuple[str, ...]) -> str:
            cells = [line[0].ljust(widths[0])]
            cells += [c.rjust(w) for c, w in zip(line[1:], widths[1:], strict=True)]
            return "| " + " | ".join(cells) + " |"

        rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
        return "\n".join(
            [
                "OpenTelemetry, as coalesce.otel.instrument() publishes it (read in memory):",
                "coalesce.calls by coalesce.result (hit, stale, joined, executed), "
                "coalesce.executions by coalesce.outcome (ok, error, cancelled), the gauges "
                "coalesce.in_flight and coalesce.cache.size, and the histogram "
                "coalesce.execution.duration (count x mean).",
                "",
                fmt(head),
                rule,
                *(fmt(line) for line in body),
            ]
        )
