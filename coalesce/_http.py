"""What the ASGI and WSGI middlewares share: options, keys, and which responses travel.

Both middlewares (``coalesce.asgi``, ``coalesce.wsgi``) are :class:`Middleware`, the
frame here, with a driver for their protocol's I/O over the core's groups. Nothing
here does I/O: it validates the options, says which requests pass straight through
and which request headers join a request's key, decides from a response's status and
headers whether it may go to a client it was not made for (H1, H2) and whether the
micro-cache may keep it (H5), and counts.
"""

from __future__ import annotations

import difflib
import inspect
import math
import re
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Final, Generic, NoReturn, Self, TypeVar

from . import _observe
from ._decorator import CacheInfo
from ._flight import Stats
from ._seconds import seconds
from ._store import MISSING, TTLStore

__all__ = (
    "ALWAYS_KEYED",
    "CREDENTIALS",
    "OPTION_NAMES",
    "Middleware",
    "Options",
    "Reply",
    "Verdict",
    "checked_key",
    "judge",
    "metric_name",
    "reject_arguments",
)

H = TypeVar("H")

OPTION_NAMES: Final = ("methods", "vary", "private", "max_body", "ttl", "maxsize", "key")

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
    ) -> Options:
        """Validate the options, naming the one that is wrong and how to fix it."""
        return cls(
            methods=_check_methods(owner, methods),
            vary=_check_vary(owner, vary),
            private=_check_bool(owner, "private", private),
            max_body=_check_max_body(owner, max_body),
            ttl=_check_ttl(owner, ttl),
            maxsize=_check_maxsize(owner, maxsize),
            key=_check_key(owner, key),
        )

    def describe(self) -> str:
        """The options as keyword arguments, for ``repr()``."""
        key = "None" if self.key is None else getattr(self.key, "__qualname__", repr(self.key))
        return (
            f"methods={tuple(sorted(self.methods))!r}, vary={self.vary!r}, "
            f"private={self.private!r}, max_body={self.max_body!r}, ttl={self.ttl!r}, "
            f"maxsize={self.maxsize!r}, key={key}"
        )


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


def _directives(values: Iterable[str]) -> set[str]:
    """The directive names of ``Cache-Control`` header values, lower-cased."""
    found = set()
    for value in values:
        for part in value.split(","):
            name = part.split("=", 1)[0].strip().lower()
            if name:
                found.add(name)
    return found


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
    storable: bool  # may be kept by the micro-cache (H5)
    vary: frozenset[str]  # request headers it varies on (empty when not shareable)


