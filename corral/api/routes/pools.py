"""/v1/pools: warm pools of paused VMs from a template (corral.pools); `launch --template` hands their members out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from corral.api.deps import Services, services
from corral.api.models import PoolCreate, PoolInfo, PoolMemberInfo, PoolResize
from corral.pools.service import PoolService, PoolStatus

router = APIRouter(prefix="/pools", tags=["pools"])
Svc = Annotated[Services, Depends(services)]


def _pools(svc: Services) -> PoolService:
    assert svc.pools is not None
    return svc.pools


def _info(p: PoolStatus) -> PoolInfo:
    members = [PoolMemberInfo(name=m.name, condition=m.condition.value, state=m.state, memory=m.memory, rss=m.rss)
               for m in p.members]
    return PoolInfo(template=p.template, size=p.size, ready=p.ready, filling=p.filling, created_at=p.created_at,
                    members=members, memory=sum(m.memory for m in members), rss=sum(m.rss for m in members),
                    note=p.note)


@router.get("", response_model=list[PoolInfo])
async def list_pools(svc: Svc) -> list[PoolInfo]:
    return [_info(p) for p in _pools(svc).all()]


@router.get("/{template}", response_model=PoolInfo)
async def show_pool(template: str, svc: Svc) -> PoolInfo:
    return _info(_pools(svc).get(template))


@router.post("", response_model=PoolInfo, status_code=201)
async def create_pool(req: PoolCreate, svc: Svc) -> PoolInfo:
    """Make the pool; its members are launched in the background, one at a time."""
    return _info(await _pools(svc).create(req.template, req.size))


@router.put("/{template}", response_model=PoolInfo)
async def resize_pool(template: str, req: PoolResize, svc: Svc) -> PoolInfo:
    """Change the pool's size: members are added in the background, or ready ones deleted."""
    return _info(await _pools(svc).resize(template, req.size))


@router.delete("/{template}", response_model=list[str])
async def delete_pool(template: str, svc: Svc) -> list[str]:
    """Remove the pool and delete its members; the names deleted."""
    return await _pools(svc).delete(template)
