"""Worker processes for the fleet freshness tests (R10, R11), driven over a pipe.

Each worker is one process of a fleet: its own client, its own ``RedisBackend`` and
its own ``@singleflight(backend=...)`` function, with its own frozen clock
(freezegun, so a test says what time it is in each process). The test sends
commands; the worker answers each with ``("done", id, status, value)`` and reports
every execution of the function's body as ``("started", n, pid, day)``. Nothing here
imports pytest, so the workers start fast.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import logging
import os
import random
import threading
from collections.abc import Callable
from typing import Any

import freezegun
from _redis_workers import make_backend
from freezegun import freeze_time


def ttl_of(result: Any) -> float:
    """A ttl callable (F5): the result says how long it lives."""
    return float(result["ttl"])


def keep_if_even(result: Any) -> bool:
    """A ``cache_if`` (F5): only results of even days are kept."""
    return int(result["day"]) % 2 == 0


CALLABLES: dict[str, Callable[[Any], Any]] = {"ttl_of": ttl_of, "keep_if_even": keep_if_even}


class _Warnings(logging.Handler):
    """Counts the warnings coalesce logs in this process."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def fleet_worker(
    socket: str,
    is_async: bool,
    backend_options: dict[str, Any],
    decorator_options: dict[str, Any],
    conn: Any,
    counter: Any,
    start_at: float,
) -> None:
    """Serve commands until ``("quit",)``; see the module docstring."""
    from coalesce import singleflight

    warnings = _Warnings()
    logging.getLogger("coalesce").addHandler(warnings)
    send_lock = threading.Lock()

    def send(*message: Any) -> None:
        with send_lock:
            conn.send(message)

    # Calls run in threads of their own, a few frames below the threading module's,
    # which freezegun gives the real clock by default: freeze it there too (a local
    # copy's expiry is read in the call's first frame, R8).
    freezegun.configure(
        default_ignore_list=[m for m in freezegun.config.DEFAULT_IGNORE_LIST if m != "threading"]
    )
    clock: list[Any] = [freeze_time(_at(start_at), real_asyncio=True)]
    frozen: list[Any] = [clock[0].start()]
    mode: dict[str, Any] = {"fail": None, "hold": False, "compute": 0.0}
    gate = [threading.Event()]
    raised: dict[str, int] = {}

    options = {"name": "report", **decorator_options}
    for name in ("ttl", "cache_if"):
        if isinstance(options.get(name), str):
            options[name] = CALLABLES[options[name]]
    backend = make_backend(socket, is_async=is_async, **backend_options)

    def body(day: Any) -> dict[str, Any]:
        # The gate is taken before the start is announced: a "release" the test sends
        # once it has seen the start opens this very gate, however late this thread
        # gets to wait on it (a later "release" replaces gate[0] with a new one).
        held = gate[0] if mode["hold"] else None
        with counter.get_lock():
            counter.value += 1
            n = counter.value
        send("started", n, os.getpid(), day)
        if held is not None and not held.wait(120):
            raise RuntimeError("held for 120 s and never released")
        if mode["compute"]:
            frozen[0].tick(mode["compute"])  # the computation "takes" this long
        if mode["fail"] is not None:
            raise ValueError(mode["fail"])
        return {"n": n, "pid": os.getpid(), "day": day, "ttl": day}

    loop: asyncio.AbstractEventLoop | None = None
    if is_async:

        @singleflight(backend=backend, **options)
        async def report(day: Any) -> dict[str, Any]:
            return await asyncio.to_thread(body, day)

        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True).start()
    else:

        @singleflight(backend=backend, **options)
        def report(day: Any) -> dict[str, Any]:
            return body(day)

    def answer(ident: int, action: Callable[[], Any]) -> None:
        try:
            value = action()
        except Exception as exc:
            raised.setdefault(type(exc).__name__, id(exc))
            send("done", ident, "error", (type(exc).__name__, str(exc), id(exc)))
        else:
            send("done", ident, "ok", value)

    def run(ident: int, what: str, args: tuple[Any, ...]) -> None:
        if is_async:
            assert loop is not None
            coroutine: Any
            if what == "call":
                coroutine = report(*args)
            elif what == "invalidate":
                coroutine = report.ainvalidate(*args)
            else:
                coroutine = report.acache_clear()
            future = asyncio.run_coroutine_threadsafe(coroutine, loop)
            answer(ident, lambda: future.result(60))
        elif what == "call":
            answer(ident, lambda: report(*args))
        elif what == "invalidate":
            answer(ident, lambda: report.invalidate(*args))
        else:
            answer(ident, report.cache_clear)

    while True:
        command = conn.recv()
        what = command[0]
        if what == "quit":
            break
        if what == "freeze":
            frozen[0].move_to(_at(command[1]))
        elif what == "mode":
            mode.update(command[1])
            if "draw" in command[1]:
                random.random = functools.partial(float, command[1]["draw"])  # XFetch's draw
        elif what == "release":
            gate[0].set()
            gate[0] = threading.Event()
        elif what == "info":
            info = report.cache_info()
            counts = {**info._asdict(), "stale": info.stale, "refreshes": info.refreshes}
            send("done", command[1], "ok", (counts, list(warnings.messages)))
        elif what in ("call", "invalidate", "clear"):
            threading.Thread(target=run, args=(command[1], what, command[2:]), daemon=True).start()
    clock[0].stop()
    if loop is not None:
        client = backend.client
        asyncio.run_coroutine_threadsafe(client.aclose(), loop).result(10)  # type: ignore[union-attr]
        loop.call_soon_threadsafe(loop.stop)
    conn.close()


def _at(timestamp: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
