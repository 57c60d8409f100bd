"""/v1/vms/{name}/mounts: a VM's shared folders, changed at once on a running VM or in a stopped VM's spec."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from corral.api.deps import Services, services
from corral.api.models import MountCreate, MountInfo
from corral.mounts.service import MountService, MountStatus

router = APIRouter(prefix="/vms", tags=["mounts"])
Svc = Annotated[Services, Depends(services)]


def _mounts(svc: Services) -> MountService:
    return svc.mounts or MountService(svc.vms)


def to_info(s: MountStatus) -> MountInfo:
    return MountInfo(host=s.mount.host, guest=s.mount.guest, read_only=s.mount.read_only, slot=s.slot,
                     state=s.state)  # type: ignore[arg-type]


@router.get("/{name}/mounts", response_model=list[MountInfo])
async def list_mounts(name: str, svc: Svc) -> list[MountInfo]:
    return [to_info(s) for s in await _mounts(svc).list(name)]


@router.post("/{name}/mounts", response_model=list[MountInfo], status_code=201)
async def add_mount(name: str, req: MountCreate, svc: Svc) -> list[MountInfo]:
    """Share a host folder; the answer is the VM's mounts after it."""
    await _mounts(svc).add(name, req.mount)
    return [to_info(s) for s in await _mounts(svc).list(name)]


@router.delete("/{name}/mounts", status_code=204)
async def remove_mount(name: str, guest: str, svc: Svc) -> None:
    """Stop sharing the folder mounted at ``guest`` (unmounted in a running guest first)."""
    await _mounts(svc).remove(name, guest)
