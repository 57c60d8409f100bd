"""Wire models of extra disks (re-exported by corral.api.models: shared by the server and the client)."""

from __future__ import annotations

from pydantic import BaseModel, Field

SizeText = int | str  # bytes, or a human size: "10G"


class DiskLimits(BaseModel):
    """I/O limits per second; a field left out keeps its value, 0 removes the limit. Sizes accept "1M"."""

    iops: int | None = Field(default=None, ge=0)
    read_iops: int | None = Field(default=None, ge=0)
    write_iops: int | None = Field(default=None, ge=0)
    bps: SizeText | None = Field(default=None, description="bytes per second")
    read_bps: SizeText | None = None
    write_bps: SizeText | None = None
    clear: bool = Field(default=False, description="remove every limit first")


class DiskCreate(DiskLimits):
    name: str = Field(examples=["data"])
    size: SizeText = Field(examples=["10G"])


class DiskResize(BaseModel):
    size: SizeText = Field(examples=["20G"], description="the new size: larger than the current one")


class ExtraDiskInfo(BaseModel):
    """One extra disk of a VM."""

    vm: str
    name: str
    file: str
    format: str = "qcow2"
    size: int = Field(description="virtual size, bytes")
    serial: str = Field(description="what the guest sees: /dev/disk/by-id/virtio-SERIAL, /sys/block/vdX/serial")
    attached: bool
    port: int | None = Field(default=None, description="the hot-plug port it sits in while attached")
    limits: dict[str, int] = Field(default_factory=dict, description="QEMU throttle-group fields that are set")
    created_at: float


class ImageCheckInfo(BaseModel):
    """What `qemu-img check` found (and repaired) in one image."""

    file: str
    corruptions: int = 0
    leaks: int = 0
    leaks_fixed: int = 0
    corruptions_fixed: int = 0
    error: str = ""
