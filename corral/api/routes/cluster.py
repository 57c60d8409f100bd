"""/v1/cluster and /v1/hosts: make or join a cluster, its hosts, drain (docs/explanation/cluster.md)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from corral.api.deps import Services, services
from corral.cluster.models import ClusterInfo, ClusterInit, ClusterJoin, DrainResult, HostRecord, MoveRequest
from corral.cluster.service import ClusterService
from corral.errors import InvalidInput
from corral.migration.models import MigrationResult

router = APIRouter(tags=["cluster"])
Svc = Annotated[Services, Depends(services)]


def cluster_of(svc: Services) -> ClusterService:
    if svc.cluster is None:
        raise InvalidInput("this corrald runs no cluster service")
    return svc.cluster


@router.post("/cluster/init", response_model=HostRecord)
async def init(req: ClusterInit, svc: Svc) -> HostRecord:
    """Make this host the first member of a new cluster (starting etcd here unless one is given)."""
    return await cluster_of(svc).init(req.etcd, req.name, req.labels, req.ha_repo)


@router.post("/cluster/join", response_model=HostRecord)
async def join(req: ClusterJoin, svc: Svc) -> HostRecord:
    """Make this host a member of the cluster whose etcd is ``etcd``."""
    return await cluster_of(svc).join(req.etcd, req.name, req.labels)


@router.get("/cluster", response_model=ClusterInfo)
async def show(svc: Svc) -> ClusterInfo:
    c = cluster_of(svc)
    if not c.enabled or c.config is None:
        return ClusterInfo(name="")
    snap = await c.snapshot()
    return ClusterInfo(name=c.name, etcd=c.config.etcd, settings=snap.settings, hosts=snap.host_list())


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


@router.post("/hosts/{name}/drain", response_model=DrainResult)
async def drain(name: str, svc: Svc) -> DrainResult:
    """The host takes no new VMs, and its running VMs move live to the others (placed as new ones would be)."""
    return await cluster_of(svc).drain(name)


@router.post("/vms/{name}/move", response_model=MigrationResult)
async def move(name: str, req: MoveRequest, svc: Svc) -> MigrationResult:
    """Move running VM ``name`` live to host ``to`` (or where the scheduler puts it); sent to the VM's host by any
    host (corral.api.forward). On failure the VM runs on where it was, nothing left on the other host."""
    return await cluster_of(svc).migrate(name, req.to, req.timeout)
