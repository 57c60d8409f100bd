"""The sandbox's wire models, shared by the API and the client: what a run asks for, and its report."""

from __future__ import annotations

import base64
import binascii
import re
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from corral.sandbox.diskdiff import FileChange

MAX_SAMPLE = 32 << 20  # bytes: samples are scripts and small binaries, sent inline (base64) with the request
MAX_TIMEOUT = 24 * 3600.0
MAX_OUTPUT = 64 << 10  # bytes of stdout and of stderr kept in the report (the rest counted, not kept)
SAMPLE_NAME_RE = re.compile(r"^[A-Za-z0-9._+-]{1,100}$")


class NetMode(StrEnum):
    """The sandbox VM's network (docs/explanation/sandbox.md)."""

    NONE = "none"  # no NIC at all: only lo
    ISOLATED = "isolated"  # a private network of its own, no route out
    EGRESS_LOG = "egress-log"  # the same, with a sink that records every attempt and answers none


class SandboxRun(BaseModel):
    """One sandbox run: the sample, where it runs, for how long, and what it may reach."""

    model_config = ConfigDict(extra="forbid")

    sample_name: str = Field(description="the sample's file name (it is copied to /root/sandbox/NAME)")
    sample: str = Field(description=f"the sample's bytes, base64 (at most {MAX_SAMPLE >> 20} MiB)")
    image: str | None = Field(default=None, description="boot this image (default: tiny)")
    template: str | None = Field(default=None, description="start from this template's saved state instead")
    timeout: float = Field(default=300.0, gt=0, le=MAX_TIMEOUT, description="seconds the command may run")
    net: NetMode = NetMode.NONE
    keep: bool = Field(default=False, description="keep the VM, stopped, for study (its disk as the sample left it)")
    command: list[str] = Field(default_factory=list, description="what to run (default: the sample itself, made "
                               "executable); $SAMPLE in the guest is the sample's path")

    @field_validator("sample_name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not SAMPLE_NAME_RE.match(v) or v in (".", ".."):
            raise ValueError(f"{v!r} is not a usable sample file name: letters, digits and ._+- only")
        return v

    @field_validator("sample")
    @classmethod
    def _sample(cls, v: str) -> str:
        if len(v) > (MAX_SAMPLE * 4) // 3 + 4:
            raise ValueError(f"the sample is larger than {MAX_SAMPLE >> 20} MiB")
        try:
            base64.b64decode(v, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"the sample is not base64: {exc}") from exc
        return v

    @model_validator(mode="after")
    def _source(self) -> SandboxRun:
        if self.image is not None and self.template is not None:
            raise ValueError("give --image or --template, not both")
        return self

    def sample_bytes(self) -> bytes:
        return base64.b64decode(self.sample)


class ProcessSeen(BaseModel):
    pid: int
    ppid: int
    comm: str
    cmdline: str = ""
    descendant: bool = Field(default=False, description="started by the command (its child, or theirs, as far as "
                             "the samples show); else started meanwhile by something else, or orphaned early")


class Connection(BaseModel):
    """One connection attempt the sink saw (egress-log)."""

    model_config = ConfigDict(extra="allow")

    t: float = Field(description="host time (UNIX seconds)")
    proto: str = Field(description="tcp, udp, dns, icmp")
    src: str
    dst: str
    port: int | None = None
    name: str | None = Field(default=None, description="dns: the name asked")
    type: str | None = Field(default=None, description="dns: the record type asked")
    answer: str | None = Field(default=None, description="dns: what the sink answered")


class Output(BaseModel):
    text: str = Field(description=f"the first {MAX_OUTPUT} bytes, decoded (invalid UTF-8 replaced)")
    bytes: int = Field(description="how many bytes the command wrote in all")
    truncated: bool


class SandboxReport(BaseModel):
    """What a run saw. Each part says how it was observed (``*_note``) or why it is missing."""

    vm: str
    source: str = Field(description="image:NAME or template:NAME")
    net: NetMode
    command: list[str]
    exit_code: int | None
    signal: int | None = None
    timed_out: bool
    timeout: float
    stdout: Output
    stderr: Output
    seconds: dict[str, float] = Field(description="boot, run, collect, total")
    processes: list[ProcessSeen]
    processes_note: str
    files: list[FileChange] | None
    files_note: str
    connections: list[Connection] | None
    connections_note: str
    screenshot: str | None
    screenshot_note: str
    kept: bool = Field(description="the VM was kept, stopped (--keep); otherwise it was deleted")
    protections: list[str] = Field(description="how the host was protected during this run")
