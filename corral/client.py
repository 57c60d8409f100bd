"""The Python client of Corral's API (also the SDK): httpx over the daemon's unix socket.

Errors come back as :class:`APIError` carrying the HTTP status, the error class name and the one-line message.
:func:`connect` starts the daemon when it is not running (as the CLI does).
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from corral import paths
from corral.api.models import (
    API_PREFIX,
    USER_HEADER,
    BalloonRequest,
    BalloonStatus,
    BuildEvent,
    CapacityInfo,
    CloneEvent,
    CloneRequest,
    CopyChannel,
    DaemonStatus,
    DiskCreate,
    DiskLimits,
    DiskResize,
    EventInfo,
    ExecChunk,
    ExecRequest,
    ExportRequest,
    ExtendRequest,
    ExtraDiskInfo,
    FileInfo,
    IdlePolicy,
    ImageCheckInfo,
    LabelsRequest,
    MountCreate,
    MountInfo,
    NetworkCreate,
    NetworkInfo,
    PoolCreate,
    PoolInfo,
    PoolResize,
    PortableEvent,
    PortRequest,
    ProjectInfo,
    ProjectSet,
    QuotaInfo,
    QuotaSet,
    Report,
    RestartRequest,
    RevertRequest,
    SnapshotCreate,
    SnapshotInfo,
    SpecUpdate,
    SSHInfo,
    StopRequest,
    TemplateCreate,
    TemplateInfo,
    VMImportRequest,
    VMInfo,
    WaitForRequest,
    WaitRequest,
)
from corral.backup.models import (
    BackupSummary,
    CreateRequest,
    JobEvent,
    PruneRequest,
    PruneResult,
    RepoInfo,
    RestoreRequest,
    RestoreResult,
    Schedule,
    VerifyReport,
    VerifyRequest,
)
from corral.detach import spawn_detached
from corral.errors import CorralError
from corral.images.artifacts import Manifest
from corral.settings import Settings, load_settings
from corral.vm.expiry import ExpiryAction
from corral.vm.labels import default_owner
from corral.vm.spec import Mount, PortForward, VMSpec
from corral.vm.states import VMState


class APIError(CorralError):
    """The daemon answered with an error."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error = status, error


class DaemonUnavailable(CorralError):
    """The daemon is not running, or did not come up."""


@dataclass
class Download:
    """An open download (:meth:`Client.download`): ``kind`` is "file" or "tar" (a directory), ``mode`` and
    ``mtime`` those of the guest source, ``size`` the exact byte count of ``chunks``."""

    kind: str
    size: int
    mode: int
    mtime: int
    chunks: Iterator[bytes]


