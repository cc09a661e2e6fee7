"""The middlewares as users wire them.

Type-checked by tests/test_asgi.py (mypy --strict) and tests/test_typing_pyright.py
(pyright --strict).

Not run by pytest itself. Each ``# type: ignore[...]`` marks a line mypy must reject:
with ``warn_unused_ignores`` (part of --strict), a line it stops rejecting fails.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, assert_type

from fastapi import FastAPI
from starlette.applications import Starlette

from coalesce import asgi, wsgi


async def asgi_app(
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
    send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
) -> None:
    pass


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    return [b""]


plain = asgi.CoalesceMiddleware(asgi_app, ttl=2.5, vary=("Accept-Language",), max_body=65_536)
assert_type(plain, asgi.CoalesceMiddleware)
asgi.CoalesceMiddleware(asgi_app, key=lambda scope: scope["path"], private=True)
asgi.CoalesceMiddleware(asgi_app, tll=1)  # type: ignore[call-arg]
asgi.CoalesceMiddleware(asgi_app, ttl="1")  # type: ignore[arg-type]

fastapi_app = FastAPI()
fastapi_app.add_middleware(asgi.CoalesceMiddleware, ttl=1.0, methods=("GET",))
fastapi_app.add_middleware(asgi.CoalesceMiddleware, tll=1.0)  # type: ignore[call-arg]
starlette_app = Starlette()
starlette_app.add_middleware(asgi.CoalesceMiddleware, vary=("X-Tenant",))
asgi.CoalesceMiddleware(fastapi_app)

flask_like = wsgi.CoalesceMiddleware(wsgi_app, max_body=1024, key=lambda environ: None)
assert_type(flask_like, wsgi.CoalesceMiddleware)
wsgi.CoalesceMiddleware(wsgi_app, max_bdy=1)  # type: ignore[call-arg]
