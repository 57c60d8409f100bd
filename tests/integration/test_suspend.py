"""Suspend to disk and resume on real VMs: the guest carries on where it was (same boot, counting on), across a
daemon SIGKILL too; delete removes the state; a damaged state file is a clear error and the VM stays suspended."""

from __future__ import annotations

import json
import time

import pytest

from corral.engine import process
from tests.conftest import CorralEnv

pytestmark = pytest.mark.vm

COUNTER = "i=0; while true; do i=$((i+1)); echo $i > /root/count; sleep 0.2; done"


def state(c: CorralEnv, name: str) -> dict:  # type: ignore[type-arg]
    return json.loads(c.cli("show", name, "--json").stdout)


def guest(c: CorralEnv, name: str, *cmd: str) -> str:
    r = c.cli("exec", name, "--", *cmd)
    assert r.returncode == 0, r.stderr
    return r.stdout


def uptime(c: CorralEnv, name: str) -> float:
    return float(guest(c, name, "cat", "/proc/uptime").split()[0])


def suspend(c: CorralEnv, name: str) -> float:
    pid = state(c, name)["pid"]
    t0 = time.monotonic()
    r = c.cli("suspend", name)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    s = state(c, name)
    assert s["state"] == "suspended" and s["pid"] is None, s
    assert not process.is_alive(pid), "QEMU is gone"
    assert name not in c.qemu_pids()
    assert (c.settings.vms_dir / name / "state.bin").is_file()
    return took


def test_suspend_resume_continues_the_guest(corral: CorralEnv, capsys: pytest.CaptureFixture[str]) -> None:
    t0 = time.monotonic()
    assert corral.cli("launch", "sus").returncode == 0
    cold = time.monotonic() - t0
    guest(corral, "sus", "sh", "-c", f"({COUNTER}) >/dev/null 2>&1 &")
    time.sleep(1.5)
    boot_id = guest(corral, "sus", "cat", "/proc/sys/kernel/random/boot_id")
    before = int(guest(corral, "sus", "cat", "/root/count"))
    up_before = uptime(corral, "sus")
    assert before > 0

    took_suspend = suspend(corral, "sus")
    size = (corral.settings.vms_dir / "sus" / "state.bin").stat().st_size
    r = corral.cli("exec", "sus", "--", "true")
    assert r.returncode == 4 and "while it is suspended" in r.stderr
    time.sleep(2.0)

    t0 = time.monotonic()
    r = corral.cli("resume", "sus")
    assert r.returncode == 0, r.stderr
    up_after = uptime(corral, "sus")  # exec works at once
    took_resume = time.monotonic() - t0
    s = state(corral, "sus")
    assert s["state"] == "running" and s["agent_ready"], s
    assert not (corral.settings.vms_dir / "sus" / "state.bin").exists(), "a loaded state is never loaded again"
    assert guest(corral, "sus", "cat", "/proc/sys/kernel/random/boot_id") == boot_id, "same boot"
    # Continuous: the guest's clock stood still while suspended (no reboot, no jump back to zero).
    assert up_before <= up_after < up_before + took_suspend + took_resume + 10, (up_before, up_after)
    time.sleep(1.0)
    after = int(guest(corral, "sus", "cat", "/root/count"))
    assert after > before, (before, after)
    assert abs(float(guest(corral, "sus", "date", "+%s")) - time.time()) < 5, "the guest clock was set"

    # `corral start` of a suspended VM resumes it too.
    suspend(corral, "sus")
    assert corral.cli("start", "sus").returncode == 0
    assert guest(corral, "sus", "cat", "/proc/sys/kernel/random/boot_id") == boot_id
    assert int(guest(corral, "sus", "cat", "/root/count")) > after

    with capsys.disabled():
        print(f"\n[suspend timings, tiny 256M, {s['accel']}] cold boot to ready {cold:.1f}s | "
              f"suspend {took_suspend:.1f}s ({size >> 20} MiB state) | "
              f"resume to ready (exec answered) {took_resume:.1f}s")


def test_suspended_survives_daemon_kill(corral: CorralEnv) -> None:
    assert corral.cli("launch", "dk").returncode == 0
    guest(corral, "dk", "sh", "-c", "echo before > /root/mark")
    boot_id = guest(corral, "dk", "cat", "/proc/sys/kernel/random/boot_id")
    suspend(corral, "dk")

    corral.kill_daemon()
    corral.start_daemon()
    s = state(corral, "dk")
    assert s["state"] == "suspended", s
    assert (corral.settings.vms_dir / "dk" / "state.bin").is_file()

    r = corral.cli("resume", "dk")
    assert r.returncode == 0, r.stderr
    assert guest(corral, "dk", "cat", "/root/mark") == "before\n"
    assert guest(corral, "dk", "cat", "/proc/sys/kernel/random/boot_id") == boot_id


def test_rm_and_stop_of_suspended(corral: CorralEnv) -> None:
    assert corral.cli("launch", "gone").returncode == 0
    suspend(corral, "gone")
    assert corral.cli("rm", "gone").returncode == 0
    assert not (corral.settings.vms_dir / "gone").exists()
    assert corral.cli("show", "gone").returncode == 3

    assert corral.cli("launch", "st").returncode == 0
    boot_id = guest(corral, "st", "cat", "/proc/sys/kernel/random/boot_id")
    suspend(corral, "st")
    r = corral.cli("stop", "--no-force", "st")
    assert r.returncode == 4 and "discards its saved memory" in r.stderr
    assert state(corral, "st")["state"] == "suspended"
    assert corral.cli("stop", "st").returncode == 0
    assert state(corral, "st")["state"] == "stopped"
    assert not (corral.settings.vms_dir / "st" / "state.bin").exists()
    assert corral.cli("start", "st").returncode == 0
    assert guest(corral, "st", "cat", "/proc/sys/kernel/random/boot_id") != boot_id, "a fresh boot"


def test_damaged_state_file_keeps_vm_suspended(corral: CorralEnv) -> None:
    assert corral.cli("launch", "bad").returncode == 0
    suspend(corral, "bad")
    path = corral.settings.vms_dir / "bad" / "state.bin"
    good = path.read_bytes()

    for damaged in (good[: len(good) // 3], good[:64] + b"\xff" * 4096 + good[64 + 4096:]):
        path.write_bytes(damaged)
        r = corral.cli("resume", "bad")
        assert r.returncode == 6, (r.returncode, r.stderr)
        line = r.stderr.strip()
        assert "\n" not in line and "cannot resume VM 'bad'" in line and "stays suspended" in line, line
        s = state(corral, "bad")
        assert s["state"] == "suspended" and s["pid"] is None and "failed to resume" in s["state_reason"], s
        assert path.read_bytes() == damaged, "the state file is left as it was"
        assert "bad" not in corral.qemu_pids()

    path.write_bytes(good)  # the real state still resumes
    assert corral.cli("resume", "bad").returncode == 0
    guest(corral, "bad", "true")
