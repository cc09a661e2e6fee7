"""Key building (S4): which calls count as the same call.

The default key is the call's arguments bound to the function's parameters, defaults
applied, one slot per parameter in declaration order: ``f(1)``, ``f(x=1)`` and
``f(1, y=<default>)`` all give the same tuple. When every argument comes
positionally and the function has only plain positional parameters, that tuple is
simply ``args``: the wrapper uses it as it is, with no call into this module.

Everything here is decided once, when decorating; the per-call functions are small
closures with no option checks left in them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Hashable, Sequence
from operator import itemgetter
from typing import Any, Final

from ._pinned import (
    all,
    any,
    callable,
    enumerate,
    getattr,
    hash,
    isinstance,
    len,
    map,
    max,
    repr,
    sorted,
    sum,
    zip,
)

__all__ = ("KeyPlan", "check_key_callable", "describe_unhashable", "plan_key", "qualname")

_EMPTY: Final = inspect.Parameter.empty
_POSITIONAL: Final = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Final = _Missing()
# Marks where keyword arguments start in a key built without a signature; private, so
# no argument value can be equal to it.
_KWMARK: Final = _Missing()

MakeKey = Callable[[tuple[Any, ...], dict[str, Any]], Hashable]


class KeyPlan:
    """How one decorated function turns a call into a key.

    ``fast_nargs`` is the number of positional arguments for which ``args`` itself is
    the key (no keyword arguments given); -1 when that shortcut never applies.
    ``make`` builds the key for every other call.
    """

    __slots__ = ("fast_nargs", "make", "slot_names", "slots", "user_key")

    def __init__(
        self,
        make: MakeKey,
        fast_nargs: int,
        slots: Callable[[tuple[Any, ...], dict[str, Any]], list[Any]] | None,
        slot_names: tuple[str, ...],
        *,
        user_key: bool = False,
    ) -> None:
        self.make = make
        self.fast_nargs = fast_nargs
        self.slots = slots
        self.slot_names = slot_names
        self.user_key = user_key


def qualname(func: Callable[..., Any]) -> str:
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)


def _binder(
    func: Callable[..., Any], sig: inspect.Signature
) -> Callable[[tuple[Any, ...], dict[str, Any]], list[Any]]:
    """Build ``slots(args, kwargs)``: one value per parameter, defaults applied.

    A ``*args`` parameter's slot is the tuple of extra positional arguments; a
    ``**kwargs`` parameter's slot is the sorted tuple of extra keyword items. Calls
    that do not bind raise the ``TypeError`` the call itself would.
    """
    params = list(sig.parameters.values())
    pos = [p for p in params if p.kind in _POSITIONAL]
    npos = len(pos)
    n_posonly = sum(1 for p in pos if p.kind is inspect.Parameter.POSITIONAL_ONLY)
    pos_names = tuple(p.name for p in pos)
    pos_defaults = tuple(_MISSING if p.default is _EMPTY else p.default for p in pos)
    kwonly = tuple(
        (p.name, _MISSING if p.default is _EMPTY else p.default)
        for p in params
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    )
    varpos = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)
    varkw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    name = qualname(func)

    def fail(args: tuple[Any, ...], kwargs: dict[str, Any]) -> TypeError:
        try:
            sig.bind(*args, **kwargs)
        except TypeError as exc:
            return TypeError(f"{name}(): {exc}")
        return TypeError(f"{name}(): these arguments do not bind to its signature {sig}")

    def slots(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
        nargs = len(args)
        if nargs > npos:
            if not varpos:
                raise fail(args, kwargs)
            values = list(args[:npos])
        else:
            values = list(args)
        kw = dict(kwargs) if kwargs else None
        if kw:
            for i in range(n_posonly, len(values)):
                if pos_names[i] in kw:
                    raise fail(args, kwargs)
            for i in range(len(values), npos):
                if i >= n_posonly and pos_names[i] in kw:
                    values.append(kw.pop(pos_names[i]))
                elif pos_defaults[i] is _MISSING:
                    raise fail(args, kwargs)
                else:
                    values.append(pos_defaults[i])
        else:
            for i in range(len(values), npos):
                if pos_defaults[i] is _MISSING:
                    raise fail(args, kwargs)
                values.append(pos_defaults[i])
        if varpos:
            values.append(args[npos:])
        for kwname, default in kwonly:
            if kw and kwname in kw:
                values.append(kw.pop(kwname))
            elif default is _MISSING:
                raise fail(args, kwargs)
            else:
                values.append(default)
        if varkw:
            values.append(tuple(sorted(kw.items())) if kw else ())
        elif kw:
            raise fail(args, kwargs)
        return values

    return slots


def _typed(values: Sequence[Any]) -> tuple[type, ...]:
    return tuple(type(v) for v in values)


def _plan_without_signature(func: Callable[..., Any], key: object, typed: bool) -> KeyPlan:
    """Key from the raw arguments, for callables whose signature cannot be read."""
    if key is not None:
        raise TypeError(
            f"key={key!r} names parameters, but the signature of {qualname(func)} "
            "cannot be read; pass a key callable instead"
        )

    def make(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
        k: tuple[Any, ...] = args
        if kwargs:
            k = (*args, _KWMARK, *sorted(kwargs.items()))
        if typed:
            return (k, _typed(args), _typed(list(kwargs.values())))
        return k

    return KeyPlan(make, -1, None, ())


def plan_key(func: Callable[..., Any], key: object, typed: bool) -> KeyPlan:
    """Decide, once, how calls of ``func`` become keys (see SPEC section 1, ``key``)."""
    if typed not in (True, False):
        raise TypeError(f"typed must be True or False, not {typed!r}")
    if callable(key):
        if typed:
            raise TypeError(
                f"typed=True has no effect with a key callable ({qualname(func)}); "
                "put the types into the key the callable returns instead"
            )
        user_key = key

        def make_user(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
            result: Hashable = user_key(*args, **kwargs)
            return result

        return KeyPlan(make_user, -1, None, (), user_key=True)

    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return _plan_without_signature(func, key, typed)

    slots = _binder(func, sig)
    names = tuple(sig.parameters)
    params = list(sig.parameters.values())
    kinds = [p.kind for p in params]
    simple = all(kind in _POSITIONAL for kind in kinds)

    if key is None:
        if typed:

            def make_typed(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
                values = slots(args, kwargs)
                flat = list(values)
                for i, kind in enumerate(kinds):
                    if kind is inspect.Parameter.VAR_POSITIONAL:
                        flat.extend(values[i])
                    elif kind is inspect.Parameter.VAR_KEYWORD:
                        flat.extend(v for _, v in values[i])
                return (tuple(values), _typed(flat))

            return KeyPlan(make_typed, -1, slots, names)

        if simple and len(params) == 1:
            # One parameter: its value is the key, as lru_cache does for one argument;
            # no tuple to build or hash on the hit path.
            def make_single(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
                value: Hashable = slots(args, kwargs)[0]
                return value

            return KeyPlan(make_single, -1, slots, names)

        def make_default(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
            return tuple(slots(args, kwargs))

        return KeyPlan(make_default, len(params) if simple else -1, slots, names)

    if isinstance(key, str):
        chosen: tuple[str, ...] = (key,)
        single = True
    elif isinstance(key, Sequence) and all(isinstance(k, str) for k in key):
        chosen = tuple(key)
        single = False
        if not chosen:
            raise ValueError(
                f"key=() names no parameter of {qualname(func)}(); name at least one, "
                "or pass a key callable"
            )
    else:
        raise TypeError(
            f"key must be None, a parameter name, a sequence of parameter names or a "
            f"callable, not {type(key).__name__} ({key!r})"
        )
    unknown = [k for k in chosen if k not in sig.parameters]
    if unknown:
        raise TypeError(
            f"key names {', '.join(map(repr, unknown))}, which "
            f"{'is not a parameter' if len(unknown) == 1 else 'are not parameters'} of "
            f"{qualname(func)}{sig}; choose from {', '.join(map(repr, names)) or 'none'}"
        )
    index = tuple(names.index(k) for k in chosen)
    pick: Callable[[Sequence[Any]], Any]
    if single or len(index) > 1:
        pick = itemgetter(*index)
    else:
        # A sequence of one name is still a sequence: the key is a 1-tuple, as the
        # compiled wrapper builds it (itemgetter of one index would give the value).
        only = index[0]

        def pick(values: Sequence[Any]) -> tuple[Any]:
            return (values[only],)

    if typed:

        def make_named_typed(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
            picked = pick(slots(args, kwargs))
            return (picked, type(picked)) if single else (picked, _typed(picked))

        return KeyPlan(make_named_typed, -1, slots, names)

    # Fast path: the named parameters all came positionally and the call binds
    # without help (no keywords, no missing required argument, not too many).
    required = sum(1 for p in params if p.kind in _POSITIONAL and p.default is _EMPTY)
    npos = sum(1 for kind in kinds if kind in _POSITIONAL)
    kwonly_required = any(
        p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is _EMPTY for p in params
    )
    has_varpos = inspect.Parameter.VAR_POSITIONAL in kinds
    lo = max(required, max(index) + 1)
    hi = 1 << 30 if has_varpos else npos
    fast = max(index) < npos and not kwonly_required

    def make_named(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
        if fast and not kwargs and lo <= len(args) <= hi:
            result: Hashable = pick(args)
            return result
        picked: Hashable = pick(slots(args, kwargs))
        return picked

    return KeyPlan(make_named, -1, slots, names)


def describe_unhashable(
    func: Callable[..., Any],
    plan: KeyPlan,
    key: object,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> TypeError:
    """The error for a key that cannot be hashed, naming the argument and the fix."""
    name = qualname(func)
    if plan.user_key:
        return TypeError(
            f"the key function of {name}() returned an unhashable "
            f"{type(key).__name__} ({key!r}); return a hashable value such as a tuple or str"
        )
    culprit = None
    if plan.slots is not None:
        try:
            values = plan.slots(args, kwargs)
        except TypeError:
            values = []
        for pname, value in zip(plan.slot_names, values, strict=False):
            try:
                hash(value)
            except TypeError:
                culprit = (pname, value)
                break
    if culprit is None:
        return TypeError(
            f"unhashable argument of {name}(): {key!r} cannot be a key; "
            "pass key=... to choose what identifies a call"
        )
    pname, value = culprit
    return TypeError(
        f"unhashable argument {pname!r} of {name}() (a {type(value).__name__}); "
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
