"""/v1/templates: capture a running VM as a template, launch VMs from it, list and remove templates."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from corral.api.deps import Services, services
from corral.api.models import TemplateCreate, TemplateInfo, VMInfo
from corral.api.routes.vms import owned, to_info
from corral.store.db import TemplateRecord
from corral.templates.service import TemplateService
from corral.vm.spec import VMSpec

router = APIRouter(prefix="/templates", tags=["templates"])
Svc = Annotated[Services, Depends(services)]


def _templates(svc: Services) -> TemplateService:
    assert svc.templates is not None
    return svc.templates


def _info(svc: Services, rec: TemplateRecord) -> TemplateInfo:
    return TemplateInfo(name=rec.name, source=rec.source, image=rec.image, vcpus=rec.vcpus, memory=rec.memory,
                        disk=rec.disk, created_at=rec.created_at, size=rec.size, channel=rec.channel,
                        vms=_templates(svc).users(rec.name))


@router.get("", response_model=list[TemplateInfo])
async def list_templates(svc: Svc) -> list[TemplateInfo]:
    return [_info(svc, t) for t in _templates(svc).all()]


@router.get("/{name}", response_model=TemplateInfo)
async def show_template(name: str, svc: Svc) -> TemplateInfo:
    return _info(svc, _templates(svc).get(name))


@router.post("", response_model=TemplateInfo, status_code=201)
async def create_template(req: TemplateCreate, svc: Svc) -> TemplateInfo:
    """Capture the running, ready VM ``source``: its memory, devices and disk (the source keeps running)."""
    return _info(svc, await _templates(svc).create(req.name, req.source))


@router.delete("/{name}", status_code=204)
async def delete_template(name: str, svc: Svc) -> None:
    """Remove a template; refused while VMs made from it exist."""
    await _templates(svc).delete(name)


@router.post("/{name}/launch", response_model=VMInfo, status_code=201)
async def launch_from_template(name: str, spec: VMSpec, svc: Svc) -> VMInfo:
    """Create and start a VM from the template (image, vCPUs, memory and disk are the template's): it runs from the
    template's saved state, or a ready member of the template's warm pool is handed out (ready at once); wait for
    it with ``POST /vms/{name}/wait-ready``."""
    if svc.pools is not None:  # a ready member of the template's warm pool, if it has one
        return to_info(svc, await svc.pools.launch(name, owned(spec)))
    return to_info(svc, await _templates(svc).launch(name, owned(spec)))
