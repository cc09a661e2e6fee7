"""The frame both middlewares share (SPEC section 5): signatures, counters, pass-through.

Each test runs once for ASGI (uvicorn) and once for WSGI (waitress), against real
servers and real httpx clients, and reads only the public API: the constructors'
signatures and ``cache_info()``. Concurrent requests are held in the downstream app
until the others have arrived (ASGI: ``Probe``'s ``arrived`` count, taken just before
the middleware joins them) or joined (WSGI: ``cache_info().coalesced``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import re
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

import httpx
import pytest
from _http_support import (
    Probe,
    Receive,
    Scope,
    Send,
    asgi_respond,
    count_asgi,
    count_wsgi,
    no_cookies,
    serve_asgi,
    serve_wsgi,
)

from coalesce import CacheInfo
from coalesce.asgi import CoalesceMiddleware as ASGIMiddleware
from coalesce.wsgi import CoalesceMiddleware as WSGIMiddleware

pytestmark = pytest.mark.timeout(60)

N = 5
PROTOCOLS = ("asgi", "wsgi")
OPTIONS = ("methods", "vary", "private", "max_body", "ttl", "maxsize", "key", "stale", "backend")


class Site:
    """A middleware under a real server, and the probe its downstream app reports to."""

    def __init__(self, url: str, middleware: ASGIMiddleware | WSGIMiddleware, probe: Probe):
        self.url = url
        self.middleware = middleware
        self.probe = probe

    def send(self, *requests: dict[str, Any]) -> list[httpx.Response]:
        """Send every request (``httpx.AsyncClient.request`` keywords) at once."""

        async def gather() -> list[httpx.Response]:
            async with httpx.AsyncClient(
                base_url=self.url, timeout=30, cookies=no_cookies()
            ) as client:
                return await asyncio.gather(
                    *(
                        client.request(r.get("method", "GET"), r.get("url", "/"), **_rest(r))
                        for r in requests
                    )
                )

        return asyncio.run(gather())

    def info(self) -> CacheInfo:
        return self.middleware.cache_info()


def _rest(request: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in request.items() if k not in ("method", "url")}


@contextlib.contextmanager
def site(protocol: str, *, together: int = 1, fail: bool = False, **options: Any) -> Iterator[Site]:
    """Serve a middleware whose app answers ``ok`` (or raises, with ``fail``) once
    ``together`` requests are in (arrived for ASGI, the leader and its joiners for
    WSGI); check that nothing is left in flight after."""
    probe = Probe()
    middleware: Any
    if protocol == "asgi":

        async def handler(scope: Scope, receive: Receive, send: Send) -> None:
            probe.bump("calls")
            await probe.until(lambda p: p["arrived"] >= together, "the test's requests")
            if fail:
                raise RuntimeError("the downstream app failed")
            await asgi_respond(send, b"ok", headers=[(b"content-type", b"text/plain")])

        middleware = ASGIMiddleware(handler, **options)
        server = serve_asgi(count_asgi(middleware, probe))
    else:

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            probe.bump("calls")
            probe.settle(
                lambda: middleware.cache_info().coalesced >= together - 1, "the test's requests"
            )
            if fail:
                raise RuntimeError("the downstream app failed")
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok"]

        middleware = WSGIMiddleware(app, **options)
        server = serve_wsgi(count_wsgi(middleware, probe))
    with server as url:
        yield Site(url, middleware, probe)
    assert middleware.cache_info().in_flight == 0


# ------------------------------------------------------------------ signatures


@pytest.mark.parametrize(
    ("middleware", "app", "request_type"),
    [(ASGIMiddleware, "ASGIApp", "Scope"), (WSGIMiddleware, "WSGIApp", "Environ")],
)
def test_h1_signatures_name_every_option_with_the_protocols_types(
    middleware: type[Any], app: str, request_type: str
) -> None:
    """H1: each constructor shows the app and every option by keyword, typed for its protocol."""
    parameters = inspect.signature(middleware).parameters
    assert list(parameters) == ["app", *OPTIONS]
    assert parameters["app"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert parameters["app"].annotation == app
    assert all(parameters[name].kind is inspect.Parameter.KEYWORD_ONLY for name in OPTIONS)
    assert parameters["key"].annotation == f"Callable[[{request_type}], Hashable | None] | None"
    defaults = {name: parameters[name].default for name in OPTIONS}
    assert defaults == {
        "methods": ("GET", "HEAD"),
        "vary": (),
        "private": False,
        "max_body": 1_048_576,
        "ttl": None,
        "maxsize": 1024,
        "key": None,
        "stale": None,
        "backend": None,
    }


@pytest.mark.parametrize("middleware", [ASGIMiddleware, WSGIMiddleware])
def test_h1_repr_and_errors_name_the_protocols_class(middleware: type[Any]) -> None:
    """H1: repr() shows the options; a bad app or option names the protocol's own class."""
    owner = re.escape(f"{middleware.__module__}.CoalesceMiddleware()")
    protocol = middleware.__module__.rsplit(".", 1)[1].upper()

    def app(*args: Any) -> Any:
        raise AssertionError("never called")

    built = middleware(app, vary=("X-A",), ttl=2)
    assert repr(built) == (
        f"CoalesceMiddleware(app={app!r}, methods=('GET', 'HEAD'), vary=('x-a',), "
        "private=False, max_body=1048576, ttl=2.0, maxsize=1024, key=None, stale=None, "
        "backend=None)"
    )
    with pytest.raises(TypeError, match=rf"^{owner} wraps an? {protocol} app, not str$"):
        middleware("not an app")
    with pytest.raises(ValueError, match=rf"^ttl of {owner} must be"):
        middleware(app, ttl=-1)
    with pytest.raises(TypeError, match=rf"^{owner} got an unknown option 'tll'"):
        middleware(app, tll=1)


