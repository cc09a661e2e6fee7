"""``python -m coalesce demo --redis URL``: several processes, one execution, via Redis.

Six worker processes (three ``def``, three ``async def``) call the same slow function
with the same argument at the same moment, each through its own
``@singleflight(ttl=..., backend=RedisBackend(...), name="demo-report")``. One of them
runs it; the others wait on Redis and get its value. The table shows who ran it and
how long each waited.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import secrets
import time
from typing import Any

__all__ = ("check_redis", "run_redis_demo")

PROCESSES = 6
WORK_SECONDS = 0.5
NAME = "demo-report"
PREFIX = "coalesce-demo"


def _worker(
    url: str, day: str, is_async: bool, work_seconds: float, barrier: Any, results: Any
) -> None:
    """One process of the fleet: build the decorated function, wait, call it once."""
    import redis

    from coalesce import singleflight
    from coalesce.redis import RedisBackend

    ran: list[bool] = []
    if is_async:
        aclient = redis.asyncio.Redis.from_url(url)
        backend = RedisBackend(aclient, prefix=PREFIX)

        @singleflight(ttl=60, backend=backend, name=NAME)
        async def areport(day: str) -> dict[str, Any]:
            ran.append(True)
            await asyncio.sleep(work_seconds)
            return {"day": day, "computed_by": os.getpid()}

        async def main() -> dict[str, Any]:
            try:
                value: dict[str, Any] = await areport(day)
            finally:
                await aclient.aclose()
            return value

        barrier.wait(30)
        started = time.perf_counter()
        value = asyncio.run(main())
    else:
        backend = RedisBackend(redis.Redis.from_url(url), prefix=PREFIX)

        @singleflight(ttl=60, backend=backend, name=NAME)
        def report(day: str) -> dict[str, Any]:
            ran.append(True)
            time.sleep(work_seconds)
            return {"day": day, "computed_by": os.getpid()}

        barrier.wait(30)
        started = time.perf_counter()
        value = report(day)
    results.put(
        (os.getpid(), is_async, bool(ran), value["computed_by"], time.perf_counter() - started)
    )


def check_redis(url: str) -> None:
    """Return if the Redis at ``url`` answers; else exit with one line saying why not.

    Checked before any demo runs, so a mistyped URL costs no wait: a wrong scheme, a
    server that is not there, or redis-py not installed.
    """
    try:
        import redis
    except ImportError:
        raise SystemExit(
            'the Redis demo needs redis-py: python -m pip install "python-coalesce[redis]"'
        ) from None
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"not a Redis URL: {url!r}: {_one_line(exc)}") from None
    try:
        client.ping()
    except redis.RedisError as exc:
        raise SystemExit(f"cannot reach Redis at {url}: {_one_line(exc)}") from None
    finally:
        client.close()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def run_redis_demo(
    url: str, *, processes: int = PROCESSES, work_seconds: float = WORK_SECONDS
) -> None:
    """Run the demo against the Redis at ``url`` and print a table.

    ``processes`` worker processes (alternately ``def`` and ``async def``) call a
    function that takes ``work_seconds``. Raises ``SystemExit`` with a message when
    that Redis cannot be reached.
    """
    import redis

    from coalesce.redis import RedisBackend

    check_redis(url)
    backend = RedisBackend.from_url(url, prefix=PREFIX)
    client: redis.Redis = backend.client  # type: ignore[assignment]

    day = f"day-{secrets.token_hex(4)}"  # a key no earlier run has cached
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    results: Any = context.Queue()
    workers = [
        context.Process(target=_worker, args=(url, day, i % 2 == 1, work_seconds, barrier, results))
        for i in range(processes)
    ]
    print(
        f"{processes} processes call report({day!r}) at the same moment through {url};\n"
        f"the function takes {work_seconds:g} s. Without coalescing it would run "
        f"{processes} times.\n"
    )
    for process in workers:
        process.start()
    try:
        rows = sorted(results.get(timeout=60) for _ in workers)
    finally:
        for process in workers:
            process.join(30)
            if process.is_alive():
                process.kill()
        bound = backend.bind(run_redis_demo, name=NAME, ttl=60.0, is_async=False)
        client.delete(bound.redis_key((day,)))
        client.close()

    print(f"{'process':>8}  {'kind':<9}  {'ran it':<6}  {'value from':>10}  {'waited':>8}")
    for pid, is_async, ran, computed_by, seconds in rows:
        kind = "async def" if is_async else "def"
        print(
            f"{pid:>8}  {kind:<9}  {'yes' if ran else 'no':<6}  {computed_by:>10}  "
            f"{seconds * 1000:>6.0f} ms"
        )
    executions = sum(1 for row in rows if row[2])
    print(
        f"\nexecutions: {executions} for {len(rows)} calls in {len(rows)} processes; "
        f"every caller got the value of process {rows[0][3]}"
        if len({row[3] for row in rows}) == 1
        else f"\nexecutions: {executions} for {len(rows)} calls"
    )
