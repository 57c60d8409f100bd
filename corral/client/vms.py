"""VM lifecycle, templates, pools, projects, idle control, logs, events and exec."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx

from corral.api.models import (
    BalloonRequest,
    BalloonStatus,
    EventInfo,
    ExecChunk,
    ExecRequest,
    ExtendRequest,
    IdlePolicy,
    LabelsRequest,
    PoolCreate,
    PoolInfo,
    PoolResize,
    ProjectInfo,
    ProjectSet,
    Report,
    RestartRequest,
    SpecUpdate,
    SSHInfo,
    StopRequest,
    TemplateCreate,
    TemplateInfo,
    VMInfo,
    WaitForRequest,
    WaitRequest,
)
from corral.client.base import APIError, Core, _event_params
from corral.vm.expiry import ExpiryAction
from corral.vm.spec import VMSpec
from corral.vm.states import VMState


class VMCalls(Core):
    """VM lifecycle, templates, pools, projects, idle control, logs, events and exec."""

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
        # A command may be silent for as long as its own timeout allows (an install in a TCG guest: many minutes),
        # so the wait for the next line is at least that long, not only the client's default.
        wait = self.timeout if timeout is None else max(self.timeout, timeout + 60.0)
        for item in self._stream("POST", f"/vms/{name}/exec", json=req.model_dump(exclude_none=True),
                                 timeout=httpx.Timeout(wait, connect=5.0)):
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
