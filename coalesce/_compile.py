# The hot path, in one place: the wrapper every decorated function returns.
#
# The trick: when decorating, we write the wrapper's Python source and compile it,
# with the function's own parameters (``def wrapper(user_id, /, *, verbose=_sf_d1)``).
# Python then binds each call itself, at C speed: defaults are applied, keyword order
# stops mattering, and a call that does not fit raises the TypeError the function
# would. The key (S4, the rule is in _keys.py) is then an expression over those
# parameters, a tuple display or a single name. Where there is nothing to bind to (a
# key callable, which gets the arguments as given, or a signature that cannot be
# read) the wrapper takes ``*args, **kwargs``.
#
# The same key expression, over the same parameters, is compiled into ``cache_key()``
# (which ``invalidate()`` and ``forget()`` use too) and into ``slots()`` for the
# unhashable-argument error: every path binds a call the same way, and a wrong call
# raises Python's own TypeError, in the same words, from each of them.
#
# The source also bakes in every choice made when decorating (STYLE habit 2): sync or
# async, the store's lookup block (none, the built-in TTL store read without a lock, or
# a user's mapping under its guard) and the ``early=`` check. Everything the source
# names (the store's dict, the group's ``_call``, the hit counter, even ``next``) is a
# global of the compiled code, read as fast as a closure cell, with no cells to copy
# into each call, and prefixed (``_sf_``) so that no parameter can hide it.
#
# A hit is then: bind, build the key, one dict lookup, one clock read, one counter
# step, return. Anything else (a miss, joining a flight, an error) is one call into
# the function's group (_flight.py), which stores the outcome in the store (_store.py).
"""The generated wrappers (the hot path), ``cache_key()`` and the source they share."""

from __future__ import annotations

import builtins
import functools
import inspect
import itertools
import time as _time
from collections.abc import Callable, Hashable
from typing import Any, Final, NamedTuple

from ._flight import AsyncGroup, Describe, Group
from ._keys import ONE_ARGUMENT, PLAIN, KeyPlan, describe_unhashable, hashed, raw_key, typed_key
from ._pinned import all, any, enumerate, isinstance, len, next, sorted
from ._store import FRESH, FRESH_WALL, MISSING, VALUE, MappingStore, Store, TTLStore

# The builtins the generated source may reach, as they were at import (see _pinned).
_IMPORT_TIME_BUILTINS: Final = dict(builtins.__dict__)

__all__ = ("Compiled", "KeySource", "compile_wrapper", "key_source")

_EMPTY: Final = inspect.Parameter.empty
_NO_KWARGS: Final[dict[str, Any]] = {}

# The builtins the source uses, as prefixed globals: a parameter named ``next`` or
# ``tuple`` must not change what the wrapper calls.
_BUILTINS: Final = {
    "_sf_next": next,
    "_sf_tuple": tuple,
    "_sf_int": int,
    "_sf_sorted": sorted,
    "_sf_KeyError": KeyError,
    "_sf_TypeError": TypeError,
}


def _display(items: list[str]) -> str:
    """A tuple display of ``items``."""
    return f"({', '.join(items)},)" if items else "()"


class KeySource:
    """Python source for binding a call and building its key (see the opening comment).

    ``globals`` are the names the expressions use, with the ``_sf_`` prefix still
    unrenamed (see ``_prefix``); the expressions already use the chosen prefix.
    """

    __slots__ = ("args", "globals", "key", "kwargs", "params", "slots")

    def __init__(
        self,
        params: str,
        globals_: dict[str, Any],
        key: str,
        args: str,
        kwargs: str,
        slots: str | None,
    ) -> None:
        self.params = params  # "a, b=_sf_d1, /, *rest, k=_sf_d3, **kw"
        self.globals = globals_  # {"_sf_d1": <default of b>, ...}
        self.key = key  # the key expression
        self.args = args  # positional arguments to call the function with, a tuple
        self.kwargs = kwargs  # keyword arguments to call it with, a dict
        self.slots = slots  # the slots as a list display, or None (nothing to bind)


