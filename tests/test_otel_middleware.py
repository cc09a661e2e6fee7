"""O1: the middlewares report through the same instruments, as ``asgi:<app>``/``wsgi:<app>``.

Real servers (uvicorn, waitress) and real httpx clients on loopback; the handler holds
its response until the other requests have joined its flight.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import httpx
import pytest

pytest.importorskip(
    "opentelemetry.sdk.metrics",
    reason="the OpenTelemetry tests need the SDK: "
    "pip install 'python-coalesce[otel]' opentelemetry-sdk",
)

from _http_support import (
    WAIT,
    Probe,
    asgi_respond,
    count_asgi,
    count_wsgi,
    joined,
    no_cookies,
    serve_asgi,
    serve_wsgi,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from coalesce import asgi, wsgi
from coalesce.otel import instrument, uninstrument

N = 4


def _points(reader: InMemoryMetricReader, function: str) -> dict[str, dict[str, int]]:
    """``{metric: {result or outcome or "": value}}`` for one ``coalesce.function``."""
    found: dict[str, dict[str, int]] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data is not None else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    attrs = dict(point.attributes or {})
                    if attrs.pop("coalesce.function", None) != function:
                        continue
                    label = str(next(iter(attrs.values()), ""))
                    value = getattr(point, "value", None)
                    found.setdefault(metric.name, {})[label] = (
                        point.count if value is None else value
                    )
    return found


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    """An instrumented provider read in memory; uninstrumented afterwards."""
    metric_reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[metric_reader])
    instrument(provider)
    try:
        yield metric_reader
    finally:
        uninstrument()
        provider.shutdown()


def _expected(middleware: Any) -> dict[str, dict[str, int]]:
    """What the instruments must say after N concurrent requests and one cached one."""
    info = middleware.cache_info()
    assert (info.hits, info.misses, info.coalesced, info.currsize) == (1, N, N - 1, 1)
    return {
        "coalesce.calls": {"hit": 1, "stale": 0, "joined": N - 1, "executed": 1},
        "coalesce.executions": {"ok": 1, "error": 0, "cancelled": 0},
        "coalesce.refreshes": {"": 0},
        "coalesce.lease.takeovers": {"": 0},
        "coalesce.in_flight": {"": 0},
        "coalesce.cache.size": {"": 1},
        "coalesce.execution.duration": {"": 1},
    }


def test_o1_wsgi_middleware_reports_as_wsgi_app(reader: InMemoryMetricReader) -> None:
    """O1: a WSGI middleware's joined, executed and micro-cache hits are ``wsgi:<app>``."""
    probe = Probe()
    middleware: wsgi.CoalesceMiddleware | None = None

    def catalogue(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        assert middleware is not None
        probe.settle(lambda: joined(middleware) >= N - 1, "the other requests to join")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"items"]

    middleware = wsgi.CoalesceMiddleware(catalogue, ttl=60)
    with serve_wsgi(count_wsgi(middleware, probe)) as url:

        async def main() -> None:
            async with httpx.AsyncClient(base_url=url, timeout=WAIT, cookies=no_cookies()) as c:
                replies = await asyncio.gather(*(c.get("/items") for _ in range(N)))
                assert [r.text for r in replies] == ["items"] * N
                assert (await c.get("/items")).text == "items"  # from the micro-cache

        asyncio.run(main())
    assert _points(reader, f"wsgi:{catalogue.__qualname__}") == _expected(middleware)


def test_o1_asgi_middleware_reports_as_asgi_app(reader: InMemoryMetricReader) -> None:
    """O1: an ASGI middleware's joined, executed and micro-cache hits are ``asgi:<app>``."""
    probe = Probe()
    middleware: asgi.CoalesceMiddleware | None = None

    async def shop(scope: Any, receive: Any, send: Any) -> None:
        assert middleware is not None
        await probe.until(lambda p: p["arrived"] >= N, "every request to arrive")
        await asgi_respond(send, b"items")

    middleware = asgi.CoalesceMiddleware(shop, ttl=60)
    with serve_asgi(count_asgi(middleware, probe)) as url:

        async def main() -> None:
            async with httpx.AsyncClient(base_url=url, timeout=WAIT, cookies=no_cookies()) as c:
                replies = await asyncio.gather(*(c.get("/items") for _ in range(N)))
                assert [r.text for r in replies] == ["items"] * N
                assert (await c.get("/items")).text == "items"  # from the micro-cache

        asyncio.run(main())
    assert _points(reader, f"asgi:{shop.__qualname__}") == _expected(middleware)


def test_o2_collected_middleware_leaves_the_instruments(reader: InMemoryMetricReader) -> None:
    """O2: a middleware that is garbage-collected is no longer published."""

    def gone(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", [])
        return [b""]

    name = f"wsgi:{gone.__qualname__}"
    middleware: Any = wsgi.CoalesceMiddleware(gone)
    assert "coalesce.calls" in _points(reader, name)
    del middleware
    gc.collect()
    assert _points(reader, name) == {}


def test_o1_an_app_object_is_named_by_its_class(reader: InMemoryMetricReader) -> None:
    """O1: an app that is an object (a FastAPI or Flask app) is named by its class."""

    class Storefront:
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            await asgi_respond(send, b"")

    middleware = asgi.CoalesceMiddleware(Storefront())
    assert "coalesce.calls" in _points(reader, f"asgi:{Storefront.__qualname__}")
    del middleware
