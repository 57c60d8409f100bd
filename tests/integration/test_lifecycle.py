"""stop, start, restart, pause/resume, kill, rm on real VMs; the guest's writes persist across a power cycle."""

from __future__ import annotations

import json
import os
import time

import pytest

from corral.engine import process
from tests.conftest import CorralEnv

pytestmark = pytest.mark.vm


def state(c: CorralEnv, name: str) -> dict:  # type: ignore[type-arg]
    return json.loads(c.cli("show", name, "--json").stdout)


def test_power_cycle_keeps_disk(corral: CorralEnv) -> None:
    assert corral.cli("launch", "lc").returncode == 0
    assert corral.cli("exec", "lc", "--", "sh", "-c", "echo kept > /root/mark && sync").returncode == 0
    pid = state(corral, "lc")["pid"]

    r = corral.cli("stop", "lc")
    assert r.returncode == 0, r.stderr
    s = state(corral, "lc")
    assert s["state"] == "stopped" and s["pid"] is None
    assert s["last_exit_reason"] == "stop requested by user"
    assert not process.is_alive(pid)
    events = [e.message for e in corral.client.events(vm="lc")]
    assert any("SHUTDOWN (guest-shutdown)" in m for m in events), "the guest powered off by ACPI, not killed"

    assert corral.cli("start", "lc").returncode == 0
    assert corral.cli("exec", "lc", "--", "cat", "/root/mark").stdout == "kept\n"


def test_pause_resume_restart_kill_rm(corral: CorralEnv) -> None:
    assert corral.cli("launch", "pr").returncode == 0
    pid = state(corral, "pr")["pid"]

    assert corral.cli("pause", "pr").returncode == 0
    assert state(corral, "pr")["state"] == "paused"
    r = corral.cli("exec", "pr", "--", "true")
    assert r.returncode == 4 and "while it is paused" in r.stderr
    assert corral.cli("resume", "pr").returncode == 0
    assert state(corral, "pr")["state"] == "running"

    boot_id = corral.cli("exec", "pr", "--", "cat", "/proc/sys/kernel/random/boot_id").stdout
    r = corral.cli("restart", "pr")
    assert r.returncode == 0, r.stderr
    assert corral.cli("exec", "pr", "--", "cat", "/proc/sys/kernel/random/boot_id").stdout != boot_id
    assert state(corral, "pr")["pid"] == pid, "a reboot keeps the QEMU process"

    r = corral.cli("rm", "pr")
    assert r.returncode == 4 and "running" in r.stderr
    assert corral.cli("kill", "pr").returncode == 0
    assert not process.is_alive(pid)
    assert state(corral, "pr")["state"] == "stopped"
    assert corral.cli("rm", "pr").returncode == 0
    assert not (corral.settings.vms_dir / "pr").exists()
    assert corral.cli("show", "pr").returncode == 3


def test_rm_force_kills_and_removes(corral: CorralEnv) -> None:
    assert corral.cli("launch", "gone", "--no-wait").returncode == 0
    pid = state(corral, "gone")["pid"]
    assert corral.cli("rm", "--force", "gone").returncode == 0
    deadline = time.monotonic() + 5
    while process.is_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process.is_alive(pid)
    assert json.loads(corral.cli("ls", "--json").stdout) == []


def test_console_and_logs(corral: CorralEnv) -> None:
    import pty
    import select

    assert corral.cli("launch", "con").returncode == 0
    pid, fd = pty.fork()
    if pid == 0:  # child: the real CLI on a terminal
        os.execve(os.path.join(os.path.dirname(os.sys.executable), "corral"), ["corral", "console", "con"],
                  corral.env)
    buf = b""
    try:
        deadline = time.monotonic() + 90
        while b"attached to con" not in buf and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.5)[0]:
                buf += os.read(fd, 4096)
        # The agent answers before the serial getty runs: type until the shell answers.
        while b"CONSOLE-42" not in buf and time.monotonic() < deadline:
            os.write(fd, b"\recho CONSOLE-$((6*7))\r")
            until = time.monotonic() + 5
            while b"CONSOLE-42" not in buf and time.monotonic() < until:
                if select.select([fd], [], [], 0.5)[0]:
                    buf += os.read(fd, 4096)
        assert b"CONSOLE-42" in buf, buf[-500:]
        os.write(fd, b"\x1d")  # Ctrl-] detaches
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
        os.close(fd)
    assert state(corral, "con")["state"] == "running", "detaching leaves the VM running"
    logs = corral.cli("logs", "con").stdout
    assert "CONSOLE-42" in logs and "BusyBox" in logs
    assert len(corral.cli("logs", "con", "--tail", "3").stdout.splitlines()) <= 3

    # --follow prints what the guest writes afterwards.
    import subprocess

    follower = subprocess.Popen([os.path.join(os.path.dirname(os.sys.executable), "corral"), "logs", "con", "-f",
                                 "-n", "0"], env=corral.env, stdout=subprocess.PIPE)
    try:
        time.sleep(1.0)
        corral.cli("exec", "con", "--", "sh", "-c", "echo FOLLOW-$((40+2)) > /dev/ttyS0")
        seen = b""
        deadline = time.monotonic() + 20
        assert follower.stdout is not None
        os.set_blocking(follower.stdout.fileno(), False)
        while b"FOLLOW-42" not in seen and time.monotonic() < deadline:
            seen += follower.stdout.read() or b""
            time.sleep(0.2)
        assert b"FOLLOW-42" in seen
        assert b"CONSOLE-42" not in seen, "--tail 0 --follow starts at the end"
    finally:
        follower.kill()
        follower.wait()
        if follower.stdout is not None:
            follower.stdout.close()
