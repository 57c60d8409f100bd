"""/v1/projects: per-project settings (the default TTL and expiry action of new VMs)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from corral.api.deps import Services, services
from corral.api.models import ProjectInfo, ProjectSet
from corral.store.db import ProjectRecord
from corral.vm.expiry import ExpiryAction

router = APIRouter(prefix="/projects", tags=["projects"])
Svc = Annotated[Services, Depends(services)]


@router.get("", response_model=list[ProjectInfo])
async def list_projects(svc: Svc) -> list[ProjectInfo]:
    """Every project with settings or VMs."""
    counts: dict[str, int] = {}
    for rec in svc.vms.list():
        counts[rec.spec.project] = counts.get(rec.spec.project, 0) + 1
    known = {p.name: p for p in svc.store.list_projects()}
    return [ProjectInfo(name=n, default_ttl=p.default_ttl if p else None,
                        on_expiry=ExpiryAction(p.on_expiry) if p else ExpiryAction.STOP, vms=counts.get(n, 0),
                        idle=p.idle if p else None)
            for n in sorted(set(known) | set(counts)) for p in [known.get(n)]]


def project_info(svc: Services, rec: ProjectRecord) -> ProjectInfo:
    return ProjectInfo(name=rec.name, default_ttl=rec.default_ttl, on_expiry=ExpiryAction(rec.on_expiry),
                       vms=sum(1 for r in svc.vms.list() if r.spec.project == rec.name), idle=rec.idle)


@router.put("/{name}", response_model=ProjectInfo)
async def set_project(name: str, req: ProjectSet, svc: Svc) -> ProjectInfo:
    """Set a project's default TTL (null: none) and expiry action; applies to VMs created from now on."""
    return project_info(svc, svc.vms.expiry.set_project(name, req.default_ttl, req.on_expiry))
