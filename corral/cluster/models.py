"""The cluster's records, as stored in etcd (JSON, one key each) and as the API shows them: one model each, used by
the registry, the scheduler, the API and the CLI."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


class HostState(StrEnum):
    """``ready`` takes new VMs; ``draining`` (set by `corral host drain`) takes none and is being emptied;
    ``down``: its lease in etcd expired (it is not heard from), shown, never chosen."""

    READY = "ready"
    DRAINING = "draining"
    DOWN = "down"


class HostRecord(BaseModel):
    """One member host, as it last published itself (``/corral/hosts/<name>``)."""

    name: str
    address: str = Field(description="https://IP:PORT of its corrald's TLS listener")
    cert_pem: str = Field(default="", description="its listener's certificate, pinned by the other hosts")
    state: HostState = HostState.READY
    labels: dict[str, str] = Field(default_factory=dict)
    cpus: int = Field(description="host threads")
    memory_mib: int = Field(description="host RAM")
    cpu_overcommit: float = 1.0
    memory_overcommit: float = 1.0
    vcpus_allocated: int = 0  # of its running VMs
    memory_allocated_mib: int = 0  # of its running VMs
    vms: int = 0  # VMs it holds, in any state
    images: list[str] = Field(default_factory=list, description="images it has built, as NAME or NAME@ARCH")
    templates: list[str] = Field(default_factory=list)
    corral_version: str = ""
    qemu_version: str = ""
    accelerator: str = ""
    updated_at: float = 0.0  # time.time() of the publication

    @property
    def cpu_limit(self) -> int:
        return max(1, int(self.cpus * self.cpu_overcommit))

    @property
    def memory_limit_mib(self) -> int:
        return int(self.memory_mib * self.memory_overcommit)

    @property
    def vcpus_free(self) -> int:
        return max(0, self.cpu_limit - self.vcpus_allocated)

    @property
    def memory_free_mib(self) -> int:
        return max(0, self.memory_limit_mib - self.memory_allocated_mib)


class Strategy(StrEnum):
    SPREAD = "spread"  # the host with the most room left (default): failures hit fewer VMs
    PACK = "pack"  # the fullest host that still fits: whole hosts stay free


class PlacementRequest(BaseModel):
    """What a new (or moving) VM needs of its host."""

    vm: str
    vcpus: int
    memory_mib: int
    image: str | None = None  # NAME or NAME@ARCH, as HostRecord.images
    template: str | None = None
    host: str | None = None  # `--host`: only this one
    host_labels: dict[str, str] = Field(default_factory=dict)  # `--host-label k=v`: all must match
    group: str | None = None  # anti-affinity: a fleet's members go to different hosts while they can
    strategy: Strategy = Strategy.SPREAD
    exclude: list[str] = Field(default_factory=list)  # hosts not to choose (the source of a migration, a drained one)


class VMPlacement(BaseModel):
    """Where one VM lives (``/corral/vms/<name>``): written in a transaction when it is placed, updated by its host."""

    name: str
    host: str
    vcpus: int
    memory_mib: int
    group: str | None = None
    state: str = "creating"  # the VM's state as its host last published it
    project: str = "default"
    owner: str = ""
    image: str = ""
    ha: bool = False
    vm_id: str = ""
    updated_at: float = 0.0
    info: dict[str, Any] | None = None  # the VM as `corral ls` showed it last (shown, as unknown, if its host is down)


class ClusterConfig(BaseModel):
    """``cluster.json`` in a member's home: which cluster it belongs to, as what."""

    name: str
    etcd: str = Field(description="http://HOST:PORT of an etcd member")
    managed_etcd: bool = Field(default=False, description="corrald started this etcd (`cluster init` with no --etcd)")
    labels: dict[str, str] = Field(default_factory=dict)


class ClusterSettings(BaseModel):
    """What every member uses alike (``/corral/config``)."""

    ha_repo: str | None = Field(default=None, description="the backup repository every host sees (a shared "
                                "directory): an HA VM whose host died is restored from its newest backup there")


# -- requests and answers of /v1/cluster ----------------------------------------------------------------------
class ClusterInit(BaseModel):
    etcd: str | None = Field(default=None, description="an etcd to use (http://HOST:2379; its members "
                             "comma-separated); default: start one here")
    name: str | None = Field(default=None, description="this host's name in the cluster; default: its hostname")
    labels: dict[str, str] = Field(default_factory=dict, description="this host's labels (for --host-label)")
    ha_repo: str | None = Field(default=None, description="the cluster's HA repository (a directory every host "
                                "sees): where HA VMs are restored from when their host dies")


class ClusterJoin(BaseModel):
    etcd: str = Field(description="the cluster's etcd, as `corral cluster init` printed it (http://HOST:2379)")
    name: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)


class ClusterInfo(BaseModel):
    name: str = Field(description="this host's name; empty: in no cluster")
    etcd: str = ""
    settings: ClusterSettings = Field(default_factory=ClusterSettings)
    hosts: list[HostRecord] = Field(default_factory=list)


class MoveRequest(BaseModel):
    """``POST /v1/vms/{name}/move``: where to (None: where the scheduler puts it, its host excluded)."""

    to: str | None = Field(default=None, description="the host to move it to (`corral host ls`)")
    timeout: float = Field(default=600.0, gt=0, le=86400, description="seconds for the disks and the state")


class DrainResult(BaseModel):
    host: str
    moved: list[str] = Field(default_factory=list, description="VMs moved live to other hosts")
    failed: dict[str, str] = Field(default_factory=dict, description="VMs that could not move, and why")
    stayed: list[str] = Field(default_factory=list, description="VMs not running: left with their disks")
