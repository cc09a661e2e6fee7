"""A FastAPI service whose slow endpoint runs once across all its worker processes.

Needs ``python -m pip install python-coalesce redis fastapi uvicorn``.

Run it with three workers sharing one Redis (``REDIS_URL``, default
``redis://localhost:6379/0``)::

    REDIS_URL=redis://localhost:6379/0 uvicorn examples.fleet_fastapi:app --workers 3

Every worker wraps the app in ``coalesce.asgi.CoalesceMiddleware`` with the same
``RedisBackend``: identical requests arriving at any of the workers share ONE run of the
endpoint, the other workers serve that response from Redis, and for ``ttl`` seconds
later requests are answered from Redis without running it. The endpoint counts its runs
in Redis (``examples:runs``), so ``python examples/fleet_stampede.py`` can print how many
times it ran for 50 concurrent requests: 1.
"""

from __future__ import annotations

import asyncio
import os

import redis.asyncio
from fastapi import FastAPI

from coalesce.asgi import CoalesceMiddleware
from coalesce.redis import RedisBackend

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")

runs = redis.asyncio.Redis.from_url(REDIS_URL)  # the endpoint's own counter
app = FastAPI()


@app.get("/report")
async def report(day: str) -> dict[str, object]:
    run = await runs.incr("examples:runs")
    await asyncio.sleep(0.5)  # the slow part: a query, a rendering
    return {"day": day, "rows": 1234, "run": run}


# An async client for the ASGI middleware, in a backend of its own (no local_ttl=).
backend = RedisBackend(redis.asyncio.Redis.from_url(REDIS_URL), prefix="examples")
app.add_middleware(CoalesceMiddleware, backend=backend, ttl=30.0)
