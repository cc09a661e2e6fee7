"""Real servers and a cross-thread probe for the middleware tests (SPEC section 5).

The servers run in a thread of the test process on 127.0.0.1: uvicorn for ASGI,
waitress (threaded) for WSGI. Each listens on a socket bound and listening before the
server starts, so a client can connect at once (the kernel queues the connection)
and nothing waits for the server to come up.

``Probe`` counts what happens on the server side (requests arriving at the
middleware, downstream calls, releases from the test) and lets any thread or event
loop wait until a count is reached. Waits are bounded (``WAIT`` seconds) so a bug is
a failure, never a hang; they are hang guards, never the synchronisation itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.cookiejar
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from typing import Any

import uvicorn
import waitress.server

WAIT = 10.0
"""Seconds any single wait may take before the test fails instead of hanging."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Probe:
    """Named counters, shared by the server's threads and the test, with waits on them."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._counts: Counter[str] = Counter()
        self._futures: list[asyncio.Future[None]] = []

    def __getitem__(self, name: str) -> int:
        with self._cond:
            return self._counts[name]

    def bump(self, name: str, n: int = 1) -> int:
        """Add ``n`` to counter ``name`` and wake every waiter; the new count."""
        with self._cond:
            self._counts[name] += n
            count = self._counts[name]
            futures, self._futures = self._futures, []
            self._cond.notify_all()
        for future in futures:
            future.get_loop().call_soon_threadsafe(_wake, future)
        return count

    def wait(self, predicate: Callable[[Probe], bool], what: str = "a count") -> None:
        """Block this thread until ``predicate(probe)`` holds (bounded)."""
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self), WAIT):
                raise AssertionError(f"timed out waiting for {what}: {dict(self._counts)}")

    def settle(self, predicate: Callable[[], bool], what: str = "a state") -> None:
        """Block until ``predicate()`` holds, re-checking it (bounded).

        For states that have no event of their own, such as how many requests have
        joined a flight (``cache_info().coalesced``): it re-checks, it never guesses a
        duration.
        """
        with self._cond:
            deadline = time.monotonic() + WAIT
            while not predicate():
                if time.monotonic() > deadline:
                    raise AssertionError(f"timed out waiting for {what}: {dict(self._counts)}")
                self._cond.wait(0.001)

    async def until(self, predicate: Callable[[Probe], bool], what: str = "a count") -> None:
        """Wait in this event loop until ``predicate(probe)`` holds (bounded)."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(WAIT):
                while True:
                    with self._cond:
                        if predicate(self):
                            return
                        future = loop.create_future()
                        self._futures.append(future)
                    await future
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}: {dict(self._counts)}") from None


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def joined(middleware: Any) -> int:
    """How many requests have joined a downstream call already running (``coalesced``)."""
    coalesced: int = middleware.cache_info().coalesced
    return coalesced


def count_asgi(app: ASGIApp, probe: Probe) -> ASGIApp:
    """Wrap ``app`` (the middleware): count ``arrived`` and ``finished`` HTTP requests.

    ``arrived`` is counted just before the request enters the middleware, which joins
    it to its flight before it first yields: once the count is seen, it has joined.
    """

    async def counted(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        probe.bump("arrived")
        try:
            await app(scope, receive, send)
        finally:
            probe.bump("finished")

    return counted


def count_wsgi(app: Callable[..., Iterable[bytes]], probe: Probe) -> Callable[..., Any]:
    """Wrap ``app`` (the middleware): count ``arrived`` WSGI requests."""

    def counted(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        probe.bump("arrived")
        return app(environ, start_response)

    return counted


def no_cookies() -> http.cookiejar.CookieJar:
    """A cookie jar that keeps nothing: a test's clients must not echo Set-Cookie back."""
    return http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Stop a server process started by a test: SIGTERM, then SIGKILL if it lingers."""
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def _listening_socket() -> socket.socket:
    # IPPROTO_TCP, so asyncio sets TCP_NODELAY on accepted connections (no Nagle delays).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock


@contextlib.contextmanager
def serve_asgi(app: ASGIApp, lifespan: str = "off") -> Iterator[str]:
    """Run ``app`` under uvicorn in a thread; yield its base URL; stop it after."""
    sock = _listening_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        lifespan=lifespan,
        log_config=None,
        log_level="critical",
        access_log=False,
        http="h11",
        loop="asyncio",
        timeout_graceful_shutdown=WAIT,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(WAIT)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"


@contextlib.contextmanager
def serve_wsgi(app: Callable[..., Iterable[bytes]], threads: int = 16) -> Iterator[str]:
    """Run ``app`` under waitress (``threads`` worker threads) in a thread; yield its URL."""
    sock = _listening_socket()
    port = sock.getsockname()[1]
    server: Any = waitress.server.create_server(
        app, sockets=[sock], threads=threads, connection_limit=1000, channel_timeout=WAIT
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:

        def close_all() -> None:
            # Runs in the server's own loop thread: close every channel and the
            # listener, so the loop finds its map empty and returns.
            for dispatcher in list(server._map.values()):
                dispatcher.close()

        # Worker threads first: one still finishing a response pulls the trigger,
        # which must not be closed under it (EBADF in waitress's thread).
        server.task_dispatcher.shutdown(timeout=WAIT)
        server.trigger.pull_trigger(close_all)
        thread.join(WAIT)
        sock.close()
        assert not thread.is_alive(), "waitress did not stop"


async def asgi_respond(
    send: Send,
    body: bytes = b"",
    *,
    status: int = 200,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    """Send a complete ASGI response."""
    await send({"type": "http.response.start", "status": status, "headers": list(headers)})
    await send({"type": "http.response.body", "body": body, "more_body": False})
