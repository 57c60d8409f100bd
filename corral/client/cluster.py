"""The calls of a cluster (corral.cluster): make or join one, its hosts, drain."""

from __future__ import annotations

from corral.client.base import Core
from corral.cluster.models import ClusterInfo, ClusterInit, ClusterJoin, DrainResult, HostRecord, MoveRequest
from corral.migration.models import MigrationResult


class ClusterCalls(Core):
    def cluster_init(self, req: ClusterInit) -> HostRecord:
        return HostRecord.model_validate(self._req("POST", "/cluster/init", json=req.model_dump(mode="json"),
                                                   timeout=120).json())

    def cluster_join(self, req: ClusterJoin) -> HostRecord:
        return HostRecord.model_validate(self._req("POST", "/cluster/join", json=req.model_dump(mode="json"),
                                                   timeout=120).json())

    def cluster(self) -> ClusterInfo:
        return ClusterInfo.model_validate(self._req("GET", "/cluster").json())

    def hosts(self) -> list[HostRecord]:
        return [HostRecord.model_validate(h) for h in self._req("GET", "/hosts").json()]

    def host(self, name: str) -> HostRecord:
        return HostRecord.model_validate(self._req("GET", f"/hosts/{name}").json())

    def drain(self, name: str) -> DrainResult:
        """Mark the host draining and move its running VMs to the others (as long as that takes)."""
        return DrainResult.model_validate(self._req("POST", f"/hosts/{name}/drain", timeout=None).json())

    def undrain(self, name: str) -> HostRecord:
        return HostRecord.model_validate(self._req("POST", f"/hosts/{name}/undrain").json())

    def move_vm(self, name: str, to: str | None, timeout: float = 600.0) -> MigrationResult:
        """Move running VM ``name`` live to host ``to`` (None: where the scheduler puts it)."""
        body = MoveRequest(to=to, timeout=timeout).model_dump()
        return MigrationResult.model_validate(self._req("POST", f"/vms/{name}/move", json=body,
                                                        timeout=timeout + 30).json())
