"""Idle control: a VM's own idle policy (/vms/{name}/idle) and a project's default (/projects/{name}/idle)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from corral.api.deps import Services, services
from corral.api.models import IdlePolicy, ProjectInfo, VMInfo
from corral.api.routes.projects import project_info
from corral.api.routes.vms import to_info
from corral.errors import EngineError
from corral.idle.service import IdleService

router = APIRouter(tags=["idle"])
Svc = Annotated[Services, Depends(services)]


def _idle(svc: Services) -> IdleService:
    if svc.idle is None:
        raise EngineError("idle control is not running in this daemon")
    return svc.idle


@router.put("/vms/{name}/idle", response_model=VMInfo)
async def set_vm_idle(name: str, policy: IdlePolicy, svc: Svc) -> VMInfo:
    """Set the VM's own idle policy (at once; ``suspend_after`` null: off, which overrides its project's)."""
    return to_info(svc, await _idle(svc).set_policy(name, policy))


@router.delete("/vms/{name}/idle", response_model=VMInfo)
async def reset_vm_idle(name: str, svc: Svc) -> VMInfo:
    """Drop the VM's own idle policy: its project's default applies again."""
    return to_info(svc, await _idle(svc).set_policy(name, None))


@router.put("/projects/{name}/idle", response_model=ProjectInfo)
async def set_project_idle(name: str, policy: IdlePolicy, svc: Svc) -> ProjectInfo:
    """Set the idle policy of the project's VMs that have none of their own (at once, existing VMs too)."""
    return project_info(svc, await _idle(svc).set_project_policy(name, policy))


@router.delete("/projects/{name}/idle", response_model=ProjectInfo)
async def remove_project_idle(name: str, svc: Svc) -> ProjectInfo:
    """Remove the project's default idle policy."""
    return project_info(svc, await _idle(svc).set_project_policy(name, None))
