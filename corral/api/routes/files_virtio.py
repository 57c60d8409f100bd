"""/v1/vms/{name}/files/virtio: `corral cp` over a virtio-serial port hot-plugged for the copy (corral.vm.data_copy).

The same copies as ``/files`` (the guest agent), many times faster; the guest agent only starts and watches the
guest side.

* ``GET .../files/virtio/status`` — whether a copy can take this channel now (:class:`CopyChannel`): the VM runs,
  its agent answers, its QEMU has the virtio-serial bus. Wakes an idle-suspended VM, as any copy does.
* ``PUT .../files/virtio?path=&kind=file&mode=644&size=N[&mtime=]`` — the body (exactly ``size`` bytes) becomes
  guest file ``path``; ``kind=tar&marker=NAME`` — the body, a tar whose last member is the empty file ``./NAME``,
  becomes the new guest directory ``path``. The guest checks the size or the marker before it renames anything into
  place: a stream cut short leaves nothing.
* ``GET .../files/virtio?path=`` — a file (``X-Corral-Kind: file``, exact ``Content-Length``) or a directory's tar
  (``X-Corral-Kind: tar``, ``X-Corral-Size`` an estimate, chunked), ``X-Corral-Mode`` and ``X-Corral-Mtime`` of the
  source.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from corral.api.deps import Services, services, using, wake
from corral.api.models import CopyChannel, FileInfo
from corral.api.routes.files import OPERATION, GuestPath
from corral.errors import CorralError
from corral.vm.data_copy import DataCopyService

router = APIRouter(prefix="/vms", tags=["files"])
Svc = Annotated[Services, Depends(services)]


def _copies(svc: Services) -> DataCopyService:
    if svc.copies is None:
        raise CorralError("this daemon has no data-port copies")
    return svc.copies


@router.get("/{name}/files/virtio/status", response_model=CopyChannel)
async def status(name: str, svc: Svc) -> CopyChannel:
    await wake(svc, name, OPERATION)
    with using(svc, name):
        available, reason = await _copies(svc).status(name)
    return CopyChannel(available=available, reason=reason)


@router.put("/{name}/files/virtio", response_model=FileInfo)
async def upload(
    name: str, path: GuestPath, request: Request, svc: Svc,
    kind: Literal["file", "tar"] = "file",
    mode: Annotated[str, Query(pattern=r"^[0-7]{1,4}$", description="permission bits, octal")] = "644",
    mtime: Annotated[int | None, Query(ge=0)] = None,
    size: Annotated[int | None, Query(ge=0, description="a file's exact size in bytes")] = None,
    marker: Annotated[str | None, Query(pattern=r"^\.corral-end-[0-9a-f]{16}$",
                                        description="a tree's end member")] = None,
) -> FileInfo:
    await wake(svc, name, OPERATION)
    with using(svc, name):
        st = await _copies(svc).put(name, path, request.stream(), kind=kind, mode=int(mode, 8), mtime=mtime,
                                    size=size, marker=marker)
    return FileInfo(path=st.path, kind=st.kind, size=st.size, mode=st.mode, mtime=st.mtime)


@router.get("/{name}/files/virtio", response_class=StreamingResponse,
            responses={200: {"content": {"application/octet-stream": {}, "application/x-tar": {}}}})
async def download(name: str, path: GuestPath, svc: Svc) -> StreamingResponse:
    await wake(svc, name, OPERATION)
    stack = contextlib.AsyncExitStack()
    stack.enter_context(using(svc, name))
    try:
        opened = await stack.enter_async_context(_copies(svc).open(name, path))
    except BaseException:
        await stack.aclose()
        raise

    async def body() -> AsyncIterator[bytes]:
        async with stack:  # the port goes when the body ends, is aborted, or fails
            async for chunk in opened.chunks:
                yield chunk

    headers = {"X-Corral-Kind": opened.kind, "X-Corral-Mode": f"{opened.mode:o}",
               "X-Corral-Mtime": str(opened.mtime), "X-Corral-Size": str(opened.size)}
    if opened.kind == "file":
        headers["Content-Length"] = str(opened.size)
    return StreamingResponse(body(), headers=headers,
                             media_type="application/x-tar" if opened.kind == "tar" else "application/octet-stream")
