"""Cache-Control (H8) and stale-while-revalidate (H7) on both middlewares, through real
servers (uvicorn, waitress) and httpx, with freezegun for time; and the options that
cannot work with a backend, refused (S20)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs

import freezegun
import httpx
import pytest

from coalesce.asgi import CoalesceMiddleware as ASGIMiddleware
from coalesce.wsgi import CoalesceMiddleware as WSGIMiddleware
from tests._http_support import Probe, count_asgi, count_wsgi, serve_asgi, serve_wsgi

KINDS = ["asgi", "wsgi"]


def _answer(probe: Probe, path: str, query: str) -> tuple[list[tuple[str, str]], bytes]:
    """Count the call; the response's Cache-Control comes from the query's ``cc``."""
    call = probe.bump("calls")
    headers = [("content-type", "application/json")]
    control = parse_qs(query).get("cc")
    if control:
        headers.append(("cache-control", control[0]))
    age = parse_qs(query).get("age")
    if age:
        headers.append(("age", age[0]))
    return headers, json.dumps({"call": call, "path": path}).encode()


@contextlib.contextmanager
def serving(kind: str, probe: Probe, hold: int = 0, **options: Any) -> Iterator[tuple[str, Any]]:
    """Serve the counting app behind the ``kind`` middleware; yield its URL and itself.

    With ``hold``, call number ``hold`` and later ones wait for the test's ``release``.
    """

    def held(p: Probe) -> bool:
        return not hold or p["calls"] < hold or p["release"] >= 1

    if kind == "asgi":

        async def app(scope: Any, receive: Any, send: Any) -> None:
            headers, body = _answer(probe, scope["path"], scope["query_string"].decode())
            await probe.until(held, "the test's release")
            raw = [(n.encode(), v.encode()) for n, v in headers]
            await send({"type": "http.response.start", "status": 200, "headers": raw})
            await send({"type": "http.response.body", "body": body})

        amw = ASGIMiddleware(app, **options)
        with serve_asgi(count_asgi(amw, probe)) as url:
            yield url, amw
        middleware: Any = amw
    else:

        def wsgi(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            headers, body = _answer(probe, environ["PATH_INFO"], environ["QUERY_STRING"])
            probe.wait(held, "the test's release")
            start_response("200 OK", headers)
            return [body]

        wmw = WSGIMiddleware(wsgi, **options)
        with serve_wsgi(count_wsgi(wmw, probe)) as url:
            yield url, wmw
        middleware = wmw
    probe.settle(lambda: middleware.cache_info().in_flight == 0, "nothing in flight")


@pytest.fixture
def real_loop_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep uvicorn's event loop on real time while freezegun moves the middleware's."""
    real_monotonic = time.monotonic
    loop = asyncio.new_event_loop()
    loop_class = type(loop)
    loop.close()
    monkeypatch.setattr(loop_class, "time", lambda self: real_monotonic())


def calls(url: str, n: int = 2, **headers: str) -> list[int]:
    return [httpx.get(url, headers=headers).json()["call"] for _ in range(n)]


# --------------------------------------------------------------------------- H8


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "control", ["no-store", "private", "no-cache", "max-age=0", "s-maxage=0", "max-age=abc"]
)
def test_h8_response_directives_keep_it_out_of_the_micro_cache(kind: str, control: str) -> None:
    """H8: a response with no-store, private, no-cache or a zero (or invalid) lifetime
    is not kept; each request runs the app."""
    probe = Probe()
    with serving(kind, probe, ttl=60) as (url, _):
        assert calls(f"{url}/r?cc={control}") == [1, 2]


@pytest.mark.parametrize("kind", KINDS)
def test_h8_max_age_caps_the_lifetime(kind: str, real_loop_clock: None) -> None:
    """H8: max-age=5 keeps the response 5 seconds, under ttl=60."""
    probe = Probe()
    with serving(kind, probe, ttl=60) as (url, _), freezegun.freeze_time() as frozen:
        assert calls(f"{url}/r?cc=max-age%3D5") == [1, 1]
        frozen.tick(4)
        assert calls(f"{url}/r?cc=max-age%3D5", 1) == [1]
        frozen.tick(2)
        assert calls(f"{url}/r?cc=max-age%3D5") == [2, 2]


@pytest.mark.parametrize("kind", KINDS)
def test_h8_s_maxage_wins_over_max_age_and_never_past_ttl(kind: str, real_loop_clock: None) -> None:
    """H8: s-maxage (for a shared cache) wins over max-age; neither keeps it past ttl."""
    probe = Probe()
    path = "/r?cc=max-age%3D1%2C%20s-maxage%3D100"
    with serving(kind, probe, ttl=10) as (url, _), freezegun.freeze_time() as frozen:
        assert calls(url + path) == [1, 1]
        frozen.tick(9)  # past max-age, within s-maxage and ttl
        assert calls(url + path, 1) == [1]
        frozen.tick(2)  # past ttl, within s-maxage
        assert calls(url + path, 1) == [2]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "request_headers",
    [{"cache-control": "no-cache"}, {"cache-control": "max-age=0"}, {"pragma": "no-cache"}],
    ids=["no-cache", "max-age=0", "pragma"],
)
def test_h8_request_no_cache_skips_the_micro_cache(
    kind: str, request_headers: dict[str, str]
) -> None:
    """H8: a request's Cache-Control: no-cache (or max-age=0, or Pragma: no-cache without
    Cache-Control) is not answered from the micro-cache; others still are."""
    probe = Probe()
    with serving(kind, probe, ttl=60) as (url, _):
        assert calls(url) == [1, 1]
        assert calls(url, **request_headers) == [2, 3]
        assert calls(url, 1) == [1]


