"""The wire models of shared folders, shared by the API and the client (re-exported by corral.api.models)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from corral.vm.spec import Mount


class MountCreate(BaseModel):
    """A folder to share (the CLI parses HOST[:GUEST][:ro|rw] into it)."""

    model_config = ConfigDict(extra="forbid")

    mount: Mount


class MountInfo(BaseModel):
    """A shared folder of a VM and, when the VM runs, whether its guest has it mounted."""

    host: str
    guest: str
    read_only: bool
    slot: int | None = Field(default=None, description="its slot in the running QEMU (tag corral<slot>)")
    state: Literal["mounted", "not mounted", "unknown", "stopped"]
