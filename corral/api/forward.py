"""Any host's API drives the whole cluster: the ASGI layer in front of the app that sends a request about a VM to
the host that holds it, places a new VM, and lists the VMs of every host.

- ``/v1/vms/<name>/...`` of a VM another host holds (its placement in etcd) is proxied to that host, streamed both
  ways (an exec's output arrives as it is made), for the same principal (corral.cluster.peer);
- ``POST /v1/vms`` runs the scheduler (corral.cluster.placement) and reserves the room in etcd; the create runs here
  or is proxied to the chosen host; a create that fails gives the room back;
- ``GET /v1/vms`` asks every live host at once and merges the lists, each VM with its ``host``; the VMs of a host
  that does not answer are listed as it last published them, in state ``unknown`` (never left out).

A request another host forwarded (``X-Corral-Forwarded``) is served where it lands, never forwarded again. A host in
no cluster passes every request straight to the app.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.api.audit import actor_of
from corral.api.models import API_PREFIX
from corral.auth.principal import Principal, is_remote, principal_of
from corral.cluster import peer
from corral.cluster.models import HostState, VMPlacement
from corral.cluster.registry import EtcdUnavailable
from corral.cluster.service import ClusterService
from corral.errors import CorralError
from corral.vm.spec import VMSpec

log = logging.getLogger(__name__)

_FORWARDED = peer.FORWARDED_HEADER.lower().encode()
_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"upgrade", b"host", b"content-length",
        b"authorization", peer.PRINCIPAL_HEADER.lower().encode(), _FORWARDED}
_VMS = f"{API_PREFIX}/vms"


class ClusterForward:
    def __init__(self, app: ASGIApp, cluster: Callable[[], ClusterService | None]) -> None:
        self.app = app
        self.cluster = cluster

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        cluster = self.cluster()
        if (scope["type"] != "http" or cluster is None or not cluster.enabled
                or any(k.lower() == _FORWARDED for k, _ in scope.get("headers", []))):
            await self.app(scope, receive, send)
            return
        path, method = scope.get("path", ""), scope.get("method", "GET")
        try:
            if path == _VMS and method == "GET":
                await self._list(cluster, scope, receive, send)
                return
            if path == _VMS and method == "POST":
                await self._create(cluster, scope, receive, send)
                return
            if path.startswith(_VMS + "/"):
                name = path[len(_VMS) + 1:].split("/", 1)[0]
                owner = await cluster.owner_of(name) if name else None
                if owner is not None:
                    await self._proxy(cluster, owner.name, scope, receive, send)
                    return
        except CorralError as exc:
            await _error(send, exc)
            return
        await self.app(scope, receive, send)

    # -- proxying ---------------------------------------------------------------------------------------------
    async def _proxy(self, cluster: ClusterService, host: str, scope: Scope, receive: Receive, send: Send,
                     body: bytes | None = None) -> int:
        """Send the request to ``host`` and its answer back, streamed; the answer's status."""
        target = await cluster.host(host)
        if target.state == HostState.DOWN:
            raise CorralError(f"host '{host}' is down (its lease expired): see `corral host ls`")
        query = scope.get("query_string", b"").decode("latin-1")
        url = scope["path"] + (f"?{query}" if query else "")
        headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() not in _HOP]
        content: bytes | AsyncIterator[bytes] = body if body is not None else _body(receive)
        try:
            async with cluster.peer(target, _principal(scope)) as client:
                req = client.build_request(scope["method"], url, headers=headers, content=content)
                resp = await client.send(req, stream=True)
                try:
                    out = [(k, v) for k, v in resp.headers.raw if k.lower() not in _HOP]
                    await send({"type": "http.response.start", "status": resp.status_code, "headers": out})
                    async for chunk in resp.aiter_raw():
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                finally:
                    await resp.aclose()
                return resp.status_code
        except httpx.TransportError as exc:
            raise CorralError(f"host '{host}' ({target.address}) does not answer: {exc or type(exc).__name__}; "
                              "see `corral host ls`") from exc

    # -- create: place, then make it there --------------------------------------------------------------------
    async def _create(self, cluster: ClusterService, scope: Scope, receive: Receive, send: Send) -> None:
        body = b"".join([c async for c in _body(receive)])
        try:
            spec = VMSpec.model_validate_json(body or b"{}")
        except ValueError:
            await self.app(scope, _replay(body), send)  # the route answers 422, with the same words as alone
            return
        host, here = await cluster.place(spec)
        status = 0
        try:
            if here:
                status = await _run_capturing_status(self.app, scope, _replay(body), send)
            else:
                status = await self._proxy(cluster, host.name, scope, receive, send, body=body)
        finally:
            if not 200 <= status < 300:
                await cluster.unplace(spec.name, host.name)
            elif cluster.member is not None:
                cluster.member.wake.set()

    # -- list: every host's VMs -------------------------------------------------------------------------------
    async def _list(self, cluster: ClusterService, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            snap = await cluster.snapshot()
        except EtcdUnavailable as exc:  # the VMs here still are: listed, with a warning the CLI shows
            log.warning("listing this host's VMs only: %s", exc.message)
            await self.app(scope, receive, send)
            return
        others = [h for h in snap.host_list() if h.name != cluster.name and h.state != HostState.DOWN]
        query = scope.get("query_string", b"").decode("latin-1")
        principal = _principal(scope)

        async def remote(h: Any) -> tuple[str, list[dict[str, Any]] | None]:
            try:
                async with cluster.peer(h, principal, timeout=10.0) as c:
                    r = await c.get(_VMS + (f"?{query}" if query else ""))
                    return h.name, r.json() if r.status_code == 200 else None
            except (httpx.HTTPError, ValueError):
                return h.name, None

        local_task = asyncio.ensure_future(_run_capturing(self.app, scope, receive))
        results = await asyncio.gather(*(remote(h) for h in others))
        status, headers, local_body = await local_task
        if status != 200:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": local_body})
            return
        merged = [dict(v, host=cluster.name) for v in json.loads(local_body)]
        answered = {cluster.name}
        for name, vms in results:
            if vms is not None:
                answered.add(name)
                merged += [dict(v, host=name) for v in vms]
        merged = _one_each(merged, snap.placements)
        seen = {v["name"] for v in merged}
        for p in snap.placements.values():  # on hosts that did not answer: as last published, state unknown
            if p.host not in answered and p.name not in seen and p.info is not None and _visible(principal, p.project):
                merged.append(dict(p.info, host=p.host, state="unknown",
                                   state_reason=f"host '{p.host}' does not answer"))
        merged.sort(key=lambda v: v["name"])
        out = json.dumps(merged).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())]})
        await send({"type": "http.response.body", "body": out})


