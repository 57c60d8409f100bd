"""corrald SIGKILLed from outside at moments no fault point names, in the middle of long operations on a running
tiny VM, as a user's `kill -9` or an OOM kill would: the case reported by a new user (a whole-machine snapshot, a
full clone and a backup, each killed 0.7 s in) first, then each operation (those three, template create, export,
import, backup restore and disk add) at a few more delays. After each kill
the daemon is started again and everything in tests/faults/invariants.py must hold, whichever way the operation
went: finished before the kill, or finished or rolled back by the restarted daemon."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections.abc import Callable

import pytest

from corral.store.db import Store
from tests.conftest import CORRAL, CorralEnv, ok
from tests.faults.invariants import check_after_restart, wait_dead

pytestmark = pytest.mark.vm

OPERATIONS: dict[str, Callable[[CorralEnv, int], tuple[str, ...]]] = {
    "snapshot": lambda c, i: ("snapshot", "create", "f", f"s{i}", "--memory"),
    "clone": lambda c, i: ("clone", "f", f"c{i}", "--full"),
    "backup": lambda c, i: ("backup", "create", "f"),
    "template": lambda c, i: ("template", "create", f"t{i}", "--from", "f"),
    "export": lambda c, i: ("export", "f", f"{c.home}/e{i}.tar.gz"),
    "import": lambda c, i: ("import", f"{c.home}/base.tar.gz", "--name", f"i{i}"),
    "restore": lambda c, i: ("backup", "restore", c.client.list_backups(vm="f")[0].id, "--to", f"r{i}"),
    "disk": lambda c, i: ("disk", "add", "f", f"d{i}", "--size", "64M"),
}
#: What an operation needs first (made once, before the kills).
SETUP: dict[str, tuple[str, ...]] = {
    "import": ("export", "f", "{home}/base.tar.gz"),
    "restore": ("backup", "create", "f"),
}


def _journaled(c: CorralEnv) -> bool:
    s = Store(c.settings.database)
    try:
        return bool(s.list_operations())
    finally:
        s.close()


def kill_during(c: CorralEnv, args: tuple[str, ...], delay: float) -> int:
    """Run the CLI command, SIGKILL corrald ``delay`` s after the daemon began the operation (its journal row is
    there: the CLI's own start-up, slow on a busy host, does not count), and return the command's exit code."""
    proc = subprocess.Popen([CORRAL, *args], env=c.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not _journaled(c) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(delay)
    pid = c.daemon_pid()
    if pid is not None:
        os.kill(pid, signal.SIGKILL)
    code = proc.wait(timeout=120)
    wait_dead(c)
    return code


def _running_f(c: CorralEnv) -> None:
    ok(c, "start", "f")
    ok(c, "wait", "f", "--ready", "--timeout", "120")


def _prepare(c: CorralEnv, op: str) -> None:
    ok(c, "launch", "f", "--memory", "256M")
    if op in SETUP:
        ok(c, *(a.replace("{home}", str(c.home)) for a in SETUP[op]), timeout=600)


@pytest.mark.slow
def test_reported_case_snapshot_clone_backup_killed_07s_in(corral: CorralEnv) -> None:
    ok(corral, "launch", "f", "--memory", "256M")
    for i, op in enumerate(("snapshot", "clone", "backup")):
        kill_during(corral, OPERATIONS[op](corral, i), 0.7)
        check_after_restart(corral)
        _running_f(corral)


@pytest.mark.soak
@pytest.mark.parametrize("op", sorted(OPERATIONS))
def test_killed_at_random_moments(corral: CorralEnv, op: str) -> None:
    rng = random.Random(f"corral-{op}")  # the same moments every run: a failure can be replayed
    _prepare(corral, op)
    for i in range(3):
        kill_during(corral, OPERATIONS[op](corral, i), rng.uniform(0.05, 2.5))
        check_after_restart(corral)
        _running_f(corral)


@pytest.mark.soak
@pytest.mark.parametrize("op", sorted(OPERATIONS))
def test_killed_at_many_random_moments(corral: CorralEnv, op: str) -> None:
    rng = random.Random(f"corral-soak-{op}")
    _prepare(corral, op)
    for i in range(10):
        kill_during(corral, OPERATIONS[op](corral, i), rng.uniform(0.0, 4.0))
        check_after_restart(corral)
        _running_f(corral)