# ----------------------------------------------------------------- cache_info()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_h1_cache_info_counts_a_coalesced_burst(protocol: str) -> None:
    """H1: N concurrent identical GETs: one call; cache_info() says N misses, N-1 coalesced."""
    with site(protocol, together=N) as served:
        assert served.info() == (0, 0, 0, 0, 0, 0, None)
        responses = served.send(*({"url": "/r?day=1"} for _ in range(N)))
        info = served.info()
    assert [r.text for r in responses] == ["ok"] * N
    assert served.probe["calls"] == 1
    assert info == CacheInfo(hits=0, misses=N, coalesced=N - 1, errors=0, in_flight=0,
                             currsize=0, maxsize=None)  # fmt: skip


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_h5_cache_info_counts_micro_cache_hits_and_sizes(protocol: str) -> None:
    """H5: with ttl=, a second request is a hit; cache_info() shows it and the cache's sizes."""
    with site(protocol, ttl=60, maxsize=8) as served:
        assert served.info() == (0, 0, 0, 0, 0, 0, 8)
        (first,) = served.send({"url": "/kept"})
        (second,) = served.send({"url": "/kept"})
        info = served.info()
    assert first.text == second.text == "ok"
    assert served.probe["calls"] == 1
    assert info == CacheInfo(hits=1, misses=1, coalesced=0, errors=0, in_flight=0,
                             currsize=1, maxsize=8)  # fmt: skip


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_h4_cache_info_counts_a_failed_downstream_call(protocol: str) -> None:
    """H4: a downstream call that raises is a 500 for its clients and one error in cache_info()."""
    with site(protocol, together=N, fail=True) as served:
        responses = served.send(*({"url": "/fails"} for _ in range(N)))
        info = served.info()
    assert [r.status_code for r in responses] == [500] * N
    assert served.probe["calls"] == 1
    assert (info.misses, info.coalesced, info.errors, info.in_flight) == (N, N - 1, 1, 0)


# ------------------------------------------------------------ pass-through (H2)


async def _chunked() -> AsyncIterator[bytes]:
    yield b"a body"


# (what the request carries, a fresh request's httpx keywords, the middleware's options)
PASSING: list[tuple[str, Callable[[], dict[str, Any]], dict[str, Any]]] = [
    ("a method that does not coalesce", lambda: {"method": "POST"}, {}),
    ("a method left out of methods=", lambda: {"method": "HEAD"}, {"methods": ("GET",)}),
    ("a body", lambda: {"content": b"a body"}, {}),
    ("a chunked body", lambda: {"content": _chunked()}, {}),
    ("a cookie", lambda: {"headers": {"Cookie": "session=1"}}, {}),
    ("an authorization", lambda: {"headers": {"Authorization": "Bearer t"}}, {}),
    ("a proxy authorization", lambda: {"headers": {"Proxy-Authorization": "Basic dA=="}}, {}),
    ("a credential in capitals", lambda: {"headers": {"COOKIE": "session=1"}}, {}),
    ("key= answering None", dict, {"key": lambda request: None}),
]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(("make", "options"), [p[1:] for p in PASSING], ids=[p[0] for p in PASSING])
def test_h2_the_same_requests_pass_straight_through_both_middlewares(
    protocol: str, make: Callable[[], dict[str, Any]], options: dict[str, Any]
) -> None:
    """H1, H2: methods left out, bodies, credentials and key=None pass through, uncounted."""
    with site(protocol, ttl=60, **options) as served:
        first, second = served.send(make()), served.send(make())
        info = served.info()
    assert [r.status_code for r in (*first, *second)] == [200, 200]
    assert served.probe["calls"] == 2, "each request made its own downstream call"
    assert info == (0, 0, 0, 0, 0, 0, 1024), "nothing counted, nothing kept"


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("credential", ["Cookie", "Authorization", "Proxy-Authorization"])
def test_h2_private_coalesces_requests_with_equal_credentials(
    protocol: str, credential: str
) -> None:
    """H2: with private=True, concurrent requests with equal credentials share one call."""
    with site(protocol, together=N, private=True) as served:
        headers = {credential: "same"}
        responses = served.send(*({"url": "/me", "headers": headers} for _ in range(N)))
        info = served.info()
    assert [r.text for r in responses] == ["ok"] * N
    assert served.probe["calls"] == 1
    assert (info.misses, info.coalesced) == (N, N - 1)
