"""What any backend shares, whatever its store: serialisers, key digests, sealed payloads.

A backend (see ``_backend.py``) keeps values where other processes read them, so it
needs three things that have nothing to do with Redis, all here:

- **Serialisers** (R7): :class:`Serializer` is the ``dumps``/``loads`` protocol;
  :func:`serializer_for` turns the user's ``serializer=`` (``"pickle"``, ``"json"`` or
  an object) into one, or says what is wrong with it.
- **Key digests** (R2): :func:`key_digest` maps the decorator's in-process key to 64
  hex digits that are the same in every process and every Python run (never
  ``hash()``): a canonical, type-tagged encoding, then SHA-256. A store key is then
  ``prefix:name:digest``.
- **Payloads** (R7, R9): a :class:`Codec` seals what goes into the store, a value, a
  leader's error or a control message, as ``magic, kind, flag[, HMAC], body``, and
  opens what comes out. With a signing key the HMAC covers the store key too, so a
  payload moved to another key fails; one that fails is refused before any of its
  bytes reach a deserialiser. :func:`error_body` and :func:`remote_error` carry an
  exception to other processes as :class:`coalesce.RemoteError`.

The format is shared: a second backend that uses this module reads and writes the
same bytes as ``coalesce.redis``.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import fractions
import hashlib
import hmac
import json
import logging
import pathlib
import pickle
import re
import reprlib
import uuid
from collections.abc import Hashable
from typing import Any, Final, Literal, Protocol, cast, final, runtime_checkable

from coalesce._errors import RemoteError
from coalesce._pinned import callable, getattr, isinstance, len, repr

# --------------------------------------------------------------------------- serialisers


@runtime_checkable
class Serializer(Protocol):
    """What ``serializer=`` accepts besides ``"pickle"`` and ``"json"``."""

    def dumps(self, value: Any, /) -> bytes: ...

    def loads(self, data: bytes, /) -> Any: ...


@final
class _Pickle:
    __slots__ = ()

    def dumps(self, value: Any, /) -> bytes:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)

    def loads(self, data: bytes, /) -> Any:
        # Unsigned pickle runs whatever the payload says: docs/redis.md says so; sign it (R7).
        return pickle.loads(data)

    def __repr__(self) -> str:
        return "'pickle'"


@final
class _Json:
    __slots__ = ()

    def dumps(self, value: Any, /) -> bytes:
        _check_json_keys(value)
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def loads(self, data: bytes, /) -> Any:
        return json.loads(data)

    def __repr__(self) -> str:
        return "'json'"


def _check_json_keys(value: Any) -> None:
    """Refuse a dict key that JSON would turn into a string (``{1: x}`` loads as
    ``{"1": x}``): a value must read back as it was stored. Raises a ``TypeError``
    naming the key's path in the result."""
    todo: list[tuple[Any, str]] = [(value, "result")]
    seen: set[int] = set()  # a container met twice (or a cycle, which json refuses)
    while todo:
        item, path = todo.pop()
        if not isinstance(item, dict | list | tuple) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    raise TypeError(
                        f"serializer='json' cannot keep the {type(key).__name__} key "
                        f"{key!r} of {path}: JSON object keys are strings, so it would not "
                        "read back as it was stored; use str keys, or serializer='pickle'"
                    )
                todo.append((child, f"{path}[{key!r}]"))
        else:
            todo.extend((child, f"{path}[{i}]") for i, child in enumerate(item))


_SERIALIZERS: Final[dict[str, Serializer]] = {"pickle": _Pickle(), "json": _Json()}


def serializer_for(serializer: Literal["pickle", "json"] | Serializer) -> Serializer:
    """The serialiser a ``serializer=`` option names, or a clear error."""
    if isinstance(serializer, str):
        if serializer not in _SERIALIZERS:
            raise ValueError(
                f"serializer must be 'pickle', 'json' or an object with dumps() and "
                f"loads(), not {serializer!r}"
            )
        return _SERIALIZERS[serializer]
    if callable(getattr(serializer, "dumps", None)) and callable(
        getattr(serializer, "loads", None)
    ):
        return serializer
    raise TypeError(
        f"serializer must be 'pickle', 'json' or an object with dumps(value) -> bytes "
        f"and loads(bytes), not {type(serializer).__name__}"
    )


