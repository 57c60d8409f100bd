"""The client's side of a `corral cp` upload over a virtio-serial port: it writes the bytes into the port's socket
itself, so they never pass through the daemon's Python (on a 2-core host, 64 MiB went at 25 MiB/s through the
daemon, at 35 written by the client: bench/ section cp_throughput).

The protocol (``POST /v1/vms/NAME/files/virtio/uploads``, corral.api.routes.files_virtio): the daemon plugs the
port, starts the guest side and answers with the port's unix socket (in the VM's private directory: same user);
the client connects, writes :data:`HELLO` and the bytes, then shuts down its *writing side only* (QEMU drops what
the guest has not read yet when the peer closes), and reads the answer's last line: the guest side's verdict, sent
once the daemon removed the port.

What holds after a failure: the client never lets the guest side see a whole stream unless it sent one. When the
answer breaks (the daemon died) or reports an error before the bytes are all sent, the socket is cut off (QEMU
drops the connection: the guest side sees its stream end short and removes its temporary); when the client itself
fails or is interrupted, it closes the socket without the shutdown first, for the same effect.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterable
from typing import Any

import httpx

from corral.api.models import FileInfo, UploadLine
from corral.client import APIError, Client, DaemonUnavailable

#: The byte that tells the guest side the host end is connected (corral.engine.data_channel.HELLO; a unit test
#: checks they are the same: importing the engine would load QMP into every `corral` command).
HELLO = b"+"
#: How long connecting to the port's socket may take.
CONNECT_TIMEOUT = 10.0


class PortRefused(APIError):
    """The daemon would not plug a port for the upload (the VM is not running, ...): no byte moved."""


class _Verdict:
    """Reads the answer's remaining lines in a thread: the guest side's verdict, or the answer breaking. Either
    before the client has sent everything cuts the socket off, so a blocked write returns and nothing whole
    reaches the guest."""

    def __init__(self, lines: Any, sock: socket.socket) -> None:
        self.lines, self.sock = lines, sock
        self.line: UploadLine | None = None
        self.lost: str | None = None
        self.sent = False
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, name="corral-cp-verdict", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for raw in self.lines:
                if raw.strip():
                    self.line = UploadLine.model_validate(json.loads(raw))
                    break
            else:
                self.lost = "the daemon's answer ended without a result"
        except (httpx.HTTPError, ValueError) as exc:
            self.lost = str(exc) or type(exc).__name__
        with self._lock:
            if not self.sent:
                self.cut()

    def cut(self) -> None:
        """End the connection without a clean end of stream (whatever the guest has not read is dropped)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def finished_sending(self) -> bool:
        """Mark the stream whole; False if the verdict came (or the answer broke) first: it was cut off."""
        with self._lock:
            if self.line is not None or self.lost is not None:
                return False
            self.sent = True
            return True


def upload(client: Client, vm: str, dest: str, source: str, body: Iterable[bytes], *, kind: str, mode: int,
           mtime: int | None = None, size: int | None = None, marker: str | None = None) -> FileInfo:
    """Stream ``body`` into guest file ``dest`` (exactly ``size`` bytes), or with ``kind="tar"`` unpack it (a tar
    ending with the empty member ``marker``) as a new guest directory; ``dest`` as the user wrote it (an existing
    directory, or one with a trailing /, receives ``source``). The file or directory written. APIError before any
    byte moved if the port cannot be used (the VM is not running, ...); after, the guest side's error."""
    params: dict[str, Any] = {"dest": dest, "source": source, "kind": kind, "mode": f"{mode & 0o7777:o}"}
    for key, value in (("mtime", mtime), ("size", size), ("marker", marker)):
        if value is not None:
            params[key] = value
    timeout = httpx.Timeout(client.timeout, connect=5.0, read=None)  # the verdict comes when the copy is done
    try:
        with client.http.stream("POST", f"/vms/{vm}/files/virtio/uploads", params=params, timeout=timeout) as r:
            if r.status_code >= 400:
                r.read()
                try:
                    client.check(r)
                except APIError as exc:
                    raise PortRefused(exc.status, exc.error, exc.message) from None
            lines = r.iter_lines()
            first = UploadLine.model_validate(json.loads(next(line for line in lines if line.strip())))
            assert first.kind == "socket" and first.socket, first
            line = _send(first.socket, lines, body)
    except httpx.TransportError as exc:
        raise DaemonUnavailable(f"lost the connection to corrald at {client.socket}: {exc}") from exc
    if line.kind == "error":
        raise APIError(line.status or 502, line.error or "EngineError", line.message or "the copy failed")
    assert line.file is not None, line
    return line.file


def _send(path: str, lines: Any, body: Iterable[bytes]) -> UploadLine:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect(path)
        except OSError as exc:
            raise DaemonUnavailable(f"cannot connect to the copy's data port at {path}: {exc}") from exc
        sock.settimeout(None)
        verdict = _Verdict(lines, sock)
        try:
            sock.sendall(HELLO)
            for chunk in body:
                sock.sendall(chunk)
        except OSError:
            pass  # cut off: the verdict says why
        if verdict.finished_sending():
            sock.shutdown(socket.SHUT_WR)
        verdict.thread.join()
    except BaseException:
        sock.close()  # before the answer: the guest side sees a short stream
        raise
    sock.close()
    if verdict.line is None:
        raise DaemonUnavailable(f"the daemon went away during the copy: {verdict.lost}")
    return verdict.line
