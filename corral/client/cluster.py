"""The calls of a cluster (corral.cluster): make or join one, its hosts, drain."""

from __future__ import annotations

from corral.client.base import Core
from corral.cluster.models import ClusterInfo, ClusterInit, ClusterJoin, HostRecord


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

    def drain(self, name: str, draining: bool = True) -> HostRecord:
        verb = "drain" if draining else "undrain"
        return HostRecord.model_validate(self._req("POST", f"/hosts/{name}/{verb}", timeout=3600).json())
