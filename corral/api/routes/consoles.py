"""The consoles' websockets (serial and graphical), and the one-use tickets that open them from a browser.

A browser cannot send an Authorization header with a websocket, so over the network (``scope["corral.remote"]``,
set by the auth layer for TCP) a console's websocket carries ``?ticket=`` from ``POST .../console/tickets``; on the
unix socket no ticket is needed (``corral console`` works as before). See docs/explanation/web.md.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Request, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, ConfigDict, Field

from corral.api.deps import Services, services
from corral.auth import policy
from corral.auth.principal import principal_of
from corral.auth.tickets import Kind, TicketError, Tickets
from corral.errors import Conflict, CorralError, EngineError
from corral.vm.states import VMState

router = APIRouter(prefix="/vms", tags=["consoles"])
Svc = Annotated[Services, Depends(services)]

#: Close code of a console websocket refused for want of a valid ticket (4000: the console itself failed).
NO_TICKET = 4001
LIVE = (VMState.RUNNING, VMState.PAUSED, VMState.STARTING)


class TicketRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Kind


class TicketInfo(BaseModel):
    ticket: str = Field(description="one use: ?ticket= on the console's websocket")
    expires_at: float = Field(description="Unix time (60 s from now), as the API's other times")


def tickets_of(app: object) -> Tickets:
    state = app.state  # type: ignore[attr-defined]
    if getattr(state, "console_tickets", None) is None:
        state.console_tickets = Tickets()
    t: Tickets = state.console_tickets
    return t


@router.post("/{name}/console/tickets", response_model=TicketInfo)
def create_ticket(name: str, body: TicketRequest, request: Request, svc: Svc) -> TicketInfo:
    """A one-use ticket (60 s) that opens this VM's serial or graphical console websocket over the network."""
    rec = svc.vms.get(name)
    principal = principal_of(request)
    policy.require(principal, "console", rec.spec.project)
    if body.kind == "vnc" and rec.spec.display != "vnc":
        raise Conflict(f"VM '{name}' has no screen: launch it with --display vnc")
    t = tickets_of(request.app).issue(principal.name, name, body.kind)
    return TicketInfo(ticket=t.value, expires_at=t.expires_at)


async def admit(websocket: WebSocket, name: str, kind: Kind) -> bool:
    """Call on an accepted websocket: over the network it needs a ticket for this VM and kind (else closed with
    4001 and a one-line reason, and False); on the unix socket always True."""
    if not websocket.scope.get("corral.remote"):
        return True
    try:
        tickets_of(websocket.app).redeem(websocket.query_params.get("ticket"), name, kind)
    except TicketError as exc:
        await websocket.close(code=NO_TICKET, reason=str(exc)[:120])
        return False
    return True


async def bridge(websocket: WebSocket, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Bytes both ways between an accepted websocket and a unix socket, until either side ends."""

    async def from_socket() -> None:
        while data := await reader.read(65536):
            await websocket.send_bytes(data)

    async def to_socket() -> None:
        while True:
            msg = await websocket.receive()
            if msg["type"] == "websocket.disconnect":
                return
            data = msg.get("bytes") or (msg.get("text") or "").encode()
            writer.write(data)
            await writer.drain()

    tasks = [asyncio.create_task(from_socket()), asyncio.create_task(to_socket())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    except WebSocketDisconnect:
        pass
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        writer.close()
        with contextlib.suppress(Exception):
            await websocket.close()


async def _open(path: Path, what: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        return await asyncio.open_unix_connection(str(path))
    except OSError as exc:
        raise EngineError(f"cannot attach to {what}: {exc}") from exc


async def attach(websocket: WebSocket, name: str, kind: Kind) -> None:
    """Accept, admit (a ticket over the network), check the VM can be reached, then bridge to its console's unix
    socket; a refusal closes with 4001 (no ticket) or 4000 and a one-line reason."""
    svc: Services = websocket.app.state.services
    await websocket.accept()
    if not await admit(websocket, name, kind):
        return
    try:
        rec = svc.vms.get(name)
        if kind == "vnc" and rec.spec.display != "vnc":
            raise Conflict(f"VM '{name}' has no screen: launch it with --display vnc")
        if rec.state not in LIVE:
            raise Conflict(f"VM '{name}' is {rec.state}: start it first (`corral start {name}`)")
        paths = svc.vms.paths(name)
        path, what = (paths.console_socket, "the console") if kind == "serial" else (paths.vnc_socket, "the screen")
        reader, writer = await _open(path, f"{what} of '{name}'")
    except CorralError as exc:
        await websocket.close(code=4000, reason=exc.message[:120])
        return
    await bridge(websocket, reader, writer)


@router.websocket("/{name}/console")
async def serial(websocket: WebSocket, name: str) -> None:
    """The serial console: its bytes both ways, bridged to the VM's console socket (one attached client at a time,
    as QEMU allows). `corral console` attaches here on the unix socket; the web page's xterm.js with a ticket."""
    await attach(websocket, name, "serial")


@router.websocket("/{name}/vnc")
async def vnc(websocket: WebSocket, name: str) -> None:
    """The graphical console of a ``display: vnc`` VM: RFB over binary websocket frames (noVNC), bridged to QEMU's
    VNC server on the VM's unix socket."""
    await attach(websocket, name, "vnc")
