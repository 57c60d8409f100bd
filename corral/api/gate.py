"""The ASGI wrapper of the TCP listener: every request is authenticated and checked against the policy here, before
the app sees it; the unix socket's server does not go through it (the local root, as before).

For each HTTP request or websocket over TCP the gate
  1. drops any ``X-Corral-User`` header (a remote client must not name another actor) and marks the scope remote;
  2. finds the route the app will run (the app's own routes, in its order) and its rule (corral.auth.policy);
  3. lets through without a token only ``public`` routes (log in), the web page's static files, and websockets that
     carry ``?ticket=`` (the console route redeems the ticket: corral.auth.tickets);
  4. turns ``Authorization: Bearer <token>`` into the principal (else 401, one line), and refuses what the policy
     does not allow with 403 (one line), recorded in the event log with the principal as the actor.
A refused request never reaches the app: it changes nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from starlette.routing import Mount, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.api.audit import operation
from corral.api.models import USER_HEADER
from corral.auth import policy
from corral.auth.principal import SCOPE_PRINCIPAL, SCOPE_REMOTE, Principal
from corral.auth.service import AuthService
from corral.cluster import peer
from corral.errors import one_line
from corral.vm.actor import ACTOR

#: The principal of an unauthenticated request that is let through (log in, static files, ticketed websockets):
#: a viewer of no project, which sees nothing.
ANONYMOUS = Principal("anonymous", "viewer", "")
BODY_LIMIT = 1 << 20
_USER_HEADER = USER_HEADER.lower().encode()
_STATIC = re.compile(r"^/(|favicon\.ico|assets/.*)$")


@dataclass(frozen=True)
class _Route:
    regex: re.Pattern[str]
    template: str
    methods: frozenset[str]  # {"WS"} for a websocket route


def app_routes(app: FastAPI) -> list[_Route]:
    """The app's routes in matching order, as (regex, template, methods)."""
    out = []
    for r in iter_route_contexts(app.routes):
        if isinstance(r.original_route, Mount):
            continue
        template = r.path_format or r.path or ""
        methods = frozenset(r.methods) if r.methods else frozenset({"WS"})
        out.append(_Route(compile_path(template)[0], template, methods))
    return out


