"""/v1/networks: private networks (a switch process each) and bridged ones (root only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from corral.api.deps import Services, services
from corral.api.models import NetworkCreate, NetworkInfo, NetworkMember
from corral.store.db import NetworkRecord

router = APIRouter(prefix="/networks", tags=["networks"])
Svc = Annotated[Services, Depends(services)]


def to_info(svc: Services, rec: NetworkRecord) -> NetworkInfo:
    nets = svc.vms.networks
    return NetworkInfo(
        name=rec.name, subnet=rec.subnet, kind="bridge" if rec.bridge else "private", bridge=rec.bridge,
        created_at=rec.created_at, switch_pid=None if rec.bridge else nets.switch_pid(rec.name),
        vms=nets.users(rec.name),
        members=[NetworkMember(vm=a.vm, mac=a.mac, address=a.address)
                 for a in svc.store.attachments(network=rec.name)],
    )


@router.get("", response_model=list[NetworkInfo])
async def list_networks(svc: Svc) -> list[NetworkInfo]:
    return [to_info(svc, n) for n in svc.vms.networks.all()]


@router.post("", response_model=NetworkInfo, status_code=201)
async def create_network(req: NetworkCreate, svc: Svc) -> NetworkInfo:
    return to_info(svc, await svc.vms.networks.create(req.name, req.subnet, req.bridge))


@router.get("/{name}", response_model=NetworkInfo)
async def show_network(name: str, svc: Svc) -> NetworkInfo:
    return to_info(svc, svc.vms.networks.get(name))


@router.delete("/{name}", status_code=204)
async def delete_network(name: str, svc: Svc) -> None:
    await svc.vms.networks.remove(name)
