# The hot path, in one place: the wrapper every decorated function returns.
#
# The trick: when decorating, we write the wrapper's Python source and compile it,
# with the function's own parameters (``def wrapper(user_id, /, *, verbose=_sf_d1)``).
# Python then binds each call itself, at C speed: defaults are applied, keyword order
# stops mattering, and a call that does not fit raises the TypeError the function
# would. The key (S4) is a plain tuple display of those parameters, one slot per
# parameter in declaration order. Where the signature cannot be read, or the key is
# the user's callable, the wrapper takes ``*args, **kwargs`` and the key plan instead.
#
# The same source also bakes in every choice made once (STYLE habit 2): the store's
# lookup block (none, the built-in TTL store read without a lock, or a user's mapping
# under its guard), the ``early=`` check, sync or async. What the wrapper refers to
# (the store's dict, the group's ``_call``, the hit counter) are the compiled code's
# globals, read as fast as closure cells, with no cells to copy into each call.
#
# A hit is then: bind, build the key, one dict lookup, one clock read, one counter
# step, return. Everything else (a miss, joining a flight, errors) is one call into
# the function's group (_flight.py), which stores into the store (_store.py).
"""The generated wrappers (the hot path) and the key source they are built from."""

from __future__ import annotations

import builtins
import functools
import inspect
import time as _time
from collections.abc import Callable, Sequence
from typing import Any, Final

from ._flight import AsyncGroup, Describe, Group
from ._keys import KeyPlan, qualname
from ._pinned import any, callable, enumerate, isinstance, len
from ._store import FRESH, FRESH_WALL, MISSING, VALUE, MappingStore, Store, TTLStore

# The builtins the generated source may reach, as they were at import (see _pinned).
_IMPORT_TIME_BUILTINS: Final = dict(builtins.__dict__)

__all__ = ("KeySource", "compile_wrapper", "key_source")

_EMPTY: Final = inspect.Parameter.empty
_POSITIONAL: Final = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)

# Builtins the wrapper's source uses (see _WRAPPER).
_TEMPLATE_NAMES: Final = frozenset({"next", "tuple", "sorted", "KeyError", "TypeError"})


class KeySource:
    """Python source for a wrapper with the function's own signature.

    A wrapper compiled with the same parameters as the function lets Python do the
    binding (defaults, keywords, errors) at C speed; the key is then a tuple display
    of the parameters, equal to what :class:`KeyPlan` builds for the same call.
    """

    __slots__ = ("args", "defaults", "key", "kwargs", "params")

    def __init__(
        self, params: str, defaults: dict[str, Any], key: str, args: str, kwargs: str
    ) -> None:
        self.params = params  # "a, b=_sf_d1, /, *rest, k=_sf_d3, **kw"
        self.defaults = defaults  # {"_sf_d1": <default of b>, ...}
        self.key = key  # the key expression
        self.args = args  # positional arguments to call the function with, a tuple
        self.kwargs = kwargs  # keyword arguments to call it with, a dict


def key_source(func: Callable[..., Any], key: object, typed: bool) -> KeySource | None:
    """Source for a compiled wrapper, or ``None`` where the generic wrapper must serve.

    Covers the default key and keys by parameter name, untyped; a key callable,
    ``typed=True`` and unreadable signatures use the generic ``*args`` wrapper.
    """
    if typed or (key is not None and not isinstance(key, str | Sequence)) or callable(key):
        return None
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return None
    params = list(sig.parameters.values())
    if any(p.name.startswith("_sf_") or p.name in _TEMPLATE_NAMES for p in params):
        return None  # a parameter would hide a name the wrapper's source uses
    parts: list[str] = []
    defaults: dict[str, Any] = {}
    slot_exprs: list[str] = []
    positional: list[str] = []
    keywords: list[str] = []
    seen_star = False
    for i, p in enumerate(params):
        default = ""
        if p.default is not _EMPTY:
            defaults[f"_sf_d{i}"] = p.default
            default = f"=_sf_d{i}"
        if p.kind is inspect.Parameter.POSITIONAL_ONLY:
            parts.append(p.name + default)
            if i + 1 == len(params) or params[i + 1].kind is not inspect.Parameter.POSITIONAL_ONLY:
                parts.append("/")
            slot_exprs.append(p.name)
            positional.append(p.name)
        elif p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD:
            parts.append(p.name + default)
            slot_exprs.append(p.name)
            positional.append(p.name)
        elif p.kind is inspect.Parameter.VAR_POSITIONAL:
            parts.append("*" + p.name)
            seen_star = True
            slot_exprs.append(p.name)
            positional.append("*" + p.name)
        elif p.kind is inspect.Parameter.KEYWORD_ONLY:
            if not seen_star:
                parts.append("*")
                seen_star = True
            parts.append(p.name + default)
            slot_exprs.append(p.name)
            keywords.append(f"{p.name!r}: {p.name}")
        else:
            parts.append("**" + p.name)
            slot_exprs.append(f"tuple(sorted({p.name}.items()))")
            keywords.append("**" + p.name)
    args = f"({', '.join(positional)},)" if positional else "()"
    kwargs = "{" + ", ".join(keywords) + "}"
    if key is None:
        single = len(params) == 1 and params[0].kind in _POSITIONAL
        key_expr = (
            slot_exprs[0] if single else f"({', '.join(slot_exprs)},)" if slot_exprs else "()"
        )
    else:
        chosen = (key,) if isinstance(key, str) else tuple(key)
        names = [p.name for p in params]
        if not chosen or any(not isinstance(k, str) or k not in names for k in chosen):
            return None  # plan_key raises the error that explains it
        picked = [slot_exprs[names.index(k)] for k in chosen]
        key_expr = picked[0] if isinstance(key, str) else f"({', '.join(picked)},)"
    return KeySource(", ".join(parts), defaults, key_expr, args, kwargs)


