"""A worker process that keeps local copies (``local_ttl=``) and answers over a pipe (R12).

The test process sends commands; the worker answers each, so the test knows what the
other process holds without sharing its memory. Nothing here imports pytest.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from _redis_workers import make_backend

from coalesce import singleflight

NAME = "copies"
"""The name every process gives the shared function (its Redis keys' middle part)."""


def value_of(key: Any, pid: int, run: int) -> str:
    return f"{key}:{pid}:{run}"


def copies_worker(address: str, is_async: bool, conn: Any) -> None:
    """Serve commands from ``conn`` until ``("stop",)``.

    ``("call", key)`` -> the function's value for ``key``; ``("held", key)`` -> whether a
    local copy of it is kept now; ``("dropped", key, timeout)`` -> whether its copy went
    within ``timeout`` seconds; ``("up", timeout)`` / ``("down", timeout)`` -> whether the
    copies channel came up / went down within it.
    """
    backend = make_backend(address, is_async=is_async, local_ttl=60.0)
    runs = 0

    def compute(key: Any) -> str:
        nonlocal runs
        runs += 1
        return value_of(key, os.getpid(), runs)

    loop = asyncio.new_event_loop()
    if is_async:

        @singleflight(ttl=60, backend=backend, name=NAME)
        async def shared(key: Any) -> str:
            return compute(key)

        def call(key: Any) -> Any:
            return loop.run_until_complete(shared(key))

        cache = shared.cache
    else:

        @singleflight(ttl=60, backend=backend, name=NAME)
        def plain(key: Any) -> str:
            return compute(key)

        call = plain
        cache = plain.cache
    follower = backend._follower

    def within(predicate: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)
        return True

    conn.send(("started", os.getpid()))
    while True:
        command, *args = conn.recv()
        if command == "stop":
            break
        if command == "call":
            conn.send(call(args[0]))
        elif command == "held":
            conn.send(args[0] in cache)
        elif command == "dropped":
            conn.send(within(lambda key=args[0]: key not in cache, args[1]))
        elif command == "up":
            conn.send(follower.ready.wait(args[0]))
        elif command == "down":
            conn.send(within(lambda: not follower.up, args[0]))
        else:
            conn.send(f"unknown command {command!r}")
    backend.close()
    loop.close()
    conn.close()