# ------------------------------------------------------------------------------ the keys

_KEY_VERSION: Final = b"coalesce-key-1\x00"
_ADDRESS: Final = re.compile(r" at 0x[0-9a-fA-F]+")
_OBJECT_REPR: Final[object] = object.__repr__


class Unencodable(Exception):
    """A key part with no stable encoding (its ``repr`` differs in every process)."""

    def __init__(self, part: object) -> None:
        super().__init__(part)
        self.part = part


def _type_name(cls: type) -> bytes:
    return f"{cls.__module__}.{cls.__qualname__}".encode()


def _int(out: bytearray, value: int) -> None:
    out += b"i%d;" % value


def _encode(obj: object, out: bytearray) -> None:
    """Append a canonical, type-tagged encoding of ``obj`` to ``out``.

    Values that are equal in Python, and so share an in-process key, encode alike
    where that is cheap to honour: ``True``, ``1`` and ``1.0`` all encode as the
    integer 1, as ``functools.lru_cache`` (untyped) treats them as one key.
    """
    cls = type(obj)
    if obj is None:
        out += b"N"
    elif cls is str:
        data = cast(str, obj).encode("utf-8", "surrogatepass")
        out += b"s%d:" % len(data)
        out += data
    elif cls is int or cls is bool:
        _int(out, cast(int, obj))
    elif cls is tuple:
        items = cast(tuple[object, ...], obj)
        out += b"(%d:" % len(items)
        for item in items:
            _encode(item, out)
        out += b")"
    elif cls is float:
        _float(out, cast(float, obj))
    elif cls is bytes:
        data = cast(bytes, obj)
        out += b"b%d:" % len(data)
        out += data
    elif cls is frozenset:
        _set(out, cast(frozenset[object], obj))
    else:
        _encode_other(obj, cls, out)


def _float(out: bytearray, value: float) -> None:
    if value.is_integer():
        _int(out, int(value))
    else:
        out += b"f%s;" % value.hex().encode()


def _set(out: bytearray, items: frozenset[object]) -> None:
    parts: list[bytes] = []
    for item in items:
        buffer = bytearray()
        _encode(item, buffer)
        parts.append(bytes(buffer))
    parts.sort()
    out += b"{%d:" % len(parts)
    for part in parts:
        out += part
    out += b"}"


def _encode_other(obj: object, cls: type, out: bytearray) -> None:
    """The less common key parts: subclasses, enums, types and a few value types."""
    if isinstance(obj, enum.Enum) and not isinstance(obj, int | str):
        out += b"e%s:" % _type_name(cls)
        _encode(obj.name, out)
    elif isinstance(obj, bool | int):
        _int(out, int(obj))  # IntEnum, IntFlag and int subclasses equal their value
    elif isinstance(obj, str):
        _encode(str.__str__(obj), out)
    elif isinstance(obj, float):
        _float(out, float(obj))
    elif isinstance(obj, bytes | bytearray):
        _encode(bytes(obj), out)
    elif isinstance(obj, tuple):
        _encode(tuple(obj), out)  # a NamedTuple equals the plain tuple of its fields
    elif isinstance(obj, frozenset | set):
        _set(out, frozenset(obj))
    elif isinstance(obj, type):
        out += b"t%s;" % _type_name(obj)
    elif isinstance(obj, complex):
        if obj.imag == 0:
            _float(out, obj.real)
        else:
            out += b"c%s,%s;" % (obj.real.hex().encode(), obj.imag.hex().encode())
    elif isinstance(obj, decimal.Decimal | fractions.Fraction):
        if (isinstance(obj, fractions.Fraction) or obj.is_finite()) and obj == int(obj):
            _int(out, int(obj))
            return
        out += b"d%s;" % str(obj.normalize() if isinstance(obj, decimal.Decimal) else obj).encode()
    elif isinstance(obj, datetime.datetime):
        if obj.tzinfo is not None and obj.utcoffset() is not None:
            obj = obj.astimezone(datetime.UTC)
        out += b"T%s;" % obj.isoformat().encode()
    elif isinstance(obj, datetime.date | datetime.time | datetime.timedelta):
        out += b"D%s:%s;" % (_type_name(cls), str(obj).encode())
    elif isinstance(obj, uuid.UUID):
        out += b"u%s;" % obj.hex.encode()
    elif isinstance(obj, pathlib.PurePath):
        out += b"p%s:" % _type_name(cls)
        _encode(str(obj), out)
    elif dataclasses.is_dataclass(obj):
        fields = dataclasses.fields(obj)
        out += b"r%s:%d:" % (_type_name(cls), len(fields))
        for field in fields:
            _encode(field.name, out)
            _encode(getattr(obj, field.name), out)
    else:
        text = repr(obj)
        if getattr(cls, "__repr__", None) is _OBJECT_REPR or _ADDRESS.search(text):
            raise Unencodable(obj)
        out += b"R%s:" % _type_name(cls)
        _encode(text, out)


