"""A Flask service whose slow endpoint runs once across all its worker processes.

Needs ``python -m pip install python-coalesce redis flask gunicorn``.

Run it with three workers (threaded: the requests of one key wait in their own threads)
sharing one Redis (``REDIS_URL``, default ``redis://localhost:6379/0``)::

    REDIS_URL=redis://localhost:6379/0 gunicorn -w 3 --threads 32 examples.fleet_flask:app

Every worker wraps the WSGI app in ``coalesce.wsgi.CoalesceMiddleware`` with the same
``RedisBackend``: identical requests arriving at any of the workers share ONE run of the
view, the other workers serve that response from Redis, and for ``ttl`` seconds later
requests are answered from Redis without running it. The view counts its runs in Redis
(``examples:runs``), so ``python examples/fleet_stampede.py`` can print how many times it
ran for 50 concurrent requests: 1.
"""

from __future__ import annotations

import os
import time

import redis
from flask import Flask, jsonify, request

from coalesce.redis import RedisBackend
from coalesce.wsgi import CoalesceMiddleware

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")

runs = redis.Redis.from_url(REDIS_URL)  # the view's own counter
app = Flask(__name__)


@app.get("/report")
def report() -> object:
    run = runs.incr("examples:runs")
    time.sleep(0.5)  # the slow part: a query, a rendering
    return jsonify(day=request.args.get("day"), rows=1234, run=run)


# A sync client for the WSGI middleware, in a backend of its own (no local_ttl=).
backend = RedisBackend(redis.Redis.from_url(REDIS_URL), prefix="examples")
app.wsgi_app = CoalesceMiddleware(app.wsgi_app, backend=backend, ttl=30.0)
