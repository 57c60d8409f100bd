"""A guest kernel panic and a killed QEMU are detected and reported; the restart policy acts on them."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.conftest import CorralEnv, show

pytestmark = pytest.mark.vm


def wait_for(c: CorralEnv, name: str, pred, timeout: float = 90) -> dict:  # type: ignore[no-untyped-def,type-arg]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = show(c, name)
        if pred(s):
            return s
        time.sleep(0.2)
    raise AssertionError(f"{name}: condition not met; last state {s}")


def test_guest_panic_is_reported_and_never_policy_leaves_it(corral: CorralEnv) -> None:
    assert corral.cli("launch", "pan").returncode == 0
    corral.cli("exec", "pan", "--timeout", "5", "--", "sh", "-c", "echo c > /proc/sysrq-trigger")
    s = wait_for(corral, "pan", lambda s: s["state"] == "crashed")
    assert s["last_exit_reason"] == "the guest kernel panicked"
    time.sleep(2)
    assert show(corral, "pan")["state"] == "crashed", "restart policy 'never' leaves it down"
    assert any("GUEST_PANICKED" in e.message for e in corral.client.events(vm="pan"))


def test_panic_with_on_failure_restarts(corral: CorralEnv) -> None:
    assert corral.cli("launch", "pof", "--restart", "on-failure").returncode == 0
    pid = show(corral, "pof")["pid"]
    corral.cli("exec", "pof", "--timeout", "5", "--", "sh", "-c", "echo c > /proc/sysrq-trigger")
    s = wait_for(corral, "pof", lambda s: s["state"] == "running" and s["pid"] not in (None, pid))
    assert s["restart_count"] == 1
    assert s["last_exit_reason"] == "the guest kernel panicked"
    corral.client.wait_ready("pof", 120)
    assert corral.cli("exec", "pof", "--", "true").returncode == 0


def test_killed_qemu_is_crashed_and_always_restarts(corral: CorralEnv) -> None:
    assert corral.cli("launch", "k1").returncode == 0
    assert corral.cli("launch", "k2", "--restart", "always", "--no-wait").returncode == 0
    p1, p2 = show(corral, "k1")["pid"], show(corral, "k2")["pid"]
    os.kill(p1, signal.SIGKILL)
    os.kill(p2, signal.SIGKILL)
    s1 = wait_for(corral, "k1", lambda s: s["state"] == "crashed")
    assert s1["last_exit_reason"].startswith("QEMU exited unexpectedly (killed by SIGKILL)")
    s2 = wait_for(corral, "k2", lambda s: s["state"] == "running" and s["pid"] not in (None, p2))
    assert s2["restart_count"] == 1


def test_guest_poweroff_is_a_clean_stop(corral: CorralEnv) -> None:
    assert corral.cli("launch", "off", "--restart", "on-failure").returncode == 0
    corral.cli("exec", "off", "--timeout", "5", "--", "poweroff")
    s = wait_for(corral, "off", lambda s: s["state"] == "stopped")
    assert s["last_exit_reason"] == "the guest powered off"
    time.sleep(2)
    assert show(corral, "off")["state"] == "stopped", "on-failure does not restart a clean power-off"