class Client:
    def __init__(self, socket: Path, timeout: float = 600.0, user: str | None = None) -> None:
        """``user``: who the daemon records as the actor of each request (and the owner of new VMs); default
        $CORRAL_OWNER, else the login name."""
        self.socket = socket
        self.timeout = timeout
        self.user = user or default_owner()
        self._http = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(socket)), base_url="http://corral" + API_PREFIX,
            timeout=httpx.Timeout(timeout, connect=5.0), headers={USER_HEADER: self.user},
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------- core --
    @property
    def http(self) -> httpx.Client:
        """The HTTP client, for the modules that extend this one (corral.client_files)."""
        return self._http

    def check(self, r: httpx.Response) -> httpx.Response:
        """Raise APIError for an error response (its body read)."""
        return self._check(r)

    def _check(self, r: httpx.Response) -> httpx.Response:
        if r.status_code >= 400:
            try:
                body = r.json()
                raise APIError(r.status_code, body.get("error", "Error"), body.get("message") or r.text)
            except (ValueError, AttributeError):
                raise APIError(r.status_code, "Error", r.text.strip() or r.reason_phrase) from None
        return r

    def _req(self, method: str, url: str, **kw: Any) -> httpx.Response:
        try:
            return self._check(self._http.request(method, url, **kw))
        except httpx.TransportError as exc:
            raise DaemonUnavailable(f"cannot reach corrald at {self.socket}: {exc}") from exc

    def _stream(self, method: str, url: str, **kw: Any) -> Iterator[dict[str, Any]]:
        try:
            with self._http.stream(method, url, **kw) as r:
                if r.status_code >= 400:
                    r.read()
                    self._check(r)
                for line in r.iter_lines():
                    if line.strip():
                        yield json.loads(line)
        except httpx.TransportError as exc:
            raise DaemonUnavailable(f"lost the connection to corrald at {self.socket}: {exc}") from exc

    # -------------------------------------------------------------------------------------------------- VMs --
    def list_vms(self, labels: list[str] | None = None, owner: str | None = None,
                 project: str | None = None) -> list[VMInfo]:
        """VMs matching every filter: label selectors (``env=dev``, ``env!=prod``, ``gpu``), owner, project."""
        params: dict[str, Any] = {"label": labels or []}
        if owner is not None:
            params["owner"] = owner
        if project is not None:
            params["project"] = project
        return [VMInfo.model_validate(v) for v in self._req("GET", "/vms", params=params).json()]

    def set_labels(self, name: str, set: dict[str, str] | None = None, remove: list[str] | None = None) -> VMInfo:
        body = LabelsRequest(set=set or {}, remove=remove or []).model_dump()
        return VMInfo.model_validate(self._req("POST", f"/vms/{name}/labels", json=body).json())

    def update_vm(self, name: str, **changes: Any) -> VMInfo:
        """Change spec fields: ``labels`` (the whole set), ``description``, ``restart`` at once; ``vcpus`` and
        ``memory`` from the VM's next start."""
        body = SpecUpdate.model_validate(changes).model_dump(mode="json", exclude_unset=True)
        return VMInfo.model_validate(self._req("PATCH", f"/vms/{name}", json=body).json())

    def report(self, by: str = "owner", labels: list[str] | None = None, owner: str | None = None,
               project: str | None = None) -> Report:
        params: dict[str, Any] = {"by": by, "label": labels or []}
        params |= {k: v for k, v in (("owner", owner), ("project", project)) if v is not None}
        return Report.model_validate(self._req("GET", "/report", params=params).json())

    def get_vm(self, name: str) -> VMInfo:
        return VMInfo.model_validate(self._req("GET", f"/vms/{name}").json())

    def create_vm(self, spec: VMSpec | dict[str, Any]) -> VMInfo:
        body = spec.model_dump(mode="json", exclude_none=True) if isinstance(spec, VMSpec) else spec
        return VMInfo.model_validate(self._req("POST", "/vms", json=body).json())

    def launch_from_template(self, template: str, spec: VMSpec | dict[str, Any]) -> VMInfo:
        """Create and start a VM from a template (not waiting for it: :meth:`wait_ready`)."""
        body = spec.model_dump(mode="json", exclude_none=True) if isinstance(spec, VMSpec) else spec
        return VMInfo.model_validate(self._req("POST", f"/templates/{template}/launch", json=body).json())

    def balloon(self, name: str) -> BalloonStatus:
        """The balloon of a running ``--balloon`` VM: its size and the guest's memory statistics."""
        return BalloonStatus.model_validate(self._req("GET", f"/vms/{name}/balloon").json())

    def set_balloon(self, name: str, target: str | int) -> BalloonStatus:
        """Set the memory the guest should have (``"96M"``, or bytes); the guest gets there within seconds."""
        body = BalloonRequest(target=target).model_dump()
        return BalloonStatus.model_validate(self._req("POST", f"/vms/{name}/balloon", json=body).json())

    def list_templates(self) -> list[TemplateInfo]:
        return [TemplateInfo.model_validate(t) for t in self._req("GET", "/templates").json()]

    def create_template(self, name: str, source: str) -> TemplateInfo:
        body = TemplateCreate(name=name, source=source).model_dump()
        return TemplateInfo.model_validate(self._req("POST", "/templates", json=body).json())

    def delete_template(self, name: str) -> None:
        self._req("DELETE", f"/templates/{name}")

    def list_pools(self) -> list[PoolInfo]:
        return [PoolInfo.model_validate(p) for p in self._req("GET", "/pools").json()]

    def get_pool(self, template: str) -> PoolInfo:
        return PoolInfo.model_validate(self._req("GET", f"/pools/{template}").json())

    def create_pool(self, template: str, size: int) -> PoolInfo:
        """A warm pool of ``size`` paused VMs from ``template`` (filled in the background)."""
        body = PoolCreate(template=template, size=size).model_dump()
        return PoolInfo.model_validate(self._req("POST", "/pools", json=body).json())

    def resize_pool(self, template: str, size: int) -> PoolInfo:
        body = PoolResize(size=size).model_dump()
        return PoolInfo.model_validate(self._req("PUT", f"/pools/{template}", json=body).json())

    def delete_pool(self, template: str) -> list[str]:
        """Remove the pool and delete its members; the names deleted."""
        return list(self._req("DELETE", f"/pools/{template}").json())

    def start_vm(self, name: str) -> VMInfo:
        return VMInfo.model_validate(self._req("POST", f"/vms/{name}/start").json())

    def stop_vm(self, name: str, timeout: float = 30.0, force: bool = True) -> VMInfo:
        body = StopRequest(timeout=timeout, force=force).model_dump()
        return VMInfo.model_validate(self._req("POST", f"/vms/{name}/stop", json=body).json())

    def kill_vm(self, name: str) -> VMInfo:
        return VMInfo.model_validate(self._req("POST", f"/vms/{name}/kill").json())

    def restart_vm(self, name: str, hard: bool = False, timeout: float = 120.0) -> VMInfo:
        body = RestartRequest(hard=hard, timeout=timeout).model_dump()
        return VMInfo.model_validate(self._req("POST", f"/vms/{name}/restart", json=body).json())

    def pause_vm(self, name: str) -> VMInfo:
        return VMInfo.model_validate(self._req("POST", f"/vms/{name}/pause").json())

    def resume_vm(self, name: str) -> VMInfo:
        """Continue a paused VM, or load a suspended VM's saved state (then ``wait_ready`` for its agent)."""
        return VMInfo.model_validate(self._req("POST", f"/vms/{name}/resume").json())

    def extend_vm(self, name: str, by: float | None = None, to: datetime | None = None) -> VMInfo:
        """Push a VM's expiry out by ``by`` seconds, or to ``to``."""
        body = ExtendRequest(by=by, to=to).model_dump(mode="json")
        return VMInfo.model_validate(self._req("POST", f"/vms/{name}/extend", json=body).json())

    def list_projects(self) -> list[ProjectInfo]:
        return [ProjectInfo.model_validate(p) for p in self._req("GET", "/projects").json()]

    def set_project(self, name: str, default_ttl: float | None, on_expiry: ExpiryAction = ExpiryAction.STOP
                    ) -> ProjectInfo:
        body = ProjectSet(default_ttl=default_ttl, on_expiry=on_expiry).model_dump(mode="json")
        return ProjectInfo.model_validate(self._req("PUT", f"/projects/{name}", json=body).json())

    def set_idle(self, name: str, policy: IdlePolicy | None) -> VMInfo:
        """Set a VM's own idle policy (``suspend_after`` None: off); ``policy`` None: follow its project's."""
        if policy is None:
            return VMInfo.model_validate(self._req("DELETE", f"/vms/{name}/idle").json())
        return VMInfo.model_validate(self._req("PUT", f"/vms/{name}/idle", json=policy.model_dump(mode="json")).json())

    def set_project_idle(self, name: str, policy: IdlePolicy | None) -> ProjectInfo:
        """Set (None: remove) the idle policy of a project's VMs that have none of their own."""
        if policy is None:
            return ProjectInfo.model_validate(self._req("DELETE", f"/projects/{name}/idle").json())
        return ProjectInfo.model_validate(
            self._req("PUT", f"/projects/{name}/idle", json=policy.model_dump(mode="json")).json())

    def suspend_vm(self, name: str) -> VMInfo:
        """Save a running (or paused) VM's state to disk and end its QEMU; ``resume_vm`` brings it back."""
        return VMInfo.model_validate(self._req("POST", f"/vms/{name}/suspend").json())

    def delete_vm(self, name: str, force: bool = False) -> None:
        self._req("DELETE", f"/vms/{name}", params={"force": force})

    def wait_ready(self, name: str, timeout: float = 120.0) -> VMInfo:
        body = WaitRequest(timeout=timeout).model_dump()
        return VMInfo.model_validate(self._req("POST", f"/vms/{name}/wait-ready", json=body).json())

    def wait_for(self, name: str, *, state: VMState | str | None = None, ready: bool = False,
                 timeout: float = 300.0) -> VMInfo:
        """Block until the VM is in ``state`` and/or ready (ready alone when no state is given)."""
        body = WaitForRequest(state=VMState(state) if state else None, ready=ready, timeout=timeout)
        r = self._req("POST", f"/vms/{name}/wait", json=body.model_dump(mode="json"),
                      timeout=httpx.Timeout(timeout + 60.0, connect=5.0))
        return VMInfo.model_validate(r.json())

    def ssh_info(self, name: str, timeout: float = 30.0, purpose: str = "shell") -> SSHInfo:
        """Where and how to SSH into a ready VM (waits up to ``timeout`` s for it to be ready); ``purpose``
        ("shell" or "cp") is what waking an idle-suspended VM for it says."""
        r = self._req("GET", f"/vms/{name}/ssh", params={"timeout": timeout, "purpose": purpose},
                      timeout=httpx.Timeout(timeout + 60.0, connect=5.0))
        return SSHInfo.model_validate(r.json())

    def logs(self, name: str, tail: int | None = None) -> str:
        params = {"tail": tail} if tail is not None else {}
        return self._req("GET", f"/vms/{name}/logs", params=params).text

    def logs_since(self, name: str, offset: int | None = None, tail: int | None = None) -> tuple[bytes, int]:
        """(log bytes, offset to continue from): all (or ``tail`` lines) without ``offset``, else what is new."""
        params: dict[str, Any] = {}
        if offset is not None:
            params["offset"] = offset
        if tail is not None:
            params["tail"] = tail
        r = self._req("GET", f"/vms/{name}/logs", params=params)
        return r.content, int(r.headers.get("X-Log-Offset", "0"))

    def events(self, vm: str | None = None, after: int = 0, *, owner: str | None = None, actor: str | None = None,
               type: str | None = None, result: str | None = None, since: str | float | None = None,
               limit: int = 1000, newest: bool = False) -> list[EventInfo]:
        """Stored events matching every filter; ``since``: "10m", an ISO time or a Unix time."""
        params = _event_params(vm, after, owner, actor, type, result, since) | {"limit": limit, "newest": newest}
        return [EventInfo.model_validate(e) for e in self._req("GET", "/events", params=params).json()]

    def follow_events(self, vm: str | None = None, after: int = 0, *, owner: str | None = None,
                      actor: str | None = None, type: str | None = None, result: str | None = None,
                      since: str | float | None = None) -> Iterator[EventInfo]:
        """Events as they are recorded (the stored ones first with ``since`` or ``after``), until the daemon stops."""
        params = _event_params(vm, after, owner, actor, type, result, since)
        for item in self._stream("GET", "/events/stream", params=params,
                                 timeout=httpx.Timeout(None, connect=5.0)):
            if "error" in item:
                raise APIError(500, "Error", str(item["error"]))
            yield EventInfo.model_validate(item)

    def exec_stream(
        self, name: str, argv: list[str], *, env: dict[str, str] | None = None, cwd: str | None = None,
        stdin: bytes | None = None, timeout: float | None = None,
    ) -> Iterator[ExecChunk]:
        req = ExecRequest(argv=argv, env=env, cwd=cwd, timeout=timeout,
                          stdin_b64=base64.b64encode(stdin).decode() if stdin is not None else None)
        for item in self._stream("POST", f"/vms/{name}/exec", json=req.model_dump(exclude_none=True)):
            yield ExecChunk.model_validate(item)

    def exec(self, name: str, argv: list[str], **kw: Any) -> tuple[int | None, bytes, bytes]:
        """Run a command to completion: (exit code, stdout, stderr). Raises APIError on an ``error`` line."""
        out, err, code = bytearray(), bytearray(), None
        for chunk in self.exec_stream(name, argv, **kw):
            if chunk.kind == "stdout":
                out += base64.b64decode(chunk.data_b64 or "")
            elif chunk.kind == "stderr":
                err += base64.b64decode(chunk.data_b64 or "")
            elif chunk.kind == "exit":
                code = chunk.exit_code
            elif chunk.kind == "error":
                raise APIError(chunk.status or 502, chunk.error or "EngineError", chunk.message or "exec failed")
        return code, bytes(out), bytes(err)

    # ------------------------------------------------------------------------------------------------- files --
    def file_stat(self, name: str, path: str) -> FileInfo:
        """What a guest path is (``kind`` "missing" when it does not exist)."""
        return FileInfo.model_validate(self._req("GET", f"/vms/{name}/files/stat", params={"path": path}).json())

    def upload(self, name: str, path: str, body: Iterable[bytes], *, kind: str = "file", mode: int = 0o644,
               mtime: int | None = None) -> FileInfo:
        """Stream ``body`` (read lazily, chunk by chunk) through the guest agent into guest file ``path``, or with
        ``kind="tar"`` unpack it as the new guest directory ``path`` (over a virtio-serial port:
        corral.client_files)."""
        params: dict[str, Any] = {"path": path, "kind": kind, "mode": f"{mode & 0o7777:o}"}
        if mtime is not None:
            params["mtime"] = mtime
        return FileInfo.model_validate(self._req("PUT", f"/vms/{name}/files", params=params, content=body).json())

    def virtio_status(self, name: str) -> CopyChannel:
        """Can a copy with VM ``name`` go over a virtio-serial port now (wakes an idle-suspended VM)?"""
        return CopyChannel.model_validate(self._req("GET", f"/vms/{name}/files/virtio/status").json())

    @contextmanager
    def download(self, name: str, path: str, chunk_size: int = 1 << 20, *, virtio: bool = False) -> Iterator[Download]:
        """Open a guest file or directory (as a tar) for streaming; errors come before the first byte. ``virtio``:
        over a hot-plugged virtio-serial port (a tree's ``size`` is then an estimate)."""
        route = f"/vms/{name}/files/virtio" if virtio else f"/vms/{name}/files"
        try:
            with self._http.stream("GET", route, params={"path": path}) as r:
                if r.status_code >= 400:
                    r.read()
                    self._check(r)
                yield Download(kind=r.headers.get("x-corral-kind", "file"),
                               size=int(r.headers.get("x-corral-size") or r.headers.get("content-length", 0)),
                               mode=int(r.headers.get("x-corral-mode", "644"), 8),
                               mtime=int(r.headers.get("x-corral-mtime", 0)),
                               chunks=r.iter_raw(chunk_size))
        except httpx.TransportError as exc:
            raise DaemonUnavailable(f"the copy from '{name}' was interrupted: {exc}") from exc

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
                    progress: Callable[[BuildEvent], None] | None = None) -> Manifest:
        return self._image_job(f"the build of '{name}'", progress, "POST", f"/images/{name}/build",
                               params={"refresh": refresh})

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

    def remove_image(self, name: str) -> None:
        self._req("DELETE", f"/images/{name}")

    def import_image(self, source: str, name: str | None = None, sha256: str | None = None,
                     format: str | None = None, firmware: str = "bios",
                     progress: Callable[[BuildEvent], None] | None = None) -> Manifest:
        """Import a qcow2/raw image (absolute host path, URL or catalog name) into the store."""
        body = {"source": source, "name": name, "sha256": sha256, "format": format, "firmware": firmware}
        return self._image_job(f"the import of '{source}'", progress, "POST", "/images/import",
                               json={k: v for k, v in body.items() if v is not None})

    # ------------------------------------------------------------------------------------- snapshots, clones --
    def list_snapshots(self, vm: str) -> list[SnapshotInfo]:
        return [SnapshotInfo.model_validate(s) for s in self._req("GET", f"/vms/{vm}/snapshots").json()]

    def create_snapshot(self, vm: str, name: str, memory: bool = False, freeze: bool = True) -> SnapshotInfo:
        body = SnapshotCreate(name=name, memory=memory, freeze=freeze).model_dump()
        return SnapshotInfo.model_validate(self._req("POST", f"/vms/{vm}/snapshots", json=body).json())

    def revert_snapshot(self, vm: str, name: str, force: bool = False) -> VMInfo:
        body = RevertRequest(force=force).model_dump()
        return VMInfo.model_validate(self._req("POST", f"/vms/{vm}/snapshots/{name}/revert", json=body).json())

    def delete_snapshot(self, vm: str, name: str) -> None:
        self._req("DELETE", f"/vms/{vm}/snapshots/{name}")

    def clone_vm(self, source: str, name: str, full: bool = False, snapshot: str | None = None,
                 progress: Callable[[float], None] | None = None) -> CloneEvent:
        """Clone ``source`` into a new VM ``name``; the final event carries the new VM and the seconds it took."""
        body = CloneRequest(name=name, full=full, snapshot=snapshot).model_dump(exclude_none=True)
        for item in self._stream("POST", f"/vms/{source}/clone", json=body):
            ev = CloneEvent.model_validate(item)
            if ev.kind == "progress" and progress:
                progress(ev.percent)
            elif ev.kind == "error":
                raise APIError(500, ev.error or "EngineError", ev.message or f"cloning '{source}' failed")
            elif ev.kind == "done":
                return ev
        raise APIError(500, "EngineError", f"cloning '{source}' ended without a result")

    # ---------------------------------------------------------------------------------------- export / import --
    def _portable(self, url: str, body: dict[str, Any], what: str,
                  progress: Callable[[int, int], None] | None) -> PortableEvent:
        for item in self._stream("POST", url, json=body):
            ev = PortableEvent.model_validate(item)
            if ev.kind == "progress" and progress:
                progress(ev.done, ev.total)
            elif ev.kind == "error":
                raise APIError(500, ev.error or "EngineError", ev.message or f"{what} failed")
            elif ev.kind == "done":
                return ev
        raise APIError(500, "EngineError", f"{what} ended without a result")

    def export_vm(self, name: str, path: str, state: bool = False,
                  progress: Callable[[int, int], None] | None = None) -> PortableEvent:
        """Write VM ``name`` to the archive ``path`` (absolute, on the daemon's host)."""
        body = ExportRequest(path=path, state=state).model_dump()
        return self._portable(f"/vms/{name}/export", body, f"exporting '{name}'", progress)

    def import_vm(self, path: str, name: str | None = None,
                  progress: Callable[[int, int], None] | None = None) -> PortableEvent:
        """Recreate the VM in the archive ``path``; the final event carries the new VM."""
        body = VMImportRequest(path=path, name=name).model_dump(exclude_none=True)
        return self._portable("/import", body, f"importing {path}", progress)
    # ----------------------------------------------------------------------------------------------- backups --
    def init_backup_repo(self, path: str) -> RepoInfo:
        return RepoInfo.model_validate(self._req("POST", "/backups/repos", json={"path": path}).json())

    def backup_repo_info(self, repo: str | None = None) -> RepoInfo:
        return RepoInfo.model_validate(self._req("GET", "/backups/repo", params=_some(repo=repo)).json())

    def list_backups(self, repo: str | None = None, vm: str | None = None) -> list[BackupSummary]:
        return [BackupSummary.model_validate(b)
                for b in self._req("GET", "/backups", params=_some(repo=repo, vm=vm)).json()]

    def create_backup(self, vm: str, repo: str | None = None, full: bool = False,
                      progress: Callable[[JobEvent], None] | None = None) -> BackupSummary:
        """Back up a VM (running or stopped); ``progress`` gets the copy and store progress."""
        return BackupSummary.model_validate(self._backup_job(progress, "POST", "/backups", json=CreateRequest(
            vm=vm, repo=repo, full=full).model_dump()))

    def verify_backups(self, ids: list[str] | None = None, repo: str | None = None,
                       progress: Callable[[JobEvent], None] | None = None) -> VerifyReport:
        return VerifyReport.model_validate(self._backup_job(progress, "POST", "/backups/verify", json=VerifyRequest(
            repo=repo, ids=ids or []).model_dump()))

    def restore_backup(self, backup: str, *, to: str | None = None, in_place: str | None = None,
                       repo: str | None = None, progress: Callable[[JobEvent], None] | None = None) -> RestoreResult:
        return RestoreResult.model_validate(self._backup_job(
            progress, "POST", f"/backups/{backup}/restore",
            json=RestoreRequest(repo=repo, to=to, in_place=in_place).model_dump()))

    def prune_backups(self, req: PruneRequest) -> PruneResult:
        return PruneResult.model_validate(self._req("POST", "/backups/prune", json=req.model_dump()).json())

    def list_backup_schedules(self) -> list[Schedule]:
        return [Schedule.model_validate(s) for s in self._req("GET", "/backups/schedules").json()]

    def set_backup_schedule(self, s: Schedule) -> Schedule:
        return Schedule.model_validate(self._req("PUT", f"/backups/schedules/{s.vm}",
                                                 json=s.model_dump(mode="json")).json())

    def delete_backup_schedule(self, vm: str) -> None:
        self._req("DELETE", f"/backups/schedules/{vm}")

    def _backup_job(self, progress: Callable[[JobEvent], None] | None, method: str, url: str,
                    **kw: Any) -> dict[str, Any]:
        for item in self._stream(method, url, **kw):
            ev = JobEvent.model_validate(item)
            if ev.kind == "progress" and progress:
                progress(ev)
            elif ev.kind == "error":
                raise APIError(500, ev.error or "CorralError", ev.message or "the backup job failed")
            elif ev.kind == "done" and ev.result is not None:
                return ev.result
        raise APIError(500, "CorralError", "the backup job ended without a result")

    # ------------------------------------------------------------------------------------------------ daemon --
    def status(self) -> DaemonStatus:
        return DaemonStatus.model_validate(self._req("GET", "/status").json())


