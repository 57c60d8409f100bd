"""Live migration's wire models, shared by the API and the source daemon that calls the target (light: no daemon code
behind them)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


def export_key(disk: IncomingDisk) -> str:
    """A disk's NBD export name: ``root``, or ``disk-NAME`` for an extra disk (which may itself be named root)."""
    return "root" if disk.root else f"disk-{disk.name}"


class IncomingDisk(BaseModel):
    """One disk of the arriving VM: made empty on the target, of the same virtual size, and filled by the mirror."""

    root: bool = Field(description="the root disk (a standalone qcow2 on the target: the chain is flattened)")
    name: str = Field(description="an extra disk's name (its serial in the guest); '' for the root disk")
    size: int = Field(gt=0, description="virtual size, bytes")
    format: Literal["qcow2"] = "qcow2"
    port: int | None = Field(default=None, description="an extra disk's hot-plug port: the same on the target, so "
                             "the machine state loads into the same devices")
    limits: dict[str, int] = Field(default_factory=dict, description="an extra disk's I/O limits")
    serial: str = ""


class IncomingRequest(BaseModel):
    """``POST /v1/migrations/incoming``: the VM as the source has it; it keeps its id, name, MAC and spec."""

    spec: dict[str, Any] = Field(description="the VM's spec (VMSpec, as JSON)")
    id: str = Field(description="the VM's UUID")
    mac: str
    created_at: float
    disks: list[IncomingDisk]
    source: str = Field(description="the source host's name (for the event log)")


class IncomingAnswer(BaseModel):
    """Where the source sends the disks (NBD) and the machine state (a migration URI)."""

    vm: str
    nbd_host: str
    nbd_port: int
    exports: list[str] = Field(description="the NBD export names, one per disk (export_key)")
    migrate_uri: str
    psk: str = Field(description="the pre-shared key (hex) both the stream and NBD are encrypted with (TLS-PSK)")


class MigrateRequest(BaseModel):
    """``POST /v1/vms/{name}/migrate``: the target corrald, as `corral login` would reach it."""

    to_url: str = Field(description="https://HOST:PORT of the target corrald (its --listen)")
    token: str = Field(description="a bearer token of an admin of the target")
    cert_pem: str | None = Field(default=None, description="the target's certificate, pinned (PEM)")
    timeout: float = Field(default=600.0, gt=0, le=86400, description="seconds for the disks and the state")


class MigrationResult(BaseModel):
    """What a live migration did."""

    vm: str
    target: str = Field(description="the target's URL")
    seconds: float = Field(description="the whole migration, from the first request to the source's QEMU gone")
    downtime_ms: int = Field(description="the guest's pause at the switch-over (QEMU's query-migrate downtime)")
    ram_bytes: int = Field(description="bytes of machine state sent")
    disk_bytes: int = Field(description="bytes of disk the mirrors copied")
    migrate_ms: int = Field(description="the machine-state stream alone (QEMU's total-time)")