def judge(status: int, headers: Iterable[tuple[str, str]]) -> Verdict:
    """Decide from ``status`` and the response headers (names any case) where it may go.

    Never shared: ``Set-Cookie``, ``Cache-Control: private`` or ``no-store``, and
    ``Vary: *`` (H1, H2). Kept by the micro-cache: what may be shared, with a 2xx
    status and without ``Cache-Control: no-cache`` (which asks that it not be reused
    without asking the origin).
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
        return Verdict(False, False, frozenset())
    storable = 200 <= status < 300 and "no-cache" not in directives
    return Verdict(True, storable, names)


@dataclass(frozen=True, slots=True, eq=False)
class Reply(Generic[H]):
    """A complete downstream response, and whom it may go to.

    ``head`` is the protocol's own status and headers (ASGI: ``(status, headers)``;
    WSGI: ``(status_line, headers)``), passed on untouched so repeated headers keep
    their order. ``varied`` holds, for each request header the response varies on,
    the value the leader sent; ``leader`` is the client it was made for (``None`` once
    it is in the micro-cache).
    """

    leader: object
    head: H
    body: bytes
    verdict: Verdict
    varied: tuple[tuple[str, object], ...]

    def fits(self, client: object, header: Callable[[str], object]) -> bool:
        """May ``client``, whose request headers ``header(name)`` returns, have it?"""
        if self.leader is not None and client is self.leader:
            return True
        if not self.verdict.shareable:
            return False
        return all(header(name) == value for name, value in self.varied)

    def detached(self) -> Reply[H]:
        """This reply without its leader, to keep in the micro-cache."""
        return replace(self, leader=None)


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


class Middleware(Generic[App, Request, H]):
    """What both middlewares are, apart from their protocol's I/O.

    The constructor and its checks, ``repr()``, ``cache_info()``, which requests pass
    straight through (H1, H2) and the micro-cache (H5) are written here once. A driver
    (``coalesce.asgi``, ``coalesce.wsgi``) names itself in ``_OWNER`` and ``_WRAPS``,
    makes its group in ``_setup()``, reads a request through ``_method()``,
    ``_inspect()`` and ``_reader()``, and does the receiving and sending.
    """

    __slots__ = ("__weakref__", "_cache", "_options", "_stats", "app")

    _OWNER: ClassVar[str]  # the public name, for messages: coalesce.asgi.CoalesceMiddleware
    _WRAPS: ClassVar[str]  # what it wraps, for messages: "an ASGI app"

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
        maxsize: int = 1024,
        key: Callable[[Request], Hashable | None] | None = None,
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
        )
        self._cache: TTLStore | None = (
            None if options.ttl is None else TTLStore(options.ttl, options.maxsize)
        )
        self._stats = self._setup()
        # Published as "asgi:<app>" or "wsgi:<app>" while the middleware lives (O1).
        _observe.register(
            self,
            metric_name(self._OWNER, app),
            self._stats,
            None if self._cache is None else self._cache.currsize,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(app={self.app!r}, {self._options.describe()})"

    @staticmethod
    def _signature(app: str, request: str) -> ClassSignature:
        """The constructor's signature with a driver's own types, for ``help()``,
        ``inspect.signature()`` and the docs (``__init__`` here has type variables)."""
        init = inspect.signature(Middleware.__init__)
        first, *options = list(init.parameters.values())[1:]  # without self
        *options, key = options
        return ClassSignature(
            init.replace(
                parameters=[
                    first.replace(annotation=app),
                    *options,
                    key.replace(annotation=f"Callable[[{request}], Hashable | None] | None"),
                ],
                return_annotation=inspect.Signature.empty,
            )
        )

    def cache_info(self) -> CacheInfo:
        """The middleware's counters and sizes, as :class:`coalesce.CacheInfo`.

        Only requests that may coalesce are counted (a request that passes straight
        through is not): ``hits`` were answered from the ``ttl=`` micro-cache;
        ``misses`` were not, each leading a downstream call or joining one, and
        ``coalesced`` of them joined a call already running (whether or not its
        response could then be given to them); ``errors`` counts downstream calls that
        raised, ``in_flight`` those running now for a shared key; ``currsize`` and
        ``maxsize`` are the micro-cache's (0 and ``None`` without ``ttl=``).
        """
        hits, misses, coalesced, errors, in_flight, *_ = self._stats.snapshot()
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

    def _inspect(self, request: Request) -> tuple[bool, bool, Hashable]:
        """``(has a body, carries credentials, where)``; ``where`` is the part of the
        key that says where the request goes (scheme, host, mount point, path, query)
        with the values of the keyed headers (:attr:`Options.keyed`)."""
        raise NotImplementedError

    def _reader(self, request: Request) -> Callable[[str], object]:
        """``header(name)``: the value(s) the request sent for header ``name``."""
        raise NotImplementedError

    # -- the rules, written once

    def _key(self, request: Request) -> Hashable | None:
        """The request's key, or ``None`` when it must pass straight through.

        A method that does not coalesce passes; so does a request with a body (the
        body is not part of the key), one carrying credentials unless ``private=True``
        (H2; with it, the credentials are among the keyed headers), and one for which
        the user's ``key=`` returns ``None``.
        """
        options = self._options
        method = self._method(request)
        if method not in options.methods:
            return None
        body, credentials, where = self._inspect(request)
        if body or (credentials and not options.private):
            return None
        user: Hashable = None
        if options.key is not None:
            user = checked_key(self._OWNER, options.key, request)
            if user is None:
                return None
        return (method, where, user)

    def _lookup(self, key: Hashable, request: Request) -> Reply[H] | None:
        """A response the micro-cache keeps for ``key`` that may go to this request."""
        cache = self._cache
        if cache is None:
            return None
        hit = cache.lookup(key)
        if hit is MISSING or not hit.fits(None, self._reader(request)):
            return None
        next(self._stats.hits)
        reply: Reply[H] = hit
        return reply

    def _keep(self, key: Hashable, reply: Reply[H]) -> None:
        """Keep ``reply`` in the micro-cache if it may be kept (H5); called by the
        flight's function, so it is stored before the flight ends (S3)."""
        if self._cache is not None and reply.verdict.storable:
            self._cache.save(key, reply.detached())
