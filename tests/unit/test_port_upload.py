"""The client's side of an upload over a data port (corral.client.port_upload), against a fake port: a unix socket that
records what arrives, and a fake answer. The stream is shut down (not closed) only when whole; a verdict or a
broken answer before that cuts it off."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.api.models import FileInfo, UploadLine
from corral.client import DaemonUnavailable
from corral.client import port_upload as client_files
from corral.engine import data_channel


def test_hello_is_the_engines() -> None:
    assert client_files.HELLO == data_channel.HELLO


class FakePort:
    """A listening unix socket that reads one connection to its end. ``cut``: the client shut down both directions
    (what QEMU's chardev sees as a hang-up: it drops what it has not read), not only its writing side."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.path)
        self.server.listen(1)
        self.data = b""
        self.cut = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        self.server.close()
        with conn:
            try:
                while chunk := conn.recv(1 << 16):
                    self.data += chunk
                conn.send(b"?")  # the way back is open after a clean end of stream
            except OSError:
                self.cut = True


def answer(lines: list[str], delay: float = 0.0) -> Iterator[str]:
    time.sleep(delay)
    yield from lines


def test_a_whole_stream_is_shut_down_and_the_verdict_returned(tmp_path: Path) -> None:
    port = FakePort(tmp_path / "p.sock")
    done = UploadLine(kind="done", file=FileInfo(path="/root/f", kind="file", size=6)).model_dump_json()

    def lines() -> Iterator[str]:
        port.thread.join(5)  # the daemon answers once the guest side read to the end
        yield done

    line = client_files._send(port.path, lines(), [b"abc", b"def"])
    assert line.kind == "done" and line.file is not None and line.file.path == "/root/f"
    assert port.data == b"+abcdef" and not port.cut


def test_an_early_verdict_cuts_a_blocked_sender_off(tmp_path: Path) -> None:
    """The guest side failed before reading (its destination's directory is missing): the port is never read, the
    sender blocks, and the verdict unblocks it."""
    path = tmp_path / "p.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)  # never read
    err = UploadLine(kind="error", status=404, error="NotFound", message="guest directory /x does not exist")

    def body() -> Iterator[bytes]:
        for _ in range(64):
            yield bytes(1 << 20)

    line = client_files._send(str(path), answer([err.model_dump_json()], delay=0.3), body())
    assert line.kind == "error" and line.status == 404
    server.close()


def test_a_broken_answer_is_daemon_unavailable_and_never_a_clean_end(tmp_path: Path) -> None:
    port = FakePort(tmp_path / "p.sock")

    def body() -> Iterator[bytes]:
        yield b"x" * 10
        time.sleep(0.5)  # the answer breaks meanwhile
        yield b"y" * 10

    with pytest.raises(DaemonUnavailable, match="the daemon went away during the copy"):
        client_files._send(port.path, answer([], delay=0.1), body())
    port.thread.join(5)
    assert port.cut and not port.data.endswith(b"y")
