"""/v1/vms: each route parses, calls the VM service, and returns a wire model."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from pydantic import TypeAdapter

from corral.api.deps import Services, services, using, wake
from corral.api.errors import status_for
from corral.api.models import (
    MAX_INT64,
    DiskInfo,
    EventInfo,
    ExecChunk,
    ExecRequest,
    ExtendRequest,
    LabelsRequest,
    RestartRequest,
    SpecUpdate,
    StopRequest,
    VMInfo,
    WaitRequest,
)
from corral.auth.principal import principal_of
from corral.engine import qemu_img
from corral.engine.guest_agent import ExecExit
from corral.errors import CorralError, InvalidInput
from corral.store.db import RuntimeRecord, VMRecord
from corral.vm import labels
from corral.vm.actor import ACTOR, SYSTEM_ACTOR
from corral.vm.logs import read_log_from, render_logs
from corral.vm.spec import VMSpec
from corral.vm.states import check_operation

router = APIRouter(prefix="/vms", tags=["vms"])
Svc = Annotated[Services, Depends(services)]


def info_fields(svc: Services, rec: VMRecord, runtimes: dict[str, RuntimeRecord] | None = None) -> dict[str, Any]:
    """The fields of :class:`VMInfo` for ``rec`` (no disks), as a plain dict: listing 1,000 VMs serializes these
    directly, without building and validating 1,000 models."""
    rt = svc.vms.runtime(rec.name) if runtimes is None else runtimes.get(rec.name)
    m = svc.vms.machine(rec.name)
    spec = rec.spec
    now = time.time()
    expires_in = spec.expires_at.timestamp() - now if spec.expires_at is not None else None
    return {
        "name": rec.name, "id": rec.id, "spec": spec, "state": rec.state.value, "state_reason": rec.state_reason,
        "mac": rec.mac, "created_at": rec.created_at, "last_exit_reason": rec.last_exit_reason,
        "exit_code": rec.exit_code, "restart_count": rec.restart_count,
        "pid": rt.pid if rt else None, "accel": rt.accel if rt else None,
        "started_at": rt.started_at if rt else None, "uptime": now - rt.started_at if rt else None,
        "agent_ready": m.agent_ready if m else False, "addresses": list(m.addresses) if m else [], "disks": [],
        "expires_in": expires_in,
        "expiring": expires_in is not None and 0 < expires_in <= svc.vms.expiry.expiry_window(rec),
        "idle": svc.idle.status(rec) if svc.idle is not None else None,
    }


def to_info(svc: Services, rec: VMRecord, detail: bool = False) -> VMInfo:
    return VMInfo.model_validate(info_fields(svc, rec))


async def _disks(svc: Services, name: str) -> list[DiskInfo]:
    path = svc.vms.paths(name).disk
    try:
        data = await qemu_img.info(path, "qcow2") if not svc.vms.machine(name) else await _disk_via_qmp(svc, name)
    except CorralError:
        return [DiskInfo(name="root", path=str(path), format="qcow2", virtual_size=0)]
    return [DiskInfo(name="root", path=str(path), format="qcow2", virtual_size=int(data.get("virtual-size", 0)),
                     backing=data.get("backing-filename") or data.get("full-backing-filename"),
                     backing_format=data.get("backing-filename-format") or data.get("backing-format"))]


async def _disk_via_qmp(svc: Services, name: str) -> dict[str, Any]:
    # qemu-img would need the image lock that the running QEMU holds: ask QEMU itself.
    m = svc.vms.machine(name)
    if m is None or m.monitor is None:
        return {}
    for blk in await m.monitor.execute("query-block"):
        if blk.get("device") == "" and blk.get("inserted", {}).get("node-name") == "root" or \
                blk.get("qdev", "").endswith("root-disk/virtio-backend"):
            image = blk["inserted"]["image"]
            return {"virtual-size": image.get("virtual-size", 0), "backing-filename": image.get("backing-filename"),
                    "backing-filename-format": image.get("backing-filename-format")}
    return {}


def select(recs: list[VMRecord], label: list[str], owner: str | None, project: str | None) -> list[VMRecord]:
    """The VMs that match every filter: each label selector (``k=v``, ``k!=v``, ``k``), the owner, the project."""
    try:
        selector = labels.parse_selector(label)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    return [r for r in recs if (owner is None or r.spec.owner == owner)
            and (project is None or r.spec.project == project) and labels.selects(r.spec.labels, selector)]


def scoped_project(request: Request, project: str | None) -> str | None:
    """The ``project`` filter of a list, narrowed to the one project of the requesting principal (corral.auth):
    a viewer of project web asking for another project's VMs gets none."""
    own = principal_of(request).project
    if own is None or project in (None, own):
        return own if own is not None else project
    return "\x00"  # no project has this name: nothing is listed


