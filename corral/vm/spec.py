"""The VM spec: the one model of what a VM is, used by the API, the CLI, the store (and later the fleet file).

Validated at the boundary: a spec that constructs is well-formed. What depends on the host (the image exists, the
memory fits, the name is free) is checked by :class:`corral.vm.service.VMService`, which knows the host.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from corral.vm.sizes import parse_size

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,61}[a-z0-9]$|^[a-z]$")

MIN_MEMORY_MIB = 64
MAX_MEMORY_MIB = 1 << 20  # 1 TiB
MAX_VCPUS = 255
MAX_DISK_BYTES = 16 << 40  # 16 TiB


class RestartPolicy(StrEnum):
    """What the daemon does when a VM stops without being asked to (Docker's names)."""

    NEVER = "never"
    ON_FAILURE = "on-failure"  # QEMU died, or the guest panicked
    ALWAYS = "always"  # also when the guest powered itself off


def _memory_mib(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return parse_size(v, default_unit="M") // (1 << 20)
        except ValueError as exc:
            raise ValueError(str(exc)) from exc
    return v


def _disk_bytes(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return parse_size(v, default_unit="G")
        except ValueError as exc:
            raise ValueError(str(exc)) from exc
    return v


MemoryMiB = Annotated[int, BeforeValidator(_memory_mib)]
DiskBytes = Annotated[int, BeforeValidator(_disk_bytes)]


class VMSpec(BaseModel):
    """What a VM is. Sizes accept numbers or human strings: memory "512M" or 512 (MiB), disk "10G" or bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="DNS label: lower-case letters, digits and '-', 1-63 characters")
    image: str = Field(default="tiny", description="an image in the store: `corral images ls`")
    vcpus: int = Field(default=1, ge=1, le=MAX_VCPUS)
    memory: MemoryMiB = Field(default=256, ge=MIN_MEMORY_MIB, le=MAX_MEMORY_MIB, description="MiB")
    disk: DiskBytes | None = Field(
        default=None, ge=1 << 20, le=MAX_DISK_BYTES, description="root disk bytes; default: the image's size"
    )
    restart: RestartPolicy = RestartPolicy.NEVER

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(
                f"{v!r} is not a valid VM name: use 1-63 lower-case letters, digits and '-', "
                "starting with a letter and not ending with '-'"
            )
        return v

    @field_validator("image")
    @classmethod
    def _image(cls, v: str) -> str:
        if not re.match(r"^[a-z0-9][a-z0-9._-]{0,62}$", v):
            raise ValueError(f"{v!r} is not a valid image name")
        return v
