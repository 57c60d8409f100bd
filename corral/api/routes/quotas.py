"""/v1/quotas: limits per project and owner; /v1/capacity: the host's capacity and its use."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends

from corral.api.deps import Services, services
from corral.api.models import CapacityInfo, QuotaInfo, QuotaSet, QuotaUsage
from corral.errors import InvalidInput, NotFound
from corral.vm import labels, quota
from corral.vm.capacity import capacity

router = APIRouter(tags=["quotas"])
Svc = Annotated[Services, Depends(services)]
Scope = Literal["project", "owner"]


def to_info(svc: Services, q: quota.Quota) -> QuotaInfo:
    u = quota.usage(q.scope, q.name, [(r.spec, svc.vms.disk_size(r.spec)) for r in svc.store.list_vms()])
    return QuotaInfo(scope=q.scope, name=q.name, vms=q.vms, vcpus=q.vcpus, memory=q.memory, disk=q.disk,
                     used=QuotaUsage(vms=u.vms, vcpus=u.vcpus, memory=u.memory, disk=u.disk))


def _check_name(scope: Scope, name: str) -> None:
    try:
        labels.check_project(name) if scope == "project" else labels.check_owner(name)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from exc


@router.get("/quotas", response_model=list[QuotaInfo])
async def list_quotas(svc: Svc) -> list[QuotaInfo]:
    return [to_info(svc, q) for q in svc.store.list_quotas()]


@router.put("/quotas/{scope}/{name}", response_model=QuotaInfo)
async def set_quota(scope: Scope, name: str, req: QuotaSet, svc: Svc) -> QuotaInfo:
    """Set limits; fields not sent keep their value, null removes that limit."""
    _check_name(scope, name)
    old = svc.store.get_quota(scope, name) or quota.Quota(scope, name)
    given = req.model_dump(exclude_unset=True)
    q = quota.Quota(scope, name, **{r: given.get(r, getattr(old, r)) for r in quota.RESOURCES})
    svc.store.put_quota(q)
    svc.vms.event(None, "quota", f"{scope} '{name}' quota set", **{r: getattr(q, r) for r in quota.RESOURCES})
    return to_info(svc, q)


@router.delete("/quotas/{scope}/{name}", status_code=204)
async def delete_quota(scope: Scope, name: str, svc: Svc) -> None:
    if not svc.store.delete_quota(scope, name):
        raise NotFound(f"no quota is set for {scope} '{name}': see `corral quota ls`")
    svc.vms.event(None, "quota", f"{scope} '{name}' quota removed")


@router.get("/capacity", response_model=CapacityInfo)
async def get_capacity(svc: Svc) -> CapacityInfo:
    sizes = {r.name: svc.vms.disk_size(r.spec) for r in svc.store.list_vms()}
    return capacity(svc.settings, svc.store, sizes)