def _one_each(vms: list[dict[str, Any]], placements: dict[str, VMPlacement]) -> list[dict[str, Any]]:
    """One entry a VM: while it moves, both hosts list it (the target as ``incoming``); the one etcd places it on is
    kept."""
    by_name: dict[str, dict[str, Any]] = {}
    for v in vms:
        other = by_name.get(v["name"])
        p = placements.get(v["name"])
        if other is None or (p is not None and v["host"] == p.host):
            by_name[v["name"]] = v
    return list(by_name.values())


def _visible(p: Principal, project: str) -> bool:
    return p.project is None or p.project == project


def _principal(scope: Scope) -> Principal:
    """Who the request is for: the token's principal over TCP; on the unix socket, the CLI's user, as an admin (the
    local root may do everything)."""
    if is_remote(scope):
        return principal_of(scope)
    return Principal(actor_of(scope.get("headers", [])), "admin", None)


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        msg = await receive()
        if msg["type"] != "http.request":
            return
        if msg.get("body"):
            yield msg["body"]
        if not msg.get("more_body", False):
            return


def _replay(body: bytes) -> Receive:
    sent = False

    async def again() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # as a client that keeps the connection open: never a disconnect
        raise AssertionError("unreachable")

    return again


async def _run_capturing(app: ASGIApp, scope: Scope, receive: Receive) -> tuple[int, list[Any], bytes]:
    status, headers, chunks = 500, [], []

    async def capture(msg: Message) -> None:
        nonlocal status, headers
        if msg["type"] == "http.response.start":
            status, headers = msg["status"], list(msg.get("headers", []))
        elif msg["type"] == "http.response.body":
            chunks.append(msg.get("body", b""))

    await app(scope, receive, capture)
    return status, headers, b"".join(chunks)


async def _run_capturing_status(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> int:
    status = 500

    async def watch(msg: Message) -> None:
        nonlocal status
        if msg["type"] == "http.response.start":
            status = msg["status"]
        await send(msg)

    await app(scope, receive, watch)
    return status


async def _error(send: Send, exc: CorralError) -> None:
    from corral.api.errors import status_for

    body = json.dumps({"error": type(exc).__name__, "message": exc.message}).encode()
    await send({"type": "http.response.start", "status": status_for(exc),
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
