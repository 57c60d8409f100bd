"""Finding and starting corrald: is it answering on its socket, the command that runs it, starting it detached."""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import sys
import time

from corral import paths
from corral.api.models import (
    API_PREFIX,
)
from corral.client.base import DaemonUnavailable
from corral.detach import spawn_detached
from corral.settings import Settings


def daemon_running(settings: Settings, timeout: float = 2.0) -> bool:
    """Is a daemon answering on the socket? A stale socket file (the daemon was killed) is not one."""
    if not settings.socket.exists():
        return False
    # A plain socket, not httpx: httpx's unix transport leaks its socket when a connect is refused or a read
    # times out (a stale socket after a killed daemon; a daemon still re-attaching its VMs).
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(timeout)
    try:
        probe.connect(str(settings.socket))
        probe.sendall(f"GET {API_PREFIX}/status HTTP/1.0\r\nHost: corral\r\n\r\n".encode())
        return probe.recv(12).startswith(b"HTTP/1.1 200")
    except OSError:
        return False
    finally:
        probe.close()


DAEMON_PREFIX_ENV = "CORRAL_DAEMON_PREFIX"


def daemon_prefix(env: dict[str, str]) -> list[str]:
    """The command corrald is started under, from ``$CORRAL_DAEMON_PREFIX`` (unset: none). For tests, e.g.
    ``ip netns exec NS`` starts it inside a network namespace; the prefix must exec the daemon (same pid)."""
    prefix = shlex.split(env.get(DAEMON_PREFIX_ENV, ""))
    if not prefix:
        return []
    found = shutil.which(prefix[0], path=env.get("PATH"))
    if found is None:
        raise DaemonUnavailable(f"{DAEMON_PREFIX_ENV}: command {prefix[0]!r} not found")
    return [found, *prefix[1:]]


def start_daemon(settings: Settings, timeout: float = 30.0, environ: dict[str, str] | None = None) -> None:
    """Start corrald detached (own session, output to corrald.log) and wait until it answers.

    The daemon reads its settings from ``environ`` (default: this process's environment) with the home and cache
    of ``settings``."""
    settings.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    log = settings.home / paths.DAEMON_LOG
    log.touch(mode=0o600)
    offset = log.stat().st_size
    env = dict(os.environ if environ is None else environ, CORRAL_HOME=str(settings.home),
               CORRAL_CACHE=str(settings.cache))
    spawn_detached([*daemon_prefix(env), sys.executable, "-m", "corral.daemon.main"], log, env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon_running(settings):
            return
        with open(log, "rb") as f:
            f.seek(offset)
            failed = [ln for ln in f.read().decode(errors="replace").splitlines() if ln.startswith("corrald: ")]
        if failed and "already running" not in failed[-1]:
            raise DaemonUnavailable(failed[-1])
        time.sleep(0.05)
    raise DaemonUnavailable(f"corrald did not answer within {timeout:.0f}s: see {log}")
