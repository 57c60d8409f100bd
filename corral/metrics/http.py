"""Counting API requests: a pure ASGI middleware (as corral.api.audit's) around every HTTP request.

Each request is counted by method, route template and status code, and its duration observed, once its response
has ended. The route is the template the router matched (``/v1/vms/{name}/start``, never ``/v1/vms/web/start``), so
the label values stay bounded whatever paths clients send: a path no route matched is ``unmatched``, a method outside
HTTP's usual ones is ``other``.
"""

from __future__ import annotations

import time

from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.metrics.registry import API_REQUEST_DURATION, API_REQUESTS

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"


def route_template(scope: Scope) -> str:
    """The template of the route the router matched for this request, with its router's prefix.

    FastAPI (0.150 and later) keeps included routers nested: ``scope["route"]`` is the route as its router declared
    it (``/vms/{name}``, without ``/v1``), and the template with the prefix is the one of the effective route it
    records under ``scope["fastapi"]``. Earlier versions copied every route with the prefix, so ``scope["route"]``
    (set by Starlette's router) has it whole.
    """
    effective = (scope.get("fastapi") or {}).get("effective_route_context")
    path = getattr(effective, "path_format", None)
    if isinstance(path, str) and path:
        return path
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return UNMATCHED
    if isinstance(route, Mount):  # a mount (the web page's static files) serves a whole tree
        return f"{path}/{{path}}"
    return path


class MetricsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.monotonic()
        status = 0

        async def send_wrapper(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, send_wrapper)
        except BaseException:
            status = status or 500  # as the server answers a request whose handler raised
            raise
        finally:
            method = scope.get("method", "")
            method = method if method in METHODS else "other"
            route = route_template(scope)
            API_REQUESTS.labels(method=method, route=route, status=str(status) if status else "none").inc()
            API_REQUEST_DURATION.labels(method=method, route=route).observe(time.monotonic() - t0)
