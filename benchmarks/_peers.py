"""The libraries coalesce is measured beside, each built the way its documentation shows.

Peers come from the ``bench`` extra (``pip install -e .[bench]``). A peer that is not
installed is skipped with a note rather than failing the run: the bars that need it
then say "n/a".
"""

from __future__ import annotations

import importlib
import importlib.metadata
import threading
from collections.abc import Callable
from typing import Any

TTL = 600.0
MAXSIZE = 1024

#: Distribution name -> import name, for the version table and for "is it installed".
DISTRIBUTIONS = {
    "coalesce": "coalesce",
    "cachetools": "cachetools",
    "cachebox": "cachebox",
    "async-lru": "async_lru",
    "coalescer": "coalescer",
    "singleflight": "singleflight",
    "cashews": "cashews",
    "aiocache": "aiocache",
    "dogpile.cache": "dogpile.cache",
    "matplotlib": "matplotlib",
}

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def available(distribution: str) -> bool:
    try:
        importlib.import_module(DISTRIBUTIONS[distribution])
    except ImportError:
        return False
    return True


def version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        if distribution == "coalesce":
            try:
                return str(importlib.import_module("coalesce").__version__)
            except (ImportError, AttributeError):
                return "not installed"
        return "not installed"


# --- caches for def (hit path, thread stampede) -------------------------------------------


def coalesce_ttl() -> Decorator:
    from coalesce import singleflight

    return singleflight(ttl=TTL, maxsize=MAXSIZE)


def coalesce_bare() -> Decorator:
    from coalesce import singleflight

    return singleflight


def cachetools_plain() -> Decorator:
    import cachetools

    return cachetools.cached(cachetools.TTLCache(maxsize=MAXSIZE, ttl=TTL))


def cachetools_lock() -> Decorator:
    import cachetools

    return cachetools.cached(cachetools.TTLCache(maxsize=MAXSIZE, ttl=TTL), lock=threading.Lock())


def cachetools_condition() -> Decorator:
    import cachetools

    condition = threading.Condition()
    return cachetools.cached(
        cachetools.TTLCache(maxsize=MAXSIZE, ttl=TTL), lock=condition, condition=condition
    )


def cachebox_ttl() -> Decorator:
    import cachebox

    return cachebox.cached(cachebox.TTLCache(MAXSIZE, TTL))


def lru_cache() -> Decorator:
    import functools

    return functools.lru_cache(maxsize=MAXSIZE)


def dogpile_memory(*, keywords: bool = False) -> Decorator:
    """dogpile.cache's memory region; its default key generator refuses keyword arguments."""
    from dogpile.cache import make_region
    from dogpile.cache.util import function_key_generator, kwarg_function_key_generator

    region = make_region(
        function_key_generator=kwarg_function_key_generator if keywords else function_key_generator
    ).configure("dogpile.cache.memory", expiration_time=TTL)
    return region.cache_on_arguments()


def coalescer_sync() -> Decorator:
    from coalescer.sync import coalesce

    return coalesce


def singleflight_sync() -> Decorator:
    """``singleflight.basic.SingleFlight`` takes only string keys: key by ``str(args)``."""
    from singleflight.basic import SingleFlight  # type: ignore[import-untyped]

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        call = SingleFlight().call

        def wrapper(*args: Any) -> Any:
            return call(fn, str(args), *args)

        return wrapper

    return decorate


# --- caches for async def ------------------------------------------------------------------


def async_lru_ttl() -> Decorator:
    from async_lru import alru_cache

    return alru_cache(maxsize=MAXSIZE, ttl=TTL)


def cashews_memory(*, lock: bool = False) -> Decorator:
    from cashews import Cache

    cache = Cache()
    cache.setup("mem://")
    return cache(ttl=TTL, lock=lock)


def aiocache_memory(*, stampede: bool = False) -> Decorator:
    import aiocache  # type: ignore[import-untyped]

    decorator: Decorator = (
        aiocache.cached_stampede(ttl=TTL, lease=30) if stampede else aiocache.cached(ttl=TTL)
    )
    return decorator


def coalescer_async() -> Decorator:
    from coalescer import coalesce

    return coalesce


def singleflight_async() -> Decorator:
    """``singleflight.asynchronous.SingleFlightAsync``: a string key from the caller, run inline."""
    from singleflight.asynchronous import SingleFlightAsync  # type: ignore[import-untyped]

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        call = SingleFlightAsync().call

        async def wrapper(*args: Any) -> Any:
            return await call(fn, str(args), *args)

        return wrapper

    return decorate


def singleflight_async_direct(key: str) -> Decorator:
    """The cheapest use of ``SingleFlightAsync``: its ``call`` with a fixed key, no wrapper."""
    import functools

    from singleflight.asynchronous import SingleFlightAsync

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        return functools.partial(SingleFlightAsync().call, fn, key)

    return decorate
