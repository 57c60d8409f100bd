"""/v1/vms/{name}/files/virtio: `corral cp` over a virtio-serial port hot-plugged for the copy (corral.vm.data_copy).

The same copies as ``/files`` (the guest agent), many times faster; the guest agent only starts and watches the
guest side.

* ``GET .../files/virtio/status`` — whether a copy can take this channel now (:class:`CopyChannel`): the VM runs,
  its agent answers, its QEMU has the virtio-serial bus. Wakes an idle-suspended VM, as any copy does.
* ``POST .../files/virtio/uploads?dest=&source=&kind=file&mode=644&size=N[&mtime=]`` — an upload whose bytes the
  client writes itself (no data in the request): the answer (NDJSON, :class:`UploadLine`) first gives the unix
  socket to connect to (the port's host end: write one ``+``, then exactly ``size`` bytes, then shut down the
  writing side only), then, once the guest side finished, the guest file written. ``dest`` as the user wrote it:
  an existing directory, or one written with a trailing ``/``, receives it as ``source``. ``kind=tar&marker=NAME``: the
  bytes are a tar whose last member is the empty file ``./NAME``, unpacked as a new guest directory. The guest
  checks the size or the marker before it renames anything into place: a stream cut short leaves nothing; so does
  a client that closes this answer early (the port is removed).
* ``GET .../files/virtio?path=`` — a file (``X-Corral-Kind: file``, exact ``Content-Length``) or a directory's tar
  (``X-Corral-Kind: tar``, ``X-Corral-Size`` an estimate, chunked), ``X-Corral-Mode`` and ``X-Corral-Mtime`` of the
  source.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse

from corral.api.deps import Services, services, using, wake
from corral.api.errors import status_for
from corral.api.models import CopyChannel, FileInfo, UploadLine
from corral.api.routes.files import OPERATION, GuestPath
from corral.errors import CorralError
from corral.vm.data_copy import DataCopyService

router = APIRouter(prefix="/vms", tags=["files"])
Svc = Annotated[Services, Depends(services)]


def _copies(svc: Services) -> DataCopyService:
    if svc.copies is None:
        raise CorralError("this daemon has no data-port copies")
    return svc.copies


def _line(line: UploadLine) -> bytes:
    return line.model_dump_json(exclude_none=True).encode() + b"\n"


@router.get("/{name}/files/virtio/status", response_model=CopyChannel)
async def status(name: str, svc: Svc) -> CopyChannel:
    await wake(svc, name, OPERATION)
    with using(svc, name):
        available, reason = await _copies(svc).status(name)
    return CopyChannel(available=available, reason=reason)


@router.post("/{name}/files/virtio/uploads", response_class=StreamingResponse,
             responses={200: {"content": {"application/x-ndjson": {}}}})
async def upload(
    name: str, dest: GuestPath, svc: Svc,
    source: Annotated[str, Query(pattern=r"^[^/]+$", description="the source's file name")],
    kind: Literal["file", "tar"] = "file",
    mode: Annotated[str, Query(pattern=r"^[0-7]{1,4}$", description="permission bits, octal")] = "644",
    mtime: Annotated[int | None, Query(ge=0)] = None,
    size: Annotated[int | None, Query(ge=0, description="a file's exact size in bytes")] = None,
    marker: Annotated[str | None, Query(pattern=r"^\.corral-end-[0-9a-f]{16}$",
                                        description="a tree's end member")] = None,
) -> StreamingResponse:
    await wake(svc, name, OPERATION)
    stack = contextlib.AsyncExitStack()
    stack.enter_context(using(svc, name))
    try:
        up = await stack.enter_async_context(_copies(svc).upload(
            name, dest, source, kind=kind, mode=int(mode, 8), mtime=mtime, size=size, marker=marker))
    except BaseException:
        await stack.aclose()
        raise

    async def stream() -> AsyncIterator[bytes]:
        async with stack:  # the port goes when the guest side finished, or the client went away
            yield _line(UploadLine(kind="socket", socket=up.socket, port=up.port))
            try:
                st = await up.finish()
                last = UploadLine(kind="done", file=FileInfo(path=st.path, kind=st.kind, size=st.size, mode=st.mode,
                                                             mtime=st.mtime))
            except CorralError as exc:
                last = UploadLine(kind="error", message=exc.message, error=type(exc).__name__, status=status_for(exc))
        yield _line(last)  # once the port is gone: the client then finds nothing left plugged

    return StreamingResponse(stream(), media_type="application/x-ndjson")


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
