"""Key building (S4): which calls count as the same call, decided once per function.

The rule, for every path that turns arguments into a key (the wrapper, ``cache_key()``,
``invalidate()``, ``forget()``, and the unhashable-argument error):

- the call is bound to the function's parameters, defaults applied, giving one slot
  per parameter in declaration order: a ``*args`` parameter's slot is the tuple of
  extra positional arguments, a ``**kwargs`` parameter's slot the sorted tuple of
  extra keyword items. So ``f(1)``, ``f(x=1)`` and ``f(1, y=<default>)`` bind alike;
- the default key is the tuple of every slot, or, for a function of one parameter
  that takes one argument (positional or keyword-only: ``ONE_ARGUMENT``), that slot's
  value itself (as ``lru_cache`` does);
- ``key="name"`` is that slot's value; ``key=("a", "b")`` the tuple of those slots;
- ``typed=True`` pairs that key with the types of its values (:func:`typed_key`);
- a key callable's key is what it returns for the call's arguments, as given;
- where the signature cannot be read there is nothing to bind to: the key is the
  raw arguments (:func:`raw_key`).

This module decides the plan and checks the options; ``_compile.py`` turns the plan
into Python source with the function's own parameters, so that Python itself binds
every call, the same way on every path: a call that does not fit raises the same
``TypeError`` from the wrapper and from ``cache_key()``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Final, NamedTuple

from ._pinned import (
    all,
    callable,
    enumerate,
    getattr,
    hash,
    isinstance,
    len,
    map,
    repr,
    sorted,
    zip,
)

__all__ = (
    "ONE_ARGUMENT",
    "PLAIN",
    "Hashed",
    "HashedTuple",
    "KeyPlan",
    "check_key_callable",
    "describe_unhashable",
    "hashed",
    "plan_key",
    "qualname",
    "raw_key",
    "typed_key",
    "unhashed",
)


class _Mark:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<keywords>"


_EMPTY: Final = inspect.Parameter.empty

# Marks where keyword arguments start in a key built without a signature; private, so
# no argument value can be equal to it.
_KWMARK: Final = _Mark()

MakeKey = Callable[[tuple[Any, ...], dict[str, Any]], Hashable]


class KeyPlan(NamedTuple):
    """What identifies a call of one decorated function (see the module's rule).

    ``signature`` is what calls bind to, or ``None`` (a key callable, or a signature
    that cannot be read); ``chosen`` the parameter names of ``key=`` (``None``: all);
    ``single`` whether ``key=`` was one name (the key is that value, not a tuple).
    """

    name: str
    signature: inspect.Signature | None
    chosen: tuple[str, ...] | None = None
    single: bool = False
    typed: bool = False
    user_key: Callable[..., Hashable] | None = None


def qualname(func: Callable[..., Any]) -> str:
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)


def _typed(values: Sequence[Any]) -> tuple[type, ...]:
    return tuple(type(v) for v in values)


def plan_key(func: Callable[..., Any], key: object, typed: bool) -> KeyPlan:
    """Decide, once, how calls of ``func`` become keys (see SPEC section 1, ``key``)."""
    name = qualname(func)
    if typed not in (True, False):
        raise TypeError(f"typed must be True or False, not {typed!r}")
    if callable(key):
        if typed:
            raise TypeError(
                f"typed=True has no effect with a key callable ({name}); "
                "put the types into the key the callable returns instead"
            )
        return KeyPlan(name, None, user_key=key)
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        if key is not None:
            raise TypeError(
                f"key={key!r} names parameters, but the signature of {name} "
                "cannot be read; pass a key callable instead"
            ) from None
        return KeyPlan(name, None, typed=typed)
    if key is None:
        return KeyPlan(name, sig, typed=typed)
    if isinstance(key, str):
        chosen: tuple[str, ...] = (key,)
    elif isinstance(key, Sequence) and all(isinstance(k, str) for k in key):
        chosen = tuple(key)
        if not chosen:
            raise ValueError(
                f"key=() names no parameter of {name}(); name at least one, or pass a key callable"
            )
    else:
        raise TypeError(
            f"key must be None, a parameter name, a sequence of parameter names or a "
            f"callable, not {type(key).__name__} ({key!r})"
        )
    names = tuple(sig.parameters)
    unknown = [k for k in chosen if k not in sig.parameters]
    if unknown:
        raise TypeError(
            f"key names {', '.join(map(repr, unknown))}, which "
            f"{'is not a parameter' if len(unknown) == 1 else 'are not parameters'} of "
            f"{name}{sig}; choose from {', '.join(map(repr, names)) or 'none'}"
        )
    return KeyPlan(name, sig, chosen=chosen, single=isinstance(key, str), typed=typed)


def typed_key(plan: KeyPlan) -> Callable[[Any], Hashable]:
    """``typed=True``: from the untyped key's value(s), the key paired with their types.

    For the default key the values are every slot, then the items a ``*args`` slot
    holds, then the values a ``**kwargs`` slot holds, so ``f(1)`` and ``f(1.0)``
    differ however the argument came.
    """
    if plan.chosen is not None:
        if plan.single:

            def typed_one(value: Any) -> Hashable:
                return (value, type(value))

            return typed_one

        def typed_names(values: tuple[Any, ...]) -> Hashable:
            return (values, _typed(values))

        return typed_names
    assert plan.signature is not None
    kinds = [p.kind for p in plan.signature.parameters.values()]
    varpos = [i for i, kind in enumerate(kinds) if kind is inspect.Parameter.VAR_POSITIONAL]
    varkw = [i for i, kind in enumerate(kinds) if kind is inspect.Parameter.VAR_KEYWORD]

    def typed_all(values: tuple[Any, ...]) -> Hashable:
        flat = list(values)
        for i in varpos:
            flat.extend(values[i])
        for i in varkw:
            flat.extend(v for _, v in values[i])
        return (values, _typed(flat))

    return typed_all


def raw_key(typed: bool) -> MakeKey:
    """The key where there is no signature to bind to: the arguments as given."""

    def make(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
        k: tuple[Any, ...] = args
        if kwargs:
            k = (*args, _KWMARK, *sorted(kwargs.items()))
        if typed:
            return (k, _typed(args), _typed(list(kwargs.values())))
        return k

    return make


def _hashable(value: object) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _unhashable_part(
    kind: inspect._ParameterKind, pname: str, value: Any
) -> tuple[str, Any] | None:
    """``(label, value)`` of the first argument in a slot that cannot be hashed, or None.

    The label names the argument as the caller passed it: a parameter's name, a
    keyword given to ``**kwargs`` (not the ``**kwargs`` parameter, whose slot is a tuple
    of items), or a position in ``*args`` (``args[1]``).
    """
    if kind is inspect.Parameter.VAR_KEYWORD:
        for keyword, item in value:
            if not _hashable(item):
                return repr(keyword), item
        return None
    if kind is inspect.Parameter.VAR_POSITIONAL:
        for i, item in enumerate(value):
            if not _hashable(item):
                return f"{pname}[{i}]", item
        return None
    return None if _hashable(value) else (repr(pname), value)


def describe_unhashable(
    plan: KeyPlan,
    slots: Callable[..., list[Any]] | None,
    key: object,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> TypeError:
    """The error for a key that cannot be hashed, naming the argument and the fix.

    ``slots`` binds a call as the key does and gives the slots (see ``_compile.py``).
    """
    name = plan.name
    if plan.user_key is not None:
        return TypeError(
            f"the key function of {name}() returned an unhashable "
            f"{type(key).__name__} ({key!r}); return a hashable value such as a tuple or str"
        )
    culprit = None
    if slots is not None and plan.signature is not None:
        try:
            values = slots(*args, **kwargs)
        except TypeError:
            values = []
        params = plan.signature.parameters
        for pname, value in zip(params, values, strict=False):
            if plan.chosen is not None and pname not in plan.chosen:
                continue  # not part of the key: it may be unhashable
            culprit = _unhashable_part(params[pname].kind, pname, value)
            if culprit is not None:
                break
    if culprit is None:
        return TypeError(
            f"unhashable argument of {name}(): {key!r} cannot be a key; "
            "pass key=... to choose what identifies a call"
        )
    label, value = culprit
    return TypeError(
        f"unhashable argument {label} of {name}() (a {type(value).__name__}); "
        "pass key=... to choose what identifies a call, e.g. key=lambda *a, **k: ..."
    )


def check_key_callable(func: Callable[..., Any], key: Callable[..., Any]) -> None:
    """Refuse, when decorating, a ``key=`` callable that cannot take ``func``'s arguments.

    The key callable is called with the function's own arguments. Two calls are tried
    against its signature: only the required arguments, and every argument (the
    positional ones positionally, or else by name); if either cannot bind, no call of
    that shape could get a key. Callables whose signature cannot be read are accepted.
    """
    try:
        fsig = inspect.signature(func)
        ksig = inspect.signature(key)
    except (TypeError, ValueError):
        return
    required: tuple[list[Any], dict[str, Any]] = ([], {})
    positional: tuple[list[Any], dict[str, Any]] = ([], {})
    named: tuple[list[Any], dict[str, Any]] = ([], {})
    for p in fsig.parameters.values():
        if p.kind is inspect.Parameter.POSITIONAL_ONLY:
            for shape in (positional, named):
                shape[0].append(None)
            if p.default is _EMPTY:
                required[0].append(None)
        elif p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD:
            positional[0].append(None)
            named[1][p.name] = None
            if p.default is _EMPTY:
                required[0].append(None)
        elif p.kind is inspect.Parameter.KEYWORD_ONLY:
            for shape in (positional, named):
                shape[1][p.name] = None
            if p.default is _EMPTY:
                required[1][p.name] = None
    problems = []
    try:
        ksig.bind(*required[0], **required[1])
    except TypeError as exc:
        problems.append(f"its required arguments: {exc}")
    try:
        ksig.bind(*positional[0], **positional[1])
    except TypeError as by_position:
        try:
            ksig.bind(*named[0], **named[1])
        except TypeError:
            problems.append(f"all its arguments: {by_position}")
    if problems:
        name = qualname(func)
        raise TypeError(
            f"the key callable {qualname(key)}{ksig} cannot take the arguments of "
            f"{name}{fsig} (called with {problems[0]}); give it the same parameters as "
            f"{name}(), or end its parameters with *args, **kwargs"
        )


# --------------------------------------------------------------------------- hash once

# Exact types whose hash is cheap, cached by the object or side-effect free: a key of
# these (or a tuple of them) is used as it is. Any other key is hashed once per call,
# here, and carries that hash: every later dict operation on it (the store, the
# flights, a cachetools cache's own bookkeeping) reads it instead of calling the
# key's ``__hash__`` again, which may be costly or reenter (S19).
PLAIN: Final = frozenset({int, str, bytes, float, bool, type(None)})

# The kinds of a parameter that takes one argument (not ``*args`` or ``**kwargs``): a
# function of one such parameter is keyed by that argument's value itself.
ONE_ARGUMENT: Final = (
    inspect.Parameter.POSITIONAL_ONLY,
    inspect.Parameter.POSITIONAL_OR_KEYWORD,
    inspect.Parameter.KEYWORD_ONLY,
)
# Instances of classes that keep object's own hash (by identity) are plain too.
_IDHASH: Final = object.__hash__


class HashedTuple(tuple):  # type: ignore[type-arg]
    """A tuple key that computes its hash once; equal to (and hashed as) the plain tuple."""

    def __init__(self, _: object) -> None:
        self._hash = tuple.__hash__(self)

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self) -> tuple[Any, ...]:
        return (tuple, (tuple(self),))


class Hashed:
    """Any other key, with its hash computed once; equal to (and hashed as) the value.

    ``Hashed(x) == x``, ``hash(Hashed(x)) == hash(x)``, and its ``repr`` is ``x``'s,
    so a mapping keyed by it answers ``x in mapping`` and ``mapping[x]``.
    """

    __slots__ = ("_hash", "value")

    def __init__(self, value: object) -> None:
        self._hash = hash(value)
        self.value = value

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if other.__class__ is Hashed:
            other = other.value
        return bool(self.value == other)

    def __repr__(self) -> str:
        return repr(self.value)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Hashed, (self.value,))


def hashed(key: Hashable) -> Hashable:
    """``key`` as the store and the flights should hold it: hashed at most once."""
    cls = key.__class__
    if cls in PLAIN or cls is HashedTuple or cls is Hashed or cls.__hash__ is _IDHASH:
        return key
    try:
        return HashedTuple(key) if cls is tuple else Hashed(key)
    except TypeError:
        return key  # unhashable: the first lookup raises the error that names it


def unhashed(key: object) -> object:
    """The key as the user's code made it (for a backend's digest)."""
    return key.value if key.__class__ is Hashed else key
