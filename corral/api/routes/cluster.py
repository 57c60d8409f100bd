"""/v1/cluster and /v1/hosts: make or join a cluster, its hosts, drain (docs/explanation/cluster.md)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from corral.api.deps import Services, services
from corral.cluster.models import ClusterInfo, ClusterInit, ClusterJoin, HostRecord
from corral.cluster.service import ClusterService
from corral.errors import InvalidInput

router = APIRouter(tags=["cluster"])
Svc = Annotated[Services, Depends(services)]


def cluster_of(svc: Services) -> ClusterService:
    if svc.cluster is None:
        raise InvalidInput("this corrald runs no cluster service")
    return svc.cluster


@router.post("/cluster/init", response_model=HostRecord)
async def init(req: ClusterInit, svc: Svc) -> HostRecord:
    """Make this host the first member of a new cluster (starting etcd here unless one is given)."""
    return await cluster_of(svc).init(req.etcd, req.name, req.labels)


@router.post("/cluster/join", response_model=HostRecord)
async def join(req: ClusterJoin, svc: Svc) -> HostRecord:
    """Make this host a member of the cluster whose etcd is ``etcd``."""
    return await cluster_of(svc).join(req.etcd, req.name, req.labels)


@router.get("/cluster", response_model=ClusterInfo)
async def show(svc: Svc) -> ClusterInfo:
    c = cluster_of(svc)
    if not c.enabled or c.config is None:
        return ClusterInfo(name="")
    return ClusterInfo(name=c.name, etcd=c.config.etcd, hosts=await c.hosts())


@router.get("/hosts", response_model=list[HostRecord])
async def list_hosts(svc: Svc) -> list[HostRecord]:
    """Every member host, with its state as the cluster sees it now (ready, draining, down)."""
    return await cluster_of(svc).hosts()


@router.get("/hosts/{name}", response_model=HostRecord)
async def get_host(name: str, svc: Svc) -> HostRecord:
    return await cluster_of(svc).host(name)


@router.post("/hosts/{name}/undrain", response_model=HostRecord)
async def undrain(name: str, svc: Svc) -> HostRecord:
    """The host takes new VMs again."""
    return await cluster_of(svc).set_draining(name, False)


@router.post("/hosts/{name}/drain", response_model=HostRecord)
async def drain(name: str, svc: Svc) -> HostRecord:
    """The host takes no new VMs (and, once live migration is there, its VMs move to the others)."""
    return await cluster_of(svc).set_draining(name, True)