@router.get("", response_model=list[VMInfo])
async def list_vms(
    svc: Svc,
    request: Request,
    label: Annotated[list[str], Query(description="label selector, ANDed: `env=dev`, `env!=prod`, `gpu` (has "
                                      "the key); repeatable, or comma-separated")] = [],  # noqa: B006
    owner: Annotated[str | None, Query(description="only this owner's VMs")] = None,
    project: Annotated[str | None, Query(description="only this project's VMs")] = None,
) -> list[VMInfo]:
    project = scoped_project(request, project)  # over TCP: the principal's project only (corral.auth)
    return Response(content=_LIST_CACHE.json(svc, label, owner, project),  # type: ignore[return-value]
                    media_type="application/json")


class _ListCache:
    """`ls` of 1,000 VMs in a few milliseconds: the records and the JSON of each VM that has no QEMU, no runtime
    record and no expiry (nothing in it changes with time) are kept until the store changes (its version: this
    connection's writes and other connections' commits). The others are built at every request. Serialized here,
    from plain dicts: FastAPI would build and validate a model per VM, then the list."""

    def __init__(self) -> None:
        self.store: object = None
        self.version: tuple[int, int] | None = None
        self.recs: list[VMRecord] = []
        self.runtimes: dict[str, RuntimeRecord] = {}
        self.static: dict[str, bytes] = {}

    def json(self, svc: Services, label: list[str], owner: str | None, project: str | None) -> bytes:
        version = svc.store.version()
        if version != self.version or svc.store is not self.store:
            self.recs, self.runtimes, self.static = svc.vms.list(), svc.store.list_runtimes(), {}
            self.store, self.version = svc.store, version
        parts = []
        for rec in select(self.recs, label, owner, project):
            part = self.static.get(rec.name)
            if part is None:
                part = _VM_JSON.dump_json(info_fields(svc, rec, self.runtimes))
                if rec.name not in self.runtimes and rec.spec.expires_at is None and svc.vms.machine(rec.name) is None:
                    self.static[rec.name] = part
            elif svc.vms.machine(rec.name) is not None:  # a QEMU of a VM not yet recorded as started
                part = _VM_JSON.dump_json(info_fields(svc, rec, self.runtimes))
            parts.append(part)
        return b"[" + b",".join(parts) + b"]"


_VM_JSON = TypeAdapter(dict[str, Any])
_LIST_CACHE = _ListCache()


@router.post("", response_model=VMInfo, status_code=201)
async def create_vm(spec: VMSpec, svc: Svc) -> VMInfo:
    """Create a VM. Without an ``owner`` in the spec, it belongs to the requesting user (X-Corral-User)."""
    return to_info(svc, await svc.vms.create(owned(spec)))


def owned(spec: VMSpec) -> VMSpec:
    """The spec with an owner: its own, else the requesting user (X-Corral-User)."""
    if spec.owner:
        return spec
    actor = ACTOR.get()
    try:
        owner = labels.check_owner(actor if actor != SYSTEM_ACTOR else "")
    except ValueError:
        owner = "anonymous"
    return spec.model_copy(update={"owner": owner})


@router.post("/{name}/labels", response_model=VMInfo)
async def set_labels(name: str, req: LabelsRequest, svc: Svc) -> VMInfo:
    """Set labels and remove keys, on a running or stopped VM (recorded as a ``label`` event)."""
    try:
        to_set = labels.check_labels(req.set)
        to_remove = [labels.check_key(k) for k in req.remove]
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    return to_info(svc, await svc.vms.specs.set_labels(name, to_set, to_remove))


@router.patch("/{name}", response_model=VMInfo)
async def update_vm(name: str, req: SpecUpdate, svc: Svc) -> VMInfo:
    """Change spec fields (labels, description, restart policy at once; vcpus and memory from the next start).
    Recorded as an ``update`` event."""
    return to_info(svc, await svc.vms.specs.update(name, req.model_dump(exclude_unset=True, mode="json")))


@router.post("/{name}/extend", response_model=VMInfo)
async def extend_vm(name: str, req: ExtendRequest, svc: Svc) -> VMInfo:
    """Push the VM's expiry out (recorded as an ``extend`` event)."""
    return to_info(svc, await svc.vms.expiry.extend(name, by=req.by, to=req.to))


@router.get("/{name}", response_model=VMInfo)
async def show_vm(name: str, svc: Svc) -> VMInfo:
    rec = svc.vms.get(name)
    with contextlib.suppress(CorralError, asyncio.TimeoutError):
        await asyncio.wait_for(svc.vms.readiness.refresh_addresses(name, max_age=2.0), 3.0)
    info = to_info(svc, svc.vms.get(name))
    info.disks = await _disks(svc, rec.name)
    info.disks += [DiskInfo(name=d.name, path=d.file, format=d.format, virtual_size=d.size)
                   for d in svc.disks.list_disks(rec.name)]  # extra disks (corral.storage.disks)
    if svc.balloon is not None:  # a running --balloon VM's balloon (corral.memory.balloon)
        with contextlib.suppress(CorralError, asyncio.TimeoutError):
            info.balloon = await asyncio.wait_for(svc.balloon.status(rec.name), 3.0)
    return info


@router.delete("/{name}", status_code=204)
async def delete_vm(name: str, svc: Svc, force: bool = False) -> None:
    await svc.vms.delete(name, force=force)


