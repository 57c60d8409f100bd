"""Live migration (corral.migration): /v1/migrations/incoming on the receiving corrald, /v1/vms/{name}/migrate on
the sending one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from corral.api.deps import Services, services
from corral.api.models import VMInfo
from corral.api.routes.vms import to_info
from corral.client.remote import Remote, normal_url
from corral.migration.models import IncomingAnswer, IncomingRequest, MigrateRequest, MigrationResult
from corral.migration.service import MigrationService, attach

router = APIRouter(tags=["migrations"])
Svc = Annotated[Services, Depends(services)]


def _migrations(svc: Services) -> MigrationService:
    return attach(svc.vms, svc.storage, svc.recovery)


@router.post("/migrations/incoming", response_model=IncomingAnswer, status_code=201)
async def prepare_incoming(req: IncomingRequest, request: Request, svc: Svc) -> IncomingAnswer:
    """Receive a VM from another corrald: defined ``incoming``, its disks made empty and exported over NBD, its QEMU
    waiting for the machine state."""
    server = request.scope.get("server")
    reached_at = str(server[0]) if server and request.url.scheme == "https" else None
    return await _migrations(svc).prepare(req, reached_at)


@router.post("/migrations/incoming/{name}/commit", response_model=VMInfo)
async def commit_incoming(name: str, svc: Svc) -> VMInfo:
    """The source has handed over: the VM runs here."""
    return to_info(svc, await _migrations(svc).commit(name))


@router.delete("/migrations/incoming/{name}", status_code=204)
async def abort_incoming(name: str, svc: Svc) -> None:
    """Remove an arriving VM whole (409 if it is not arriving: it runs here)."""
    await _migrations(svc).abort(name)


@router.post("/vms/{name}/migrate", response_model=MigrationResult)
async def migrate_vm(name: str, req: MigrateRequest, svc: Svc) -> MigrationResult:
    """Move running VM ``name`` live to another corrald; on failure it runs on here and nothing is left there."""
    target = Remote(url=normal_url(req.to_url), token=req.token, cert_pem=req.cert_pem)
    return await _migrations(svc).migrate(name, target, req.timeout)
