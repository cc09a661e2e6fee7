"""Five clients ask a FastAPI server for the same slow report at once; it runs once.

Needs: ``python -m pip install python-coalesce fastapi uvicorn httpx`` (in a clone,
the ``test`` extra has them all: ``python -m pip install -e ".[test]"``).

Run it with ``python examples/fastapi_five_clients.py``. It starts uvicorn on
127.0.0.1 on a free port, fires five concurrent httpx requests for the same URL,
logs what the server does, prints each client's response, and exits (status 0 when
the handler ran once).

Without ``CoalesceMiddleware`` the handler would build the report five times.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import threading
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from coalesce.asgi import CoalesceMiddleware

CLIENTS = 5

log = logging.getLogger("example")
runs = 0
arrived = 0
all_in = asyncio.Event()  # set once every client's request has reached the middleware


class LogArrivals:
    """Log each request as it reaches the coalescing middleware (pure ASGI)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        global arrived
        if scope["type"] == "http":
            arrived += 1
            target = f"{scope['path']}?{scope['query_string'].decode()}"
            log.info("server: request %d arrived: %s %s", arrived, scope["method"], target)
            if arrived == CLIENTS:
                all_in.set()
        await self.app(scope, receive, send)


app = FastAPI()
app.add_middleware(CoalesceMiddleware)  # one run for identical concurrent GETs
app.add_middleware(LogArrivals)  # added last, so it sits outside and sees every request


@app.get("/report")
async def report(day: str) -> dict[str, Any]:
    global runs
    runs += 1
    log.info("handler: building the report for %s (run %d)", day, runs)
    # Stands in for a slow query. It finishes once all five requests are in, so the
    # demo shows the same thing on every machine; with a real slow query the clients
    # need only arrive while it runs.
    await asyncio.wait_for(all_in.wait(), timeout=10)
    return {"day": day, "rows": 1234, "run": runs}


async def ask(url: str) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        return await asyncio.gather(
            *(client.get("/report", params={"day": "2024-06-01"}) for _ in range(CLIENTS))
        )


def main() -> int:
    log.addHandler(logging.StreamHandler(sys.stdout))
    log.setLevel(logging.INFO)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # clients may connect before the server's loop is up
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = uvicorn.Config(app, log_config=None, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    thread.start()
    log.info("server: listening on %s", url)
    try:
        responses = asyncio.run(ask(url))
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
    for number, response in enumerate(responses, 1):
        print(f"client {number}: {response.status_code} {response.text}")
    print(f"the handler ran {runs} time{'s' if runs != 1 else ''} for {CLIENTS} clients")
    return 0 if runs == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