def _some(**params: Any) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


def _event_params(vm: str | None, after: int, owner: str | None, actor: str | None, type: str | None,
                  result: str | None, since: str | float | None) -> dict[str, Any]:
    params: dict[str, Any] = {"after": after}
    for k, v in (("vm", vm), ("owner", owner), ("actor", actor), ("type", type), ("result", result),
                 ("since", since)):
        if v is not None:
            params[k] = str(v)
    return params


def daemon_running(settings: Settings, timeout: float = 2.0) -> bool:
    """Is a daemon answering on the socket? A stale socket file (the daemon was killed) is not one."""
    if not settings.socket.exists():
        return False
    # A plain socket, not httpx: httpx's unix transport leaks its socket when a connect is refused or a read
    # times out (a stale socket after a killed daemon; a daemon still re-attaching its VMs).
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(timeout)
    try:
        probe.connect(str(settings.socket))
        probe.sendall(f"GET {API_PREFIX}/status HTTP/1.0\r\nHost: corral\r\n\r\n".encode())
        return probe.recv(12).startswith(b"HTTP/1.1 200")
    except OSError:
        return False
    finally:
        probe.close()


DAEMON_PREFIX_ENV = "CORRAL_DAEMON_PREFIX"


def daemon_prefix(env: dict[str, str]) -> list[str]:
    """The command corrald is started under, from ``$CORRAL_DAEMON_PREFIX`` (unset: none). For tests, e.g.
    ``ip netns exec NS`` starts it inside a network namespace; the prefix must exec the daemon (same pid)."""
    prefix = shlex.split(env.get(DAEMON_PREFIX_ENV, ""))
    if not prefix:
        return []
    found = shutil.which(prefix[0], path=env.get("PATH"))
    if found is None:
        raise DaemonUnavailable(f"{DAEMON_PREFIX_ENV}: command {prefix[0]!r} not found")
    return [found, *prefix[1:]]