def digest(key: object) -> str:
    """A stable digest of a normalised key: the same in every process (R2).

    Raises :class:`Unencodable` for a part with no stable encoding, and
    ``RecursionError`` for a key nested too deeply: :func:`key_digest` turns both into
    the ``TypeError`` a user should see.
    """
    out = bytearray(_KEY_VERSION)
    _encode(key, out)
    return hashlib.sha256(out).hexdigest()


DIGEST_LEN: Final = 64
"""The length of a digest: 64 hex digits (SHA-256)."""


def key_digest(key: Hashable, *, name: str, store: str) -> str:
    """:func:`digest`, or a ``TypeError`` that tells the user of ``name`` what to do.

    :param store: what the digest is for, in the message (``"Redis"``).
    """
    try:
        return digest(key)
    except Unencodable as exc:
        part = exc.part
        raise TypeError(
            f"{name}(): the key part {reprlib.repr(part)} (a {type(part).__qualname__}) "
            f"has no stable encoding for {store}: its repr is the default one, different in "
            "every process; pass key=... to @singleflight to choose what identifies a "
            "call (e.g. an id), or give the type a __repr__ that shows its value"
        ) from None
    except RecursionError:
        raise TypeError(
            f"{name}(): the key is nested too deeply to encode for {store}; "
            "pass key=... to @singleflight to choose what identifies a call"
        ) from None


# -------------------------------------------------------------------------- the payloads

_MAGIC: Final = b"\xc5\x01"  # marker and format version
VALUE: Final = b"v"
"""The kind of a value, serialised (what a store's value key holds)."""
ERROR: Final = b"e"
"""The kind of a leader's error: :func:`error_body`, JSON ``{"type": ..., "message": ...}``."""
RETRY: Final = b"r"
"""The kind of "the leader aborted": followers go round again, one of them leads."""
LOCAL: Final = b"l"
"""The kind of "the value could not be serialised": followers run it themselves."""
TIMED: Final = b"t"
"""The kind of a value with its times (R10): :func:`timed_body`, then the serialised value."""
_KINDS: Final = frozenset((VALUE, ERROR, RETRY, LOCAL, TIMED))
_UNSIGNED: Final = b"\x00"
_SIGNED: Final = b"\x01"
_MAC_LEN: Final = 32
_HEADER: Final = len(_MAGIC) + 2


def check_signing_key(signing_key: object) -> bytes | None:
    """A ``signing_key=`` option: ``None``, or bytes long enough to be a key."""
    if signing_key is None:
        return None
    if not isinstance(signing_key, bytes):
        raise TypeError(
            f"signing_key must be bytes (e.g. secrets.token_bytes(32), or "
            f"key.encode()), not {type(signing_key).__name__}"
        )
    if len(signing_key) < 16:
        raise ValueError(
            f"signing_key is {len(signing_key)} bytes; use at least 16 random bytes "
            "(secrets.token_bytes(32))"
        )
    return signing_key


