"""SPEC section 5 for ASGI: ``coalesce.asgi.CoalesceMiddleware`` under uvicorn and httpx.

Every test runs a real uvicorn server in a thread and real httpx clients. Downstream
handlers hold their response until the requests the test sends have all arrived at the
middleware (``Probe``), so "concurrent" is a fact of each test, not a hope.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import freezegun
import httpx
import pytest
from _http_support import (
    Message,
    Probe,
    Receive,
    Scope,
    Send,
    asgi_respond,
    count_asgi,
    no_cookies,
    serve_asgi,
)
from fastapi import BackgroundTasks, FastAPI
from fastapi.responses import StreamingResponse

from coalesce.asgi import CoalesceMiddleware

N = 5

Handler = Callable[[Scope, Receive, Send], Any]


@contextlib.contextmanager
def serving(handler: Handler, probe: Probe, **options: Any) -> Iterator[str]:
    """Serve ``CoalesceMiddleware(handler, **options)``; check nothing is left in flight."""
    middleware = CoalesceMiddleware(handler, **options)
    with serve_asgi(count_asgi(middleware, probe)) as url:
        yield url
    assert middleware.cache_info().in_flight == 0


def header(scope: Scope, name: bytes) -> str:
    """The request header ``name`` of ``scope`` (values joined), or ``""``."""
    return b",".join(v for n, v in scope["headers"] if n == name).decode("latin-1")


async def gather_gets(url: str, requests: list[dict[str, Any]]) -> list[httpx.Response]:
    """Send every request (``httpx.AsyncClient.request`` keywords) at once."""
    async with httpx.AsyncClient(base_url=url, timeout=30, cookies=no_cookies()) as client:
        return await asyncio.gather(
            *(client.request(r.pop("method", "GET"), r.pop("url", "/"), **r) for r in requests)
        )


def echo_handler(probe: Probe, wait_for: int, **response: Any) -> Handler:
    """A handler that counts its calls, waits for ``wait_for`` arrivals, then answers
    with a JSON body naming its call, the path and the query."""

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        call = probe.bump("calls")
        await probe.until(lambda p: p["arrived"] >= wait_for, "every request to arrive")
        body = {"call": call, "path": scope["path"], "query": scope["query_string"].decode()}
        headers = [(b"content-type", b"application/json"), *response.get("headers", ())]
        await asgi_respond(
            send, json.dumps(body).encode(), status=response.get("status", 200), headers=headers
        )

    return handler


# --------------------------------------------------------------------------- H1


def test_h1_identical_requests_run_the_app_once() -> None:
    """H1: five concurrent identical GETs run the downstream app once and get one response."""
    probe = Probe()

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        call = probe.bump("calls")
        await probe.until(lambda p: p["arrived"] >= N)
        headers = [(b"x-rep", b"a"), (b"content-type", b"text/plain"), (b"x-rep", b"b")]
        await asgi_respond(send, f"call {call}".encode(), status=203, headers=headers)

    with serving(handler, probe) as url:
        responses = asyncio.run(gather_gets(url, [{"url": "/report?day=1"} for _ in range(N)]))
    assert probe["calls"] == 1
    for response in responses:
        assert response.status_code == 203
        assert response.text == "call 1"
        assert [v for k, v in response.headers.multi_items() if k == "x-rep"] == ["a", "b"]
        assert response.headers["content-type"] == "text/plain"


def test_h1_get_and_head_are_separate_keys() -> None:
    """H1: concurrent GETs share one call and HEADs another: each method is its own key."""
    probe = Probe()
    methods: list[str] = []

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        methods.append(scope["method"])
        probe.bump("calls")
        await probe.until(lambda p: p["arrived"] >= 4)
        headers = [(b"content-length", b"5")]
        await asgi_respond(send, b"" if scope["method"] == "HEAD" else b"hello", headers=headers)

    requests = [{"method": m} for m in ("GET", "HEAD", "GET", "HEAD")]
    with serving(handler, probe) as url:
        responses = asyncio.run(gather_gets(url, requests))
    assert sorted(methods) == ["GET", "HEAD"]
    assert [r.content for r in responses] == [b"hello", b"", b"hello", b""]
    assert all(r.headers["content-length"] == "5" for r in responses)


def test_h1_path_and_query_make_the_key() -> None:
    """H1: requests that differ in path or query string never share a response."""
    probe = Probe()
    urls = ["/a?x=1", "/a?x=1", "/a?x=2", "/b?x=1", "/a?x=1"]
    with serving(echo_handler(probe, len(urls)), probe) as url:
        responses = asyncio.run(gather_gets(url, [{"url": u} for u in urls]))
    assert probe["calls"] == 3
    for sent, response in zip(urls, responses, strict=True):
        body = response.json()
        assert f"{body['path']}?{body['query']}" == sent
    assert len({r.json()["call"] for r in responses if r.url.path == "/a"}) == 2


def test_h1_vary_option_joins_the_key_without_regard_to_case() -> None:
    """H1: headers named in vary= (any case) join the key; equal values still coalesce."""
    probe = Probe()

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        probe.bump("calls")
        await probe.until(lambda p: p["arrived"] >= 4)
        await asgi_respond(send, header(scope, b"x-tenant").encode())

    tenants = [("X-Tenant", "a"), ("x-tenant", "a"), ("X-TENANT", "b"), ("x-Tenant", "a")]
    requests = [{"headers": {name: value}} for name, value in tenants]
    with serving(handler, probe, vary=("x-TENANT",)) as url:
        responses = asyncio.run(gather_gets(url, requests))
    assert probe["calls"] == 2
    assert [r.text for r in responses] == ["a", "a", "b", "a"]


def test_h1_response_vary_gives_a_differing_client_its_own_call() -> None:
    """H1: a shared response whose Vary names a header a waiting client differs on is not
    given to that client: it gets a downstream call of its own."""
    probe = Probe()

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        probe.bump("calls")
        await probe.until(lambda p: p["arrived"] >= 4)
        language = header(scope, b"accept-language")
        headers = [(b"vary", b"Accept-Encoding, Accept-Language")]
        await asgi_respond(send, language.encode(), headers=headers)

    async def main(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            leader = asyncio.create_task(client.get("/", headers={"accept-language": "en"}))
            await probe.until(lambda p: p["calls"] >= 1, "the leader's call")
            others = [
                client.get("/", headers={"accept-language": language})
                for language in ("en", "fr", "en")
            ]
            return await asyncio.gather(leader, *others)

    with serving(handler, probe) as url:
        responses = asyncio.run(main(url))
    assert [r.text for r in responses] == ["en", "en", "fr", "en"]
    assert probe["calls"] == 2  # the leader's, shared with both "en"; and the "fr" one


def test_h1_vary_star_is_never_shared() -> None:
    """H1: a response with ``Vary: *`` goes only to the client it was made for."""
    probe = Probe()
    with serving(echo_handler(probe, N, headers=[(b"vary", b"*")]), probe) as url:
        responses = asyncio.run(gather_gets(url, [{} for _ in range(N)]))
    assert probe["calls"] == N
    assert sorted(r.json()["call"] for r in responses) == list(range(1, N + 1))


def test_h1_only_get_and_head_by_default() -> None:
    """H1: POSTs pass straight through by default; methods= makes them coalesce."""
    probe = Probe()
    with serving(echo_handler(probe, 3), probe) as url:
        asyncio.run(gather_gets(url, [{"method": "POST"} for _ in range(3)]))
    assert probe["calls"] == 3

    probe = Probe()
    with serving(echo_handler(probe, 3), probe, methods=("GET", "POST")) as url:
        responses = asyncio.run(gather_gets(url, [{"method": "POST"} for _ in range(3)]))
    assert probe["calls"] == 1
    assert {r.json()["call"] for r in responses} == {1}


def test_h1_requests_with_a_body_pass_through() -> None:
    """H1: a request that carries a body is never coalesced (the body is not in the key)."""
    probe = Probe()
    bodies: list[bytes] = []

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        probe.bump("calls")
        message = await receive()
        bodies.append(message["body"])
        await probe.until(lambda p: p["arrived"] >= 3)
        await asgi_respond(send, message["body"])

    requests = [{"content": b"one"}, {"content": b"two"}, {"content": b"one"}]
    with serving(handler, probe) as url:
        responses = asyncio.run(gather_gets(url, requests))
    assert probe["calls"] == 3
    assert [r.content for r in responses] == [b"one", b"two", b"one"]


def test_h1_lifespan_and_websocket_scopes_pass_through() -> None:
    """H1: only http scopes coalesce; lifespan and websocket scopes reach the app untouched."""
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1000})

    middleware = CoalesceMiddleware(app)
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(middleware({"type": "websocket", "path": "/ws", "headers": []}, receive, send))
    assert seen == ["websocket"]
    assert sent == [{"type": "websocket.close", "code": 1000}]

    started = []

    async def lifespan_app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            message = await receive()
            assert message["type"] == "lifespan.startup"
            started.append(True)
            await send({"type": "lifespan.startup.complete"})
            message = await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        await asgi_respond(send, b"up")

    with serve_asgi(CoalesceMiddleware(lifespan_app), lifespan="on") as url:
        assert httpx.get(url).text == "up"
    assert started == [True]


def test_h1_key_option_joins_or_skips() -> None:
    """H1: key= adds to the key, and returning None lets a request pass straight through."""
    probe = Probe()

    def key(scope: Scope) -> str | None:
        return None if scope["path"] == "/live" else header(scope, b"x-shard")

    requests = [
        {"url": "/live"},
        {"url": "/live"},
        {"url": "/r", "headers": {"x-shard": "1"}},
        {"url": "/r", "headers": {"x-shard": "2"}},
        {"url": "/r", "headers": {"x-shard": "1"}},
    ]
    with serving(echo_handler(probe, len(requests)), probe, key=key) as url:
        asyncio.run(gather_gets(url, requests))
    assert probe["calls"] == 4  # two /live calls, one per shard


# --------------------------------------------------------------------------- H2


@pytest.mark.parametrize(
    "credentials",
    [{"authorization": "Bearer alice"}, {"cookie": "session=alice"}],
    ids=["authorization", "cookie"],
)
def test_h2_credentials_pass_through_by_default(credentials: dict[str, str]) -> None:
    """H2: requests with Authorization or Cookie are never coalesced unless private=True."""
    probe = Probe()
    with serving(echo_handler(probe, 3), probe) as url:
        responses = asyncio.run(gather_gets(url, [{"headers": credentials} for _ in range(3)]))
    assert probe["calls"] == 3
    assert sorted(r.json()["call"] for r in responses) == [1, 2, 3]


def test_h2_private_coalesces_only_equal_credentials() -> None:
    """H2: with private=True, requests coalesce only with ones carrying the same credentials."""
    probe = Probe()

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        probe.bump("calls")
        await probe.until(lambda p: p["arrived"] >= 5)
        who = header(scope, b"authorization") + "|" + header(scope, b"cookie")
        await asgi_respond(send, who.encode())

    sent = [
        {"authorization": "Bearer alice"},
        {"authorization": "Bearer bob"},
        {"authorization": "Bearer alice"},
        {"authorization": "Bearer alice", "cookie": "s=1"},
        {"cookie": "s=1"},
    ]
    with serving(handler, probe, private=True) as url:
        responses = asyncio.run(gather_gets(url, [{"headers": h} for h in sent]))
    assert probe["calls"] == 4
    for credentials, response in zip(sent, responses, strict=True):
        expected = credentials.get("authorization", "") + "|" + credentials.get("cookie", "")
        assert response.text == expected


def test_h2_credentials_in_capitals_still_pass_through() -> None:
    """H2: a server that sends header names in capitals (against the ASGI spec) still
    has requests with credentials passed straight through."""
    calls: list[str] = []
    both_in = asyncio.Event()

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        calls.append(header(scope, b"Authorization"))
        if len(calls) == 2:
            both_in.set()
        await asyncio.wait_for(both_in.wait(), 10)
        await asgi_respond(send, b"ok")

    middleware = CoalesceMiddleware(handler)

    async def request(user: str) -> None:
        scope = {
            "type": "http",
            "method": "GET",
            "path": "/",
            "query_string": b"",
            "headers": [(b"Authorization", user.encode())],
        }

        messages = [{"type": "http.request", "body": b"", "more_body": False}]
        done = asyncio.Event()

        async def receive() -> Message:
            if messages:
                return messages.pop()
            await done.wait()  # as a server does until the response is complete
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            if not message.get("more_body", True):
                done.set()

        await middleware(scope, receive, send)

    async def main() -> None:
        await asyncio.gather(request("alice"), request("bob"))

    asyncio.run(main())
    assert sorted(calls) == ["alice", "bob"]


@pytest.mark.parametrize(
    "private_header",
    [
        (b"set-cookie", b"session=fresh"),
        (b"cache-control", b"private, max-age=60"),
        (b"cache-control", b"no-store"),
    ],
    ids=["set-cookie", "private", "no-store"],
)
def test_h2_private_responses_are_never_shared(private_header: tuple[bytes, bytes]) -> None:
    """H2: a response with Set-Cookie or Cache-Control private/no-store reaches only the
    client it was made for; the others get calls of their own, even with ttl=."""
    probe = Probe()
    handler = echo_handler(probe, N, headers=[private_header])
    with serving(handler, probe, ttl=60) as url:
        responses = asyncio.run(gather_gets(url, [{} for _ in range(N)]))
        again = httpx.get(url)
    assert sorted(r.json()["call"] for r in responses) == list(range(1, N + 1))
    assert again.json()["call"] == N + 1
    assert probe["calls"] == N + 1


# --------------------------------------------------------------------------- H3


def test_h3_body_over_max_body_streams_to_the_leader_and_others_call_alone() -> None:
    """H3: past max_body the leader's client is streamed to (it reads the first bytes
    before the app sends the rest) and the waiting clients get calls of their own."""
    probe = Probe()
    head, tail = b"h" * 150, b"t" * 64

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        call = probe.bump("calls")
        if call > 1:
            await asgi_respond(send, f"own call {call}".encode())
            return
        await probe.until(lambda p: p["arrived"] >= N, "the waiting clients")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": head, "more_body": True})
        await probe.until(lambda p: p["leader read"] >= 1, "the leader to read the head")
        await send({"type": "http.response.body", "body": tail, "more_body": False})

    async def lead(client: httpx.AsyncClient) -> bytes:
        async with client.stream("GET", "/big") as response:
            chunks = response.aiter_raw()
            received = await anext(chunks)
            probe.bump("leader read")
            async for chunk in chunks:
                received += chunk
        return received

    async def main(url: str) -> tuple[bytes, list[httpx.Response]]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            leader = asyncio.create_task(lead(client))
            await probe.until(lambda p: p["calls"] >= 1, "the leader's call")
            others = await asyncio.gather(*(client.get("/big") for _ in range(N - 1)))
            return await leader, others

    with serving(handler, probe, max_body=100) as url:
        body, others = asyncio.run(main(url))
    assert body == head + tail
    assert sorted(r.text for r in others) == [f"own call {n}" for n in range(2, N + 1)]
    assert probe["calls"] == N


@pytest.mark.parametrize("size", [0, 100])
def test_h3_body_of_exactly_max_body_is_shared(size: int) -> None:
    """H3: a body of max_body bytes (even 0 with max_body=0) is buffered and shared."""
    probe = Probe()

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        probe.bump("calls")
        await probe.until(lambda p: p["arrived"] >= N)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(size // 10):
            await send({"type": "http.response.body", "body": b"x" * 10, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    with serving(handler, probe, max_body=size) as url:
        responses = asyncio.run(gather_gets(url, [{} for _ in range(N)]))
    assert probe["calls"] == 1
    assert all(r.content == b"x" * size for r in responses)


def test_h3_leader_leaving_mid_stream_stops_the_app() -> None:
    """H3: when the leader's client leaves while an oversized response streams to it, the
    app's next send raises OSError (as a server's does) and the call ends."""
    probe = Probe()

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            while True:  # an endless stream: only the client leaving ends it
                await send({"type": "http.response.body", "body": b"x" * 64, "more_body": True})
                probe.bump("sent")
        except OSError:
            probe.bump("stopped")
            raise

    async def main(url: str) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            async with client.stream("GET", "/endless") as response:
                async for _ in response.aiter_raw():
                    break
        await probe.until(lambda p: p["stopped"] >= 1, "the app to stop")

    with serving(handler, probe, max_body=100) as url:
        asyncio.run(main(url))


def test_h3_starlette_streaming_and_background_tasks() -> None:
    """H3: a FastAPI app's StreamingResponse is shared when small and streamed when large,
    and a background task runs after the shared response without holding it back."""
    probe = Probe()
    app = FastAPI()

    async def after() -> None:
        await probe.until(lambda p: p["clients done"] >= 1, "the clients' responses")
        probe.bump("background done")

    @app.get("/small")
    async def small(background: BackgroundTasks) -> StreamingResponse:
        probe.bump("small calls")
        await probe.until(lambda p: p["arrived"] >= N)
        background.add_task(after)

        async def parts() -> Any:
            for part in (b"one ", b"two ", b"three"):
                yield part

        return StreamingResponse(parts(), media_type="text/plain")

    @app.get("/large")
    async def large() -> StreamingResponse:
        probe.bump("large calls")

        async def parts() -> Any:
            for _ in range(10):
                yield b"y" * 50

        return StreamingResponse(parts(), media_type="text/plain")

    app.add_middleware(CoalesceMiddleware, max_body=100)
    with serve_asgi(count_asgi(app, probe)) as url:
        responses = asyncio.run(gather_gets(url, [{"url": "/small"} for _ in range(N)]))
        probe.bump("clients done")
        probe.wait(lambda p: p["background done"] >= 1, "the background task")
        large = asyncio.run(gather_gets(url, [{"url": "/large"} for _ in range(3)]))
    assert [r.text for r in responses] == ["one two three"] * N
    assert probe["small calls"] == 1
    assert [r.content for r in large] == [b"y" * 500] * 3
    assert probe["large calls"] == 3


# --------------------------------------------------------------------------- H4


def test_h4_an_exception_reaches_every_client_as_a_500() -> None:
    """H4: when the downstream app raises, every waiting client gets a 500 from one call."""
    probe = Probe()

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        probe.bump("calls")
        await probe.until(lambda p: p["arrived"] >= N)
        raise RuntimeError("the database is down")

    with serving(handler, probe) as url:
        responses = asyncio.run(gather_gets(url, [{} for _ in range(N)]))
    assert probe["calls"] == 1
    assert [r.status_code for r in responses] == [500] * N


@pytest.mark.parametrize("ending", ["raise", "return"])
def test_h4_a_failure_after_the_first_bytes_is_a_500_when_buffered(ending: str) -> None:
    """H4: an app that raises or returns after sending part of a body never has that part
    passed off as a complete response: every client gets a 500."""
    probe = Probe()

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        probe.bump("calls")
        await probe.until(lambda p: p["arrived"] >= N)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        if ending == "raise":
            raise RuntimeError("failed half way")

    with serving(handler, probe) as url:
        responses = asyncio.run(gather_gets(url, [{} for _ in range(N)]))
    assert [r.status_code for r in responses] == [500] * N
    assert probe["calls"] == 1


def test_h4_a_failure_while_streaming_cuts_the_leaders_connection() -> None:
    """H4: an oversized response that fails after its first bytes reaches the leader as a
    broken response, never a complete one; the waiting clients call alone."""
    probe = Probe()

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        call = probe.bump("calls")
        if call > 1:
            await asgi_respond(send, b"fine")
            return
        await probe.until(lambda p: p["arrived"] >= N)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x" * 50, "more_body": True})
        raise RuntimeError("failed half way")

    async def main(url: str) -> list[httpx.Response | BaseException]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            leader = asyncio.create_task(client.get("/"))
            await probe.until(lambda p: p["calls"] >= 1)
            others = [client.get("/") for _ in range(N - 1)]
            return await asyncio.gather(leader, *others, return_exceptions=True)

    with serving(handler, probe, max_body=10) as url:
        leader, *others = asyncio.run(main(url))
    assert isinstance(leader, httpx.RemoteProtocolError)
    assert [r.text for r in others if isinstance(r, httpx.Response)] == ["fine"] * (N - 1)


def test_h4_leader_disconnect_neither_cancels_nor_repeats_the_call() -> None:
    """H4: the leader's client disconnecting does not cancel the downstream call nor start
    a second one; the other clients get its response."""
    probe = Probe()
    cancelled: list[bool] = []

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        call = probe.bump("calls")
        try:
            await probe.until(lambda p: p["release"] >= 1, "the test's release")
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        await asgi_respond(send, f"call {call}".encode())

    async def main(url: str) -> list[httpx.Response]:
        async with (
            httpx.AsyncClient(base_url=url, timeout=30) as leader_client,
            httpx.AsyncClient(base_url=url, timeout=30) as client,
        ):
            leader = asyncio.create_task(leader_client.get("/"))
            await probe.until(lambda p: p["calls"] >= 1, "the leader's call")
            others = [asyncio.create_task(client.get("/")) for _ in range(N - 1)]
            await probe.until(lambda p: p["arrived"] >= N, "the waiting clients")
            leader.cancel()
            with pytest.raises(asyncio.CancelledError):
                await leader
            await leader_client.aclose()
            # The middleware has seen the leader's client go and ended its part.
            await probe.until(lambda p: p["finished"] >= 1, "the leader's request to end")
            probe.bump("release")
            return await asyncio.gather(*others)

    with serving(handler, probe) as url:
        responses = asyncio.run(main(url))
    assert [r.text for r in responses] == ["call 1"] * (N - 1)
    assert probe["calls"] == 1
    assert cancelled == []


def test_h4_when_every_client_disconnects_the_call_is_cancelled() -> None:
    """H4: once every client of a flight has disconnected, its downstream call is
    cancelled and nothing is left in flight."""
    probe = Probe()

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        probe.bump("calls")
        try:
            await probe.until(lambda p: p["release"] >= 1)
        except asyncio.CancelledError:
            probe.bump("cancelled")
            raise
        await asgi_respond(send, b"unreachable")

    async def main(url: str) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            tasks = [asyncio.create_task(client.get("/")) for _ in range(3)]
            await probe.until(lambda p: p["arrived"] >= 3 and p["calls"] >= 1)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await probe.until(lambda p: p["cancelled"] >= 1, "the downstream call to be cancelled")

    with serving(handler, probe) as url:
        asyncio.run(main(url))
        assert probe["finished"] == 3
    assert probe["calls"] == 1


# --------------------------------------------------------------------------- H5


def test_h5_ttl_keeps_successful_responses() -> None:
    """H5: with ttl=, a later identical request is answered from the micro-cache."""
    probe = Probe()
    with serving(echo_handler(probe, 0), probe, ttl=60) as url:
        first = httpx.get(url + "/r?x=1")
        second = httpx.get(url + "/r?x=1")
        other = httpx.get(url + "/r?x=2")
    assert first.json()["call"] == second.json()["call"] == 1
    assert other.json()["call"] == 2
    # The server stamps its own Date on each response it sends: a second boundary
    # between the two requests changes it, so the app's headers are what must match.
    assert without_date(first) == without_date(second)
    # Served from the micro-cache, the second carries an Age (H8); the first was made for it.
    assert "age" not in first.headers
    assert second.headers["age"].isdigit()


def without_date(response: httpx.Response) -> list[tuple[str, str]]:
    """The response's headers in order, less the Date header the server adds to each and
    the Age a response served from the micro-cache carries (H8)."""
    return [(k, v) for k, v in response.headers.multi_items() if k.lower() not in ("date", "age")]


def test_h5_off_by_default() -> None:
    """H5: without ttl=, sequential identical requests each run the app."""
    probe = Probe()
    with serving(echo_handler(probe, 0), probe) as url:
        assert [httpx.get(url).json()["call"] for _ in range(3)] == [1, 2, 3]


@pytest.mark.parametrize(
    "response",
    [
        {"status": 404},
        {"status": 500},
        {"status": 301, "headers": [(b"location", b"/elsewhere")]},
        {"headers": [(b"cache-control", b"no-cache")]},
    ],
    ids=["404", "500", "301", "no-cache"],
)
def test_h5_keeps_only_2xx_without_no_cache(response: dict[str, Any]) -> None:
    """H5: only 2xx responses without Cache-Control no-cache are kept."""
    probe = Probe()
    with serving(echo_handler(probe, 0, **response), probe, ttl=60) as url:
        with httpx.Client(base_url=url, follow_redirects=False) as client:
            calls = [client.get("/").json()["call"] for _ in range(2)]
    assert calls == [1, 2]


def test_h5_entries_expire_after_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    """H5: a kept response is served until ttl seconds have passed, then the app runs again."""
    # The server's event loop, in another thread, must keep real time while the
    # middleware's clock reads (S13) see freezegun's: pin the loop's clock first, so
    # no moment of the freeze's setup leaks frozen time into the loop's timers.
    real_monotonic = time.monotonic
    loop = asyncio.new_event_loop()
    loop_class = type(loop)  # the class uvicorn's loop has
    loop.close()
    monkeypatch.setattr(loop_class, "time", lambda self: real_monotonic())
    probe = Probe()
    with serving(echo_handler(probe, 0), probe, ttl=30) as url:
        with freezegun.freeze_time() as frozen:
            assert httpx.get(url).json()["call"] == 1
            frozen.tick(29)
            assert httpx.get(url).json()["call"] == 1
            frozen.tick(2)
            assert httpx.get(url).json()["call"] == 2
            assert httpx.get(url).json()["call"] == 2


def test_h5_kept_response_honours_its_vary() -> None:
    """H5: a kept response that varies on a header is not served to a request that differs."""
    probe = Probe()

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        probe.bump("calls")
        language = header(scope, b"accept-language")
        await asgi_respond(send, language.encode(), headers=[(b"vary", b"accept-language")])

    with serving(handler, probe, ttl=60) as url:
        texts = [
            httpx.get(url, headers={"accept-language": language}).text
            for language in ("en", "en", "fr")
        ]
    assert texts == ["en", "en", "fr"]
    assert probe["calls"] == 2


# ------------------------------------------------------------------ privacy load


@pytest.mark.parametrize("private", [False, True], ids=["public", "private"])
@pytest.mark.timeout(240)  # 1,000 real requests: bounded, but slow on a loaded 2-core machine
def test_h2_no_response_reaches_a_client_it_was_not_made_for(private: bool) -> None:
    """H2: under 1,000 mixed requests to public and private endpoints, every client gets
    only responses it may see, and public ones are still coalesced."""
    probe = Probe()
    wave = 40
    waves = 25
    rng = random.Random(7)

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        token = header(scope, b"x-token")
        index = int(token.split("-")[0])
        probe.bump("calls")
        await probe.until(lambda p: p["arrived"] >= (index // wave + 1) * wave, "the wave")
        path = scope["path"]
        body = {
            "token": token,
            "path": path,
            "query": scope["query_string"].decode(),
            "user": header(scope, b"authorization") or header(scope, b"cookie"),
            "lang": header(scope, b"x-lang"),
        }
        headers: list[tuple[bytes, bytes]] = []
        if path == "/set-cookie":
            headers.append((b"set-cookie", f"id={token}".encode()))
        elif path == "/no-store":
            headers.append((b"cache-control", b"no-store"))
        elif path == "/private":
            headers.append((b"cache-control", b"private"))
        elif path == "/vary":
            headers.append((b"vary", b"X-Lang"))
        elif path == "/big":
            body["padding"] = "x" * 300
        await asgi_respond(send, json.dumps(body).encode(), headers=headers)

    kinds = ["public", "auth", "cookie", "set-cookie", "no-store", "private", "vary", "big"]

    def request(index: int) -> dict[str, Any]:
        kind = rng.choice(kinds)
        headers = {"x-token": f"{index}-{rng.random()}"}
        url = {"public": f"/public/{rng.randrange(3)}?q={rng.randrange(2)}"}.get(kind, "/" + kind)
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
            plain = httpx.AsyncHTTPTransport  # plain HTTP: no TLS context per client
            clients = [
                await stack.enter_async_context(
                    httpx.AsyncClient(
                        base_url=url, timeout=30, cookies=no_cookies(), transport=plain()
                    )
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

    with serving(handler, probe, private=private, max_body=200, vary=()) as url:
        exchanges = asyncio.run(main(url))

    assert len(exchanges) == wave * waves >= 1000
    violations = []
    for sent, response in exchanges:
        body = response.json()
        mine = sent["headers"]
        path, _, query = sent["url"].partition("?")
        may_share = path.startswith("/public") or path == "/vary"
        if private and path == "/me":
            may_share = True  # with equal credentials only, checked below
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
    assert probe["calls"] == len(exchanges) - shared


# --------------------------------------------------------------------- options


def test_h1_unknown_option_is_a_helpful_type_error() -> None:
    """H1: an unknown option name is a TypeError that suggests the right one."""
    with pytest.raises(TypeError, match=r"unknown option 'tll'; did you mean 'ttl'\?"):
        CoalesceMiddleware(echo_handler(Probe(), 0), tll=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="by keyword"):
        CoalesceMiddleware(echo_handler(Probe(), 0), ("GET",))  # type: ignore[misc]


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"max_body": -1}, ValueError),
        ({"max_body": math.nan}, ValueError),
        ({"max_body": math.inf}, ValueError),
        ({"max_body": 1.5}, ValueError),
        ({"max_body": "1MB"}, TypeError),
        ({"ttl": 0}, ValueError),
        ({"ttl": -1}, ValueError),
        ({"ttl": math.nan}, ValueError),
        ({"ttl": math.inf}, ValueError),
        ({"ttl": "60"}, TypeError),
        ({"methods": "GET"}, TypeError),
        ({"methods": ()}, ValueError),
        ({"vary": "Accept"}, TypeError),
        ({"vary": ("Bad Header",)}, ValueError),
        ({"private": 1}, TypeError),
        ({"maxsize": 0}, ValueError),
        ({"key": "path"}, TypeError),
    ],
)
def test_h3_h5_bad_options_fail_at_construction(
    options: dict[str, Any], error: type[Exception]
) -> None:
    """H3, H5: bad max_body, ttl and other option values fail at construction, naming them."""
    (name,) = options
    with pytest.raises(error, match=name):
        CoalesceMiddleware(echo_handler(Probe(), 0), **options)


def test_h1_repr_names_the_options() -> None:
    """H1: the middleware's repr shows its options."""
    text = repr(CoalesceMiddleware(echo_handler(Probe(), 0), vary=("X-A",), ttl=2))
    assert "vary=('x-a',)" in text
    assert "ttl=2.0" in text
    assert "max_body=1048576" in text


# --------------------------------------------------------------------- example


def test_h1_fastapi_example_runs_the_handler_once() -> None:
    """H1: examples/fastapi_five_clients.py serves five concurrent clients with one run."""
    example = Path(__file__).parent.parent / "examples" / "fastapi_five_clients.py"
    env = {**os.environ, "PYTHONPATH": str(example.parent.parent)}
    done = subprocess.run(
        [sys.executable, "-W", "error", str(example)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "the handler ran 1 time for 5 clients" in done.stdout


# ----------------------------------------------------------------------- typing


@pytest.mark.timeout(300)
def test_h1_middleware_types_check_strictly() -> None:
    """H1: the middlewares type-check as users wire them (FastAPI's add_middleware too), and
    a misspelt option is flagged by the type checker as well as at run time."""
    mypy_api = pytest.importorskip("mypy.api", reason="mypy is in the lint extra")
    here = Path(__file__).parent
    stdout, stderr, status = mypy_api.run(
        [
            "--strict",
            "--no-incremental",
            "--config-file",
            str(here.parent / "pyproject.toml"),
            str(here / "typing" / "check_middleware.py"),
        ]
    )
    assert status == 0, stdout + stderr
