"""What the ASGI and WSGI middlewares share: options, keys, and which responses travel.

Both middlewares (``coalesce.asgi``, ``coalesce.wsgi``) are :class:`Middleware`, the
frame here, with a driver for their protocol's I/O over the core's groups. Nothing
here does I/O: it validates the options, says which requests pass straight through
and which request headers join a request's key, decides from a response's status and
headers whether it may go to a client it was not made for (H1, H2) and whether the
micro-cache may keep it (H5), and counts.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import inspect
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Final, Generic, NoReturn, Self, TypeVar, cast

from . import _observe
from ._backend import Backend, Fleet, bind_async, bind_sync, check_backend, takes_fleet
from ._decorator import CacheInfo, StatsTally
from ._errors import RemoteError
from ._flight import Stats
from ._seconds import seconds
from ._store import MISSING, TTLStore

__all__ = (
    "ALWAYS_KEYED",
    "CREDENTIALS",
    "NOT_SHARED",
    "OPTION_NAMES",
    "OWN_CALL",
    "Middleware",
    "NotShared",
    "Options",
    "Reply",
    "Verdict",
    "checked_key",
    "judge",
    "log_refresh_failed",
    "metric_name",
    "middleware_doc",
    "reject_arguments",
)

H = TypeVar("H")

OPTION_NAMES: Final = (
    "methods",
    "vary",
    "private",
    "max_body",
    "ttl",
    "maxsize",
    "key",
    "stale",
    "backend",
)


def middleware_doc(*, protocol: str, request: str, refresh: str, client: str, note: str) -> str:
    """The docstring of a ``CoalesceMiddleware``: both take the same options.

    ``protocol`` is ``ASGI`` or ``WSGI``; ``request`` what ``key=`` is given; ``refresh``
    words after "one background downstream call"; ``client`` the Redis client
    ``backend=`` needs; ``note`` the closing paragraph.
    """
    return f"""Run identical concurrent HTTP requests once; every client gets the response.

    :param app: the {protocol} app to wrap.
    :param methods: the request methods that coalesce (each method its own key).
    :param vary: request header names that join the key (any case): requests that
        differ in them never share a response.
    :param private: coalesce requests that carry ``Authorization``,
        ``Proxy-Authorization`` or ``Cookie`` too, only with requests carrying the same
        values. ``False`` (the default): such requests pass straight through.
    :param max_body: the largest response body, in bytes, that is buffered and shared;
        past it the first client is streamed to and the others make their own calls.
    :param ttl: seconds to keep successful shareable responses (a micro-cache);
        ``None`` (the default) keeps none.
    :param maxsize: how many responses the micro-cache keeps at most.
    :param key: ``key({request})`` returns something hashable that joins the key, or
        ``None`` to let that request pass straight through.
    :param stale: seconds a kept response stays usable past its lifetime: it is served
        at once while one background downstream call{refresh}
        refreshes it (H7); needs ``ttl=``.
    :param backend: a :class:`coalesce.redis.RedisBackend` with a
        {client} client: identical requests in every worker process
        sharing that Redis run the app once, and the micro-cache lives there (H6).

    {note}
    """


def log_refresh_failed(log: logging.Logger) -> None:
    """Log the exception being handled: a background refresh (H7) failed."""
    log.warning(
        "background refresh of a stale response failed; it is served until its stale= window ends",
        exc_info=True,
    )


# Request headers that say who the client is. A request carrying one is served for
# that client alone unless private=True, where they join the key (H2).
CREDENTIALS: Final = ("authorization", "proxy-authorization", "cookie")

# Request headers that make one URL ask for a different response: the host it was sent
# to, a byte range, and the conditions that turn a 200 into a 304 or a 412. They always
# join the key, so a 304 made for a client holding an ETag never reaches one without it.
ALWAYS_KEYED: Final = (
    "host",
    "range",
    "if-range",
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
)

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def reject_arguments(owner: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Raise a helpful ``TypeError`` for options the middleware does not take.

    Called from ``__new__`` before Python's own check in ``__init__``, so a typo gets
    a suggestion instead of a bare "unexpected keyword argument".
    """
    if len(args) > 1:
        _fail(
            f"{owner}() takes the app positionally and every option by keyword, "
            f"e.g. {owner}(app, ttl=1.0); got {len(args) - 1} extra positional argument(s)"
        )
    for name in kwargs:
        if name == "app" or name in OPTION_NAMES:
            continue
        close = difflib.get_close_matches(name, OPTION_NAMES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        _fail(
            f"{owner}() got an unknown option {name!r}{hint} (options: {', '.join(OPTION_NAMES)})"
        )


def app_kind(app: object) -> str | None:
    """``"asgi"`` or ``"wsgi"`` when ``app`` can only be that kind of app, else ``None``.

    Conservative, so that a valid app is never refused: an app whose call is a
    coroutine function (an ``async def``, or an object whose ``__call__`` is one) is an
    ASGI app, since a WSGI app never is; a plain callable whose signature takes exactly
    two positional arguments (``environ, start_response``) and not three is a WSGI
    app. Anything else (an ASGI 2 class taking ``scope``, a callable taking
    ``*args``, one whose signature cannot be read) is not judged.
    """
    call = getattr(type(app), "__call__", None)  # noqa: B004 - the type's own __call__
    if inspect.iscoroutinefunction(app) or (
        not inspect.isfunction(app)
        and not inspect.ismethod(app)
        and not isinstance(app, type)
        and inspect.iscoroutinefunction(call)
    ):
        return "asgi"
    try:
        signature = inspect.signature(app)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if _binds(signature, 2) and not _binds(signature, 3):
        return "wsgi"
    return None


def _binds(signature: inspect.Signature, n: int) -> bool:
    try:
        signature.bind(*range(n))
    except TypeError:
        return False
    return True


def _fail(message: str) -> NoReturn:
    raise TypeError(message)


class _DefaultMaxsize(int):
    """The default ``maxsize`` (1024), told apart by identity from a ``maxsize=`` given,
    which ``backend=`` refuses (S20)."""

    __slots__ = ()


DEFAULT_MAXSIZE: Final[int] = _DefaultMaxsize(1024)


@dataclass(frozen=True, slots=True)
class Options:
    """The validated options of one middleware."""

    methods: frozenset[str]
    vary: tuple[str, ...]  # lower-case header names, in the order given
    private: bool
    max_body: int
    ttl: float | None
    maxsize: int
    key: Callable[[Any], Hashable | None] | None
    stale: float  # 0.0: off
    backend: Backend | None

    @property
    def keyed(self) -> tuple[str, ...]:
        """Every request header whose values join the key, in a fixed order."""
        names = ALWAYS_KEYED + tuple(n for n in self.vary if n not in ALWAYS_KEYED)
        if self.private:
            names += tuple(n for n in CREDENTIALS if n not in names)
        return names

    @classmethod
    def check(
        cls,
        owner: str,
        *,
        methods: object,
        vary: object,
        private: object,
        max_body: object,
        ttl: object,
        maxsize: object,
        key: object,
        stale: object = None,
        backend: object = None,
    ) -> Options:
        """Validate the options, naming the one that is wrong and how to fix it."""
        checked_ttl = _check_ttl(owner, ttl)
        given = maxsize is not DEFAULT_MAXSIZE
        return cls(
            methods=_check_methods(owner, methods),
            vary=_check_vary(owner, vary),
            private=_check_bool(owner, "private", private),
            max_body=_check_max_body(owner, max_body),
            ttl=checked_ttl,
            maxsize=_check_maxsize(owner, maxsize) if given else 1024,
            key=_check_key(owner, key),
            stale=_check_stale(owner, stale, checked_ttl),
            backend=_check_backend(owner, backend, maxsize_given=given),
        )

    def describe(self) -> str:
        """The options as keyword arguments, for ``repr()``."""
        key = "None" if self.key is None else getattr(self.key, "__qualname__", repr(self.key))
        return (
            f"methods={tuple(sorted(self.methods))!r}, vary={self.vary!r}, "
            f"private={self.private!r}, max_body={self.max_body!r}, ttl={self.ttl!r}, "
            f"maxsize={self.maxsize!r}, key={key}, stale={self.stale or None!r}, "
            f"backend={self.backend!r}"
        )


def _check_stale(owner: str, value: object, ttl: float | None) -> float:
    if value is None:
        return 0.0
    stale = seconds("stale", value, owner=owner, none_is_off=True)
    if ttl is None:
        raise TypeError(
            f"stale= of {owner}() is a window past a kept response's ttl, and no response "
            f"is kept without ttl=: pass ttl= too (e.g. ttl=1.0, stale={value!r}), or "
            "leave stale= out"
        )
    return stale


def _check_backend(owner: str, value: object, *, maxsize_given: bool) -> Backend | None:
    """The ``backend=`` option (H6): a backend that keeps freshness across the fleet."""
    if value is None:
        return None
    backend = check_backend(value)
    if not takes_fleet(backend):
        # S20: the middleware needs per-response lifetimes (H8) and stale= (H7).
        raise TypeError(
            f"backend= of {owner}() needs a backend that keeps freshness across processes "
            f"(its bind() takes fleet=), such as coalesce.redis.RedisBackend; "
            f"{type(backend).__name__} does not"
        )
    if backend.local_ttl:
        raise TypeError(
            f"backend= of {owner}() takes a backend without local_ttl=: the middleware "
            "keeps no local copies of the responses it shares through the backend (each "
            "response's own lifetime decides, H8); give it a RedisBackend of its own made "
            "without local_ttl="
        )
    if maxsize_given:
        raise TypeError(
            f"maxsize= of {owner}() bounds the in-process micro-cache, which backend= "
            "replaces (responses are kept in the backend for their lifetime): leave "
            "maxsize= out"
        )
    return backend


def _names(owner: str, option: str, value: object, what: str) -> tuple[str, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise TypeError(
            f"{option} of {owner}() must be a sequence of {what}, such as "
            f"{option}=({value!r},), not {type(value).__name__} ({value!r})"
        )
    names = tuple(value)
    for name in names:
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            raise ValueError(f"{option} of {owner}() must hold {what}; {name!r} is not one")
    return names


def _check_methods(owner: str, value: object) -> frozenset[str]:
    methods = frozenset(m.upper() for m in _names(owner, "methods", value, "HTTP method names"))
    if not methods:
        raise ValueError(
            f"methods of {owner}() is empty, so nothing would be coalesced; "
            "leave the middleware out instead, or pass methods=('GET', 'HEAD')"
        )
    return methods


def _check_vary(owner: str, value: object) -> tuple[str, ...]:
    names = _names(owner, "vary", value, "request header names")
    return tuple(dict.fromkeys(n.lower() for n in names))


def _check_bool(owner: str, option: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{option} of {owner}() must be True or False, not {value!r}")
    return value


def _check_max_body(owner: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(
            f"max_body of {owner}() must be a number of bytes (an int), "
            f"not {type(value).__name__} ({value!r})"
        )
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        raise ValueError(
            f"max_body of {owner}() must be a finite number of bytes, not {value!r}; "
            "a response is buffered whole before it is shared, so it needs a bound"
        )
    if value < 0 or value != int(value):
        raise ValueError(
            f"max_body of {owner}() must be a whole number of bytes >= 0, not {value!r}"
        )
    return int(value)


def _check_ttl(owner: str, value: object) -> float | None:
    if value is None:
        return None
    hint = "; leave it out (None) to keep no responses"
    return seconds("ttl", value, owner=owner, none_is_off=True, hint=hint)


def _check_maxsize(owner: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"maxsize of {owner}() must be a positive int (responses kept with ttl=), "
            f"not {type(value).__name__} ({value!r})"
        )
    if value < 1:
        raise ValueError(
            f"maxsize of {owner}() must be at least 1, not {value}; "
            "to keep no responses, leave out ttl="
        )
    return value


def _check_key(owner: str, value: object) -> Callable[[Any], Hashable | None] | None:
    if value is not None and not callable(value):
        raise TypeError(
            f"key of {owner}() must be a callable taking the request's scope (ASGI) or "
            f"environ (WSGI), or None; not {type(value).__name__} ({value!r})"
        )
    return value


def checked_key(owner: str, key: Callable[[Any], Hashable | None], request: Any) -> Hashable:
    """Call the user's ``key=`` and check that its answer can join a key."""
    part = key(request)
    try:
        hash(part)
    except TypeError:
        raise TypeError(
            f"key= of {owner} returned an unhashable {type(part).__name__} ({part!r}); "
            "return a str, a number or a tuple of them, or None to let the request pass"
        ) from None
    return part


# --------------------------------------------------------------------- responses


def _directives(values: Iterable[str]) -> dict[str, str | None]:
    """The directives of ``Cache-Control`` header values: lower-cased name -> argument.

    An argument keeps its case and loses its quotes; a directive without one maps to
    ``None``. A name given twice keeps its first argument.
    """
    found: dict[str, str | None] = {}
    for value in values:
        for part in value.split(","):
            name, sep, argument = part.partition("=")
            name = name.strip().lower()
            if name and name not in found:
                found[name] = argument.strip().strip('"') if sep else None
    return found


def _delta(argument: str | None) -> float | None:
    """A ``max-age``/``s-maxage`` argument in seconds; ``None`` if it is not a number.

    RFC 9111 (1.2.2): a delta-seconds is digits; an invalid one makes the response stale.
    """
    if argument is None or not argument.isdigit():
        return None
    return float(argument)


def _vary_names(values: Iterable[str]) -> frozenset[str] | None:
    """The request header names a ``Vary`` names; ``None`` for ``Vary: *``."""
    names = set()
    for value in values:
        for part in value.split(","):
            name = part.strip().lower()
            if name == "*":
                return None
            if name:
                names.add(name)
    return frozenset(names)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a response's own headers allow."""

    shareable: bool  # may go to clients other than the one it was made for
    storable: bool  # may be kept by the micro-cache (H5, H8)
    vary: frozenset[str]  # request headers it varies on (empty when not shareable)
    lifetime: float = 0.0  # seconds the micro-cache may keep it (0 when not storable)


_NOT_SHAREABLE: Final = Verdict(False, False, frozenset())


def judge(status: int, headers: Iterable[tuple[str, str]], ttl: float | None = None) -> Verdict:
    """Decide from ``status`` and the response headers (names any case) where it may go.

    Never shared: ``Set-Cookie``, ``Cache-Control: private`` or ``no-store``, and
    ``Vary: *`` (H1, H2). Kept by the micro-cache, as a shared cache would (H8, RFC
    9111): what may be shared, with a 2xx status, without ``Cache-Control: no-cache``
    (reuse only after asking the origin) and with a lifetime above 0: ``s-maxage``,
    else ``max-age``, never past ``ttl`` (``max-age=0``, or an argument that is not a
    number, keeps it out). Without ``ttl`` nothing is kept.
    """
    cookies = False
    control: list[str] = []
    vary: list[str] = []
    for name, value in headers:
        lower = name.lower()
        if lower == "set-cookie":
            cookies = True
        elif lower == "cache-control":
            control.append(value)
        elif lower == "vary":
            vary.append(value)
    directives = _directives(control)
    names = _vary_names(vary)
    if cookies or names is None or "private" in directives or "no-store" in directives:
        return _NOT_SHAREABLE
    lifetime = 0.0
    if ttl is not None and 200 <= status < 300 and "no-cache" not in directives:
        lifetime = ttl
        for directive in ("s-maxage", "max-age"):  # s-maxage first: we are a shared cache
            if directive in directives:
                given = _delta(directives[directive])
                lifetime = 0.0 if given is None else min(ttl, given)
                break
    return Verdict(True, lifetime > 0, names, lifetime)


def _texts(value: object) -> list[str]:
    """A request header's value(s) as a reader gives them (ASGI bytes, WSGI str)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, bytes):
        return [value.decode("latin-1")]
    if isinstance(value, tuple):
        return [v.decode("latin-1") if isinstance(v, bytes) else str(v) for v in value]
    return [str(value)]


def fresh_requested(header: Callable[[str], object]) -> bool:
    """Whether the request asks not to be answered from a cache (H8).

    ``Cache-Control: no-cache`` or ``max-age=0``, or without ``Cache-Control`` the
    HTTP/1.0 ``Pragma: no-cache`` (RFC 9111, 5.4).
    """
    control = _texts(header("cache-control"))
    if not control:
        return "no-cache" in _directives(_texts(header("pragma")))
    directives = _directives(control)
    return "no-cache" in directives or (
        "max-age" in directives and _delta(directives["max-age"]) == 0
    )


def digest_value(value: object) -> str:
    """A request header's value as it travels in a shared response: a SHA-256 digest,
    so that a credential a response varies on is never stored in clear (H6)."""
    return hashlib.sha256(repr(value).encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True, slots=True, eq=False)
class Reply(Generic[H]):
    """A complete downstream response, and whom it may go to.

    ``head`` is the protocol's own status and headers (ASGI: ``(status, headers)``;
    WSGI: ``(status_line, headers)``), passed on untouched so repeated headers keep
    their order. ``varied`` holds, for each request header the response varies on,
    the value the leader sent (its :func:`digest_value` when ``hashed``, as in a reply
    read from a backend); ``leader`` is the client it was made for (``None`` once it
    is kept, or when it came from a backend). ``born`` is when it was kept (wall
    clock), for the ``Age`` it is served with from the micro-cache.
    """

    leader: object
    head: H
    body: bytes
    verdict: Verdict
    varied: tuple[tuple[str, object], ...]
    born: float | None = None
    hashed: bool = False

    def fits(self, client: object, header: Callable[[str], object]) -> bool:
        """May ``client``, whose request headers ``header(name)`` returns, have it?"""
        if self.leader is not None and client is self.leader:
            return True
        if not self.verdict.shareable:
            return False
        if self.hashed:
            return all(digest_value(header(name)) == value for name, value in self.varied)
        return all(header(name) == value for name, value in self.varied)

    def detached(self) -> Reply[H]:
        """This reply without its leader, to keep in the micro-cache."""
        return replace(self, leader=None, born=time.time())

    def age(self, upstream: str | None) -> str | None:
        """The ``Age`` to send it with (H8), or ``None`` when it was made for this
        request or shared in flight. ``upstream`` is the ``Age`` the app sent, if any:
        the response was that old already (RFC 9111, 4.2.3)."""
        if self.born is None or self.leader is not None:
            return None
        resident = max(0, int(time.time() - self.born))
        before = int(upstream) if upstream is not None and upstream.strip().isdigit() else 0
        return str(before + resident)


# ------------------------------------------------------------- across processes (H6)


class NotShared(Exception):
    """Raised by a backend flight's computation whose response must not leave this
    process (H2, H3): only this exception's name and message reach other processes,
    which then make their own downstream calls."""

    def __init__(self) -> None:
        super().__init__("the response may not be shared with other clients")


NOT_SHARED: Final = f"{NotShared.__module__}.{NotShared.__qualname__}"


class _OwnCall:
    __slots__ = ()

    def __repr__(self) -> str:
        return "OWN_CALL"


OWN_CALL: Final[Any] = _OwnCall()
"""A flight's outcome telling each of its clients to make a downstream call of its own."""

_WIRE_VERSION: Final = 1


def lifetime_of(value: str) -> float:
    """How long a backend keeps a response in wire form (the ``ttl`` callable, F5)."""
    return float(value.split("\n", 1)[0])


def to_wire(
    status: int | str,
    headers: Iterable[tuple[str, str]],
    reply: Reply[Any],
    lifetime: float,
    born: float,
) -> str:
    """A shareable reply as the ``str`` a backend stores (any serialiser takes one).

    Its lifetime first (read by :func:`lifetime_of` without parsing the rest), then
    JSON: the status, the headers in order (latin-1 text), the body in base64, when it
    was made, and the digests of the request headers it varies on (never their values).
    """
    data = {
        "v": _WIRE_VERSION,
        "status": status,
        "headers": [[n, v] for n, v in headers],
        "body": base64.b64encode(reply.body).decode("ascii"),
        "born": born,
        "vary": sorted(reply.verdict.vary),
        "varied": [
            [name, value if reply.hashed else digest_value(value)] for name, value in reply.varied
        ],
    }
    return f"{lifetime!r}\n{json.dumps(data, separators=(',', ':'))}"


def from_wire(value: object) -> tuple[int | str, list[tuple[str, str]], Reply[None]] | None:
    """``(status, headers, reply)`` from a backend's value (the reply's head is ``None``
    until the driver makes its own), or ``None`` if it is not a response in wire form."""
    if not isinstance(value, str):
        return None
    try:
        lifetime_text, _, text = value.partition("\n")
        lifetime = float(lifetime_text)
        data = json.loads(text)
        if data["v"] != _WIRE_VERSION:
            return None
        status = data["status"]
        headers = [(str(n), str(v)) for n, v in data["headers"]]
        body = base64.b64decode(data["body"])
        verdict = Verdict(True, lifetime > 0, frozenset(data["vary"]), lifetime)
        varied = tuple((str(n), str(d)) for n, d in data["varied"])
        reply: Reply[None] = Reply(None, None, body, verdict, varied, float(data["born"]), True)
    except (ValueError, KeyError, TypeError):
        return None
    return status, headers, reply


def own_call_error(error: BaseException) -> bool:
    """Whether ``error`` is another process's :class:`NotShared`: make an own call."""
    return isinstance(error, RemoteError) and error.type_name == NOT_SHARED


# --------------------------------------------------------------------- the frame

App = TypeVar("App")
Request = TypeVar("Request")


class ClassSignature:
    """A middleware class's ``__signature__``: its constructor's, read on the class only.

    An instance has none of its own, so ``inspect.signature(middleware)`` is its
    ``__call__``'s, as for any app (and :func:`app_kind` can tell a WSGI middleware
    from an ASGI one).
    """

    __slots__ = ("signature",)

    def __init__(self, signature: inspect.Signature) -> None:
        self.signature = signature

    def __get__(self, instance: object, owner: type | None = None) -> inspect.Signature:
        if instance is not None:
            raise AttributeError("__signature__")
        return self.signature


def metric_name(owner: str, app: object) -> str:
    """A middleware's ``coalesce.function`` (O1): its protocol and the app's name,
    ``"asgi:FastAPI"`` for a FastAPI app, ``"wsgi:app"`` for a WSGI function ``app``."""
    protocol = owner.split(".")[1]  # coalesce.asgi.CoalesceMiddleware -> asgi
    name = getattr(app, "__qualname__", None)
    if not isinstance(name, str):
        name = type(app).__qualname__
    return f"{protocol}:{name}"


class _FleetTally(StatsTally):
    """What the backend tells ``cache_info()`` of the calls it answered (R10's Tally):
    a response read from the backend is a hit, one that waited on another process's
    downstream call a miss that coalesced. Refreshes, runs and their ends step the
    group's counters as for a decorated function; there is no ``error_ttl=`` here, and
    a background refresh's failure is logged by the backend."""

    __slots__ = ("hits", "lock", "waits")

    def __init__(self, stats: Stats) -> None:
        super().__init__(stats)
        self.lock = threading.Lock()
        self.hits = 0
        self.waits = 0

    def hit(self) -> None:
        with self.lock:
            self.hits += 1

    def waited(self) -> None:
        with self.lock:
            self.waits += 1

    def stale(self) -> None:
        pass  # a stale serve from the backend: counted as a hit already


class Middleware(Generic[App, Request, H]):
    """What both middlewares are, apart from their protocol's I/O.

    The constructor and its checks, ``repr()``, ``cache_info()``, which requests pass
    straight through (H1, H2), the micro-cache (H5, H7, H8) and what travels through a
    backend (H6) are written here once. A driver (``coalesce.asgi``,
    ``coalesce.wsgi``) names itself in ``_OWNER`` and ``_WRAPS``, makes its group in
    ``_setup()``, reads a request through ``_method()``, ``_inspect()``, ``_where()``
    and ``_reader()``, turns its head into wire form and back (``_head_out``,
    ``_head_in``), starts background refreshes (``_refresh``), and does the receiving
    and sending.
    """

    __slots__ = ("__weakref__", "_binding", "_cache", "_fleet", "_options", "_stats", "app")

    _OWNER: ClassVar[str]  # the public name, for messages: coalesce.asgi.CoalesceMiddleware
    _WRAPS: ClassVar[str]  # what it wraps, for messages: "an ASGI app"
    _ASYNC: ClassVar[bool]  # the backend's client kind it needs

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        reject_arguments(cls._OWNER, args, kwargs)
        return super().__new__(cls)

    def __init__(
        self,
        app: App,
        *,
        methods: tuple[str, ...] = ("GET", "HEAD"),
        vary: tuple[str, ...] = (),
        private: bool = False,
        max_body: int = 1_048_576,
        ttl: float | None = None,
        maxsize: int = DEFAULT_MAXSIZE,
        key: Callable[[Request], Hashable | None] | None = None,
        stale: float | None = None,
        backend: Backend | None = None,
    ) -> None:
        if not callable(app):
            raise TypeError(f"{self._OWNER}() wraps {self._WRAPS}, not {type(app).__name__}")
        kind = app_kind(app)
        if kind is not None and f".{kind}." not in self._OWNER:
            what = (
                "an ASGI app (its call is async)"
                if kind == "asgi"
                else "a WSGI app (it takes environ and start_response, and is not async)"
            )
            raise TypeError(
                f"{self._OWNER}() wraps {self._WRAPS}, but {app!r} is {what}: "
                f"wrap it in coalesce.{kind}.CoalesceMiddleware instead"
            )
        self.app = app
        self._options = options = Options.check(
            self._OWNER,
            methods=methods,
            vary=vary,
            private=private,
            max_body=max_body,
            ttl=ttl,
            maxsize=maxsize,
            key=key,
            stale=stale,
            backend=backend,
        )
        self._cache: TTLStore | None = None
        if options.ttl is not None and options.backend is None:
            self._cache = TTLStore(
                _reply_lifetime, options.maxsize, name=self._OWNER, stale=options.stale
            )
        self._stats = self._setup()
        self._fleet: _FleetTally | None = None
        self._binding: Any = None
        if options.backend is not None:
            self._binding = self._bind(options.backend)
        # Published as "asgi:<app>" or "wsgi:<app>" while the middleware lives (O1).
        _observe.register(
            self,
            metric_name(self._OWNER, app),
            self._stats,
            None if self._cache is None else self._cache.currsize,
        )

    def _bind(self, backend: Backend) -> Any:
        """The backend's binding for this middleware's responses (H6): named like its
        metrics (``asgi:<app>``), each response kept for its own lifetime (H8)."""
        tally = self._fleet = _FleetTally(self._stats)
        fleet = Fleet(ttl=lifetime_of, stale=self._options.stale, tally=tally)
        name = metric_name(self._OWNER, self.app)
        app = cast(Callable[..., Any], self.app)
        try:
            if self._ASYNC:
                return bind_async(backend, app, name=name, ttl=lifetime_of, fleet=fleet)
            return bind_sync(backend, app, name=name, ttl=lifetime_of, fleet=fleet)
        except TypeError as exc:
            client = "redis.asyncio.Redis" if self._ASYNC else "redis.Redis"
            raise TypeError(
                f"backend= of {self._OWNER}() needs a backend made with a {client} client "
                f"(it serves {self._WRAPS}): {exc}"
            ) from None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(app={self.app!r}, {self._options.describe()})"

    @staticmethod
    def _signature(app: str, request: str) -> ClassSignature:
        """The constructor's signature with a driver's own types, for ``help()``,
        ``inspect.signature()`` and the docs (``__init__`` here has type variables)."""
        init = inspect.signature(Middleware.__init__)
        parameters = list(init.parameters.values())[1:]  # without self
        return ClassSignature(
            init.replace(
                parameters=[
                    p.replace(annotation=app)
                    if p.name == "app"
                    else p.replace(annotation=f"Callable[[{request}], Hashable | None] | None")
                    if p.name == "key"
                    else p
                    for p in parameters
                ],
                return_annotation=inspect.Signature.empty,
            )
        )

    def cache_info(self) -> CacheInfo:
        """The middleware's counters and sizes, as :class:`coalesce.CacheInfo`.

        Only requests that may coalesce are counted (a request that passes straight
        through is not): ``hits`` were answered from the ``ttl=`` micro-cache (with
        ``backend=``, from the backend; stale serves count too); ``misses`` were not,
        each leading a downstream call or joining one, and ``coalesced`` of them
        joined a call already running, in this process or (with ``backend=``) in
        another (whether or not its response could then be given to them); ``errors``
        counts downstream calls that raised, ``in_flight`` those running now for a
        shared key; ``currsize`` and ``maxsize`` are the in-process micro-cache's (0
        and ``None`` without it).
        """
        hits, misses, coalesced, errors, in_flight, *_ = self._stats.snapshot()
        fleet = self._fleet
        if fleet is not None:
            with fleet.lock:
                hits += fleet.hits
                misses -= fleet.hits
                coalesced += fleet.waits
        cache = self._cache
        if cache is None:
            return CacheInfo(hits, misses, coalesced, errors, in_flight, 0, None)
        size = cache.currsize()
        return CacheInfo(hits, misses, coalesced, errors, in_flight, size, cache.maxsize_info())

    # -- what a driver provides

    def _setup(self) -> Stats:
        """Make the driver's group (and whatever else it needs); the group's counters."""
        raise NotImplementedError

    def _method(self, request: Request) -> str:
        """The request's method."""
        raise NotImplementedError

    def _inspect(self, request: Request) -> tuple[bool, bool, Any]:
        """``(has a body, carries credentials, found)``: ``found`` is whatever the driver
        read on the way that :meth:`_where` needs (cheap: most requests that pass
        straight through stop here)."""
        raise NotImplementedError

    def _where(self, request: Request, found: Any) -> Hashable:
        """The part of the key that says where the request goes (scheme, host, mount
        point, path, query) with the values of the keyed headers (:attr:`Options.keyed`)."""
        raise NotImplementedError

    def _reader(self, request: Request) -> Callable[[str], object]:
        """``header(name)``: the value(s) the request sent for header ``name``."""
        raise NotImplementedError

    def _head_out(self, head: H) -> tuple[int | str, list[tuple[str, str]]]:
        """A head as wire form carries it: the status and the headers as text."""
        raise NotImplementedError

    def _head_in(self, status: int | str, headers: list[tuple[str, str]]) -> H:
        """A head back from wire form."""
        raise NotImplementedError

    def _refresh(self, key: Hashable, request: Request) -> None:
        """Start one background downstream call that refreshes ``key`` (H7), apart
        from any client, unless one is running."""
        raise NotImplementedError

    # -- the rules, written once

    def _key(self, request: Request) -> Hashable | None:
        """The request's key, or ``None`` when it must pass straight through.

        A method that does not coalesce passes; so does a request with a body (the
        body is not part of the key), one carrying credentials unless ``private=True``
        (H2; with it, the credentials are among the keyed headers), and one for which
        the user's ``key=`` returns ``None``. A request asking for a fresh response
        (H8: ``Cache-Control: no-cache``) gets a key of its own: it coalesces only with
        requests asking the same, and is never answered from the micro-cache.
        """
        options = self._options
        method = self._method(request)
        if method not in options.methods:
            return None
        body, credentials, found = self._inspect(request)
        if body or (credentials and not options.private):
            return None
        where = self._where(request, found)
        user: Hashable = None
        if options.key is not None:
            user = checked_key(self._OWNER, options.key, request)
            if user is None:
                return None
        fresh = options.ttl is not None and fresh_requested(self._reader(request))
        return (method, where, user, fresh)

    def _lookup(self, key: Hashable, request: Request) -> Reply[H] | None:
        """A response the micro-cache keeps for ``key`` that may go to this request.

        Past its lifetime but within ``stale=``, it is served and one background call
        refreshes it (H7).
        """
        cache = self._cache
        if cache is None:
            return None
        hit = cache.lookup(key)
        if hit is MISSING:
            if not self._options.stale:
                return None
            hit = cache.stale_value(key)
            if hit is MISSING or not hit.fits(None, self._reader(request)):
                return None
            next(self._stats.stale)
            self._refresh(key, request)
            reply: Reply[H] = hit
            return reply
        if not hit.fits(None, self._reader(request)):
            return None
        next(self._stats.hits)
        return hit  # type: ignore[no-any-return]

    def _judge(self, status: int, headers: Iterable[tuple[str, str]]) -> Verdict:
        """The verdict on a response (H1, H2, H5, H8), its lifetime capped by ``ttl``."""
        return judge(status, headers, self._options.ttl)

    def _keep(self, key: Hashable, reply: Reply[H]) -> None:
        """Keep ``reply`` in the micro-cache if it may be kept (H5, H8); called by the
        flight's function, so it is stored before the flight ends (S3)."""
        if self._cache is not None and reply.verdict.storable and not _fresh_key(key):
            self._cache.save(key, reply.detached())

    # -- through a backend (H6)

    def _publish(self, key: Hashable, outcome: object) -> str:
        """What a backend flight's computation returns for ``outcome``: the response in
        wire form, or :class:`NotShared` raised for one that may not leave this process
        (not shareable, past ``max_body``: H2, H3)."""
        if not isinstance(outcome, Reply) or not outcome.verdict.shareable:
            raise NotShared
        lifetime = 0.0 if _fresh_key(key) else outcome.verdict.lifetime
        status, headers = self._head_out(outcome.head)
        return to_wire(status, headers, outcome, lifetime, time.time())

    def _through(self, made: list[Any], value: object) -> Reply[H] | Any:
        """A backend flight's outcome for this process's clients: what this process's
        own downstream call made (``made``), else the reply read from the backend."""
        return made[0] if made else self._received(value)

    def _through_failed(self, made: list[Any], error: Exception) -> Any:
        """A backend flight that raised ``error``: this process's own response that may
        not be shared (:class:`NotShared`), :data:`OWN_CALL` when another process's may
        not, else ``error`` itself, raised."""
        if isinstance(error, NotShared) and made:
            return made[0]
        if own_call_error(error):
            return OWN_CALL
        raise error

    def _received(self, value: object) -> Reply[H] | Any:
        """A reply from a backend's value (leader ``None``: made for another process),
        or :data:`OWN_CALL` if the value is not a response this middleware wrote."""
        opened = from_wire(value)
        if opened is None:
            return OWN_CALL
        status, headers, reply = opened
        head = self._head_in(status, headers)
        return Reply(reply.leader, head, reply.body, reply.verdict, reply.varied, reply.born, True)


def _fresh_key(key: Hashable) -> bool:
    """Whether ``key`` (from :meth:`Middleware._key`) is a request asking to be fresh."""
    return isinstance(key, tuple) and bool(key[-1])


def _reply_lifetime(reply: Reply[Any]) -> float:
    """How long the in-process micro-cache keeps ``reply`` (H8): its verdict says."""
    return reply.verdict.lifetime