@final
class Codec:
    """Seals and opens one backend's payloads: its serialiser and signing key.

    Every method takes ``address``, the store key the payload lives at (or belongs
    to): it is covered by the HMAC and named in the warnings, logged on ``log``.
    """

    __slots__ = ("log", "serializer", "signing_key")

    def __init__(
        self, serializer: Serializer, signing_key: bytes | None, log: logging.Logger
    ) -> None:
        self.serializer = serializer
        self.signing_key = signing_key
        self.log = log

    def seal(self, address: str, kind: bytes, body: bytes) -> bytes:
        """The payload of ``kind`` (:data:`VALUE`, :data:`ERROR`, ...) for ``body``."""
        signing_key = self.signing_key
        if signing_key is None:
            return b"".join((_MAGIC, kind, _UNSIGNED, body))
        return b"".join((_MAGIC, kind, _SIGNED, self._mac(signing_key, address, kind, body), body))

    def open(self, address: str, payload: bytes) -> tuple[bytes, bytes] | None:
        """``(kind, body)`` of a payload, or ``None`` (logged) if it must not be used.

        With a signing key, a payload whose MAC does not verify is refused before any
        byte of its body reaches a deserialiser.
        """
        kind = payload[2:3]
        if payload[:2] != _MAGIC or kind not in _KINDS or len(payload) < _HEADER:
            self.log.warning(
                "coalesce: %s holds a payload of an unknown format; ignoring it", address
            )
            return None
        flag = payload[3:4]
        body_at = _HEADER + (_MAC_LEN if flag == _SIGNED else 0)
        body = payload[body_at:]
        signing_key = self.signing_key
        if signing_key is not None:
            mac = self._mac(signing_key, address, kind, body)
            if flag != _SIGNED or not hmac.compare_digest(payload[_HEADER:body_at], mac):
                self.log.warning(
                    "coalesce: a payload for %s failed HMAC verification; it was not "
                    "deserialised and counts as a miss (tampering, or another signing_key)",
                    address,
                )
                return None
        elif flag not in (_SIGNED, _UNSIGNED):
            self.log.warning(
                "coalesce: %s holds a payload of an unknown format; ignoring it", address
            )
            return None
        return kind, body

    def load(self, address: str, body: bytes) -> tuple[bool, Any]:
        """``(True, value)`` for an opened value's body, or ``(False, None)`` (logged)."""
        try:
            return True, self.serializer.loads(body)
        except Exception as exc:
            self.log.warning(
                "coalesce: the value in %s could not be deserialised (%s: %s); it counts as a miss",
                address,
                type(exc).__name__,
                exc,
            )
            return False, None

    @staticmethod
    def _mac(signing_key: bytes, address: str, kind: bytes, body: bytes) -> bytes:
        message = b"".join((address.encode(), b"\x00", kind, body))
        return hmac.new(signing_key, message, "sha256").digest()


def _error_type_name(exc: BaseException) -> str:
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def error_body(error: BaseException) -> bytes:
    """The body of an :data:`ERROR` payload: what other processes learn of ``error``."""
    data = {"type": _error_type_name(error), "message": str(error)}
    return json.dumps(data, ensure_ascii=False).encode("utf-8")


def kept_error_body(error: BaseException, born: float, ttl: float) -> bytes:
    """An :data:`ERROR` body kept in a store for ``ttl`` seconds from ``born`` (wall clock,
    ``error_ttl=``), so that every process judges its expiry by the same time (R10)."""
    data = {"type": _error_type_name(error), "message": str(error), "born": born, "ttl": ttl}
    return json.dumps(data, ensure_ascii=False).encode("utf-8")


def error_kept_until(body: bytes) -> float:
    """Until when (wall clock) a kept :data:`ERROR` body holds; ``inf`` if it says not."""
    try:
        data = json.loads(body)
        return float(data["born"]) + float(data["ttl"])
    except (ValueError, KeyError, TypeError):
        return float("inf")


def remote_error(body: bytes) -> RemoteError:
    """The :class:`coalesce.RemoteError` an :data:`ERROR` body stands for (R9)."""
    try:
        data = json.loads(body)
        return RemoteError(str(data["type"]), str(data["message"]))
    except (ValueError, KeyError, TypeError):
        return RemoteError("Exception", "the leader in another process failed")


def timed_body(born: float, ttl: float, delta: float, data: bytes) -> bytes:
    """The body of a :data:`TIMED` payload: when it was stored (wall clock, seconds),
    its ttl, how long computing it took, then the serialised value (R10)."""
    return b"%r %r %r\n" % (born, ttl, delta) + data


def open_timed(body: bytes) -> tuple[float, float, float, bytes] | None:
    """``(born, ttl, delta, data)`` of a :data:`TIMED` body, or ``None`` if malformed."""
    head, sep, data = body.partition(b"\n")
    parts = head.split(b" ")
    if not sep or len(parts) != 3:
        return None
    try:
        born, ttl, delta = (float(part) for part in parts)
    except ValueError:
        return None
    return born, ttl, delta, data