def _once(p: str, items: list[str], scalar: list[bool], *, single: bool = False) -> str:
    """The key expression over ``items``, hashed at most once per call (``_keys.hashed``).

    A key of plain values (``int``, ``str``, ...: ``_keys.PLAIN``, or objects hashed by
    identity, as instances of most classes are) is used as it is, checked inline (no
    call on the hit path); any other is made a key that carries its hash.
    """

    def plain(item: str) -> str:
        # An int is the commonest key: it skips the set lookup (a third of the check).
        return (
            f"(({p}c := {item}.__class__) is {p}int or {p}c in {p}plain"
            f" or {p}c.__hash__ is {p}idhash)"
        )

    if single:
        name = items[0]
        return f"({name} if {plain(name)} else {p}hashed({name}))"
    display = _display(items)
    if not items:
        return display
    if not all(scalar):
        return f"{p}hashed({display})"
    every = " and ".join(plain(item) for item in items)
    return f"({display} if {every} else {p}hashed({display}))"


def _prefix(plan: KeyPlan) -> str:
    """``_sf_``, unless a parameter's name starts with it: then ``_sf1_``, ``_sf2_``, ..."""
    names = tuple(plan.signature.parameters) if plan.signature is not None else ()
    for prefix in itertools.chain(("_sf_",), (f"_sf{i}_" for i in itertools.count(1))):
        if not any(name.startswith(prefix) for name in names):
            return prefix
    raise AssertionError("unreachable")  # pragma: no cover


def key_source(plan: KeyPlan, prefix: str = "_sf_") -> KeySource:
    """The source of ``plan`` (see ``_keys.py`` for the rule it renders)."""
    p = prefix
    if plan.signature is None:
        if plan.user_key is not None:
            return KeySource(
                "*args, **kwargs",
                {"_sf_user_key": plan.user_key, "_sf_hashed": hashed},
                f"{p}hashed({p}user_key(*args, **kwargs))",
                "args",
                "kwargs",
                None,
            )
        return KeySource(
            "*args, **kwargs",
            {"_sf_raw_key": raw_key(plan.typed), "_sf_hashed": hashed},
            f"{p}hashed({p}raw_key(args, kwargs))",
            "args",
            "kwargs",
            None,
        )
    params = list(plan.signature.parameters.values())
    parts: list[str] = []
    names: dict[str, Any] = {}
    slot_exprs: list[str] = []
    scalar: list[bool] = []  # the slot holds one argument (not *args, **kwargs)
    positional: list[str] = []
    keywords: list[str] = []
    seen_star = False
    for i, param in enumerate(params):
        name = param.name
        default = ""
        if param.default is not _EMPTY:
            names[f"_sf_d{i}"] = param.default
            default = f"={p}d{i}"
        if param.kind is inspect.Parameter.POSITIONAL_ONLY:
            parts.append(name + default)
            if i + 1 == len(params) or params[i + 1].kind is not inspect.Parameter.POSITIONAL_ONLY:
                parts.append("/")
            slot_exprs.append(name)
            scalar.append(True)
            positional.append(name)
        elif param.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD:
            parts.append(name + default)
            slot_exprs.append(name)
            scalar.append(True)
            positional.append(name)
        elif param.kind is inspect.Parameter.VAR_POSITIONAL:
            parts.append("*" + name)
            seen_star = True
            slot_exprs.append(name)
            scalar.append(False)
            positional.append("*" + name)
        elif param.kind is inspect.Parameter.KEYWORD_ONLY:
            if not seen_star:
                parts.append("*")
                seen_star = True
            parts.append(name + default)
            slot_exprs.append(name)
            scalar.append(True)
            keywords.append(f"{name!r}: {name}")
        else:
            parts.append("**" + name)
            slot_exprs.append(f"{p}tuple({p}sorted({name}.items()))")
            scalar.append(False)
            keywords.append("**" + name)
    if plan.chosen is None:
        if plan.typed:
            key = f"{p}hashed({p}typed({_display(slot_exprs)}))"
        elif len(params) == 1 and params[0].kind in ONE_ARGUMENT:
            key = _once(p, slot_exprs[:1], [True], single=True)  # one parameter, as lru_cache
        else:
            key = _once(p, slot_exprs, scalar)
    else:
        order = [param.name for param in params]
        index = [order.index(name) for name in plan.chosen]
        picked = [slot_exprs[i] for i in index]
        if plan.typed:
            key = picked[0] if plan.single else _display(picked)
            key = f"{p}hashed({p}typed({key}))"
        else:
            key = _once(p, picked, [scalar[i] for i in index], single=plan.single)
    names["_sf_hashed"] = hashed
    names["_sf_plain"] = PLAIN
    names["_sf_idhash"] = object.__hash__
    if plan.typed:
        names["_sf_typed"] = typed_key(plan)
    return KeySource(
        ", ".join(parts),
        names,
        key,
        _display(positional),
        "{" + ", ".join(keywords) + "}",
        "[" + ", ".join(slot_exprs) + "]",
    )