def start_daemon(settings: Settings, timeout: float = 30.0, environ: dict[str, str] | None = None) -> None:
    """Start corrald detached (own session, output to corrald.log) and wait until it answers.

    The daemon reads its settings from ``environ`` (default: this process's environment) with the home and cache
    of ``settings``."""
    settings.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    log = settings.home / paths.DAEMON_LOG
    log.touch(mode=0o600)
    offset = log.stat().st_size
    env = dict(os.environ if environ is None else environ, CORRAL_HOME=str(settings.home),
               CORRAL_CACHE=str(settings.cache))
    spawn_detached([*daemon_prefix(env), sys.executable, "-m", "corral.daemon.main"], log, env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon_running(settings):
            return
        with open(log, "rb") as f:
            f.seek(offset)
            failed = [ln for ln in f.read().decode(errors="replace").splitlines() if ln.startswith("corrald: ")]
        if failed and "already running" not in failed[-1]:
            raise DaemonUnavailable(failed[-1])
        time.sleep(0.05)
    raise DaemonUnavailable(f"corrald did not answer within {timeout:.0f}s: see {log}")


def connect(settings: Settings | None = None, autostart: bool = True) -> Client:
    """A client of this host's daemon, starting the daemon first if it is not running."""
    settings = settings or load_settings()
    if autostart and not daemon_running(settings):
        start_daemon(settings)
    return Client(settings.socket)
