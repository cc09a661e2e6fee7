"""HTTP request coalescing for any WSGI app (Flask, Django, ...): SPEC section 5.

``CoalesceMiddleware(app)`` runs identical concurrent requests once and gives every
client the same status, headers and body (H1). It speaks plain WSGI (PEP 3333) and
imports no framework.

How a coalesced request travels. Its key is built from the environ; the first request
of a key leads a flight of the middleware's :class:`coalesce.Group` and, in its own
server thread, runs the app and buffers the response up to ``max_body`` bytes (the
app's ``start_response``, ``write()`` and iterable are all honoured, and the iterable
is closed). The other requests' threads wait on the flight. A complete response is
the flight's value: the leader gets it, and so does every other client its headers
allow (H1, H2); the rest get downstream calls of their own. A response past
``max_body`` settles the flight at once with an overflow: the waiting clients make
their own calls, and the leader's thread goes on streaming the rest of the app's
iterable to its own client (H3).

WSGI tells an app nothing of a client that disconnects, so the leader's thread always
finishes the downstream call and the waiting clients still get its response (H4).
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable, Hashable, Iterable, Iterator
from types import TracebackType
from typing import Any, Final, Protocol, TypeAlias

from ._flight import Group, Stats
from ._http import (
    CREDENTIALS,
    OWN_CALL,
    Middleware,
    Reply,
    Verdict,
    log_refresh_failed,
    middleware_doc,
)

__all__ = ("CoalesceMiddleware",)

Environ: TypeAlias = dict[str, Any]
ExcInfo: TypeAlias = tuple[type[BaseException], BaseException, TracebackType | None]
Write: TypeAlias = Callable[[bytes], object]


class StartResponse(Protocol):
    """The ``start_response`` callable of PEP 3333."""

    def __call__(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: ExcInfo | None = ...,
        /,
    ) -> Write: ...


WSGIApp: TypeAlias = Callable[[Environ, StartResponse], Iterable[bytes]]

_log = logging.getLogger("coalesce.wsgi")

_Head: TypeAlias = tuple[str, tuple[tuple[str, str], ...]]
_Reply: TypeAlias = Reply[_Head]


def _environ_name(header: str) -> str:
    """The environ key a request header arrives under (PEP 3333)."""
    name = header.upper().replace("-", "_")
    return name if name in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + name


# With REMOTE_USER the server itself has authenticated the client (and may have kept
# the Authorization header from the app): it counts as a credential too.
_CREDENTIAL_KEYS: Final = (*(_environ_name(name) for name in CREDENTIALS), "REMOTE_USER")


class CoalesceMiddleware(Middleware[WSGIApp, Environ, _Head]):
    __doc__ = middleware_doc(
        protocol="WSGI",
        request="environ",
        refresh=" (in a thread of its own)",
        client="``redis.Redis``",
        note="Needs a threaded server (waitress, gunicorn with threads, ...): the clients "
        "of one key wait in their own threads while the first one's thread runs the app.",
    )

    __slots__ = ("_group", "_keyed")

    _OWNER = "coalesce.wsgi.CoalesceMiddleware"
    _WRAPS = "a WSGI app"
    _ASYNC = False
    __signature__ = Middleware._signature(app="WSGIApp", request="Environ")

    def _setup(self) -> Stats:
        self._keyed = tuple(_environ_name(name) for name in self._options.keyed)
        self._group = Group()
        return self._group._stats

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        key = self._key(environ)
        if key is None:
            return self.app(environ, start_response)
        hit = self._lookup(key, environ)
        if hit is not None:
            return _give(hit, start_response)
        client = _Client(environ, start_response)
        outcome, _ = self._group.do_shared(key, self._execute, key, client)
        if outcome is OWN_CALL:
            return self.app(environ, start_response)
        if isinstance(outcome, _Overflow):
            if outcome.leader is client:
                if not outcome.started:
                    start_response(outcome.head[0], list(outcome.head[1]))
                return outcome.body
            return self.app(environ, start_response)
        if outcome.fits(client, _header_reader(environ)):
            return _give(outcome, start_response)
        return self.app(environ, start_response)

    # -- the request, as the frame reads it

    def _method(self, environ: Environ) -> str:
        method: str = environ.get("REQUEST_METHOD", "GET")
        return method

    def _inspect(self, environ: Environ) -> tuple[bool, bool, None]:
        length = str(environ.get("CONTENT_LENGTH") or "").strip()
        body = bool(environ.get("HTTP_TRANSFER_ENCODING")) or length not in ("", "0")
        credentials = any(environ.get(name) for name in _CREDENTIAL_KEYS)
        return body, credentials, None

    def _where(self, environ: Environ, found: None) -> Hashable:
        return (
            environ.get("wsgi.url_scheme", "http"),
            environ.get("SERVER_NAME"),
            environ.get("SERVER_PORT"),
            environ.get("SCRIPT_NAME", ""),
            environ.get("PATH_INFO", ""),
            environ.get("QUERY_STRING", ""),
            environ.get("RAW_URI", environ.get("REQUEST_URI")),
            environ.get("REMOTE_USER") if self._options.private else None,
            tuple(environ.get(name) for name in self._keyed),
        )

    def _reader(self, environ: Environ) -> Callable[[str], object]:
        return _header_reader(environ)

    def _execute(self, key: Hashable, client: _Client) -> _Reply | _Overflow | Any:
        """The flight's function: run the app for the leader's request, settle a reply.

        It runs in the leader's own thread (a waiter that takes over after an abort,
        S8, runs it with its own request and so becomes the leader). With
        ``backend=`` the call goes through the backend's flight (H6): the app runs here
        only if no process has the response or is making it; a response that may not
        be shared never leaves this process.
        """
        binding = self._binding
        if binding is None:
            outcome = self._call(client)
            if isinstance(outcome, Reply):
                self._keep(key, outcome)
            return outcome
        made: list[_Reply | _Overflow] = []
        answered = False

        def compute() -> str:
            # After the call has answered, the backend runs this in a thread of its
            # own to refresh a stale response (H7): apart from any client.
            if answered:
                outcome = self._call(_detached(client.environ))
                if isinstance(outcome, _Overflow):
                    outcome.body.close()
            else:
                outcome = self._call(client)
                made.append(outcome)
            return self._publish(key, outcome)

        try:
            value = binding.call(key, compute)
        except Exception as exc:
            return self._through_failed(made, exc)
        finally:
            answered = True
        return self._through(made, value)

    def _call(self, client: _Client) -> _Reply | _Overflow:
        """Run the app once for ``client``'s request and buffer its response."""
        capture = _Capture(client, self._options.max_body, self._judge)
        # A file wrapper hands the server a file to send its own way; the shared
        # call must give plain bytes it can buffer.
        environ = {k: v for k, v in client.environ.items() if k != "wsgi.file_wrapper"}
        result = self.app(environ, capture.start_response)
        handed_off = False
        try:
            chunks = iter(result)
            for chunk in chunks:
                if capture.take(chunk):
                    handed_off = True
                    return capture.overflow(chunks, result)
            if capture.head is None:
                raise RuntimeError("the downstream app returned without calling start_response()")
            if capture.streaming:  # write() passed max_body; nothing else came
                handed_off = True
                return capture.overflow(chunks, result)
        finally:
            if not handed_off:
                _close(result)
        return capture.reply()

    def _refresh(self, key: Hashable, environ: Environ) -> None:
        if key in self._group:
            return  # a call for this key is running: it refreshes the response
        threading.Thread(
            target=self._background,
            args=(key, _detached(environ)),
            name="coalesce-wsgi-refresh",
            daemon=True,
        ).start()

    def _background(self, key: Hashable, leader: _Client) -> None:
        try:
            outcome = self._group.do(key, self._execute, key, leader)
        except Exception:
            log_refresh_failed(_log)
            return
        if isinstance(outcome, _Overflow) and outcome.leader is leader:
            outcome.body.close()

    def _head_out(self, head: _Head) -> tuple[int | str, list[tuple[str, str]]]:
        status, headers = head
        return status, list(headers)

    def _head_in(self, status: int | str, headers: list[tuple[str, str]]) -> _Head:
        return str(status), tuple(headers)