@router.post("/{name}/start", response_model=VMInfo)
async def start_vm(name: str, svc: Svc) -> VMInfo:
    return to_info(svc, await svc.vms.start(name))


@router.post("/{name}/stop", response_model=VMInfo)
async def stop_vm(name: str, req: StopRequest, svc: Svc) -> VMInfo:
    return to_info(svc, await svc.vms.stop(name, timeout=req.timeout, force=req.force))


@router.post("/{name}/kill", response_model=VMInfo)
async def kill_vm(name: str, svc: Svc) -> VMInfo:
    return to_info(svc, await svc.vms.kill(name))


@router.post("/{name}/restart", response_model=VMInfo)
async def restart_vm(name: str, req: RestartRequest, svc: Svc) -> VMInfo:
    return to_info(svc, await svc.vms.restart(name, hard=req.hard, timeout=req.timeout))


@router.post("/{name}/pause", response_model=VMInfo)
async def pause_vm(name: str, svc: Svc) -> VMInfo:
    return to_info(svc, await svc.vms.pause(name))


@router.post("/{name}/resume", response_model=VMInfo)
async def resume_vm(name: str, svc: Svc) -> VMInfo:
    """Continue a paused VM, or bring a suspended one back from its saved state (without waiting for its agent)."""
    return to_info(svc, await svc.vms.resume(name))


@router.post("/{name}/suspend", response_model=VMInfo)
async def suspend_vm(name: str, svc: Svc) -> VMInfo:
    """Save the VM's memory and device state to its state file and end its QEMU: the VM becomes suspended."""
    return to_info(svc, await svc.vms.suspend(name))


@router.post("/{name}/wait-ready", response_model=VMInfo)
async def wait_ready(name: str, req: WaitRequest, svc: Svc) -> VMInfo:
    await svc.vms.readiness.wait_ready(name, req.timeout)
    # The addresses as known: a VM just made ready is being asked for them already (not waited for here).
    with contextlib.suppress(CorralError, asyncio.TimeoutError):
        await asyncio.wait_for(svc.vms.readiness.refresh_addresses(name, max_age=2.0, join=False), 3.0)
    return to_info(svc, svc.vms.get(name))


@router.post("/{name}/exec")
async def exec_vm(name: str, req: ExecRequest, svc: Svc) -> StreamingResponse:
    """NDJSON stream of :class:`ExecChunk`: output as the guest writes it, then one ``exit`` line."""
    await wake(svc, name, "exec")  # a VM suspended by idle control resumes first
    check_operation(name, "exec", svc.vms.get(name).state)  # fail before the 200 when the VM cannot run it
    stdin = base64.b64decode(req.stdin_b64) if req.stdin_b64 else None

    async def stream() -> AsyncIterator[bytes]:
        try:
            with using(svc, name):  # never suspended for being idle while a command runs
                async for item in svc.vms.exec(name, req.argv, env=req.env, cwd=req.cwd, stdin=stdin,
                                               timeout=req.timeout):
                    if isinstance(item, ExecExit):
                        chunk = ExecChunk(kind="exit", exit_code=item.exit_code, signal=item.signal,
                                          timed_out=item.timed_out)
                    else:
                        chunk = ExecChunk(kind=item.stream, data_b64=base64.b64encode(item.data).decode())
                    yield chunk.model_dump_json(exclude_none=True).encode() + b"\n"
        except CorralError as exc:
            # Found after the 200 (the VM was paused meanwhile, the agent failed): the status it would have had.
            chunk = ExecChunk(kind="error", message=exc.message, error=type(exc).__name__, status=status_for(exc))
            yield chunk.model_dump_json(exclude_none=True).encode() + b"\n"

    return StreamingResponse(stream(), media_type="application/x-ndjson")


@router.get("/{name}/logs", response_class=PlainTextResponse)
async def logs(
    name: str, svc: Svc, tail: Annotated[int | None, Query(ge=0)] = None,
    offset: Annotated[int | None, Query(ge=0, description="only what follows this byte of the current log")] = None,
) -> Response:
    """The serial log; with ``offset``, only the new part (header X-Log-Offset: where to continue)."""
    svc.vms.get(name)
    if offset is None:
        text = await asyncio.to_thread(render_logs, svc.vms.paths(name), tail)
        size = (await asyncio.to_thread(read_log_from, svc.vms.paths(name), 1 << 62))[1]
        return PlainTextResponse(text, headers={"X-Log-Offset": str(size)})
    data, size = await asyncio.to_thread(read_log_from, svc.vms.paths(name), offset)
    return Response(data, media_type="text/plain; charset=utf-8", headers={"X-Log-Offset": str(size)})


@router.get("/{name}/events", response_model=list[EventInfo])
async def vm_events(
    name: str, svc: Svc,
    after: Annotated[int, Query(ge=0, le=MAX_INT64, description="only events after this id")] = 0,
) -> list[EventInfo]:
    svc.vms.get(name)
    return [EventInfo(**e.__dict__) for e in svc.store.events(vm=name, after=after)]
