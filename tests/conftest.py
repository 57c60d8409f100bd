"""Shared fixtures. Integration tests each get their own Corral home (and daemon) in a short temp dir; every QEMU
they started is killed by pid afterwards, even when the test fails (never by name: other VMs run beside ours)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from corral import paths
from corral.client import Client, start_daemon
from corral.engine import process
from corral.settings import Settings, load_settings
from corral.store.db import Store

ROOT = Path(__file__).resolve().parent.parent
CORRAL = str(Path(sys.executable).parent / "corral")


@dataclass
class CorralEnv:
    """One isolated Corral: its home, settings, API client, and a runner for the real CLI."""

    home: Path
    settings: Settings
    env: dict[str, str]
    _clients: list[Client] = field(default_factory=list)

    @property
    def client(self) -> Client:
        if not self._clients:
            self._clients.append(Client(self.settings.socket))
        return self._clients[0]

    def cli(self, *args: str, input: bytes | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([CORRAL, *args], env=self.env, input=input, capture_output=True, timeout=timeout)
        return subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(errors="replace"),
                                           r.stderr.decode(errors="replace"))

    def start_daemon(self) -> None:
        start_daemon(self.settings, environ=self.env)

    def daemon_pid(self) -> int | None:
        try:
            pid = int((self.home / paths.DAEMON_PID).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if process.is_alive(pid) else None

    def kill_daemon(self, sig: int = signal.SIGKILL) -> None:
        pid = self.daemon_pid()
        assert pid is not None, "corrald is not running"
        os.kill(pid, sig)
        deadline = time.monotonic() + 15
        while process.is_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        for c in self._clients:
            c.close()
        self._clients.clear()

    def qemu_pids(self) -> dict[str, int]:
        """The live QEMU of each VM of this home, found by its UUID in /proc (independent of the daemon)."""
        store = Store(self.settings.database)
        try:
            found = {rec.name: process.find_qemu(rec.id) for rec in store.list_vms()}
        finally:
            store.close()
        return {name: ident.pid for name, ident in found.items() if ident is not None}

    def cleanup(self) -> None:
        for c in self._clients:
            c.close()
        pid = self.daemon_pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        if self.settings.database.exists():
            for qpid in self.qemu_pids().values():
                try:
                    os.kill(qpid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def show(c: CorralEnv, name: str) -> dict[str, Any]:
    """`corral show NAME --json`, which must succeed."""
    r = c.cli("show", name, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def ok(c: CorralEnv, *args: str, timeout: float = 300) -> str:
    """`corral ARGS...`, which must succeed; its stdout."""
    r = c.cli(*args, timeout=timeout)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r.stdout


def guest(c: CorralEnv, name: str, script: str) -> str:
    """The stdout of ``sh -c SCRIPT`` run in the guest by `corral exec`, which must succeed."""
    return ok(c, "exec", name, "--", "sh", "-c", script)


def start_daemon_with(home: CorralEnv, env: dict[str, str]) -> CorralEnv:
    """Start ``home``'s daemon with ``env`` added to its environment (short intervals for a test), tiny built."""
    home.env.update(env)
    home.start_daemon()
    home.client.build_image("tiny")
    return home


def until(what: Callable[[], object], timeout: float, desc: str) -> object:
    """Poll ``what`` until it returns something true (returned), or fail naming ``desc`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if v := what():
            return v
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {desc}")


def make_env(home: Path) -> CorralEnv:
    env = dict(os.environ)
    env["CORRAL_HOME"] = str(home)
    env.setdefault("CORRAL_CACHE", str(Path.home() / ".cache" / "corral"))
    settings = load_settings(env)
    return CorralEnv(home=home, settings=settings, env=env)


@pytest.fixture
def corral_home() -> Iterator[CorralEnv]:
    """A fresh Corral home with no daemon started yet. Short path: unix socket paths are limited to 107 bytes."""
    home = Path(tempfile.mkdtemp(prefix="ch-", dir="/tmp"))
    ce = make_env(home)
    try:
        yield ce
    finally:
        ce.cleanup()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def corral(corral_home: CorralEnv) -> CorralEnv:
    """A running daemon with the tiny image in its store (taken from the shared build cache)."""
    corral_home.start_daemon()
    corral_home.client.build_image("tiny")
    return corral_home


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow tests (debian-12 boots, 50 VMs: a minute or more each) run first, in their order, then the rest: two
    workers share the suite, and a long test handed out last would keep one of them busy alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