def _no_start_response(
    status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None, /
) -> Write:
    raise RuntimeError("a background refresh has no client to respond to")


def _detached(environ: Environ) -> _Client:
    """A leader for a downstream call that runs apart from any client (H7): a copy of
    a request's environ with an empty body."""
    copy = dict(environ)
    copy["wsgi.input"] = io.BytesIO(b"")
    return _Client(copy, _no_start_response)


def _header_reader(environ: Environ) -> Callable[[str], object]:
    """``header(name)``: the value the request sent for ``name``, or ``None``."""
    return lambda name: environ.get(_environ_name(name))


def _give(reply: _Reply, start_response: StartResponse) -> list[bytes]:
    status, headers = reply.head
    listed = list(headers)
    upstream = next((v for n, v in listed if n.lower() == "age"), None)
    age = reply.age(upstream)
    if age is not None:  # served from the micro-cache (H8)
        listed = [(n, v) for n, v in listed if n.lower() != "age"]
        listed.append(("Age", age))
    start_response(status, listed)
    return [reply.body]


def _close(result: Iterable[bytes]) -> None:
    close = getattr(result, "close", None)
    if close is not None:
        close()


class _Client:
    """One request the middleware is serving through a flight."""

    __slots__ = ("environ", "start_response")

    def __init__(self, environ: Environ, start_response: StartResponse) -> None:
        self.environ = environ
        self.start_response = start_response


