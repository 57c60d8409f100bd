"""POST /v1/vms/NAME/console/tickets and the console websockets' ticket check (over the network only)."""

from __future__ import annotations

import warnings
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect

from corral.api import errors
from corral.api.models import API_PREFIX
from corral.api.routes import consoles, vms
from corral.auth.principal import Principal
from corral.errors import NotFound
from corral.vm.spec import VMSpec
from corral.vm.states import VMState

with warnings.catch_warnings():  # starlette's TestClient (the one websocket test client) warns about httpx
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


class Remote:
    """What auth's layer does for a TCP request: mark it remote and name its principal."""

    def __init__(self, app: ASGIApp, principal: Principal | None) -> None:
        self.app, self.principal = app, principal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.principal is not None and scope["type"] in ("http", "websocket"):
            scope["corral.remote"] = True
            scope["corral.principal"] = self.principal
        await self.app(scope, receive, send)


class FakeVMs:
    def get(self, name: str) -> Any:
        if name != "web":
            raise NotFound(f"no VM named '{name}'")
        return SimpleNamespace(name="web", state=VMState.STOPPED, spec=VMSpec(name="web", project="shop"))


def client(principal: Principal | None) -> TestClient:
    app = FastAPI()
    app.state.services = SimpleNamespace(vms=FakeVMs())
    errors.install(app)
    app.include_router(vms.router, prefix=API_PREFIX)
    app.include_router(consoles.router, prefix=API_PREFIX)
    app.add_middleware(Remote, principal=principal)
    return TestClient(app)


ALICE = Principal("alice", "operator", "shop")


def ticket(c: TestClient, kind: str = "serial") -> str:
    r = c.post("/v1/vms/web/console/tickets", json={"kind": kind})
    assert r.status_code == 200, r.text
    t: str = r.json()["ticket"]
    assert r.json()["expires_at"]
    return t


def test_an_operator_of_the_project_gets_a_ticket() -> None:
    ticket(client(ALICE))


@pytest.mark.parametrize("who", [Principal("bob", "viewer", "shop"), Principal("eve", "operator", "other")])
def test_a_viewer_or_an_operator_of_another_project_gets_403(who: Principal) -> None:
    r = client(who).post("/v1/vms/web/console/tickets", json={"kind": "serial"})
    assert r.status_code == 403 and "\n" not in r.json()["message"]


def test_bad_kind_and_unknown_vm_are_one_line_errors() -> None:
    c = client(ALICE)
    r = c.post("/v1/vms/web/console/tickets", json={"kind": "vnc"})
    assert r.status_code == 409 and r.json()["message"] == "VM 'web' has no screen: launch it with --display vnc"
    assert c.post("/v1/vms/web/console/tickets", json={"kind": "sdl"}).status_code == 422
    r = c.post("/v1/vms/nope/console/tickets", json={"kind": "vnc"})
    assert r.status_code == 404 and r.json()["message"] == "no VM named 'nope'"


def closed_with(c: TestClient, path: str) -> tuple[int, str]:
    with pytest.raises(WebSocketDisconnect) as exc, c.websocket_connect(path) as ws:
        ws.receive_bytes()
    return exc.value.code, exc.value.reason


@pytest.mark.parametrize("kind,path", [("serial", "console"), ("vnc", "vnc")])
def test_over_the_network_a_console_needs_a_ticket(kind: str, path: str) -> None:
    c = client(ALICE)
    code, reason = closed_with(c, f"/v1/vms/web/{path}")
    assert code == consoles.NO_TICKET and "ticket" in reason
    code, _ = closed_with(c, f"/v1/vms/web/{path}?ticket=made-up")
    assert code == consoles.NO_TICKET
    other = consoles.tickets_of(c.app).issue("alice", "web", "vnc" if kind == "serial" else "serial").value
    assert closed_with(c, f"/v1/vms/web/{path}?ticket={other}")[0] == consoles.NO_TICKET
    good = consoles.tickets_of(c.app).issue("alice", "web", kind).value
    code, reason = closed_with(c, f"/v1/vms/web/{path}?ticket={good}")
    assert code == 4000 and ("stopped" in reason or "no screen" in reason)  # past the ticket: the VM itself
    assert closed_with(c, f"/v1/vms/web/{path}?ticket={good}")[0] == consoles.NO_TICKET  # one use


def test_on_the_unix_socket_no_ticket_is_needed() -> None:
    code, reason = closed_with(client(None), "/v1/vms/web/console")
    assert code == 4000 and "stopped" in reason


def test_the_page_is_served_at_the_root_and_the_api_keeps_its_errors() -> None:
    from corral.api.app import create_app

    c = TestClient(create_app(None))
    r = c.get("/")
    assert r.status_code == 200 and "<title>Corral</title>" in r.text
    asset = r.text.split('src="')[1].split('"')[0]
    assert asset.startswith("/assets/") and c.get(asset).status_code == 200
    assert c.put("/v1/status").status_code == 405  # the route's, not the page's
    r = c.post("/v1/nope")
    assert r.status_code == 404 and r.json()["error"] == "NotFound"
    assert c.get("/v1/nope").json()["error"] == "NotFound"
