"""What an image builder hands to the image store: the contract between ``tiny``/``debian12`` and ``store``."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from corral.images.oci.layout import OciProcess


def sha256_file(path: Path) -> str:
    """The SHA256 of a file, read in 1 MiB chunks: image disks, packages and downloads are all checked this way."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


#: How a builder or importer reports progress: (stage, done, total or None). Called from a worker thread.
Progress = Callable[[str, int, int | None], None]


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
    kernel_cmdline: str = Field(default="", description="appended to -append; the root device is /dev/vda")
    build_date: str = Field(description="ISO 8601, UTC")
    builder: str = Field(description="tiny or debian12, and its version; 'import' for images from outside")
    mirror: str = ""
    suite: str = ""
    packages: list[SourcePackage] = Field(default_factory=list)
    boot: Literal["kernel", "disk"] = Field(
        default="kernel", description="kernel: vmlinuz + initrd.img beside the disk; disk: the disk boots itself"
    )
    firmware: Literal["bios", "uefi"] = Field(default="bios", description="for boot=disk: SeaBIOS or OVMF")
    source: str = Field(default="", description="for imported images: the file, URL or catalog entry")
    source_sha256: str = Field(default="", description="for imported images: SHA256 of what was imported (an OCI "
                               "image's manifest digest)")
    oci: OciProcess | None = Field(default=None, description="an OCI image's main process (entrypoint, cmd, env, "
                                   "workdir, user): run by Corral's init beside the guest agent")


class BuiltImage(BaseModel):
    """Files a builder made in its work directory, not yet in the store."""

    name: str
    arch: str = "x86_64"
    kernel: Path
    initrd: Path
    disk: Path  # qcow2
    kernel_cmdline: str
    builder: str
    mirror: str
    suite: str
    packages: list[SourcePackage]
