"""/v1/vms/{name}/snapshots and /v1/vms/{name}/clone: routes over corral.storage."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from corral.api.deps import Services, services
from corral.api.models import CloneEvent, CloneRequest, RevertRequest, SnapshotCreate, SnapshotInfo, VMInfo
from corral.api.routes.vms import to_info
from corral.api.streams import stream_operation
from corral.storage.service import SnapshotView, check_name

router = APIRouter(prefix="/vms", tags=["snapshots"])
Svc = Annotated[Services, Depends(services)]


def _info(v: SnapshotView) -> SnapshotInfo:
    return SnapshotInfo(name=v.rec.name, vm=v.rec.vm, parent=v.parent, created_at=v.rec.created_at,
                        memory=v.rec.state_file is not None, current=v.current, size=v.size, note=v.rec.note)


@router.get("/{name}/snapshots", response_model=list[SnapshotInfo])
async def list_snapshots(name: str, svc: Svc) -> list[SnapshotInfo]:
    return [_info(v) for v in svc.storage.list_snapshots(name)]


@router.post("/{name}/snapshots", response_model=SnapshotInfo, status_code=201)
async def create_snapshot(name: str, req: SnapshotCreate, svc: Svc) -> SnapshotInfo:
    return _info(await svc.storage.create_snapshot(name, req.name, memory=req.memory, freeze=req.freeze))


@router.post("/{name}/snapshots/{snapshot}/revert", response_model=VMInfo)
async def revert_snapshot(name: str, snapshot: str, req: RevertRequest, svc: Svc) -> VMInfo:
    return to_info(svc, await svc.storage.revert(name, snapshot, force=req.force))


@router.delete("/{name}/snapshots/{snapshot}", status_code=204)
async def delete_snapshot(name: str, snapshot: str, svc: Svc) -> None:
    await svc.storage.delete_snapshot(name, snapshot)


@router.post("/{name}/clone")
async def clone_vm(name: str, req: CloneRequest, svc: Svc) -> StreamingResponse:
    """NDJSON stream of :class:`CloneEvent`: progress (a full clone), then ``done`` with the new VM. Bad input is an
    HTTP error before the stream starts. The clone runs to its end (or fails and cleans up) even if the client goes
    away."""
    svc.vms.get(name)
    check_name(req.name, "VM")
    if req.snapshot is not None:
        svc.storage.list_snapshots(name)
    t0 = time.monotonic()

    async def run(emit: Callable[[CloneEvent], None]) -> CloneEvent:
        rec = await svc.storage.clone(name, req.name, full=req.full, snapshot=req.snapshot,
                                      progress=lambda p: emit(CloneEvent(kind="progress", percent=p)))
        return CloneEvent(kind="done", percent=100.0, vm=to_info(svc, rec), seconds=time.monotonic() - t0)

    return stream_operation(f"clone-{name}-{req.name}", run,
                            lambda message, error: CloneEvent(kind="error", message=message, error=error))
