"""/v1/vms/{name}/ports: a VM's host port forwards, changed at once on a running VM and kept in its spec."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from corral.api.deps import Services, services
from corral.api.models import PortRequest
from corral.errors import InvalidInput
from corral.vm.spec import PortForward

router = APIRouter(prefix="/vms", tags=["ports"])
Svc = Annotated[Services, Depends(services)]


@router.get("/{name}/ports", response_model=list[PortForward])
async def list_ports(name: str, svc: Svc) -> list[PortForward]:
    return list(svc.vms.get(name).spec.ports)


@router.post("/{name}/ports", response_model=list[PortForward], status_code=201)
async def add_port(name: str, req: PortRequest, svc: Svc) -> list[PortForward]:
    try:
        forward = PortForward.parse(req.forward)
    except ValueError as exc:
        raise InvalidInput(str(exc).splitlines()[0]) from None
    return list((await svc.vms.forwards.add(name, forward)).spec.ports)


@router.delete("/{name}/ports/{which:path}", response_model=list[PortForward])
async def remove_port(name: str, which: str, svc: Svc) -> list[PortForward]:
    """``which``: the host port (`8080`, `8080/udp`, `127.0.0.1:8080`) or the whole forward (`8080:80`)."""
    return list((await svc.vms.forwards.remove(name, which)).spec.ports)
