"""Backup models: the index stored in the repository, and the wire models shared by the API and the client."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

INDEX_FORMAT = 1


class BackupSummary(BaseModel):
    """One backup, without its chunk list: what `corral backup ls` shows."""

    id: str
    vm: str
    vm_id: str = ""
    disk: str = "root"
    virtual_size: int
    chunk_size: int
    created: datetime
    kind: Literal["full", "incremental"]
    parent: str | None = None
    read: Literal["bitmap", "full"] = Field(description="bitmap: only what QEMU's dirty bitmap marked was read; "
                                            "full: the whole disk was read")
    reason: str = Field(default="", description="why the whole disk was read, when it was")
    vm_state: str = Field(default="", description="the VM's state when the backup was taken (running or stopped)")
    read_bytes: int = Field(default=0, description="bytes of the disk read for this backup")
    changed_chunks: int = 0
    changed_regions: int = 0
    new_chunks: int = Field(default=0, description="chunks this backup added to the repository")
    stored_bytes: int = Field(default=0, description="bytes this backup added to the repository (compressed)")
    data_bytes: int = Field(default=0, description="bytes of non-zero chunks the backup refers to (uncompressed)")
    seconds: float = 0.0


class BackupIndex(BackupSummary):
    """The whole index file: the summary, the VM's spec, and one entry per chunk (its SHA-256, or None: zero)."""

    format: int = INDEX_FORMAT
    spec: dict[str, Any]
    chunks: list[str | None]

    def summary(self) -> BackupSummary:
        return BackupSummary.model_validate(self.model_dump(include=set(BackupSummary.model_fields)))


class RepoInfo(BaseModel):
    path: str
    created: datetime
    chunk_size: int
    backups: int
    chunks: int
    bytes: int


class RepoRequest(BaseModel):
    path: str


class CreateRequest(BaseModel):
    vm: str
    repo: str | None = None
    full: bool = False


class VerifyRequest(BaseModel):
    repo: str | None = None
    ids: list[str] = Field(default_factory=list, description="backups to verify (unique id prefixes); none: all")


class ChunkProblem(BaseModel):
    chunk: str
    problem: str
    backups: list[str]


class VerifyReport(BaseModel):
    backups: list[str]
    chunks: int
    bytes: int
    problems: list[ChunkProblem] = Field(default_factory=list)
    bad_backups: list[str] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class RestoreRequest(BaseModel):
    repo: str | None = None
    to: str | None = Field(default=None, description="a new VM, made with the backed-up spec")
    in_place: str | None = Field(default=None, description="an existing, stopped VM whose disk is replaced")


class RestoreResult(BaseModel):
    vm: str
    backup: str
    disk_bytes: int
    dropped_ports: list[str] = Field(default_factory=list)


class PruneRequest(BaseModel):
    vm: str
    repo: str | None = None
    keep_last: int = Field(default=0, ge=0)
    keep_daily: int = Field(default=0, ge=0)
    keep_weekly: int = Field(default=0, ge=0)
    dry_run: bool = False


class PruneResult(BaseModel):
    kept: list[str]
    removed: list[str]
    chunks_removed: int
    bytes_freed: int
    dry_run: bool


class Schedule(BaseModel):
    vm: str
    repo: str | None = None
    every: float | None = Field(default=None, gt=0, description="seconds between backups")
    daily_at: str | None = Field(default=None, pattern=r"^([01]\d|2[0-3]):[0-5]\d$",
                                 description="HH:MM, host local time")
    keep_last: int = Field(default=0, ge=0)
    keep_daily: int = Field(default=0, ge=0)
    keep_weekly: int = Field(default=0, ge=0)
    created: float = 0.0
    last_run: float | None = None
    last_result: str = ""
    next_run: float | None = None


class JobEvent(BaseModel):
    """One line of a backup job's NDJSON stream: progress, then ``done`` (with the result) or ``error``."""

    kind: Literal["progress", "done", "error"]
    stage: str = ""
    done: int = 0
    total: int | None = None
    result: dict[str, Any] | None = None
    message: str = ""
    error: str = ""