@pytest.mark.parametrize("kind", KINDS)
def test_h8_request_no_cache_still_coalesces(kind: str) -> None:
    """H8: concurrent no-cache requests share one downstream call."""
    probe = Probe()
    with serving(kind, probe, ttl=60) as (url, middleware):

        async def main() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                probe.bump("hold")
                tasks = [
                    asyncio.create_task(client.get("/slow", headers={"cache-control": "no-cache"}))
                    for _ in range(5)
                ]
                return await asyncio.gather(*tasks)

        # The app answers at once, so coalescing is shown by joins counted while it runs:
        # requests that arrive after it finished run it again, which is allowed.
        responses = asyncio.run(main())
    assert all(r.status_code == 200 for r in responses)
    info = middleware.cache_info()
    assert info.hits == 0
    assert probe["calls"] == 5 - info.coalesced


@pytest.mark.parametrize("kind", KINDS)
def test_h8_age_header_on_responses_from_the_micro_cache(kind: str, real_loop_clock: None) -> None:
    """H8: a response served from the micro-cache carries its Age (plus the Age the app
    sent); the one made for a request carries none of its own."""
    probe = Probe()
    with serving(kind, probe, ttl=60) as (url, _), freezegun.freeze_time() as frozen:
        first = httpx.get(url + "/a")
        frozen.tick(7)
        second = httpx.get(url + "/a")
        upstream = httpx.get(url + "/b?age=3")
        frozen.tick(2)
        again = httpx.get(url + "/b?age=3")
    assert "age" not in first.headers
    assert second.headers["age"] == "7"
    assert upstream.headers["age"] == "3"
    assert again.headers.get_list("age") == ["5"]


# --------------------------------------------------------------------------- H7


@pytest.mark.parametrize("kind", KINDS)
def test_h7_stale_response_is_served_while_one_background_call_refreshes(
    kind: str, real_loop_clock: None
) -> None:
    """H7: past its ttl, within stale=, the kept response is served at once and one
    background downstream call refreshes it; later requests get the new one."""
    probe = Probe()
    with (
        serving(kind, probe, hold=2, ttl=10, stale=30) as (url, middleware),
        freezegun.freeze_time() as frozen,
    ):
        assert calls(url, 1) == [1]
        frozen.tick(11)
        # Stale: served at once, while the one background call waits for the release.
        assert calls(url, 5) == [1, 1, 1, 1, 1]
        probe.wait(lambda p: p["calls"] >= 2, "the background refresh")
        assert probe["calls"] == 2
        probe.bump("release")
        probe.settle(lambda: middleware.cache_info().in_flight == 0, "the refresh to land")
        assert calls(url, 2) == [2, 2]
        frozen.tick(41)  # past ttl + stale: a request waits for a fresh call
        assert calls(url, 1) == [3]
    assert probe["calls"] == 3


@pytest.mark.parametrize("kind", KINDS)
def test_h7_stale_needs_ttl(kind: str) -> None:
    """H7/S20: stale= without ttl= is refused, saying what to add."""
    middleware = ASGIMiddleware if kind == "asgi" else WSGIMiddleware
    with pytest.raises(TypeError, match="pass ttl= too"):
        middleware(_app(kind), stale=5)
    with pytest.raises(ValueError, match="stale"):
        middleware(_app(kind), ttl=1, stale=-1)


def _app(kind: str) -> Any:
    if kind == "asgi":

        async def app(scope: Any, receive: Any, send: Any) -> None:
            raise AssertionError("never called")

        return app

    def wsgi(environ: Any, start_response: Any) -> Any:
        raise AssertionError("never called")

    return wsgi


# --------------------------------------------------------------------------- S20


@pytest.mark.parametrize("kind", KINDS)
def test_h6_options_a_backend_cannot_honour_are_refused(kind: str) -> None:
    """H6/S20: with backend=, maxsize= (the in-process micro-cache's bound), a backend
    with local_ttl=, the other protocol's client kind, or a backend without fleet
    freshness are refused with the fix."""
    redis = pytest.importorskip("redis")
    from coalesce.redis import RedisBackend

    middleware = ASGIMiddleware if kind == "asgi" else WSGIMiddleware
    right = redis.asyncio.Redis if kind == "asgi" else redis.Redis
    wrong = redis.Redis if kind == "asgi" else redis.asyncio.Redis
    backend = RedisBackend(right(unix_socket_path="/nonexistent"))
    built = middleware(_app(kind), backend=backend, ttl=5, stale=5)
    assert "backend=RedisBackend(" in repr(built)
    with pytest.raises(TypeError, match="leave maxsize= out"):
        middleware(_app(kind), backend=backend, ttl=5, maxsize=10)
    local = RedisBackend(right(unix_socket_path="/nonexistent"), local_ttl=1.0)
    with pytest.raises(TypeError, match="without local_ttl="):
        middleware(_app(kind), backend=local)
    other = RedisBackend(wrong(unix_socket_path="/nonexistent"))
    client = "redis.asyncio.Redis" if kind == "asgi" else "redis.Redis"
    with pytest.raises(TypeError, match=f"made with a {client} client"):
        middleware(_app(kind), backend=other)

    class Plain:
        local_ttl = None

        def bind(self, func: Any, *, name: str, ttl: float, is_async: bool) -> Any:
            raise AssertionError("never bound")

    with pytest.raises(TypeError, match="takes fleet="):
        middleware(_app(kind), backend=Plain())
    with pytest.raises(TypeError, match="coalesce backend"):
        middleware(_app(kind), backend=object())