# The wrapper and cache_key() are compiled from this source, one source for ``def``
# and ``async def``; the store decides the lookup block. (``{p}`` is the prefix.)
_WRAPPER = """\
{kind}def wrapper({params}):
    _sf_key = {key}
{lookup}
{call}


def cache_key({params}):
    return {key}
"""

_SLOTS = """

def slots({params}):
    return {slots}
"""

# A miss that raises drops the wrapper's locals first: an error kept with error_ttl=
# (F4) holds this frame in its traceback, and must not keep the call's arguments or
# an expired entry alive (S16). (No cost on a hit, which returned above.)
_SYNC_CALL = """\
    try:
        return _sf_call(_sf_key, _sf_run, {args}, {kwargs}, _sf_store)[0]
    except BaseException:
        {drop} = None
        raise"""

# AsyncGroup._call answers at once when it can (no extra frame), else gives a
# coroutine to await.
_ASYNC_CALL = """\
    try:
        _sf_out = _sf_call(_sf_key, _sf_run, {args}, {kwargs}, _sf_store)
        if _sf_out.__class__ is not _sf_tuple:
            _sf_out = await _sf_out
    except BaseException:
        {drop} = None
        raise
    return _sf_out[0]"""

# early= (F2): a hit may start one background refresh, and still returns at once.
_EARLY = """
            if _sf_early(_sf_entry):
                _sf_refresh(_sf_key, _sf_run, {args}, {kwargs})"""

# The wall clock too, when time-machine is loaded: it moves only that one (TTLStore).
_WALL = " and _sf_entry[{fresh_wall}] > _sf_time.time()"

_LOOKUPS = {
    "none": "",
    # The built-in store: no lock (S6), one lookup, one clock read at call time (S13).
    # (A key being computed holds a tombstone, see TTLStore.mark: its callers find an
    # entry that is not fresh, and no KeyError is raised for them.)
    "ttl": """\
    try:
        _sf_entry = _sf_data[_sf_key]
    except _sf_KeyError:
        pass
    except _sf_TypeError:
        raise _sf_describe(_sf_key, {args}, {kwargs}) from None
    else:
        if _sf_entry[{fresh}] > _sf_time.monotonic(){wall}:
            _sf_next(_sf_hits){early}
            return _sf_entry[{value}]
        _sf_entry = None  # expired: the miss below must not hold it (S16)
""",
    # A user's mapping: only under its guard (S17).
    "mapping": """\
    _sf_lock = _sf_guard.lock
    _sf_lock.acquire()
    try:
        _sf_value = _sf_mapping[_sf_key]
    except _sf_KeyError:
        _sf_value = _sf_MISSING
    except _sf_TypeError:
        raise _sf_describe(_sf_key, {args}, {kwargs}) from None
    finally:
        _sf_lock.release()
    if _sf_value is not _sf_MISSING:
        _sf_next(_sf_hits)
        return _sf_value
""",
}