class _Overflow:
    """A flight's outcome when the body passed ``max_body``: only its leader is served."""

    __slots__ = ("body", "head", "leader", "started")

    def __init__(self, leader: _Client, head: _Head, started: bool, body: _LeaderBody) -> None:
        self.leader = leader
        self.head = head
        self.started = started  # start_response was already called for the leader
        self.body = body


class _LeaderBody:
    """The leader's oversized response: what was buffered, then the rest as it comes."""

    __slots__ = ("_first", "_rest", "_result")

    def __init__(self, first: bytes, rest: Iterator[bytes], result: Iterable[bytes]) -> None:
        self._first = first
        self._rest = rest
        self._result = result

    def __iter__(self) -> Iterator[bytes]:
        if self._first:
            first, self._first = self._first, b""
            yield first
        yield from self._rest

    def close(self) -> None:
        _close(self._result)


class _Capture:
    """``start_response`` and ``write()`` for the shared call: keep the head, buffer
    the body up to ``max_body``; past it, stream to the leader's own client."""

    __slots__ = ("_body", "_client", "_judge", "_max_body", "_size", "_write", "head", "sent")

    def __init__(
        self, client: _Client, max_body: int, judge: Callable[[int, Any], Verdict]
    ) -> None:
        self._client = client
        self._max_body = max_body
        self._judge = judge
        self.head: _Head | None = None
        self.sent = False  # body bytes have been produced: the head is final
        self._body: list[bytes] = []
        self._size = 0
        self._write: Write | None = None  # the leader's own write(), once streaming

    @property
    def streaming(self) -> bool:
        return self._write is not None

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: ExcInfo | None = None,
        /,
    ) -> Write:
        if exc_info is not None:
            try:
                if self.sent:
                    # PEP 3333: too late to change the response; let the error through.
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # no reference cycle through the traceback
        elif self.head is not None:
            raise RuntimeError(
                "start_response() was called a second time without exc_info (PEP 3333)"
            )
        if not isinstance(status, str) or not status[:3].isdigit():
            raise ValueError(f"start_response() needs a status like '200 OK', not {status!r}")
        self.head = (status, tuple((str(n), str(v)) for n, v in headers))
        return self._write_body

    def _write_body(self, data: bytes) -> None:
        """The ``write()`` callable start_response returns (for legacy apps)."""
        if self.head is None:
            raise RuntimeError("write() was called before start_response()")
        if self._write is not None:
            self._write(data)
        elif self.take(data):
            # Too large to share: send the leader its head and what we hold, then
            # write the rest straight through.
            head = self.head
            write = self._write = self._client.start_response(head[0], list(head[1]))
            write(b"".join(self._body))
            self._body = []

    def take(self, chunk: bytes) -> bool:
        """Buffer a chunk of the iterable; ``True`` once the body is past ``max_body``."""
        if self.head is None:
            raise RuntimeError("the downstream app produced a body before start_response()")
        if not chunk:
            return False
        self.sent = True
        self._body.append(bytes(chunk))
        if self._write is not None:
            return True  # streaming already (write() passed max_body): hand it all off
        self._size += len(chunk)
        return self._size > self._max_body

    def overflow(self, rest: Iterator[bytes], result: Iterable[bytes]) -> _Overflow:
        assert self.head is not None
        first = b"".join(self._body)
        self._body = []
        body = _LeaderBody(first, rest, result)
        return _Overflow(self._client, self.head, self._write is not None, body)

    def reply(self) -> _Reply:
        head = self.head
        assert head is not None
        status, headers = head
        verdict = self._judge(int(status[:3]), headers)
        header = _header_reader(self._client.environ)
        varied = tuple((name, header(name)) for name in sorted(verdict.vary))
        return Reply(self._client, head, b"".join(self._body), verdict, varied)