_NO_KWARGS: Final[dict[str, Any]] = {}

# The wrapper is compiled from this source, specialised when decorating: with the
# function's own parameters where they can be read (so Python itself binds the call
# and the key is a tuple display), else with ``*args, **kwargs`` and the key plan.
# One source serves ``def`` and ``async def``; the store decides the lookup block.
_WRAPPER = """\
{kind}def {name}({params}):
    _sf_key = {key}
{lookup}
{call}
"""

_SYNC_CALL = """\
    return _sf_call(_sf_key, _sf_run, {args}, {kwargs}, _sf_store)[0]"""

# AsyncGroup._call answers at once when it can (no extra frame), else gives a
# coroutine to await.
_ASYNC_CALL = """\
    _sf_out = _sf_call(_sf_key, _sf_run, {args}, {kwargs}, _sf_store)
    if _sf_out.__class__ is not tuple:
        _sf_out = await _sf_out
    return _sf_out[0]"""

# early= (F2): a hit may start one background refresh, and still returns at once.
_EARLY = """
            if _sf_early(_sf_entry):
                _sf_refresh(_sf_key, _sf_run, {args}, {kwargs})"""

_LOOKUPS = {
    "none": "",
    # The built-in store: no lock (S6), one lookup, one clock read at call time (S13).
    # (A key being computed holds a tombstone, see TTLStore.mark: its callers find an
    # entry that is not fresh, and no KeyError is raised for them.)
    "ttl": """\
    try:
        _sf_entry = _sf_data[_sf_key]
    except KeyError:
        pass
    except TypeError:
        raise _sf_describe(_sf_key, {args}, {kwargs}) from None
    else:
        if _sf_entry[{fresh}] > _sf_time.monotonic(){wall}:
            next(_sf_hits){early}
            return _sf_entry[{value}]
""",
    # A user's mapping: only under its guard (S17).
    "mapping": """\
    _sf_lock = _sf_guard.lock
    _sf_lock.acquire()
    try:
        _sf_value = _sf_mapping[_sf_key]
    except KeyError:
        _sf_value = _sf_MISSING
    except TypeError:
        raise _sf_describe(_sf_key, {args}, {kwargs}) from None
    finally:
        _sf_lock.release()
    if _sf_value is not _sf_MISSING:
        next(_sf_hits)
        return _sf_value
""",
}


def compile_wrapper(
    func: Callable[..., Any],
    run: Callable[..., Any],
    keyed: bool,
    is_async: bool,
    plan: KeyPlan,
    source: KeySource | None,
    group: Group | AsyncGroup,
    store: Store | None,
    describe: Describe,
) -> Callable[..., Any]:
    """Build the wrapper: see ``_WRAPPER``."""
    namespace: dict[str, Any] = {
        "_sf_call": group._call,
        "_sf_run": run,
        "_sf_store": store,
        "_sf_describe": describe,
        "_sf_hits": group._stats.hits,
        "_sf_time": _time,
        "_sf_MISSING": MISSING,
        "_sf_nokw": _NO_KWARGS,
    }
    wall = early = ""
    if isinstance(store, TTLStore):
        kind = "ttl"
        namespace["_sf_data"] = store.data
        if store.dual:
            # time-machine is loaded: it moves only the wall clock (see TTLStore).
            wall = f" and _sf_entry[{FRESH_WALL}] > _sf_time.time()"
        if store.early:
            namespace["_sf_early"] = store.refresh_early
            namespace["_sf_refresh"] = functools.partial(group._refresh, store=store)
            early = _EARLY
    elif isinstance(store, MappingStore):
        kind = "mapping"
        namespace["_sf_mapping"] = store.mapping
        namespace["_sf_guard"] = store.guard
    else:
        kind = "none"
    if source is not None:
        params, key, args, kwargs = source.params, source.key, source.args, source.kwargs
        namespace.update(source.defaults)
    else:
        namespace["_sf_n"] = plan.fast_nargs
        namespace["_sf_make_key"] = plan.make
        params, args, kwargs = "*args, **kwargs", "args", "kwargs"
        key = "args if not kwargs and len(args) == _sf_n else _sf_make_key(args, kwargs)"
    if kwargs == "{}":
        kwargs = "_sf_nokw"  # never changed by anyone: no dict to build per call
    call_args = f"(_sf_key, *{args})" if keyed else args
    early = early.format(args=call_args, kwargs=kwargs)
    name = "wrapper"
    text = _WRAPPER.format(
        kind="async " if is_async else "",
        name=name,
        params=params,
        key=key,
        lookup=_LOOKUPS[kind].format(
            args=args, kwargs=kwargs, wall=wall, early=early, fresh=FRESH, value=VALUE
        ),
        call=(_ASYNC_CALL if is_async else _SYNC_CALL).format(args=call_args, kwargs=kwargs),
    )
    code = compile(text, f"<singleflight wrapper of {qualname(func)}>", "exec")
    # The names are the wrapper's globals: read as fast as closure cells, and with
    # no cells to copy into every call's frame.
    namespace["__builtins__"] = _IMPORT_TIME_BUILTINS  # never a user's replacement
    exec(code, namespace)
    wrapper: Callable[..., Any] = namespace[name]
    return wrapper
