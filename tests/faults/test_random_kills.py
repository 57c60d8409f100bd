"""corrald SIGKILLed from outside at moments no fault point names, in the middle of long operations on a running
tiny VM, as a user's `kill -9` or an OOM kill would: the case reported by a new user (a whole-machine snapshot, a
full clone and a backup, each killed 0.7 s in) first, then each operation at a few more delays. After each kill
the daemon is started again and everything in tests/faults/invariants.py must hold, whichever way the operation
went: finished before the kill, or finished or rolled back by the restarted daemon."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import pytest

from corral.store.db import Store
from tests.conftest import CORRAL, CorralEnv, ok
from tests.faults.invariants import check_after_restart, wait_dead

pytestmark = pytest.mark.vm

OPERATIONS = {
    "snapshot": lambda i: ("snapshot", "create", "f", f"s{i}", "--memory"),
    "clone": lambda i: ("clone", "f", f"c{i}", "--full"),
    "backup": lambda i: ("backup", "create", "f"),
    "template": lambda i: ("template", "create", f"t{i}", "--from", "f"),
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


def test_reported_case_snapshot_clone_backup_killed_07s_in(corral: CorralEnv) -> None:
    ok(corral, "launch", "f", "--memory", "256M")
    for i, op in enumerate(("snapshot", "clone", "backup")):
        kill_during(corral, OPERATIONS[op](i), 0.7)
        check_after_restart(corral)
        _running_f(corral)


@pytest.mark.soak
@pytest.mark.parametrize("op", sorted(OPERATIONS))
def test_killed_at_random_moments(corral: CorralEnv, op: str) -> None:
    rng = random.Random(f"corral-{op}")  # the same moments every run: a failure can be replayed
    ok(corral, "launch", "f", "--memory", "256M")
    for i in range(3):
        kill_during(corral, OPERATIONS[op](i), rng.uniform(0.05, 2.5))
        check_after_restart(corral)
        _running_f(corral)


@pytest.mark.soak
@pytest.mark.parametrize("op", sorted(OPERATIONS))
def test_killed_at_many_random_moments(corral: CorralEnv, op: str) -> None:
    rng = random.Random(f"corral-soak-{op}")
    ok(corral, "launch", "f", "--memory", "256M")
    for i in range(10):
        kill_during(corral, OPERATIONS[op](i), rng.uniform(0.0, 4.0))
        check_after_restart(corral)
        _running_f(corral)