class Compiled(NamedTuple):
    """What ``compile_wrapper`` makes for one decorated function."""

    wrapper: Callable[..., Any]
    cache_key: Callable[..., Hashable]
    describe: Describe


def _names(params: str) -> list[str]:
    """The parameter names in a wrapper's ``params`` ("a, b=_sf_d1, /, *rest, **kw")."""
    names = []
    for part in params.split(","):
        name = part.strip().lstrip("*").partition("=")[0].strip()
        if name and name != "/":
            names.append(name)
    return names


def compile_wrapper(
    plan: KeyPlan,
    run: Callable[..., Any],
    keyed: bool,
    is_async: bool,
    group: Group | AsyncGroup,
    store: Store | None,
) -> Compiled:
    """Build the wrapper, ``cache_key()`` and the unhashable-key error: see ``_WRAPPER``.

    ``run`` is what a miss executes; ``keyed``: it takes the key first (a backend).
    """
    p = _prefix(plan)

    def ours(template: str) -> str:
        return template if p == "_sf_" else template.replace("_sf_", p)

    source = key_source(plan, p)
    namespace: dict[str, Any] = {
        **_BUILTINS,
        **source.globals,
        "_sf_call": group._call,
        "_sf_run": run,
        "_sf_store": store,
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
            wall = ours(_WALL).format(fresh_wall=FRESH_WALL)
        if store.early:
            namespace["_sf_early"] = store.refresh_early
            namespace["_sf_refresh"] = functools.partial(group._refresh, store=store)
            early = ours(_EARLY)
    elif isinstance(store, MappingStore):
        kind = "mapping"
        namespace["_sf_mapping"] = store.mapping
        namespace["_sf_guard"] = store.guard
    else:
        kind = "none"
    args, kwargs = source.args, source.kwargs
    if kwargs == "{}":
        kwargs = f"{p}nokw"  # never changed by anyone: no dict to build per call
    call_args = f"({p}key, *{args})" if keyed else args
    early = early.format(args=call_args, kwargs=kwargs)
    text = ours(_WRAPPER).format(
        kind="async " if is_async else "",
        params=source.params,
        key=source.key,
        lookup=ours(_LOOKUPS[kind]).format(
            args=args, kwargs=kwargs, wall=wall, early=early, fresh=FRESH, value=VALUE
        ),
        call=ours(_ASYNC_CALL if is_async else _SYNC_CALL).format(
            args=call_args, kwargs=kwargs, drop=" = ".join([*_names(source.params), f"{p}key"])
        ),
    )
    if source.slots is not None:
        text += _SLOTS.format(params=source.params, slots=source.slots)
    code = compile(text, f"<singleflight wrapper of {plan.name}>", "exec")
    # Every key of the namespace is ours: give each the chosen prefix.
    namespace = {p + k[4:] if k.startswith("_sf_") else k: v for k, v in namespace.items()}
    namespace["__builtins__"] = _IMPORT_TIME_BUILTINS  # never a user's replacement
    exec(code, namespace)
    slots: Callable[..., list[Any]] | None = namespace.get("slots")
    describe: Describe = functools.partial(describe_unhashable, plan, slots)
    namespace[p + "describe"] = describe  # read by the wrapper when a key is unhashable
    cache_key: Callable[..., Hashable] = namespace["cache_key"]
    # Named as the function: a wrong call then raises the words the wrapper raises.
    cache_key.__qualname__ = plan.name
    cache_key.__doc__ = "The key these arguments map to."
    if slots is not None:
        slots.__qualname__ = plan.name
    return Compiled(namespace["wrapper"], cache_key, describe)
