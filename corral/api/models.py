"""Wire models, shared by the server (``corral.api``) and the client (``corral.client``); never redefined."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from corral.images.artifacts import Manifest
from corral.vm.spec import VMSpec

API_PREFIX = "/v1"


class DiskInfo(BaseModel):
    name: str
    path: str
    format: str
    virtual_size: int
    backing: str | None = None
    backing_format: str | None = None


class VMInfo(BaseModel):
    """What `corral show` and `corral ls` print."""

    name: str
    id: str
    spec: VMSpec
    state: str
    state_reason: str = ""
    mac: str
    created_at: float
    last_exit_reason: str = ""
    restart_count: int = 0
    pid: int | None = None
    accel: str | None = None
    started_at: float | None = None
    uptime: float | None = None
    agent_ready: bool = False
    addresses: list[str] = Field(default_factory=list)
    disks: list[DiskInfo] = Field(default_factory=list)


class StopRequest(BaseModel):
    timeout: float = Field(default=30.0, ge=0, le=3600)
    force: bool = True


class RestartRequest(BaseModel):
    hard: bool = False
    timeout: float = Field(default=120.0, ge=1, le=3600)


class WaitRequest(BaseModel):
    timeout: float = Field(default=120.0, ge=0, le=3600)


class ExecRequest(BaseModel):
    argv: list[str] = Field(min_length=1)
    env: dict[str, str] | None = None
    cwd: str | None = None
    stdin_b64: str | None = None
    timeout: float | None = Field(default=None, gt=0, le=86400)


class ExecChunk(BaseModel):
    """One line of the exec stream (NDJSON): output as it comes, then one exit line."""

    kind: Literal["stdout", "stderr", "exit", "error"]
    data_b64: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    message: str | None = None


class BuildEvent(BaseModel):
    """One line of the image build stream (NDJSON)."""

    kind: Literal["progress", "done", "error"]
    stage: str = ""
    done: int = 0
    total: int | None = None
    manifest: Manifest | None = None
    message: str | None = None
    error: str | None = Field(default=None, description="the error class, on kind=error")


class EventInfo(BaseModel):
    id: int
    ts: float
    vm: str | None
    type: str
    message: str
    data: dict[str, object] = Field(default_factory=dict)


class DaemonStatus(BaseModel):
    version: str
    pid: int
    home: str
    socket: str
    accel: str | None
    accel_reason: str | None
    qemu: str
    vms: dict[str, int]


class ErrorBody(BaseModel):
    error: str
    message: str
