"""The balloon's wire models (shared by the API and the client; light: no daemon code behind them)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class BalloonStatus(BaseModel):
    """A running ``--balloon`` VM's memory, bytes (`corral show`, ``GET /v1/vms/{name}/balloon``)."""

    memory: int = Field(description="the VM's memory (its spec): the balloon's size when empty")
    size: int = Field(description="the memory the guest has now: `memory` less what is in the balloon "
                      "(QMP query-balloon's `actual`)")
    target: int | None = Field(default=None, description="the last target set with `corral balloon` for this "
                               "QEMU; null: none (all of `memory`)")
    guest_total: int | None = Field(default=None, description="the guest's MemTotal, from its balloon driver")
    guest_free: int | None = Field(default=None, description="the guest's MemFree")
    guest_available: int | None = Field(default=None, description="the guest's MemAvailable")
    stats_age: float | None = Field(default=None, description="seconds since the guest last sent its statistics "
                                    "(every few seconds while its driver runs); null: never")


class BalloonRequest(BaseModel):
    """``POST /v1/vms/{name}/balloon``: the memory the guest should have, e.g. ``"96M"`` or bytes."""

    target: str | int = Field(description="a size, '96M', '1G' (no unit: MiB), or bytes as an integer")
