"""Starting a long-lived helper process detached from its starter: corrald (started by the CLI) and the private
network switches and sandbox sinks (started by the daemon), and the process side those two share
(:class:`DatagramService`). QEMU is started by the engine (corral/engine/process.py) instead, as the
daemon's child, so that it gets QEMU's exit status."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

from corral.engine import process


def spawn_detached(argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
    """Double-fork ``argv`` into its own session: it is never the caller's child, so it leaves no zombie behind
    and outlives the caller. Its output is appended to ``log``; it inherits no descriptor but 0, 1 and 2."""
    environ = dict(os.environ if env is None else env)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            null = os.open(os.devnull, os.O_RDONLY)
            out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.dup2(null, 0)
            os.dup2(out, 1)
            os.dup2(out, 2)
            os.closerange(3, os.sysconf("SC_OPEN_MAX"))
            os.execve(argv[0], argv, environ)
        finally:
            os._exit(127)
    os.waitpid(pid, 0)


class DatagramService:
    """The process side of a detached datagram helper (the network switch, the sandbox's sink): its private
    socket, its pidfile, its stop flag, and the clean-up, so each helper holds only its own loop.

    Used as a context manager in the helper process: on entry the socket is bound under umask 077 (mode 0600 from
    the first moment), non-blocking, and the pidfile names this pid and its start time (written whole, by rename);
    SIGTERM and SIGINT set :attr:`stop`. On exit the socket file is removed only if it is still ours (same inode)
    and the pidfile only if it still names us: a newer helper may have taken the name meanwhile.
    """

    def __init__(self, sock_path: Path, pidfile: Path) -> None:
        self.sock_path, self.pidfile = sock_path, pidfile
        self.stop = False
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.inode = 0

    def __enter__(self) -> DatagramService:
        self.sock_path.unlink(missing_ok=True)
        old = os.umask(0o077)
        try:
            self.sock.bind(str(self.sock_path))
        finally:
            os.umask(old)
        self.sock.setblocking(False)
        self.inode = self.sock_path.stat().st_ino
        tmp = self.pidfile.with_suffix(".tmp")
        tmp.write_text(f"{os.getpid()} {process.start_ticks(os.getpid())}\n")
        tmp.replace(self.pidfile)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        return self

    def _on_term(self, *_: object) -> None:
        self.stop = True

    def still_ours(self) -> bool:
        """False once the socket file was removed or replaced (its network, or the whole home, was deleted)."""
        try:
            return self.sock_path.stat().st_ino == self.inode
        except FileNotFoundError:
            return False

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
        with contextlib.suppress(OSError):
            if self.still_ours():
                self.sock_path.unlink()
        with contextlib.suppress(OSError):
            if self.pidfile.read_text().split()[0] == str(os.getpid()):
                self.pidfile.unlink()


def start_and_wait(argv: list[str], log: Path, pidfile: Path, running: Callable[[], process.ProcessIdentity | None],
                   what: str, timeout: float = 10.0) -> int:
    """Start a detached helper (:func:`spawn_detached`) and wait until ``running()`` sees it serve; its pid."""
    pidfile.unlink(missing_ok=True)
    spawn_detached(argv, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ident = running()
        if ident is not None:
            return ident.pid
        time.sleep(0.02)
    raise OSError(f"{what} did not start: see {log}")
