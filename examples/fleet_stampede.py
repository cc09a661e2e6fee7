"""Fire 50 concurrent identical requests at a fleet and print how many times it worked.

Needs ``python -m pip install python-coalesce redis httpx``.

Start one of the fleet examples first (``examples/fleet_fastapi.py`` under
``uvicorn --workers 3``, or ``examples/fleet_flask.py`` under ``gunicorn -w 3``), then::

    REDIS_URL=redis://localhost:6379/0 python examples/fleet_stampede.py http://127.0.0.1:8000

It sends 50 identical ``GET /report`` requests at once, each on its own connection (so
they spread over the workers), and reads the endpoint's run counter in Redis before and
after. The query string is new on every run of this script, so a response kept from an
earlier run does not answer it. ``--uds PATH`` talks to a server on a unix socket.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
from collections import Counter

import httpx
import redis

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
CLIENTS = 50


async def stampede(url: str, uds: str | None) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=0)
    transport = httpx.AsyncHTTPTransport(uds=uds, limits=limits)
    path = f"/report?day=2024-06-01&run={secrets.token_hex(4)}"
    async with httpx.AsyncClient(base_url=url, transport=transport, timeout=60) as client:
        return await asyncio.gather(*(client.get(path) for _ in range(CLIENTS)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", default="http://127.0.0.1:8000")
    parser.add_argument("--uds", help="the server's unix socket, if it listens on one")
    options = parser.parse_args()
    counter = redis.Redis.from_url(REDIS_URL)
    before = int(counter.get("examples:runs") or 0)
    responses = asyncio.run(stampede(options.url, options.uds))
    ran = int(counter.get("examples:runs") or 0) - before
    statuses = Counter(r.status_code for r in responses)
    print(f"statuses: {dict(statuses)}")
    print(f"the endpoint ran {ran} time{'s' if ran != 1 else ''} for {CLIENTS} requests")


if __name__ == "__main__":
    main()
