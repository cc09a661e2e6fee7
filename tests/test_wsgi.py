"""SPEC section 5 for WSGI: ``coalesce.wsgi.CoalesceMiddleware`` under waitress and httpx.

Every test runs a real threaded waitress server in a thread and real httpx clients.
Downstream handlers hold their response until the requests the test sends have
arrived or joined the flight (``Probe``), so "concurrent" is a fact of each test.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import math
import random
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import freezegun
import httpx
import pytest
from _http_support import Probe, count_wsgi, joined, no_cookies, serve_wsgi

from coalesce.wsgi import CoalesceMiddleware

N = 5

StartResponse = Callable[..., Callable[[bytes], object]]
App = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class Served:
    """A middleware under test and the probe its handler reports to."""

    def __init__(self, probe: Probe) -> None:
        self.probe = probe
        self.middleware: CoalesceMiddleware | None = None

    def joined(self) -> int:
        assert self.middleware is not None
        return joined(self.middleware)

    def until_joined(self, n: int) -> None:
        """Block (in the leader's thread) until ``n`` requests have joined its flight."""
        self.probe.settle(lambda: self.joined() >= n, f"{n} requests to join")


@contextlib.contextmanager
def serving(app: App, served: Served, threads: int = 16, **options: Any) -> Iterator[str]:
    """Serve ``CoalesceMiddleware(app, **options)``; check nothing is left in flight."""
    middleware = served.middleware = CoalesceMiddleware(app, **options)
    with serve_wsgi(count_wsgi(middleware, served.probe), threads=threads) as url:
        yield url
    assert middleware.cache_info().in_flight == 0


async def gather_gets(url: str, requests: list[dict[str, Any]]) -> list[httpx.Response]:
    """Send every request (``httpx.AsyncClient.request`` keywords) at once."""
    async with httpx.AsyncClient(base_url=url, timeout=30, cookies=no_cookies()) as client:
        return await asyncio.gather(
            *(client.request(r.pop("method", "GET"), r.pop("url", "/"), **r) for r in requests)
        )


def echo(
    served: Served,
    ready: Callable[[], bool],
    status: str = "200 OK",
    headers: Iterable[tuple[str, str]] = (),
) -> App:
    """A handler that counts its calls, waits until ``ready()``, then answers with a JSON
    body naming its call, the path and the query."""

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        call = served.probe.bump("calls")
        served.probe.settle(ready, "the test's requests")
        body = {"call": call, "path": environ["PATH_INFO"], "query": environ["QUERY_STRING"]}
        start_response(status, [("Content-Type", "application/json"), *headers])
        return [json.dumps(body).encode()]

    return app


# --------------------------------------------------------------------------- H1


def test_h1_identical_requests_run_the_app_once() -> None:
    """H1: five concurrent identical GETs run the downstream app once and get one response."""
    served = Served(Probe())

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        call = served.probe.bump("calls")
        served.until_joined(N - 1)
        headers = [("X-Rep", "a"), ("Content-Type", "text/plain"), ("X-Rep", "b")]
        start_response("203 Non-Authoritative Information", headers)
        return [f"call {call}".encode()]

    with serving(app, served) as url:
        responses = asyncio.run(gather_gets(url, [{"url": "/r?day=1"} for _ in range(N)]))
    assert served.probe["calls"] == 1
    for response in responses:
        assert response.status_code == 203
        assert response.text == "call 1"
        assert [v for k, v in response.headers.multi_items() if k == "x-rep"] == ["a", "b"]


def test_h1_get_and_head_are_separate_keys() -> None:
    """H1: concurrent GETs share one call and HEADs another: each method is its own key."""
    served = Served(Probe())
    methods: list[str] = []

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        methods.append(environ["REQUEST_METHOD"])
        served.probe.bump("calls")
        served.until_joined(2)
        start_response("200 OK", [("Content-Length", "5")])
        return [b"" if environ["REQUEST_METHOD"] == "HEAD" else b"hello"]

    requests = [{"method": m} for m in ("GET", "HEAD", "GET", "HEAD")]
    with serving(app, served) as url:
        responses = asyncio.run(gather_gets(url, requests))
    assert sorted(methods) == ["GET", "HEAD"]
    assert [r.content for r in responses] == [b"hello", b"", b"hello", b""]


def test_h1_path_query_and_vary_option_make_the_key() -> None:
    """H1: path, query and the headers named in vary= (any case) make the key."""
    served = Served(Probe())

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        served.probe.bump("calls")
        served.probe.settle(lambda: served.probe["arrived"] >= 6 and served.joined() >= 2)
        start_response("200 OK", [])
        text = f"{environ['PATH_INFO']}?{environ['QUERY_STRING']} {environ.get('HTTP_X_TENANT')}"
        return [text.encode()]

    requests = [
        {"url": "/a?x=1", "headers": {"X-Tenant": "t"}},
        {"url": "/a?x=1", "headers": {"x-tenant": "t"}},
        {"url": "/a?x=2", "headers": {"X-Tenant": "t"}},
        {"url": "/b?x=1", "headers": {"X-Tenant": "t"}},
        {"url": "/a?x=1", "headers": {"X-TENANT": "u"}},
        {"url": "/a?x=1", "headers": {"X-Tenant": "t"}},
    ]
    expected = [f"{r['url']} {next(iter(r['headers'].values()))}" for r in requests]
    with serving(app, served, vary=("x-TENANT",)) as url:
        responses = asyncio.run(gather_gets(url, requests))
    assert [r.text for r in responses] == expected
    assert served.probe["calls"] == 4


def test_h1_response_vary_gives_a_differing_client_its_own_call() -> None:
    """H1: a waiting client that differs on a header the shared response's Vary names
    gets a downstream call of its own."""
    served = Served(Probe())

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        served.probe.bump("calls")
        served.until_joined(3)
        start_response("200 OK", [("Vary", "Accept-Language")])
        return [environ.get("HTTP_ACCEPT_LANGUAGE", "").encode()]

    async def main(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            leader = asyncio.create_task(client.get("/", headers={"accept-language": "en"}))
            await served.probe.until(lambda p: p["calls"] >= 1, "the leader's call")
            others = [
                client.get("/", headers={"accept-language": language})
                for language in ("en", "fr", "en")
            ]
            return await asyncio.gather(leader, *others)

    with serving(app, served) as url:
        responses = asyncio.run(main(url))
    assert [r.text for r in responses] == ["en", "en", "fr", "en"]
    assert served.probe["calls"] == 2


def test_h1_requests_with_a_body_and_posts_pass_through() -> None:
    """H1: POSTs and requests with a body pass straight through."""
    served = Served(Probe())

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        served.probe.bump("calls")
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        served.probe.settle(lambda: served.probe["arrived"] >= 4)
        start_response("200 OK", [])
        return [body]

    requests = [{"content": b"one"}, {"content": b"two"}, {"method": "POST"}, {"method": "POST"}]
    with serving(app, served) as url:
        responses = asyncio.run(gather_gets(url, requests))
    assert [r.content for r in responses] == [b"one", b"two", b"", b""]
    assert served.probe["calls"] == 4


def test_h1_key_option_can_skip_a_request() -> None:
    """H1: a key= that returns None lets that request pass straight through."""
    served = Served(Probe())
    app = echo(served, lambda: served.probe["arrived"] >= 3)
    with serving(app, served, key=lambda environ: None) as url:
        asyncio.run(gather_gets(url, [{} for _ in range(3)]))
    assert served.probe["calls"] == 3


# --------------------------------------------------------------------------- H2


@pytest.mark.parametrize(
    "credentials",
    [{"authorization": "Bearer alice"}, {"cookie": "session=alice"}],
    ids=["authorization", "cookie"],
)
def test_h2_credentials_pass_through_by_default(credentials: dict[str, str]) -> None:
    """H2: requests with Authorization or Cookie are never coalesced unless private=True."""
    served = Served(Probe())
    app = echo(served, lambda: served.probe["arrived"] >= 3)
    with serving(app, served) as url:
        responses = asyncio.run(gather_gets(url, [{"headers": credentials} for _ in range(3)]))
    assert sorted(r.json()["call"] for r in responses) == [1, 2, 3]


def test_h2_private_coalesces_only_equal_credentials() -> None:
    """H2: with private=True, requests coalesce only with ones carrying the same credentials."""
    served = Served(Probe())

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        served.probe.bump("calls")
        served.probe.settle(lambda: served.probe["arrived"] >= 4 and served.joined() >= 1)
        start_response("200 OK", [])
        return [environ.get("HTTP_AUTHORIZATION", "").encode()]

    users = ["Bearer alice", "Bearer bob", "Bearer alice", "Bearer carol"]
    requests = [{"headers": {"authorization": user}} for user in users]
    with serving(app, served, private=True) as url:
        responses = asyncio.run(gather_gets(url, requests))
    assert [r.text for r in responses] == users
    assert served.probe["calls"] == 3


@pytest.mark.parametrize("private", [False, True], ids=["default", "private"])
def test_h2_server_authenticated_users_are_credentials(private: bool) -> None:
    """H2: a request the server authenticated (REMOTE_USER set, Authorization kept from
    the app) passes through by default, and with private=True coalesces per user."""
    served = Served(Probe())

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        served.probe.bump("calls")
        expected = 1 if private else 0
        served.probe.settle(lambda: served.probe["arrived"] >= 3 and served.joined() >= expected)
        start_response("200 OK", [])
        return [environ["REMOTE_USER"].encode()]

    def authenticating(environ: dict[str, Any], start_response: StartResponse) -> Any:
        # As a front server would: authenticate, set REMOTE_USER, drop the header.
        environ["REMOTE_USER"] = environ.pop("HTTP_AUTHORIZATION").removeprefix("Basic ")
        return middleware(environ, start_response)

    users = ["alice", "bob", "alice"]
    requests = [{"headers": {"authorization": f"Basic {user}"}} for user in users]
    middleware = served.middleware = CoalesceMiddleware(app, private=private)
    with serve_wsgi(count_wsgi(authenticating, served.probe)) as url:
        responses = asyncio.run(gather_gets(url, requests))
    assert [r.text for r in responses] == users
    assert served.probe["calls"] == (2 if private else 3)


@pytest.mark.parametrize(
    "private_header",
    [("Set-Cookie", "session=fresh"), ("Cache-Control", "private"), ("Cache-Control", "no-store")],
    ids=["set-cookie", "private", "no-store"],
)
def test_h2_private_responses_are_never_shared(private_header: tuple[str, str]) -> None:
    """H2: a response with Set-Cookie or Cache-Control private/no-store reaches only the
    client it was made for, even with ttl=."""
    served = Served(Probe())
    app = echo(served, lambda: served.joined() >= N - 1, headers=[private_header])
    with serving(app, served, ttl=60) as url:
        responses = asyncio.run(gather_gets(url, [{} for _ in range(N)]))
        again = httpx.get(url)
    assert sorted(r.json()["call"] for r in responses) == list(range(1, N + 1))
    assert again.json()["call"] == N + 1


# --------------------------------------------------------------------------- H3


@pytest.mark.parametrize("style", ["iterable", "write"])
def test_h3_body_over_max_body_streams_to_the_leader_and_others_call_alone(style: str) -> None:
    """H3: past max_body the leader's client is streamed to (it reads the first bytes
    before the app produces the rest), whether the app yields or uses write(), and the
    waiting clients get calls of their own."""
    served = Served(Probe())
    head, tail = b"h" * 150, b"t" * 64
    closed: list[int] = []

    class Body:
        """A leader's body that waits for its client to read the head, and is closed."""

        def __init__(self, call: int) -> None:
            self.call = call

        def __iter__(self) -> Iterator[bytes]:
            if style == "iterable":
                yield head
            served.probe.wait(lambda p: p["leader read"] >= 1, "the leader to read the head")
            yield tail

        def close(self) -> None:
            closed.append(self.call)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        call = served.probe.bump("calls")
        if call > 1:
            start_response("200 OK", [])
            return [f"own call {call}".encode()]
        served.until_joined(N - 1)
        write = start_response("200 OK", [])
        if style == "write":
            write(head)
        return Body(call)

    async def lead(client: httpx.AsyncClient) -> bytes:
        async with client.stream("GET", "/big") as response:
            chunks = response.aiter_raw()
            received = await anext(chunks)
            served.probe.bump("leader read")
            async for chunk in chunks:
                received += chunk
        return received

    async def main(url: str) -> tuple[bytes, list[httpx.Response]]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            leader = asyncio.create_task(lead(client))
            await served.probe.until(lambda p: p["calls"] >= 1, "the leader's call")
            others = await asyncio.gather(*(client.get("/big") for _ in range(N - 1)))
            return await leader, others

    with serving(app, served, max_body=100) as url:
        body, others = asyncio.run(main(url))
    assert body == head + tail
    assert sorted(r.text for r in others) == [f"own call {n}" for n in range(2, N + 1)]
    assert closed == [1]


def test_h3_body_of_exactly_max_body_is_shared_and_closed() -> None:
    """H3: a body of max_body bytes is buffered and shared, and the app's iterable closed."""
    served = Served(Probe())
    closed: list[bool] = []

    def chunks() -> Iterator[bytes]:
        try:
            for _ in range(10):
                yield b"x" * 10
        finally:
            closed.append(True)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        served.probe.bump("calls")
        served.until_joined(N - 1)
        start_response("200 OK", [])
        return chunks()

    with serving(app, served, max_body=100) as url:
        responses = asyncio.run(gather_gets(url, [{} for _ in range(N)]))
    assert served.probe["calls"] == 1
    assert all(r.content == b"x" * 100 for r in responses)
    assert closed == [True]


def test_h3_lazy_start_response_and_file_wrapper() -> None:
    """H3: a generator that calls start_response on first iteration is buffered and shared,
    and the shared call gets no wsgi.file_wrapper, so what it returns can be buffered."""
    served = Served(Probe())
    wrappers: list[bool] = []

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        served.probe.bump("calls")
        wrapper = environ.get("wsgi.file_wrapper")
        wrappers.append(wrapper is not None)
        if wrapper is not None:
            start_response("200 OK", [])
            return wrapper(io.BytesIO(b"from a file"))  # type: ignore[no-any-return]

        def lazy() -> Iterator[bytes]:
            served.until_joined(N - 1)
            start_response("200 OK", [("X-Lazy", "yes")])
            yield b"from a file"

        return lazy()

    with serving(app, served) as url:
        responses = asyncio.run(gather_gets(url, [{} for _ in range(N)]))
        private = httpx.get(url, headers={"authorization": "Bearer x"})
    assert [r.text for r in responses] == ["from a file"] * N
    assert all(r.headers["x-lazy"] == "yes" for r in responses)
    assert private.text == "from a file"
    assert wrappers == [False, True]


# --------------------------------------------------------------------------- H4


@pytest.mark.parametrize("failure", ["raise", "raise-after-body", "no-start-response"])
def test_h4_a_failure_reaches_every_client_as_a_500(failure: str) -> None:
    """H4: when the app raises (even after yielding part of a body) or never starts its
    response, every waiting client gets a 500 from one call, never a partial body."""
    served = Served(Probe())

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        served.probe.bump("calls")
        served.until_joined(N - 1)
        if failure == "raise":
            raise RuntimeError("the database is down")
        if failure == "no-start-response":
            return [b""]

        def body() -> Iterator[bytes]:
            start_response("200 OK", [])
            yield b"part"
            raise RuntimeError("failed half way")

        return body()

    with serving(app, served) as url:
        responses = asyncio.run(gather_gets(url, [{} for _ in range(N)]))
    assert served.probe["calls"] == 1
    assert [r.status_code for r in responses] == [500] * N
    assert not any(b"part" in r.content for r in responses)


def test_h4_start_response_with_exc_info_replaces_the_head() -> None:
    """H4: an app that catches its error and calls start_response again with exc_info,
    before any body, has its error response shared (PEP 3333)."""
    served = Served(Probe())

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        served.probe.bump("calls")
        served.until_joined(N - 1)
        start_response("200 OK", [("X-Stage", "first")])
        try:
            raise ValueError("bad row")
        except ValueError:
            start_response("503 Service Unavailable", [("X-Stage", "error")], sys.exc_info())
        return [b"try later"]

    with serving(app, served) as url:
        responses = asyncio.run(gather_gets(url, [{} for _ in range(N)]))
    assert served.probe["calls"] == 1
    assert {(r.status_code, r.headers["x-stage"], r.text) for r in responses} == {
        (503, "error", "try later")
    }


def test_h4_exc_info_after_streaming_started_cuts_the_leaders_connection() -> None:
    """H4: once an oversized response has started streaming, a start_response with
    exc_info re-raises, so the leader's client sees a broken response, never a complete
    one; the waiting clients call alone."""
    served = Served(Probe())

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        call = served.probe.bump("calls")
        if call > 1:
            start_response("200 OK", [])
            return [b"fine"]
        served.until_joined(N - 1)

        def body() -> Iterator[bytes]:
            start_response("200 OK", [])
            yield b"x" * 50
            try:
                raise ValueError("failed half way")
            except ValueError:
                start_response("500 Internal Server Error", [], sys.exc_info())
            yield b"never sent"

        return body()

    async def main(url: str) -> list[httpx.Response | BaseException]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            leader = asyncio.create_task(client.get("/"))
            await served.probe.until(lambda p: p["calls"] >= 1)
            others = [client.get("/") for _ in range(N - 1)]
            return await asyncio.gather(leader, *others, return_exceptions=True)

    with serving(app, served, max_body=10) as url:
        leader, *others = asyncio.run(main(url))
    assert isinstance(leader, httpx.RemoteProtocolError)
    assert [r.text for r in others if isinstance(r, httpx.Response)] == ["fine"] * (N - 1)


def test_h4_leader_disconnect_neither_cancels_nor_repeats_the_call() -> None:
    """H4: the leader's client disconnecting does not stop the downstream call nor start a
    second one; the other clients get its response."""
    served = Served(Probe())

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        call = served.probe.bump("calls")
        served.until_joined(N - 1)
        served.probe.wait(lambda p: p["release"] >= 1, "the test's release")
        start_response("200 OK", [])
        return [f"call {call}".encode()]

    async def main(url: str) -> list[httpx.Response]:
        async with (
            httpx.AsyncClient(base_url=url, timeout=30) as leader_client,
            httpx.AsyncClient(base_url=url, timeout=30) as client,
        ):
            leader = asyncio.create_task(leader_client.get("/"))
            await served.probe.until(lambda p: p["calls"] >= 1, "the leader's call")
            others = [asyncio.create_task(client.get("/")) for _ in range(N - 1)]
            await served.probe.until(lambda p: p["arrived"] >= N, "the waiting clients")
            leader.cancel()
            with pytest.raises(asyncio.CancelledError):
                await leader
            await leader_client.aclose()
            served.probe.bump("release")
            return await asyncio.gather(*others)

    with serving(app, served) as url:
        responses = asyncio.run(main(url))
    assert [r.text for r in responses] == ["call 1"] * (N - 1)
    assert served.probe["calls"] == 1


# --------------------------------------------------------------------------- H5


def test_h5_ttl_keeps_successful_responses_until_they_expire() -> None:
    """H5: with ttl=, later identical requests are answered from the micro-cache until ttl
    seconds have passed; then the app runs again."""
    served = Served(Probe())
    with serving(echo(served, lambda: True), served, ttl=30) as url:
        with freezegun.freeze_time() as frozen:
            assert httpx.get(url + "/r").json()["call"] == 1
            frozen.tick(29)
            assert httpx.get(url + "/r").json()["call"] == 1
            assert httpx.get(url + "/other").json()["call"] == 2
            frozen.tick(2)
            assert httpx.get(url + "/r").json()["call"] == 3
            assert httpx.get(url + "/r").json()["call"] == 3


@pytest.mark.parametrize(
    ("status", "headers"),
    [
        ("404 Not Found", []),
        ("500 Internal Server Error", []),
        ("200 OK", [("Cache-Control", "no-cache")]),
    ],
    ids=["404", "500", "no-cache"],
)
def test_h5_keeps_only_2xx_without_no_cache(status: str, headers: list[tuple[str, str]]) -> None:
    """H5: only 2xx responses without Cache-Control no-cache are kept."""
    served = Served(Probe())
    with serving(echo(served, lambda: True, status, headers), served, ttl=60) as url:
        assert [httpx.get(url).json()["call"] for _ in range(2)] == [1, 2]


# ------------------------------------------------------------------ privacy load


@pytest.mark.parametrize("private", [False, True], ids=["public", "private"])
@pytest.mark.timeout(240)  # 1,000 real requests: bounded, but slow on a loaded 2-core machine
def test_h2_no_response_reaches_a_client_it_was_not_made_for(private: bool) -> None:
    """H2: under 1,000 mixed requests to public and private endpoints, every client gets
    only responses it may see, and public ones are still coalesced."""
    served = Served(Probe())
    wave = 32
    waves = 32
    rng = random.Random(11)
    kinds = ["public", "auth", "cookie", "set-cookie", "no-store", "private", "vary", "big"]

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        token = environ["HTTP_X_TOKEN"]
        index = int(token.split("-")[0])
        served.probe.bump("calls")
        end = (index // wave + 1) * wave
        served.probe.wait(lambda p: p["arrived"] >= end, "the wave")
        path = environ["PATH_INFO"]
        body = {
            "token": token,
            "path": path,
            "query": environ["QUERY_STRING"],
            "user": environ.get("HTTP_AUTHORIZATION") or environ.get("HTTP_COOKIE", ""),
            "lang": environ.get("HTTP_X_LANG", ""),
        }
        headers: list[tuple[str, str]] = []
        if path == "/set-cookie":
            headers.append(("Set-Cookie", f"id={token}"))
        elif path == "/no-store":
            headers.append(("Cache-Control", "no-store"))
        elif path == "/private":
            headers.append(("Cache-Control", "private"))
        elif path == "/vary":
            headers.append(("Vary", "X-Lang"))
        elif path == "/big":
            body["padding"] = "x" * 300
        start_response("200 OK", headers)
        return [json.dumps(body).encode()]

    def request(index: int) -> dict[str, Any]:
        kind = rng.choice(kinds)
        headers = {"x-token": f"{index}-{rng.random()}"}
        url = f"/public/{rng.randrange(3)}?q={rng.randrange(2)}" if kind == "public" else "/" + kind
        if kind == "auth":
            url = "/me"
            headers["authorization"] = f"Bearer user{rng.randrange(3)}"
        elif kind == "cookie":
            url = "/me"
            headers["cookie"] = f"session=user{rng.randrange(3)}"
        elif kind == "vary":
            headers["x-lang"] = rng.choice(["en", "fr"])
        return {"url": url, "headers": headers}

    async def main(url: str) -> list[tuple[dict[str, Any], httpx.Response]]:
        done: list[tuple[dict[str, Any], httpx.Response]] = []
        # One client (one connection) per concurrent slot: httpx's pool grows slow
        # when one client juggles many connections.
        async with contextlib.AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(
                    httpx.AsyncClient(base_url=url, timeout=30, cookies=no_cookies())
                )
                for _ in range(wave)
            ]
            for w in range(waves):
                sent = [request(w * wave + i) for i in range(wave)]
                responses = await asyncio.gather(
                    *(
                        c.get(r["url"], headers=r["headers"])
                        for c, r in zip(clients, sent, strict=True)
                    )
                )
                done.extend(zip(sent, responses, strict=True))
        return done

    with serving(app, served, threads=wave + 8, private=private, max_body=200) as url:
        exchanges = asyncio.run(main(url))

    assert len(exchanges) == wave * waves >= 1000
    violations = []
    for sent, response in exchanges:
        body = response.json()
        mine = sent["headers"]
        path, _, query = sent["url"].partition("?")
        may_share = path.startswith("/public") or path == "/vary" or (private and path == "/me")
        ok = response.status_code == 200 and body["path"] == path and body["query"] == query
        ok = ok and (may_share or body["token"] == mine["x-token"])
        ok = ok and body["user"] == mine.get("authorization", mine.get("cookie", ""))
        ok = ok and body["lang"] == mine.get("x-lang", "")
        if path == "/set-cookie":
            ok = ok and response.headers["set-cookie"] == f"id={mine['x-token']}"
        if not ok:
            violations.append((sent, body))
    assert violations == []
    shared = sum(1 for sent, r in exchanges if r.json()["token"] != sent["headers"]["x-token"])
    assert shared > 0
    assert served.probe["calls"] == len(exchanges) - shared


# --------------------------------------------------------------------- options


def test_h1_unknown_option_is_a_helpful_type_error() -> None:
    """H1: an unknown option name is a TypeError that suggests the right one."""
    with pytest.raises(TypeError, match=r"unknown option 'max_bdy'; did you mean 'max_body'\?"):
        CoalesceMiddleware(echo(Served(Probe()), lambda: True), max_bdy=1)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"max_body": -1}, ValueError),
        ({"max_body": math.nan}, ValueError),
        ({"max_body": math.inf}, ValueError),
        ({"max_body": None}, TypeError),
        ({"ttl": 0}, ValueError),
        ({"ttl": math.nan}, ValueError),
        ({"ttl": -math.inf}, ValueError),
        ({"ttl": True}, TypeError),
        ({"methods": "GET"}, TypeError),
        ({"vary": ("Accept Language",)}, ValueError),
    ],
)
def test_h3_h5_bad_options_fail_at_construction(
    options: dict[str, Any], error: type[Exception]
) -> None:
    """H3, H5: bad max_body, ttl and other option values fail at construction, naming them."""
    (name,) = options
    with pytest.raises(error, match=name):
        CoalesceMiddleware(echo(Served(Probe()), lambda: True), **options)
