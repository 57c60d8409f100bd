"""Who did it, and what failed: one ASGI middleware around every request.

It sets the actor (on the unix socket the ``X-Corral-User`` header, "anonymous" without one; over TCP the
authenticated principal, whatever the header says) for everything the request does, so each
event the VM service records carries it. When a request that changes something (POST, PUT, PATCH, DELETE; not the
waits) fails, it records one event for the operation with ``result="error"`` and the error, whatever raised it:
a domain error, a refused request body, or a bug.
"""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.api.models import API_PREFIX, USER_HEADER
from corral.auth.principal import is_remote, principal_of
from corral.vm.actor import ACTOR

MUTATING = {"POST", "PUT", "PATCH", "DELETE"}
NOT_CHANGES = {"wait", "wait-ready"}  # POSTs that only wait
OPERATION_NAMES = {"labels": "label", "ports": "port", "files": "cp"}
BODY_LIMIT = 64 << 10
_SAFE_USER = re.compile(r"[^A-Za-z0-9_.@-]")


def actor_of(headers: list[tuple[bytes, bytes]]) -> str:
    want = USER_HEADER.lower().encode()
    for k, v in headers:
        if k.lower() == want:
            user = _SAFE_USER.sub("_", v.decode("latin-1").strip())[:64]
            if user:
                return user
    return "anonymous"


def operation(method: str, path: str, body: bytes) -> tuple[str | None, str] | None:
    """(VM name or None, event type) of a changing request; None for requests that change nothing."""
    if method not in MUTATING or not path.startswith(API_PREFIX + "/"):
        return None
    parts = [p for p in path[len(API_PREFIX):].split("/") if p]
    if not parts:
        return None
    if parts[0] != "vms":
        return None, parts[0].removesuffix("s") or parts[0]
    if len(parts) == 1:
        name = None
        try:
            doc = json.loads(body)
            if isinstance(doc, dict) and isinstance(doc.get("name"), str):
                name = doc["name"][:63]
        except ValueError:
            pass
        return name, "create"
    if len(parts) == 2:
        return parts[1], "delete" if method == "DELETE" else method.lower()
    if parts[2] in NOT_CHANGES:
        return None
    return parts[1], OPERATION_NAMES.get(parts[2], parts[2])


class AuditMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        token = ACTOR.set(principal_of(scope).name if is_remote(scope) else actor_of(scope.get("headers", [])))
        method = scope.get("method", "")
        body = bytearray()
        status = 0
        error_body = bytearray()
        changes = scope["type"] == "http" and method in MUTATING

        async def receive_wrapper() -> Message:
            msg = await receive()
            if msg["type"] == "http.request" and len(body) < BODY_LIMIT:
                body.extend(msg.get("body", b"")[:BODY_LIMIT - len(body)])
            return msg

        async def send_wrapper(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            elif msg["type"] == "http.response.body" and status >= 400 and len(error_body) < BODY_LIMIT:
                error_body.extend(msg.get("body", b""))
            await send(msg)

        try:
            try:
                await self.app(scope, receive_wrapper if changes else receive, send_wrapper)
            except Exception as exc:
                if changes:
                    self._record(scope, bytes(body), 500, {"error": type(exc).__name__, "message": str(exc)})
                raise
            if changes and status >= 400:
                try:
                    err: Any = json.loads(error_body)
                except ValueError:
                    err = None
                if not isinstance(err, dict):
                    err = {"error": "Error", "message": bytes(error_body).decode(errors="replace").strip()}
                self._record(scope, bytes(body), status, err)
        finally:
            ACTOR.reset(token)

    def _record(self, scope: Scope, body: bytes, status: int, err: dict[str, Any]) -> None:
        op = operation(scope.get("method", ""), scope.get("path", ""), body)
        svc = getattr(scope["app"].state, "services", None) if "app" in scope else None
        if op is None or svc is None:
            return
        vm, type_ = op
        message = str(err.get("message") or "failed")
        svc.vms.event(vm, type_, f"{type_} failed: {message}", result="error", error=message,
                      error_class=str(err.get("error", "Error")), status=status,
                      request=f"{scope.get('method')} {scope.get('path')}")
