"""HTTP request coalescing for any ASGI app (Starlette, FastAPI, ...): SPEC section 5.

``CoalesceMiddleware(app)`` runs identical concurrent requests once and gives every
client the same status, headers and body (H1). It speaks plain ASGI 3 and imports no
framework.

How a coalesced request travels. Its key is built from the scope; the first request
of a key leads a flight of the middleware's :class:`coalesce.AsyncGroup`, whose
execution runs the downstream app in a task of its own, apart from every client (H4,
as S7), and buffers what the app sends up to ``max_body`` bytes. Meanwhile each
client's request task waits on the flight and listens for its client's disconnect; a
client that goes away only ends its own wait, and when every client has gone the
group cancels the execution, which cancels the app. A complete response is the
flight's value: the leader gets it, and so does every other client its headers allow
(H1, H2); the rest get downstream calls of their own. A response past ``max_body``
settles the flight at once with an overflow: the waiting clients make their own
calls, and the app's task streams the rest to the leader through a one-slot
hand-off (H3).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, MutableMapping
from typing import Any, Final, TypeAlias

from ._flight import AsyncGroup, Stats
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

Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]

_log = logging.getLogger("coalesce.asgi")

# Extensions let an app send messages other than the start and body of a response
# (pathsend, zerocopy, trailers, early hints): the shared call is offered none but tls,
# so what it sends can be buffered and replayed to any client.
_KEPT_EXTENSIONS: Final = frozenset({"tls"})
_BODY_HEADERS: Final = (b"content-length", b"transfer-encoding")

_Head: TypeAlias = tuple[int, tuple[tuple[bytes, bytes], ...]]
_Reply: TypeAlias = Reply[_Head]


class CoalesceMiddleware(Middleware[ASGIApp, Scope, _Head]):
    __doc__ = middleware_doc(
        protocol="ASGI",
        request="scope",
        refresh="",
        client="``redis.asyncio.Redis``",
        note="Only ``http`` scopes coalesce; ``lifespan`` and ``websocket`` pass straight through.",
    )

    __slots__ = ("_group", "_keyed", "_tasks", "_watched")

    _OWNER = "coalesce.asgi.CoalesceMiddleware"
    _WRAPS = "an ASGI app"
    _ASYNC = True
    __signature__ = Middleware._signature(app="ASGIApp", request="Scope")

    def _setup(self) -> Stats:
        self._keyed = tuple(name.encode("latin-1") for name in self._options.keyed)
        # Every request header the key or the pass-through rules read (H1, H2).
        self._watched = frozenset((*self._keyed, *_BODY_HEADERS, *_CREDENTIAL_BYTES))
        self._group = AsyncGroup()
        # Downstream calls whose response is settled but whose app still runs
        # (background work, or streaming to a leader): kept alive until they end.
        self._tasks: set[asyncio.Task[None]] = set()
        return self._group._stats

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        key = self._key(scope)
        if key is None:
            await self.app(scope, receive, send)
            return
        hit = self._lookup(key, scope)
        if hit is not None:
            await _send_reply(send, hit)
            return
        await self._coalesce(key, _Client(scope, receive, send))

    # ---------------------------------------------- the request, as the frame reads it

    def _method(self, scope: Scope) -> str:
        method: str = scope.get("method", "GET")
        return method

    def _inspect(self, scope: Scope) -> tuple[bool, bool, dict[bytes, list[bytes]]]:
        watched = self._watched
        found: dict[bytes, list[bytes]] = {}
        for name, value in scope.get("headers", ()):
            # ASGI servers send lower-case names; lower them anyway, as a credential
            # that slipped past in capitals would be shared.
            name = (name if type(name) is bytes else bytes(name)).lower()
            if name in watched:
                found.setdefault(name, []).append(bytes(value))
        if not found:
            return False, False, found
        lengths = found.get(b"content-length", ())
        body = b"transfer-encoding" in found or any(v.strip() not in (b"", b"0") for v in lengths)
        credentials = any(name in found for name in _CREDENTIAL_BYTES)
        return body, credentials, found

    def _where(self, scope: Scope, found: dict[bytes, list[bytes]]) -> Hashable:
        return (
            scope.get("scheme", "http"),
            scope.get("root_path", ""),
            scope.get("path", ""),
            scope.get("raw_path"),
            scope.get("query_string", b""),
            tuple(tuple(found.get(name, ())) for name in self._keyed),
        )

    def _reader(self, scope: Scope) -> Callable[[str], object]:
        return _header_reader(scope)

    # ------------------------------------------------------- a client's side

    async def _coalesce(self, key: Hashable, client: _Client) -> None:
        task = asyncio.current_task()
        assert task is not None, "ASGI apps run in a task"
        client.task = task
        # Started now, it first runs once this task waits: the join below happens
        # before anything else can.
        client.listener = asyncio.create_task(_listen(client))
        try:
            outcome, _ = await self._group.do_shared(key, self._execute, key, client)
            if outcome is OWN_CALL:
                await self._call_own(client)
            elif isinstance(outcome, _Overflow):
                if outcome.leader is client:
                    await _stream_to(client, outcome.stream)
                else:
                    await self._call_own(client)
            elif outcome.fits(client, _header_reader(client.scope)):
                client.hush()
                await _send_reply(client.send, outcome)
            else:
                await self._call_own(client)
        except asyncio.CancelledError:
            # Our listener cancels this task when the client disconnects: that ends
            # only this client's part. Any other cancellation goes on up.
            if not client.disconnected or task.uncancel() > 0:
                raise
        finally:
            client.gone = True
            client.hush()
            if client.stream is not None:
                client.stream.abandon()

    async def _call_own(self, client: _Client) -> None:
        """Serve ``client`` by a downstream call of its own."""
        client.hush()
        await self.app(client.scope, client.replaying_receive(), client.send)

    # ------------------------------------------------- the shared execution

    async def _execute(self, key: Hashable, client: _Client) -> _Reply | _Overflow | Any:
        """The flight's function: run the app for the leader's request, settle a reply.

        With ``backend=`` the call goes through the backend's flight (H6): the app runs
        here only if no process has the response or is making it; what it returns
        travels in wire form, and a response that may not be shared never leaves this
        process (other processes are told to make their own calls).
        """
        binding = self._binding
        if binding is None:
            outcome = await self._exchange(client)
            if isinstance(outcome, Reply):
                self._keep(key, outcome)
            return outcome
        made: list[_Reply | _Overflow] = []
        answered = False

        async def compute() -> str:
            # After the call has answered, the backend runs this to refresh a stale
            # response (H7): apart from any client.
            leader = _detached(client.scope) if answered else client
            outcome = await self._exchange(leader)
            if leader is client:
                made.append(outcome)
            return self._publish(key, outcome)

        try:
            value = await binding.acall(key, compute)
        except Exception as exc:
            return self._through_failed(made, exc)
        finally:
            answered = True
        return self._through(made, value)

    async def _exchange(self, leader: _Client) -> _Reply | _Overflow:
        """Run the app once for ``leader``'s request, in a task of its own (H4)."""
        exchange = _Exchange(leader, self._options.max_body, self._judge)
        runner = asyncio.create_task(exchange.run(self.app))
        self._tasks.add(runner)
        runner.add_done_callback(self._tasks.discard)
        exchange.runner = runner
        try:
            return await exchange.settled
        except asyncio.CancelledError:
            exchange.stop()  # every client has gone (S7): stop the downstream call
            raise

    def _refresh(self, key: Hashable, scope: Scope) -> None:
        if key in self._group:
            return  # a call for this key is running: it refreshes the response
        task = asyncio.get_running_loop().create_task(self._background(key, scope))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _background(self, key: Hashable, scope: Scope) -> None:
        try:
            await self._group.do(key, self._execute, key, _detached(scope))
        except Exception:
            log_refresh_failed(_log)

    def _head_out(self, head: _Head) -> tuple[int | str, list[tuple[str, str]]]:
        status, headers = head
        return status, [(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers]

    def _head_in(self, status: int | str, headers: list[tuple[str, str]]) -> _Head:
        return int(status), tuple((n.encode("latin-1"), v.encode("latin-1")) for n, v in headers)


_CREDENTIAL_BYTES: Final = tuple(name.encode("latin-1") for name in CREDENTIALS)


def _header_reader(scope: Scope) -> Callable[[str], object]:
    """``header(name)``: every value the request sent for ``name``, in order."""
    headers = scope.get("headers", ())

    def header(name: str) -> object:
        raw = name.encode("latin-1")
        return tuple(bytes(value) for key, value in headers if bytes(key).lower() == raw)

    return header


async def _send_reply(send: Send, reply: _Reply) -> None:
    status, headers = reply.head
    listed = list(headers)
    upstream = next((v for n, v in listed if n.lower() == b"age"), None)
    age = reply.age(None if upstream is None else upstream.decode("latin-1"))
    if age is not None:  # served from the micro-cache (H8)
        listed = [(n, v) for n, v in listed if n.lower() != b"age"]
        listed.append((b"age", age.encode("latin-1")))
    await send({"type": "http.response.start", "status": status, "headers": listed})
    await send({"type": "http.response.body", "body": reply.body, "more_body": False})


async def _never(*_: Any) -> Any:
    raise RuntimeError("a background refresh has no client to receive from or send to")


def _detached(scope: Scope) -> _Client:
    """A leader for a downstream call that runs apart from any client (H7)."""
    leader = _Client(scope, _never, _never)
    leader.gone = True  # nobody to stream an oversized response to
    return leader


class _Client:
    """One request the middleware is serving through a flight."""

    __slots__ = (
        "disconnected",
        "gone",
        "listener",
        "read",
        "receive",
        "scope",
        "send",
        "stream",
        "task",
    )

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.task: asyncio.Task[Any] | None = None
        self.listener: asyncio.Task[None] | None = None
        self.read: deque[Message] = deque()  # request messages the listener consumed
        self.disconnected = False
        self.gone = False  # this client's part has ended
        self.stream: _Stream | None = None  # set when it leads an oversized response

    def hush(self) -> None:
        """Stop listening for a disconnect: a server answers ``http.disconnect`` once
        the response is complete, and the app makes its own receive calls."""
        if self.listener is not None:
            self.listener.cancel()
            self.listener = None

    def replaying_receive(self) -> Receive:
        """The client's ``receive``, first giving back what the listener consumed."""
        read = self.read
        receive = self.receive

        async def replay() -> Message:
            if read:
                return read.popleft()
            return await receive()

        return replay


async def _listen(client: _Client) -> None:
    """Wait for ``client`` to disconnect; then end its wait by cancelling its task."""
    while True:
        try:
            message = await client.receive()
        except Exception:  # a server's receive failing: stop listening, serve on
            _log.debug("receive() failed while listening for a disconnect", exc_info=True)
            return
        if message["type"] == "http.disconnect":
            client.disconnected = True
            assert client.task is not None
            client.task.cancel()
            return
        client.read.append(message)


async def _stream_to(client: _Client, stream: _Stream) -> None:
    """Send the leader its oversized response as the app produces it (H3)."""
    send = client.send
    await send(stream.start)
    while True:
        message = await stream.get()  # raises what the app raised
        if not message.get("more_body", False):
            client.hush()
            await send(message)
            return
        await send(message)


class _Overflow:
    """A flight's outcome when the body passed ``max_body``: only its leader is served."""

    __slots__ = ("leader", "stream")

    def __init__(self, leader: _Client, stream: _Stream) -> None:
        self.leader = leader
        self.stream = stream


class _Stream:
    """Hands the rest of an oversized response from the app's task to the leader's.

    One message at a time: the app's ``send`` waits until the leader has taken the
    previous one, so a slow client slows the app down as it would unshared. When the
    leader's part ends early, ``abandon()`` makes the app's next ``send`` raise
    ``OSError``, as a server's does once its client has gone (ASGI 2.4).
    """

    __slots__ = ("_abandoned", "_ended", "_error", "_items", "_reader", "_writer", "start")

    def __init__(self, start: Message, first: Message, abandoned: asyncio.Event) -> None:
        self.start = start
        self._abandoned = abandoned  # set when the leader goes: the app hears disconnect
        self._items: deque[Message] = deque([first])
        self._reader: asyncio.Future[None] | None = None
        self._writer: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._ended = False  # abandoned by the leader, or failed

    async def put(self, message: Message) -> None:
        while self._items and not self._ended:
            self._writer = asyncio.get_running_loop().create_future()
            try:
                await self._writer
            finally:
                self._writer = None
        if self._ended:
            raise OSError("the client this response was streaming to has disconnected")
        self._items.append(message)
        _wake(self._reader)

    async def get(self) -> Message:
        while not self._items:
            if self._error is not None:
                raise self._error
            if self._ended:
                raise RuntimeError("the response stream was abandoned")
            self._reader = asyncio.get_running_loop().create_future()
            try:
                await self._reader
            finally:
                self._reader = None
        message = self._items.popleft()
        _wake(self._writer)
        return message

    def fail(self, error: BaseException) -> None:
        """The app ended without finishing the response: the leader raises ``error``."""
        self._error = error
        self._ended = True
        _wake(self._reader)

    def abandon(self) -> None:
        """The leader's part has ended: the app's further sends raise."""
        self._ended = True
        self._items.clear()
        self._abandoned.set()
        _wake(self._writer)


def _wake(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


class _Exchange:
    """One shared downstream call: the app's side of the conversation.

    The app gets the leader's request with no body, then, from ``receive``,
    ``http.disconnect`` once its response is complete or nobody wants it any more.
    What it sends is checked and buffered; ``settled`` resolves with the complete
    reply, with an overflow past ``max_body``, or with what the app raised.
    """

    __slots__ = (
        "_body",
        "_final",
        "_given",
        "_hangup",
        "_head",
        "_judge",
        "_leader",
        "_max_body",
        "_size",
        "_stopping",
        "_stream",
        "runner",
        "settled",
    )

    def __init__(
        self, leader: _Client, max_body: int, judge: Callable[[int, Any], Verdict]
    ) -> None:
        self._leader = leader
        self._max_body = max_body
        self._judge = judge
        self.settled: asyncio.Future[_Reply | _Overflow] = (
            asyncio.get_running_loop().create_future()
        )
        self.runner: asyncio.Task[None] | None = None
        self._head: _Head | None = None
        self._body: list[bytes] = []
        self._size = 0
        self._stream: _Stream | None = None
        self._given = False  # the app has received the request
        self._final = False  # the app has sent the last body message
        self._hangup = asyncio.Event()  # from now on the app's receive says disconnect
        self._stopping = False

    async def run(self, app: ASGIApp) -> None:
        scope = dict(self._leader.scope)
        extensions = scope.get("extensions")
        if extensions:
            scope["extensions"] = {k: v for k, v in extensions.items() if k in _KEPT_EXTENSIONS}
        try:
            await app(scope, self._receive, self._send)
        except BaseException as exc:
            self._failed(exc)
            if not isinstance(exc, Exception | asyncio.CancelledError):
                raise  # KeyboardInterrupt, SystemExit
        else:
            if not self._final:
                self._failed(RuntimeError(_INCOMPLETE))
        finally:
            self._hangup.set()

    def stop(self) -> None:
        """Nobody wants the response any more: cancel the app."""
        self._stopping = True
        self._hangup.set()
        settled = self.settled
        if not settled.done():
            settled.cancel()
        elif not settled.cancelled():
            settled.exception()  # settled as the last client left: nobody will look
        if self.runner is not None:
            self.runner.cancel()

    def _failed(self, exc: BaseException) -> None:
        if self._stopping:
            return
        if not self.settled.done():
            if isinstance(exc, asyncio.CancelledError):
                error = RuntimeError("the downstream app was cancelled")
                error.__cause__ = exc
                exc = error
            self.settled.set_exception(exc)
        elif self._stream is not None and not self._final:
            self._stream.fail(exc)  # the leader raises it: its connection is cut
        elif self._final and not isinstance(exc, asyncio.CancelledError):
            # The response was complete: this is the app's after-work (background
            # tasks) failing, with no client left to tell.
            _log.error("the downstream app raised after its response was complete", exc_info=exc)

    async def _receive(self) -> Message:
        if not self._given:
            self._given = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self._hangup.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: Message) -> None:
        kind = message["type"]
        if self._stopping:
            raise OSError("every client of this shared response has disconnected")
        if self._final:
            raise RuntimeError(f"unexpected ASGI message {kind!r} after a complete response")
        stream = self._stream
        if stream is not None:
            if kind != "http.response.body":
                raise RuntimeError(f"unexpected ASGI message {kind!r} in a response body")
            await stream.put(message)  # raises OSError once the leader has gone
            if not message.get("more_body", False):
                self._final = True
                self._hangup.set()
            return
        if kind == "http.response.start":
            if self._head is not None:
                raise RuntimeError("ASGI message 'http.response.start' sent twice")
            headers = tuple((bytes(n), bytes(v)) for n, v in message.get("headers", ()))
            self._head = (int(message["status"]), headers)
        elif kind == "http.response.body":
            if self._head is None:
                raise RuntimeError(
                    "ASGI message 'http.response.body' sent before 'http.response.start'"
                )
            body = bytes(message.get("body", b""))
            more = bool(message.get("more_body", False))
            self._size += len(body)
            if self._size > self._max_body:
                self._overflow(body, more)
            else:
                if body:
                    self._body.append(body)
                if not more:
                    self._complete()
        else:
            raise RuntimeError(
                f"ASGI message {kind!r} cannot be shared between clients; "
                "the coalescing middleware takes only 'http.response.start' and "
                "'http.response.body'"
            )

    def _complete(self) -> None:
        head = self._head
        assert head is not None
        status, headers = head
        verdict = self._judge(
            status, ((n.decode("latin-1"), v.decode("latin-1")) for n, v in headers)
        )
        header = _header_reader(self._leader.scope)
        varied = tuple((name, header(name)) for name in sorted(verdict.vary))
        self._final = True
        self._hangup.set()
        self.settled.set_result(Reply(self._leader, head, b"".join(self._body), verdict, varied))
        self._body = []

    def _overflow(self, body: bytes, more: bool) -> None:
        head = self._head
        assert head is not None
        status, headers = head
        start: Message = {"type": "http.response.start", "status": status}
        start["headers"] = list(headers)
        first: Message = {"type": "http.response.body", "more_body": more}
        first["body"] = b"".join([*self._body, body])
        self._body = []
        stream = self._stream = _Stream(start, first, self._hangup)
        if not more:
            self._final = True
            self._hangup.set()
        leader = self._leader
        leader.stream = stream
        if leader.gone:
            stream.abandon()
        self.settled.set_result(_Overflow(leader, stream))


_INCOMPLETE: Final = "the downstream app returned without completing its response"
