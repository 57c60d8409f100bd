"""The records the store (corral.store.db) reads and writes: one frozen dataclass a row, and the converters
from SQLite rows. Plain data, no I/O: the domain services pass these around."""

from __future__ import annotations

import functools
import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from corral.idle.policy import IdlePolicy
from corral.vm.arch import split_ref
from corral.vm.spec import VMSpec
from corral.vm.states import VMState


@dataclass
class VMRecord:
    spec: VMSpec
    id: str
    state: VMState
    state_reason: str
    mac: str
    created_at: float
    last_exit_reason: str
    restart_count: int
    exit_code: int | None = None  # an OCI image's main process, at the VM's last stop

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class RuntimeRecord:
    name: str
    pid: int
    start_ticks: int
    started_at: float
    accel: str
    ssh_port: int | None = None
    provisioned_boot: str | None = None


@dataclass(frozen=True)
class NetworkRecord:
    name: str
    subnet: str
    created_at: float
    bridge: str | None = None


@dataclass(frozen=True)
class AttachmentRecord:
    network: str
    vm: str
    mac: str
    address: str


@dataclass(frozen=True)
class DiskRecord:
    """An extra disk. ``limits``: QEMU throttle-group fields that are set (absent = unlimited); ``port``: the
    hot-plug port it sits in while attached, None while detached."""

    vm: str
    name: str
    file: str
    size: int
    serial: str
    created_at: float
    format: str = "qcow2"
    limits: dict[str, int] = field(default_factory=dict)
    port: int | None = None

    @property
    def attached(self) -> bool:
        return self.port is not None


@dataclass(frozen=True)
class TemplateRecord:
    name: str
    source: str
    image: str
    vcpus: int
    memory: int  # MiB
    disk: int  # bytes, the virtual size of its disk
    created_at: float
    size: int = 0  # bytes on the host: disk, memory and state files
    #: Captured with a shell listening on Corral's guest channel (corral.engine.guest_channel): a VM made from it
    #: takes its identity through the channel, else through the guest agent.
    channel: bool = False

    def machine_fields(self) -> dict[str, object]:
        """The spec fields a VM made from this template takes from it. ``image`` is the image store's key
        (corral.vm.arch.image_ref: ``tiny``, ``tiny@aarch64``), which also says the architecture."""
        image, arch = split_ref(self.image)
        return {"image": image, "arch": arch, "vcpus": self.vcpus, "memory": self.memory, "disk": self.disk}


@dataclass(frozen=True)
class ProjectRecord:
    name: str
    default_ttl: float | None = None
    on_expiry: str = "stop"
    idle: IdlePolicy | None = None


@dataclass(frozen=True)
class LayerRecord:
    """One qcow2 layer file. ``backing`` None: its backing is the disk of ``image``, or none (``image`` None)."""

    id: str
    path: str
    backing: str | None
    image: str | None
    vm: str | None
    purpose: str  # "top" or "frozen"
    created_at: float


@dataclass(frozen=True)
class SnapshotRecord:
    id: str
    vm: str
    name: str
    parent: str | None
    layer: str
    state_file: str | None
    note: str
    created_at: float


@dataclass
class OperationRecord:
    id: str
    vm: str | None
    kind: str
    started_at: float
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EventRecord:
    id: int
    ts: float
    vm: str | None
    type: str
    message: str
    data: dict[str, Any]
    actor: str = ""
    owner: str = ""
    result: str = "ok"


@dataclass(frozen=True)
class EventQuery:
    """Which events: every given field must match (AND). ``since`` is a Unix time."""

    vm: str | None = None
    owner: str | None = None
    actor: str | None = None
    type: str | None = None
    result: str | None = None
    since: float | None = None
    after: int = 0

    def matches(self, e: EventRecord) -> bool:
        """The same test as :meth:`Store.events` makes in SQL, for events as they happen."""
        return (e.id > self.after and (self.vm is None or e.vm == self.vm)
                and (self.owner is None or e.owner == self.owner) and (self.actor is None or e.actor == self.actor)
                and (self.type is None or e.type == self.type) and (self.result is None or e.result == self.result)
                and (self.since is None or e.ts >= self.since))



def _project(r: sqlite3.Row) -> ProjectRecord:
    return ProjectRecord(name=r["name"], default_ttl=r["default_ttl"], on_expiry=r["on_expiry"],
                         idle=IdlePolicy.model_validate_json(r["idle"]) if r["idle"] else None)


def _event(r: sqlite3.Row) -> EventRecord:
    return EventRecord(r["id"], r["ts"], r["vm"], r["type"], r["message"], json.loads(r["data"]), r["actor"],
                       r["owner"], r["result"])


def _template(r: sqlite3.Row) -> TemplateRecord:
    return TemplateRecord(**{**dict(r), "channel": bool(r["channel"])})


def _disk(r: sqlite3.Row) -> DiskRecord:
    return DiskRecord(vm=r["vm"], name=r["name"], file=r["file"], size=r["size"], serial=r["serial"],
                      created_at=r["created_at"], format=r["format"], limits=json.loads(r["limits"]), port=r["port"])
@functools.lru_cache(maxsize=8192)
def _parse_spec(text: str) -> VMSpec:
    return VMSpec.model_validate_json(text)


def _vm(row: sqlite3.Row) -> VMRecord:
    # A spec's JSON is parsed (and validated) once, not at every listing: `ls` of 1,000 VMs stays fast. Records
    # with the same spec text share one VMSpec object: nothing changes a spec in place (every change is
    # model_copy(update=...) then Store.update_spec).
    return VMRecord(
        spec=_parse_spec(row["spec"]),
        id=row["id"],
        state=VMState(row["state"]),
        state_reason=row["state_reason"],
        mac=row["mac"],
        created_at=row["created_at"],
        last_exit_reason=row["last_exit_reason"],
        restart_count=row["restart_count"],
        exit_code=row["exit_code"],
    )
