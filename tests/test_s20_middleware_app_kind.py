"""S20: each middleware refuses an app of the other kind where it can tell, never a valid one."""

from __future__ import annotations

import functools
from typing import Any

import pytest

from coalesce.asgi import CoalesceMiddleware as ASGIMiddleware
from coalesce.wsgi import CoalesceMiddleware as WSGIMiddleware


def wsgi_app(environ: Any, start_response: Any) -> list[bytes]:
    start_response("200 OK", [])
    return [b"ok"]


class WsgiObject:
    """A WSGI app as Flask and Django make them: an object with a sync __call__."""

    def __call__(self, environ: Any, start_response: Any) -> list[bytes]:
        return wsgi_app(environ, start_response)


async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})


class AsgiObject:
    """An ASGI app as Starlette and FastAPI make them: an object with an async __call__."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await asgi_app(scope, receive, send)


class Asgi2:
    """An ASGI 2 ("double callable") app: the class takes scope, the instance is awaited."""

    def __init__(self, scope: Any) -> None:
        self.scope = scope

    async def __call__(self, receive: Any, send: Any) -> None:
        pass


def sync_asgi(scope: Any, receive: Any, send: Any) -> Any:
    """A sync callable that returns the coroutine: a valid ASGI app."""
    return asgi_app(scope, receive, send)


def anything(*args: Any, **kwargs: Any) -> Any:
    """A callable that takes anything: not judged."""
    return None


@pytest.mark.parametrize("app", [wsgi_app, WsgiObject()], ids=["function", "object"])
def test_s20_asgi_middleware_refuses_a_wsgi_app(app: Any) -> None:
    """S20: the ASGI middleware refuses a WSGI app, and names the WSGI middleware."""
    with pytest.raises(TypeError, match=r"is a WSGI app .* coalesce\.wsgi\.CoalesceMiddleware"):
        ASGIMiddleware(app)


@pytest.mark.parametrize(
    "app",
    [asgi_app, AsgiObject(), functools.partial(asgi_app)],
    ids=["function", "object", "partial"],
)
def test_s20_wsgi_middleware_refuses_an_asgi_app(app: Any) -> None:
    """S20: the WSGI middleware refuses an async (ASGI) app, and names the ASGI middleware."""
    with pytest.raises(TypeError, match=r"is an ASGI app .* coalesce\.asgi\.CoalesceMiddleware"):
        WSGIMiddleware(app)


@pytest.mark.parametrize(
    "app",
    [asgi_app, AsgiObject(), Asgi2, sync_asgi, anything, functools.partial(asgi_app)],
    ids=["function", "object", "asgi2", "sync-returning-coroutine", "varargs", "partial"],
)
def test_s20_asgi_middleware_accepts_every_asgi_app(app: Any) -> None:
    """S20: valid ASGI apps (and apps it cannot judge) are accepted."""
    assert ASGIMiddleware(app).app is app


@pytest.mark.parametrize(
    "app",
    [wsgi_app, WsgiObject(), anything, functools.partial(wsgi_app)],
    ids=["function", "object", "varargs", "partial"],
)
def test_s20_wsgi_middleware_accepts_every_wsgi_app(app: Any) -> None:
    """S20: valid WSGI apps (and apps it cannot judge) are accepted."""
    assert WSGIMiddleware(app).app is app


def test_s20_real_frameworks_are_told_apart() -> None:
    """S20: a Starlette app is an ASGI app to both middlewares' checks."""
    starlette = pytest.importorskip("starlette.applications")
    app = starlette.Starlette()
    assert ASGIMiddleware(app).app is app
    with pytest.raises(TypeError, match="is an ASGI app"):
        WSGIMiddleware(app)
