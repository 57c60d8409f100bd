"""What an image builder hands to the image store: the contract between ``tiny``/``debian12`` and ``store``."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field


class SourcePackage(BaseModel):
    """One Debian package that went into an image."""

    name: str
    version: str
    arch: str
    sha256: str


class Manifest(BaseModel):
    """``manifest.json`` in an image directory: what the image is and what it was made from."""

    name: str
    arch: str = "x86_64"
    disk_format: str = "qcow2"
    disk_sha256: str
    disk_virtual_size: int = Field(description="bytes; a VM's disk may be larger, never smaller")
    size: int = Field(description="bytes on the host: kernel + initrd + disk")
    kernel_cmdline: str = Field(description="appended to -append; the root device is /dev/vda")
    build_date: str = Field(description="ISO 8601, UTC")
    builder: str = Field(description="tiny or debian12, and its version")
    mirror: str
    suite: str
    packages: list[SourcePackage]


class BuiltImage(BaseModel):
    """Files a builder made in its work directory, not yet in the store."""

    name: str
    kernel: Path
    initrd: Path
    disk: Path  # qcow2
    kernel_cmdline: str
    builder: str
    mirror: str
    suite: str
    packages: list[SourcePackage]
