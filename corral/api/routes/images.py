"""/v1/images: list, build and import (streamed progress), remove."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from corral.api.deps import Services, services
from corral.api.models import BuildEvent, ImportOciRequest, ImportRequest
from corral.errors import CorralError
from corral.images.artifacts import Manifest, Progress
from corral.images.builders import get_builder
from corral.vm.arch import Arch, host_arch, image_ref

router = APIRouter(prefix="/images", tags=["images"])
Svc = Annotated[Services, Depends(services)]


@router.get("", response_model=list[Manifest])
async def list_images(svc: Svc) -> list[Manifest]:
    return await asyncio.to_thread(svc.images.list)


@router.get("/{name}", response_model=Manifest)
async def get_image(name: str, svc: Svc, arch: Arch | None = None) -> Manifest:
    """The image ``name`` built for ``arch`` (default: the host's architecture)."""
    return await asyncio.to_thread(svc.images.get, image_ref(name, arch or host_arch()))


def stream_job(job: Callable[[Progress], Manifest], done: Callable[[Manifest], object], what: str) -> StreamingResponse:
    """Run ``job`` (building or importing an image) in a thread, streaming its progress as NDJSON
    :class:`BuildEvent` lines, then ``done`` or ``error``. The job finishes (or fails and cleans up) even if the
    client goes away, so no half-made image is left."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[BuildEvent] = asyncio.Queue()

    def progress(stage: str, n: int, total: int | None) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, BuildEvent(kind="progress", stage=stage, done=n, total=total))

    async def run() -> None:
        try:
            manifest = await asyncio.to_thread(job, progress)
            done(manifest)
            await queue.put(BuildEvent(kind="done", manifest=manifest))
        except CorralError as exc:
            await queue.put(BuildEvent(kind="error", message=exc.message, error=type(exc).__name__))
        except Exception as exc:  # a bug still ends the stream with a readable line
            await queue.put(BuildEvent(kind="error", message=f"{what} failed: {exc}"))

    async def stream() -> AsyncIterator[bytes]:
        task = asyncio.create_task(run())
        try:
            while True:
                ev = await queue.get()
                yield ev.model_dump_json(exclude_none=True).encode() + b"\n"
                if ev.kind != "progress":
                    break
        finally:
            if not task.done():
                await task

    return StreamingResponse(stream(), media_type="application/x-ndjson")


@router.post("/{name}/build")
async def build_image(name: str, svc: Svc, refresh: bool = False, arch: Arch | None = None) -> StreamingResponse:
    """NDJSON stream of :class:`BuildEvent`: progress while the builder runs (in a thread), then ``done``.
    ``arch``: the guest architecture to build for (default: the host's)."""
    target = arch or host_arch()
    get_builder(name).check_arch(target)  # an unknown image (404) or architecture (400) now, not in a 200 stream
    ref = image_ref(name, target)
    return stream_job(
        lambda progress: svc.images.ensure(name, svc.settings.mirror, progress, refresh, target),
        lambda m: svc.vms.event(None, "image", f"image '{ref}' ready", image=ref),
        "image build",
    )


@router.post("/import")
async def import_image(req: ImportRequest, svc: Svc) -> StreamingResponse:
    """NDJSON stream of :class:`BuildEvent`: download/copy, check and convert progress, then ``done``."""
    from corral.images.importer import import_image as run_import

    return stream_job(
        lambda progress: run_import(svc.images, req.source, req.name, req.sha256, req.format, req.firmware, progress),
        lambda m: svc.vms.event(None, "image", f"image '{m.name}' imported from {req.source}", image=m.name),
        "image import",
    )


@router.post("/import-oci")
async def import_oci(req: ImportOciRequest, svc: Svc) -> StreamingResponse:
    """NDJSON stream of :class:`BuildEvent`: copy (skopeo), unpack (umoci), disk, then ``done`` (corral.images.oci)."""
    from corral.images.oci.build import import_oci as run_import

    return stream_job(
        lambda progress: run_import(svc.images, req.ref, req.name, svc.settings.mirror, progress),
        lambda m: svc.vms.event(None, "image", f"image '{m.name}' imported from OCI image {m.source} "
                                f"(sha256:{m.source_sha256[:12]})", image=m.name),
        "OCI image import",
    )


@router.delete("/{name}", status_code=204)
async def remove_image(name: str, svc: Svc, arch: Arch | None = None) -> None:
    """Remove the image ``name`` built for ``arch`` (default: the host's architecture)."""
    ref = image_ref(name, arch or host_arch())
    users = [r.name for r in svc.vms.list() if r.spec.image_ref == ref]
    await asyncio.to_thread(svc.images.remove, ref, users)
    svc.vms.event(None, "image", f"image '{ref}' removed", image=ref)
