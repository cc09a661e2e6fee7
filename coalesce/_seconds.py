"""What "seconds" means, for every option of the package that takes a duration.

A duration is an ``int`` or a ``float`` (never a ``bool``) greater than 0 and at most
:data:`MAX_SECONDS`. The upper bound makes a huge value fail where it is given, with
the range in the message, instead of later: ``ttl=1e308`` with a backend overflowed
turning into milliseconds, and ``ttl=1e17`` or ``lease_ttl=1e16`` were accepted and
then refused by Redis on every call. ``10**9`` seconds (about 31 years) is past any
lifetime a cache or a lease means, stays precise added to a clock, and is far below
what Redis accepts as milliseconds (about ``9.2e15`` seconds), even summed.

Every option is checked by :func:`seconds` where it is given (decoration, the
backend's and the middlewares' constructors), and a ``ttl`` callable's answer by
:func:`returned`, so the rule and its messages are written once.
"""

from __future__ import annotations

import math
import reprlib
from typing import Final

__all__ = ("MAX_SECONDS", "returned", "seconds")

MAX_SECONDS: Final = 1_000_000_000
"""The largest value any duration option takes, in seconds (about 31.7 years)."""

_TOP: Final = "1e9"  # MAX_SECONDS as the messages write it
_YEARS: Final = " (about 31 years)"


def seconds(
    option: str,
    value: object,
    *,
    owner: str | None = None,
    least: float = 0.0,
    zero_is_off: bool = False,
    none_is_off: bool = False,
    unit: str = "seconds",
    hint: str = "",
) -> float:
    """``value`` as a float, or a clear error naming ``option``, the value and the range.

    The value must be greater than 0 and at most :data:`MAX_SECONDS`; ``least=`` raises
    the lower bound (inclusive); ``zero_is_off=True`` lets 0 through (the option is
    off). ``none_is_off=True`` only says in the messages that ``None`` is accepted too
    (the caller handles it). ``owner`` names the function or class whose option it is;
    ``unit`` is what the number counts (``""`` for a plain factor); ``hint`` ends the
    messages.

    Not a number (or a bool): ``TypeError``. Out of range (0, negative, NaN, infinite,
    huge): ``ValueError``.
    """
    where = f" of {owner}()" if owner else ""
    what = f"a number of {unit}" if unit else "a number"
    if isinstance(value, bool) or not isinstance(value, int | float):
        alternative = ", or None" if none_is_off else ""
        raise TypeError(
            f"{option}{where} must be {what} (an int or float{alternative}), "
            f"not {type(value).__name__} ({reprlib.repr(value)}){hint}"
        )
    if zero_is_off and value == 0:
        return 0.0
    # Chained comparisons refuse NaN and the infinities, and compare a huge int
    # without converting it (float() would overflow).
    top = _TOP + _YEARS if unit == "seconds" else _TOP
    if least > 0.0:
        fits = least <= value <= MAX_SECONDS
        bounds = f"from {least:g} to {top}"
    else:
        fits = 0 < value <= MAX_SECONDS
        bounds = f"from 0 (off) to {top}" if zero_is_off else f"greater than 0, at most {top}"
    if not fits:
        alternative = "None or " if none_is_off else ""
        raise ValueError(
            f"{option}{where} must be {alternative}{what} {bounds}, not {reprlib.repr(value)}{hint}"
        )
    return float(value)


def returned(source: str, value: object) -> float:
    """What a ``ttl`` callable (``source``) returned, as seconds; 0 or less: keep nothing.

    Checked after every call of the callable, as its answer depends on the result.
    """
    rule = f"return a number of seconds at most {_TOP}{_YEARS} (0 or less: do not keep this result)"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{source} returned {reprlib.repr(value)}; {rule}")
    # NaN and the infinities fail the chained comparison; 0 or less means "keep
    # nothing" (a huge negative int compares without being converted).
    if not -math.inf < value <= MAX_SECONDS:
        raise ValueError(f"{source} returned {reprlib.repr(value)}; {rule}")
    return float(value) if value > 0 else 0.0
