"""ASGI pieces around the BentoML service: the API key check, ``GET /v1/model-info``, and a
fix for BentoML's request timer.

Kept apart from ``service.py`` so they can be tested without loading models.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from serving.config import API_KEY_HEADER

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]

# the planner's page itself (/ui/) is open; the data behind it is guarded like the API
PROTECTED_PREFIX = ("/v1/", "/ui/api/")


class ApiKeyMiddleware:
    """Requests to ``/v1/...`` and ``/ui/api/...`` need ``X-API-Key`` (or ``Authorization:
    Bearer``) equal to the configured key. Health, readiness, metrics, the docs and the page's
    static files stay open for probes and people."""

    def __init__(self, app: Any, key: str | None = None) -> None:
        from serving.config import load_serving_config

        self.app = app
        key = key or load_serving_config().api_key
        self.key = key.encode() if key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.key is None
            or scope["type"] != "http"
            or not str(scope.get("path", "")).startswith(PROTECTED_PREFIX)
        ):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        given = headers.get(API_KEY_HEADER.encode(), b"")
        if not given:
            auth = headers.get(b"authorization", b"")
            given = auth[7:] if auth.lower().startswith(b"bearer ") else b""
        if given and hmac.compare_digest(given, self.key):
            await self.app(scope, receive, send)
            return
        body = json.dumps({"error": f"missing or wrong API key (header {API_KEY_HEADER})"})
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body.encode()})


def model_info_app(get_info: Callable[[], dict[str, Any]]) -> Starlette:
    """``GET /v1/model-info`` (mounted at ``/v1``, after the API routes, which match first):
    versions, feature sets, training windows, hold-out metrics."""

    async def info(_: Request) -> JSONResponse:
        return JSONResponse(get_info())

    return Starlette(routes=[Route("/model-info", info, methods=["GET"])])


def patch_timeout_timer() -> bool:
    """Cancel BentoML's per-request timeout timer when the response starts.

    BentoML 1.4's ``TimeoutMiddleware`` schedules ``call_later(timeout, ...)`` per request and
    never cancels it, so every request keeps a timer (and its closure) alive for the whole
    timeout; under load that is thousands of live objects and long garbage-collection pauses.
    Same behaviour otherwise (504 on timeout). Returns False if BentoML's layout changed.
    """
    try:
        from bentoml._internal.server.http import traffic
    except ImportError:  # pragma: no cover - another BentoML layout
        return False
    middleware = getattr(traffic, "TimeoutMiddleware", None)
    if middleware is None or getattr(middleware, "_doorstep_patched", False):
        return middleware is not None

    async def __call__(self: Any, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

        async def _send(message: dict[str, Any]) -> None:
            if not waiter.done():
                waiter.set_result(None)
                timer.cancel()
            await send(message)

        fut = asyncio.ensure_future(self.app(scope, receive, _send))
        try:
            await waiter
        except TimeoutError:
            if fut.cancel():
                resp = JSONResponse(
                    {"error": f"Not able to process the request in {self.timeout} seconds"},
                    status_code=504,
                )
                await resp(scope, receive, send)  # type: ignore[arg-type]
        else:
            await fut
        finally:
            timer.cancel()
        return None

    middleware.__call__ = __call__
    middleware._doorstep_patched = True
    return True
