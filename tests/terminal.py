"""The real CLI on a terminal of its own (a pty), for tests that type at it as a user would (`corral shell`)."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import termios
import time

from tests.conftest import CORRAL


def set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class Pty:
    """The real CLI on a terminal of its own, read and typed at like a user would."""

    def __init__(self, env: dict[str, str], argv: list[str], rows: int, cols: int) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # child: the window size is set before ssh starts and asks for it
            try:
                set_size(0, rows, cols)
                os.execve(CORRAL, [CORRAL, *argv], env)
            finally:
                os._exit(127)
        self.pid, self.fd, self.buf = pid, fd, b""

    def expect(self, needle: bytes, timeout: float = 60.0) -> bytes:
        start = len(self.buf) - len(needle) if len(self.buf) > len(needle) else 0
        deadline = time.monotonic() + timeout
        while needle not in self.buf[start:] and time.monotonic() < deadline:
            if select.select([self.fd], [], [], 0.5)[0]:
                try:
                    self.buf += os.read(self.fd, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
        assert needle in self.buf, self.buf[-800:]
        return self.buf

    def send(self, text: bytes) -> None:
        self.buf = b""
        os.write(self.fd, text)

    def wait(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.pid = 0
                return os.waitstatus_to_exitcode(status)
            if select.select([self.fd], [], [], 0.2)[0]:
                try:
                    self.buf += os.read(self.fd, 4096)
                except OSError:
                    pass
        raise AssertionError(f"the CLI did not exit: {self.buf[-500:]!r}")

    def close(self) -> None:
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except ProcessLookupError:
                pass
        os.close(self.fd)
