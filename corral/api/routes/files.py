"""/v1/vms/{name}/files: copy files and directory trees into and out of a running guest, streamed.

* ``GET .../files/stat?path=`` — what a guest path is (:class:`FileInfo`), so a client can resolve ``cp`` targets
  and size its progress bar before any byte moves.
* ``GET .../files?path=`` — the content: the file itself, or for a directory a tar of its content (members
  ``./...``). ``X-Corral-Kind`` says which (``file`` or ``tar``), ``X-Corral-Mode`` (octal) and ``X-Corral-Mtime``
  describe the source, ``Content-Length`` is exact.
* ``PUT .../files?path=&kind=file|tar&mode=644[&mtime=]`` — the request body, streamed, becomes guest file
  ``path`` (replaced atomically) or, with ``kind=tar``, the new guest directory ``path``.

Errors are raised before the response starts (so they carry a status and a one-line message); a stream broken
halfway leaves no temporary behind in the guest.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from corral.api.deps import Services, services, using, wake
from corral.api.models import FileInfo
from corral.engine.guest_agent import GuestAgent
from corral.guest import files

router = APIRouter(prefix="/vms", tags=["files"])
Svc = Annotated[Services, Depends(services)]
GuestPath = Annotated[str, Query(min_length=1, description="guest path; relative paths start at /root")]
OPERATION = "copy files to or from"


def _info(st: files.GuestStat) -> FileInfo:
    return FileInfo(path=st.path, kind=st.kind, size=st.size, mode=st.mode, mtime=st.mtime)


async def _agent(svc: Services, name: str) -> GuestAgent:
    await wake(svc, name, OPERATION)  # a VM suspended by idle control resumes first
    with using(svc, name):
        return await svc.vms.agent(name, OPERATION)


@router.get("/{name}/files/stat", response_model=FileInfo)
async def stat_file(name: str, path: GuestPath, svc: Svc) -> FileInfo:
    agent = await _agent(svc, name)
    return _info((await files.stat(agent, files.guest_path(path)))[0])


@router.get("/{name}/files", response_class=StreamingResponse,
            responses={200: {"content": {"application/octet-stream": {}, "application/x-tar": {}}}})
async def download(name: str, path: GuestPath, svc: Svc) -> StreamingResponse:
    agent = await _agent(svc, name)
    st = await files.source(agent, files.guest_path(path))
    packed = await files.pack_tree(agent, st.path) if st.kind == "dir" else None
    try:
        handle = await files.open_read(agent, packed.archive if packed else st.path)
    except BaseException:
        if packed:
            files.background(files.discard(agent, packed))
        raise

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in files.read_chunks(agent, handle):
                yield chunk
        finally:
            if packed:  # in a task: an aborted response cancels this generator
                files.background(files.discard(agent, packed))

    headers = {
        "Content-Length": str(packed.size if packed else st.size),
        "X-Corral-Kind": "tar" if packed else "file",
        "X-Corral-Mode": f"{st.mode:o}",
        "X-Corral-Mtime": str(st.mtime),
    }
    return StreamingResponse(body(), headers=headers,
                             media_type="application/x-tar" if packed else "application/octet-stream")


@router.put("/{name}/files", response_model=FileInfo)
async def upload(
    name: str, path: GuestPath, request: Request, svc: Svc,
    kind: Literal["file", "tar"] = "file",
    mode: Annotated[str, Query(pattern=r"^[0-7]{1,4}$", description="permission bits, octal")] = "644",
    mtime: Annotated[int | None, Query(ge=0)] = None,
) -> FileInfo:
    agent = await _agent(svc, name)
    dest = files.guest_path(path)
    if kind == "tar":
        st = await files.write_tree(agent, dest, request.stream(), mode=int(mode, 8))
    else:
        st = await files.write_file(agent, dest, request.stream(), mode=int(mode, 8), mtime=mtime)
    return _info(st)
