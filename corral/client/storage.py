"""Snapshots, clones, export and import, backups."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from corral.api.models import (
    CloneEvent,
    CloneRequest,
    ExportRequest,
    PortableEvent,
    RevertRequest,
    SnapshotCreate,
    SnapshotInfo,
    VMImportRequest,
    VMInfo,
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
from corral.client.base import APIError, Core, _some


class StorageCalls(Core):
    """Snapshots, clones, export and import, backups."""

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