class RemoteGate:
    def __init__(self, app: FastAPI, auth: Callable[[], AuthService], inner: ASGIApp | None = None) -> None:
        self.app = app
        self.auth = auth
        self.inner: ASGIApp = inner or app  # what serves an admitted request (corral.cluster.forward, then the app)
        self._routes: list[_Route] | None = None

    def match(self, method: str, path: str) -> tuple[str, dict[str, str]] | None:
        """(template, path parameters) of the route the app runs for ``method`` ``path``; None: no route does."""
        if self._routes is None:
            self._routes = app_routes(self.app)
        want = "GET" if method == "HEAD" else method
        for r in self._routes:
            if want in r.methods and (m := r.regex.match(path)):
                return r.template, m.groupdict()
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.inner(scope, receive, send)
            return
        scope = dict(scope, headers=[(k, v) for k, v in scope.get("headers", []) if k.lower() != _USER_HEADER])
        scope[SCOPE_REMOTE] = True
        ws = scope["type"] == "websocket"
        method = "WS" if ws else scope.get("method", "GET")
        path = scope.get("path", "")
        if not ws and method in ("GET", "HEAD") and _STATIC.match(path) and self.match(method, path) is None:
            scope[SCOPE_PRINCIPAL] = ANONYMOUS  # the web page's own files
            await self.inner(scope, receive, send)
            return
        found = self.match(method, path)
        template, params = found if found is not None else ("", {})
        rule = policy.rule_for(method, template) if found is not None else policy.ADMIN
        if rule.action == "public":
            scope[SCOPE_PRINCIPAL] = ANONYMOUS
            await self.inner(scope, receive, send)
            return
        token = _bearer(scope)
        if token is None and ws and "ticket" in parse_qs(scope.get("query_string", b"").decode("latin-1")):
            scope[SCOPE_PRINCIPAL] = ANONYMOUS  # the route redeems the ticket (bound to its user and VM)
            await self.inner(scope, receive, send)
            return
        principal = self._peer(scope, token) or (self.auth().authenticate(token) if token else None)
        if principal is None:
            msg = "a valid bearer token is needed (Authorization: Bearer ...): see `corral login`"
            await _refuse(scope, receive, send, 401, "Unauthorized", msg)
            return
        scope[SCOPE_PRINCIPAL] = principal
        body: bytes | None = None
        project: str | None = None
        action: str = rule.action
        if rule.target == "vm":
            project = self._vm_project(params.get("name", ""))
            if project is None:  # no such VM: the route answers 404, if the role may do this at all
                if not policy.allowed(principal, action, principal.project):
                    await self._deny(principal, action, None, scope, receive, send, b"")
                    return
                await self.inner(scope, receive, send)
                return
        elif rule.target == "body":
            body = await _read_body(receive)
            if body is None:
                await _refuse(scope, receive, send, 413, "InvalidInput",
                              f"the request body is over {BODY_LIMIT >> 20} MiB: send a smaller one")
                return
            doc = _json(body)
            project, action = _body_project(doc), policy.body_action(rule.action, doc)
        if not policy.allowed(principal, action, project):
            await self._deny(principal, action, project, scope, receive, send, body or b"")
            return
        await self.inner(scope, _replay(body, receive) if body is not None else receive, send)

    async def _deny(self, principal: Principal, action: str, project: str | None, scope: Scope, receive: Receive,
                    send: Send, body: bytes) -> None:
        """403 with one line, recorded in the event log with the principal as the actor."""
        msg = one_line(f"{policy.refusal(principal, action, project)}: {scope.get('method', 'WS')} {scope.get('path')}")
        self._record_refusal(principal, scope, body, msg)
        await _refuse(scope, receive, send, 403, "Forbidden", msg)

    def _peer(self, scope: Scope, token: str | None) -> Principal | None:
        """Another member of the cluster, forwarding for the principal it names (corral.cluster.peer); the policy
        is then checked for that principal, as if it had come here itself."""
        svc = self._services()
        cluster = getattr(svc, "cluster", None) if svc is not None else None
        if token is None or cluster is None or not peer.is_peer_token(token, cluster.secret):
            return None
        header = peer.PRINCIPAL_HEADER.lower().encode()
        value = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == header), None)
        return peer.parse_principal(value)

    def _services(self) -> Any:
        return getattr(self.app.state, "services", None)

    def _vm_project(self, name: str) -> str | None:
        svc = self._services()
        rec = svc.store.get_vm(name) if svc is not None and name else None
        return rec.spec.project if rec is not None else None

    def _record_refusal(self, principal: Principal, scope: Scope, body: bytes, msg: str) -> None:
        svc = self._services()
        if svc is None:
            return
        method, path = scope.get("method", "WS"), scope.get("path", "")
        op = operation(method, path, body)
        vm, type_ = op if op is not None else (_vm_of(path), "access")
        token = ACTOR.set(principal.name)
        try:
            svc.vms.event(vm, type_, f"{type_} refused: {msg}", result="error", error=msg, error_class="Forbidden",
                          status=403, request=f"{method} {path}")
        finally:
            ACTOR.reset(token)


def _vm_of(path: str) -> str | None:
    parts = path.split("/")
    return parts[3][:63] if len(parts) > 3 and parts[1] == "v1" and parts[2] == "vms" and parts[3] else None


def _bearer(scope: Scope) -> str | None:
    for k, v in scope.get("headers", []):
        if k.lower() == b"authorization":
            scheme, _, value = v.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                return value.strip()
    return None


def _json(body: bytes) -> object:
    try:
        return json.loads(body or b"{}")
    except ValueError:
        return None


def _body_project(doc: object) -> str | None:
    """The project a create request names ("default" when it names none); None when it cannot be told (not JSON,
    not a string): a scoped principal is then refused, and anyone else gets the route's own 422."""
    if not isinstance(doc, dict):
        return None
    project = doc.get("project", "default")
    return project if isinstance(project, str) else None


async def _read_body(receive: Receive) -> bytes | None:
    """The whole body, to read its project before the app runs; None when it is over BODY_LIMIT (never cut short:
    the app would see half a document)."""
    chunks, size = [], 0
    while True:
        msg = await receive()
        if msg["type"] != "http.request":
            break
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > BODY_LIMIT:
            return None
        chunks.append(chunk)
        if not msg.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def again() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, error: str, message: str) -> None:
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.close", "code": 4000 + status, "reason": message[:120]})
        return
    body = json.dumps({"error": error, "message": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
