"""/v1/status and /v1/events: the daemon itself."""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from functools import lru_cache
from typing import Annotated

from fastapi import APIRouter, Depends

from corral import __version__
from corral.api.deps import Services, services
from corral.api.models import DaemonStatus, EventInfo

router = APIRouter(tags=["daemon"])
Svc = Annotated[Services, Depends(services)]


@lru_cache(maxsize=4)
def qemu_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    return out.splitlines()[0] if out else "unknown"


@router.get("/status", response_model=DaemonStatus)
async def status(svc: Svc) -> DaemonStatus:
    accel = await svc.vms.accelerator()
    return DaemonStatus(
        version=__version__, pid=os.getpid(), home=str(svc.settings.home), socket=str(svc.settings.socket),
        accel=accel.name if accel else None,
        accel_reason=accel.reason if accel else "not probed yet: probed when the first VM starts",
        qemu=qemu_version(svc.settings.qemu_binary),
        vms=dict(Counter(r.state.value for r in svc.vms.list())),
    )


@router.get("/events", response_model=list[EventInfo])
async def events(svc: Svc, after: int = 0, vm: str | None = None, limit: int = 1000) -> list[EventInfo]:
    return [EventInfo(**e.__dict__) for e in svc.store.events(vm=vm, after=after, limit=limit)]
