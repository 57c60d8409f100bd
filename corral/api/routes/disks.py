"""/v1/vms/{name}/disks: a VM's extra disks, changed at once on a running VM (hot-plug) or on its command line."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from corral.api.deps import Services, services
from corral.api.models import DiskCreate, DiskLimits, DiskResize, ExtraDiskInfo, ImageCheckInfo
from corral.errors import InvalidInput
from corral.storage import throttle
from corral.store.db import DiskRecord
from corral.vm.sizes import parse_size

router = APIRouter(prefix="/vms", tags=["disks"])
Svc = Annotated[Services, Depends(services)]


def to_info(d: DiskRecord) -> ExtraDiskInfo:
    return ExtraDiskInfo(vm=d.vm, name=d.name, file=d.file, format=d.format, size=d.size, serial=d.serial,
                         attached=d.attached, port=d.port, limits=d.limits, created_at=d.created_at)


def _size(value: int | str) -> int:
    try:
        return parse_size(value)
    except ValueError as exc:
        raise InvalidInput(f"size: {exc}") from None


def _limits(req: DiskLimits) -> dict[str, int | None]:
    return {k: None if (v := getattr(req, k)) is None else throttle.parse_value(k, v) for k in throttle.FIELDS}


@router.get("/{name}/disks", response_model=list[ExtraDiskInfo])
async def list_disks(name: str, svc: Svc) -> list[ExtraDiskInfo]:
    return [to_info(d) for d in svc.disks.list_disks(name)]


@router.post("/{name}/disks", response_model=ExtraDiskInfo, status_code=201)
async def add_disk(name: str, req: DiskCreate, svc: Svc) -> ExtraDiskInfo:
    return to_info(await svc.disks.add(name, req.name, _size(req.size), _limits(req)))


@router.get("/{name}/disks/{disk}", response_model=ExtraDiskInfo)
async def show_disk(name: str, disk: str, svc: Svc) -> ExtraDiskInfo:
    return to_info(svc.disks.get(name, disk))


@router.delete("/{name}/disks/{disk}", status_code=204)
async def remove_disk(name: str, disk: str, svc: Svc, force: bool = False) -> None:
    await svc.disks.remove(name, disk, force=force)


@router.post("/{name}/disks/{disk}/detach", response_model=ExtraDiskInfo)
async def detach_disk(name: str, disk: str, svc: Svc) -> ExtraDiskInfo:
    return to_info(await svc.disks.detach(name, disk))


@router.post("/{name}/disks/{disk}/attach", response_model=ExtraDiskInfo)
async def attach_disk(name: str, disk: str, svc: Svc) -> ExtraDiskInfo:
    return to_info(await svc.disks.attach(name, disk))


@router.post("/{name}/disks/{disk}/resize", response_model=ExtraDiskInfo)
async def resize_disk(name: str, disk: str, req: DiskResize, svc: Svc) -> ExtraDiskInfo:
    return to_info(await svc.disks.resize(name, disk, _size(req.size)))


@router.post("/{name}/disks/{disk}/throttle", response_model=ExtraDiskInfo)
async def throttle_disk(name: str, disk: str, req: DiskLimits, svc: Svc) -> ExtraDiskInfo:
    return to_info(await svc.disks.set_limits(name, disk, _limits(req), clear=req.clear))


@router.post("/{name}/repair", response_model=list[ImageCheckInfo])
async def repair_disks(name: str, svc: Svc, disk: str | None = None) -> list[ImageCheckInfo]:
    """`qemu-img check -r all` of the VM's images (or one extra disk's): the VM must be stopped."""
    return [ImageCheckInfo(**r.__dict__) for r in await svc.disks.repair(name, disk)]
