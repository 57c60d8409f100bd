"""/v1/vms/{name}/export and /v1/import: routes over corral.portable (NDJSON progress streams)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from corral.api.deps import Services, services
from corral.api.models import ExportRequest, PortableEvent, VMImportRequest
from corral.api.routes.vms import to_info
from corral.api.streams import stream_operation
from corral.errors import InvalidInput

router = APIRouter(tags=["portable"])
Svc = Annotated[Services, Depends(services)]


def _path(raw: str) -> Path:
    path = Path(raw)
    if not path.is_absolute():
        raise InvalidInput(f"path {raw!r} is not absolute: the daemon needs the whole path")
    return path


def _error(message: str, error: str | None) -> PortableEvent:
    return PortableEvent(kind="error", message=message, error=error)


@router.post("/vms/{name}/export")
async def export_vm(name: str, req: ExportRequest, svc: Svc) -> StreamingResponse:
    """NDJSON stream of :class:`PortableEvent`: bytes archived so far, then ``done`` with the archive's size."""
    svc.vms.get(name)
    dest = _path(req.path)
    t0 = time.monotonic()

    async def run(emit: Callable[[PortableEvent], None]) -> PortableEvent:
        res = await svc.portable.export(name, dest, state=req.state,
                                        progress=lambda d, t: emit(PortableEvent(kind="progress", done=d, total=t)))
        return PortableEvent(kind="done", size=res.size, seconds=time.monotonic() - t0,
                             message=f"{res.layers} layer(s), {res.snapshots} snapshot(s)"
                                     + (", machine state" if res.state else ""))

    return stream_operation(f"export-{name}", run, _error)


@router.post("/import")
async def import_vm(req: VMImportRequest, svc: Svc) -> StreamingResponse:
    """NDJSON stream of :class:`PortableEvent`: bytes unpacked and checked so far, then ``done`` with the VM."""
    src = _path(req.path)
    t0 = time.monotonic()

    async def run(emit: Callable[[PortableEvent], None]) -> PortableEvent:
        rec = await svc.portable.import_(src, name=req.name,
                                         progress=lambda d, t: emit(PortableEvent(kind="progress", done=d, total=t)))
        return PortableEvent(kind="done", vm=to_info(svc, rec), seconds=time.monotonic() - t0)

    return stream_operation(f"import-{src.name}", run, _error)
