"""Starting a long-lived helper process detached from its starter: corrald (started by the CLI) and the private
network switches (started by the daemon). QEMU is started by the engine (corral/engine/process.py) instead, as the
daemon's child, so that it gets QEMU's exit status."""

from __future__ import annotations

import os
from pathlib import Path


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
