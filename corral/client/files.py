"""Files in a guest: stat, upload and download through the daemon (a port upload: corral.client.port_upload)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from corral.api.models import (
    CopyChannel,
    FileInfo,
)
from corral.client.base import Core, DaemonUnavailable, Download


class FileCalls(Core):
    """Files in a guest: stat, upload and download through the daemon (a port upload: corral.client.port_upload)."""

    # ------------------------------------------------------------------------------------------------- files --
    def file_stat(self, name: str, path: str) -> FileInfo:
        """What a guest path is (``kind`` "missing" when it does not exist)."""
        return FileInfo.model_validate(self._req("GET", f"/vms/{name}/files/stat", params={"path": path}).json())

    def upload(self, name: str, path: str, body: Iterable[bytes], *, kind: str = "file", mode: int = 0o644,
               mtime: int | None = None) -> FileInfo:
        """Stream ``body`` (read lazily, chunk by chunk) through the guest agent into guest file ``path``, or with
        ``kind="tar"`` unpack it as the new guest directory ``path`` (over a virtio-serial port:
        corral.client.port_upload)."""
        params: dict[str, Any] = {"path": path, "kind": kind, "mode": f"{mode & 0o7777:o}"}
        if mtime is not None:
            params["mtime"] = mtime
        return FileInfo.model_validate(self._req("PUT", f"/vms/{name}/files", params=params, content=body).json())

    def virtio_status(self, name: str) -> CopyChannel:
        """Can a copy with VM ``name`` go over a virtio-serial port now (wakes an idle-suspended VM)?"""
        return CopyChannel.model_validate(self._req("GET", f"/vms/{name}/files/virtio/status").json())

    @contextmanager
    def download(self, name: str, path: str, chunk_size: int = 1 << 20, *, virtio: bool = False) -> Iterator[Download]:
        """Open a guest file or directory (as a tar) for streaming; errors come before the first byte. ``virtio``:
        over a hot-plugged virtio-serial port (a tree's ``size`` is then an estimate)."""
        route = f"/vms/{name}/files/virtio" if virtio else f"/vms/{name}/files"
        try:
            with self._http.stream("GET", route, params={"path": path}) as r:
                if r.status_code >= 400:
                    r.read()
                    self._check(r)
                yield Download(kind=r.headers.get("x-corral-kind", "file"),
                               size=int(r.headers.get("x-corral-size") or r.headers.get("content-length", 0)),
                               mode=int(r.headers.get("x-corral-mode", "644"), 8),
                               mtime=int(r.headers.get("x-corral-mtime", 0)),
                               chunks=r.iter_raw(chunk_size))
        except httpx.TransportError as exc:
            raise DaemonUnavailable(f"the copy from '{name}' was interrupted: {exc}") from exc
