"""The guest channel's protocol: what the host sends (run here by a real /bin/sh reading a socket, as the guest's
listening shell reads its port) and how the answer is read back."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.engine import guest_channel
from corral.engine.guest_channel import GuestChannel
from corral.errors import GuestAgentError, GuestAgentTimeout


def test_quote_survives_the_shell() -> None:
    for arg in ["plain", "with space", "it's", "'", "$HOME `x` \\n", "line\nbreak", ""]:
        out = subprocess.run(["sh", "-c", f"printf %s {guest_channel.quote(arg)}"], capture_output=True,
                             check=True, text=True).stdout
        assert out == arg


def test_parse_output_waits_for_the_marker_line() -> None:
    assert guest_channel.parse_output(b"half a line") is None
    assert guest_channel.parse_output(b"out\ncorral-channel-exit 3") is None  # not a whole line yet
    assert guest_channel.parse_output(b"out\ncorral-channel-exit 3\n") == (3, b"out")
    assert guest_channel.parse_output(b"corral-channel-exit 0\n") == (0, b"")


class ListeningShell:
    """A unix socket server (QEMU's chardev) whose one client is handed to `sh -s`, like the guest's port."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(1)
        self.shell: subprocess.Popen[bytes] | None = None

    def accept_into_shell(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            self.shell = subprocess.Popen(["sh", "-s"], stdin=conn.fileno(), stdout=conn.fileno(),
                                          stderr=conn.fileno(), close_fds=True)

    def close(self) -> None:
        if self.shell is not None and self.shell.poll() is None:
            self.shell.kill()
            self.shell.wait()
        self.server.close()


@pytest.fixture
def listening(tmp_path: Path) -> Iterator[ListeningShell]:
    ls = ListeningShell(tmp_path / "channel.sock")
    yield ls
    ls.close()


async def _connect(listening: ListeningShell) -> GuestChannel:
    chan, _ = await asyncio.gather(GuestChannel.connect(listening.path),
                                   asyncio.to_thread(listening.accept_into_shell))
    return chan


def test_a_script_runs_with_its_arguments_and_reports_its_status(listening: ListeningShell) -> None:
    async def go() -> None:
        chan = await _connect(listening)
        try:
            code, out = await chan.run('echo "one=$1 two=$2"; echo oops >&2; exit 7', ["a b", "it's"], keep=True)
            assert code == 7 and out.splitlines() == [b"one=a b two=it's", b"oops"]
        finally:
            await chan.close()

    asyncio.run(go())


def test_keep_leaves_the_shell_listening_and_the_default_ends_it(listening: ListeningShell) -> None:
    async def go() -> None:
        chan = await _connect(listening)
        try:
            assert await chan.run("x=kept; echo first", [], keep=True) == (0, b"first\n")
            # The script cannot read the rest of the input: its stdin is /dev/null.
            assert await chan.run('read -r line; echo "read=$line $x"', [], keep=True) == (0, b"read= kept\n")
            assert await chan.run("false", []) == (1, b"")
        finally:
            await chan.close()

    asyncio.run(go())
    assert listening.shell is not None and listening.shell.wait(timeout=5) == 1


def test_no_listener_times_out_and_a_missing_socket_is_one_error(listening: ListeningShell, tmp_path: Path) -> None:
    async def go() -> None:
        chan = await GuestChannel.connect(listening.path)  # accepted by the kernel, nobody reads it
        try:
            with pytest.raises(GuestAgentTimeout, match="no answer on the guest channel"):
                await chan.run("true", [], timeout=0.3)
        finally:
            await chan.close()
        with pytest.raises(GuestAgentError, match="cannot connect to the guest channel"):
            await GuestChannel.connect(tmp_path / "missing.sock", timeout=1)

    asyncio.run(go())


def test_end_listener_ends_the_shell(listening: ListeningShell) -> None:
    async def go() -> None:
        chan = await _connect(listening)
        await chan.end_listener()

    asyncio.run(go())
    assert listening.shell is not None and listening.shell.wait(timeout=5) == 0
