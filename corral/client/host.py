"""What a host holds besides VMs: port forwards, shared folders, extra disks, networks, quotas, images, status."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from corral.api.models import (
    BuildEvent,
    CapacityInfo,
    DaemonStatus,
    DiskCreate,
    DiskLimits,
    DiskResize,
    ExtraDiskInfo,
    ImageCheckInfo,
    MountCreate,
    MountInfo,
    NetworkCreate,
    NetworkInfo,
    PortRequest,
    QuotaInfo,
    QuotaSet,
)
from corral.client.base import APIError, Core
from corral.images.artifacts import Manifest
from corral.vm.spec import Mount, PortForward


class HostCalls(Core):
    """What a host holds besides VMs: port forwards, shared folders, extra disks, networks, quotas, images, status."""

    # ----------------------------------------------------------------------------------- ports and networks --
    def list_ports(self, name: str) -> list[PortForward]:
        return [PortForward.model_validate(p) for p in self._req("GET", f"/vms/{name}/ports").json()]

    def add_port(self, name: str, forward: str) -> list[PortForward]:
        body = PortRequest(forward=forward).model_dump()
        return [PortForward.model_validate(p) for p in self._req("POST", f"/vms/{name}/ports", json=body).json()]

    def remove_port(self, name: str, which: str) -> list[PortForward]:
        return [PortForward.model_validate(p) for p in self._req("DELETE", f"/vms/{name}/ports/{which}").json()]

    # ----------------------------------------------------------------------------------------- extra disks --
    def list_mounts(self, name: str) -> list[MountInfo]:
        return [MountInfo.model_validate(m) for m in self._req("GET", f"/vms/{name}/mounts").json()]

    def add_mount(self, name: str, mount: Mount) -> list[MountInfo]:
        body = MountCreate(mount=mount).model_dump(mode="json")
        return [MountInfo.model_validate(m) for m in self._req("POST", f"/vms/{name}/mounts", json=body).json()]

    def remove_mount(self, name: str, guest: str) -> None:
        self._req("DELETE", f"/vms/{name}/mounts", params={"guest": guest})

    def list_disks(self, name: str) -> list[ExtraDiskInfo]:
        return [ExtraDiskInfo.model_validate(d) for d in self._req("GET", f"/vms/{name}/disks").json()]

    def add_disk(self, name: str, disk: str, size: int | str, **limits: int | str | None) -> ExtraDiskInfo:
        body = DiskCreate(name=disk, size=size, **limits).model_dump(exclude_none=True)  # type: ignore[arg-type]
        return ExtraDiskInfo.model_validate(self._req("POST", f"/vms/{name}/disks", json=body).json())

    def remove_disk(self, name: str, disk: str, force: bool = False) -> None:
        self._req("DELETE", f"/vms/{name}/disks/{disk}", params={"force": force})

    def detach_disk(self, name: str, disk: str) -> ExtraDiskInfo:
        return ExtraDiskInfo.model_validate(self._req("POST", f"/vms/{name}/disks/{disk}/detach").json())

    def attach_disk(self, name: str, disk: str) -> ExtraDiskInfo:
        return ExtraDiskInfo.model_validate(self._req("POST", f"/vms/{name}/disks/{disk}/attach").json())

    def resize_disk(self, name: str, disk: str, size: int | str) -> ExtraDiskInfo:
        body = DiskResize(size=size).model_dump()
        return ExtraDiskInfo.model_validate(self._req("POST", f"/vms/{name}/disks/{disk}/resize", json=body).json())

    def throttle_disk(self, name: str, disk: str, clear: bool = False, **limits: int | str | None) -> ExtraDiskInfo:
        body = DiskLimits(clear=clear, **limits).model_dump(exclude_none=True)  # type: ignore[arg-type]
        return ExtraDiskInfo.model_validate(
            self._req("POST", f"/vms/{name}/disks/{disk}/throttle", json=body).json())

    def repair_disks(self, name: str, disk: str | None = None) -> list[ImageCheckInfo]:
        params = {"disk": disk} if disk else {}
        results = self._req("POST", f"/vms/{name}/repair", params=params).json()
        return [ImageCheckInfo.model_validate(r) for r in results]

    def list_networks(self) -> list[NetworkInfo]:
        return [NetworkInfo.model_validate(n) for n in self._req("GET", "/networks").json()]

    def get_network(self, name: str) -> NetworkInfo:
        return NetworkInfo.model_validate(self._req("GET", f"/networks/{name}").json())

    def create_network(self, name: str, subnet: str | None = None, bridge: bool = False) -> NetworkInfo:
        body = NetworkCreate(name=name, subnet=subnet, bridge=bridge).model_dump()
        return NetworkInfo.model_validate(self._req("POST", "/networks", json=body).json())

    def delete_network(self, name: str) -> None:
        self._req("DELETE", f"/networks/{name}")

    # ------------------------------------------------------------------------------------ quotas and capacity --
    def list_quotas(self) -> list[QuotaInfo]:
        return [QuotaInfo.model_validate(q) for q in self._req("GET", "/quotas").json()]

    def set_quota(self, scope: str, name: str, limits: dict[str, int | None]) -> QuotaInfo:
        body = QuotaSet(**limits).model_dump(exclude_unset=True)
        return QuotaInfo.model_validate(self._req("PUT", f"/quotas/{scope}/{name}", json=body).json())

    def delete_quota(self, scope: str, name: str) -> None:
        self._req("DELETE", f"/quotas/{scope}/{name}")

    def capacity(self) -> CapacityInfo:
        return CapacityInfo.model_validate(self._req("GET", "/capacity").json())

    # ------------------------------------------------------------------------------------------------ images --
    def list_images(self) -> list[Manifest]:
        return [Manifest.model_validate(m) for m in self._req("GET", "/images").json()]

    def build_image(self, name: str, refresh: bool = False,
                    progress: Callable[[BuildEvent], None] | None = None, arch: str | None = None) -> Manifest:
        """Build (or install from the cache) image ``name`` for ``arch`` (default: the host's architecture)."""
        return self._image_job(f"the build of '{name}'", progress, "POST", f"/images/{name}/build",
                               params={"refresh": refresh} | ({"arch": arch} if arch else {}))

    def _image_job(self, what: str, progress: Callable[[BuildEvent], None] | None, method: str, url: str,
                   **kw: Any) -> Manifest:
        """Follow a build or import stream: progress to ``progress``, then its manifest or its error."""
        for item in self._stream(method, url, **kw):
            ev = BuildEvent.model_validate(item)
            if ev.kind == "progress" and progress:
                progress(ev)
            elif ev.kind == "error":
                raise APIError(500, ev.error or "ImageError", ev.message or f"{what} failed")
            elif ev.kind == "done" and ev.manifest is not None:
                return ev.manifest
        raise APIError(500, "ImageError", f"{what} ended without a result")

    def remove_image(self, name: str, arch: str | None = None) -> None:
        self._req("DELETE", f"/images/{name}", params={"arch": arch} if arch else None)

    def import_image(self, source: str, name: str | None = None, sha256: str | None = None,
                     format: str | None = None, firmware: str = "bios",
                     progress: Callable[[BuildEvent], None] | None = None) -> Manifest:
        """Import a qcow2/raw image (absolute host path, URL or catalog name) into the store."""
        body = {"source": source, "name": name, "sha256": sha256, "format": format, "firmware": firmware}
        return self._image_job(f"the import of '{source}'", progress, "POST", "/images/import",
                               json={k: v for k, v in body.items() if v is not None})

    def import_oci(self, ref: str, name: str | None = None,
                   progress: Callable[[BuildEvent], None] | None = None) -> Manifest:
        """Import an OCI image (layout DIR[:TAG] or tarball as absolute host paths, or docker://REF)."""
        body = {"ref": ref, "name": name}
        return self._image_job(f"the import of OCI image '{ref}'", progress, "POST", "/images/import-oci",
                               json={k: v for k, v in body.items() if v is not None})

    # ------------------------------------------------------------------------------------------------ daemon --
    def status(self) -> DaemonStatus:
        return DaemonStatus.model_validate(self._req("GET", "/status").json())
