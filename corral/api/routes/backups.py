"""/v1/backups: repositories, backups (create, list, verify, restore: streamed progress), prune, schedules."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from corral.api.deps import Services, services
from corral.api.streams import stream_operation
from corral.backup.models import (
    BackupSummary,
    CreateRequest,
    JobEvent,
    PruneRequest,
    PruneResult,
    RepoInfo,
    RepoRequest,
    RestoreRequest,
    Schedule,
    VerifyRequest,
)
from corral.backup.service import BackupService, Progress
from corral.errors import EngineError

router = APIRouter(prefix="/backups", tags=["backups"])
Svc = Annotated[Services, Depends(services)]


def _backups(svc: Services) -> BackupService:
    if svc.backups is None:
        raise EngineError("backups are not available in this daemon")
    return svc.backups


def stream(job: Callable[[Progress], Awaitable[BaseModel]], what: str) -> StreamingResponse:
    """Run ``job`` as a task, streaming its progress as NDJSON :class:`JobEvent` lines, then ``done`` (with its
    result) or ``error``. The job runs to its end even if the client goes away: nothing is left half done."""
    last: dict[str, float] = {}

    async def run(emit: Callable[[JobEvent], None]) -> JobEvent:
        def progress(stage: str, done: int, total: int | None) -> None:
            now = time.monotonic()
            if total is not None and done < total and now - last.get(stage, -1.0) < 0.2:
                return  # at most five updates a second per stage
            last[stage] = now
            emit(JobEvent(kind="progress", stage=stage, done=done, total=total))

        result = await job(progress)
        return JobEvent(kind="done", result=result.model_dump(mode="json"))

    return stream_operation(what, run, lambda message, error: JobEvent(kind="error", message=message,
                                                                  error=error or ""))


@router.post("/repos", response_model=RepoInfo)
async def init_repo(req: RepoRequest, svc: Svc) -> RepoInfo:
    return await _backups(svc).init_repo(req.path)


@router.get("/repo", response_model=RepoInfo)
async def repo_info(svc: Svc, repo: str | None = None) -> RepoInfo:
    return await _backups(svc).repo_info(repo)


@router.get("", response_model=list[BackupSummary])
async def list_backups(svc: Svc, repo: str | None = None, vm: str | None = None) -> list[BackupSummary]:
    return await _backups(svc).list_backups(repo, vm)


@router.post("")
async def create_backup(req: CreateRequest, svc: Svc) -> StreamingResponse:
    """NDJSON stream of :class:`JobEvent`: copy and store progress, then ``done`` with the backup's summary."""
    b = _backups(svc)
    b.vms.get(req.vm)  # an unknown VM is a 404 now, not an error line in a 200 stream

    async def job(progress: Progress) -> BaseModel:
        return (await b.create(req.vm, req.repo, req.full, progress)).summary()

    return stream(job, "backup")


@router.post("/verify")
async def verify(req: VerifyRequest, svc: Svc) -> StreamingResponse:
    """NDJSON stream: verify progress, then ``done`` with a :class:`VerifyReport`."""
    b = _backups(svc)
    return stream(lambda progress: b.verify(req.repo, req.ids, progress), "verify")


@router.post("/{backup_id}/restore")
async def restore(backup_id: str, req: RestoreRequest, svc: Svc) -> StreamingResponse:
    """NDJSON stream: restore progress, then ``done`` with a :class:`RestoreResult`."""
    b = _backups(svc)
    return stream(lambda progress: b.restore(backup_id, req.repo, req.to, req.in_place, progress), "restore")


@router.post("/prune", response_model=PruneResult)
async def prune(req: PruneRequest, svc: Svc) -> PruneResult:
    return await _backups(svc).prune(req)


@router.get("/schedules", response_model=list[Schedule])
async def list_schedules(svc: Svc) -> list[Schedule]:
    return _backups(svc).list_schedules()


@router.put("/schedules/{vm}", response_model=Schedule)
async def set_schedule(vm: str, req: Schedule, svc: Svc) -> Schedule:
    return _backups(svc).set_schedule(req.model_copy(update={"vm": vm}))


@router.delete("/schedules/{vm}", status_code=204)
async def delete_schedule(vm: str, svc: Svc) -> None:
    _backups(svc).delete_schedule(vm)
