"""Idle control on real VMs, with a short window (--idle-suspend 5s) and the daemon sampling every 0.5 s
(CORRAL_IDLE_INTERVAL): an idle VM is suspended (event, reason) and `corral exec` resumes it in the same boot; a
busy one is not, until it stops working; a TCP connection to a forwarded port wakes a suspended VM and gets its
answer, after a daemon restart too; bad policies are one-line errors."""

from __future__ import annotations

import json
import socket
import time
import urllib.request

import pytest

from corral.network.ports import free_port
from tests.conftest import CorralEnv, show, start_daemon_with, until

pytestmark = pytest.mark.vm


@pytest.fixture
def fast(corral_home: CorralEnv) -> CorralEnv:
    """A daemon sampling activity every 0.5 s, with `corral ls` in full."""
    return start_daemon_with(corral_home, {"CORRAL_IDLE_INTERVAL": "0.5", "COLUMNS": "200"})


def guest(c: CorralEnv, name: str, *cmd: str) -> str:
    r = c.cli("exec", name, "--", *cmd)
    assert r.returncode == 0, r.stderr
    return r.stdout


def idle_events(c: CorralEnv, name: str) -> list[tuple[str, str]]:
    return [(str(e.data.get("action")), e.message) for e in c.client.events(vm=name) if e.type == "idle"]


def suspended_by_idle(c: CorralEnv, name: str, timeout: float = 60) -> dict:  # type: ignore[type-arg]
    until(lambda: show(c, name)["state"] == "suspended", timeout, f"{name} suspended for being idle")
    v = show(c, name)
    assert v["state_reason"].startswith("idle: no activity for"), v["state_reason"]
    assert v["idle"]["suspended_by_idle"] and v["idle"]["auto_resume"], v["idle"]
    assert name not in c.qemu_pids()
    return v


def test_idle_vm_is_suspended_and_exec_resumes_the_same_boot(fast: CorralEnv) -> None:
    t0 = time.monotonic()
    r = fast.cli("launch", "sleepy", "--idle-suspend", "5s", "--idle-cpu", "10%")
    assert r.returncode == 0, r.stderr
    boot_id = guest(fast, "sleepy", "cat", "/proc/sys/kernel/random/boot_id")
    guest(fast, "sleepy", "sh", "-c", "echo kept > /root/mark")
    up_before = float(guest(fast, "sleepy", "cat", "/proc/uptime").split()[0])
    v = show(fast, "sleepy")
    assert v["spec"]["idle"] == {"suspend_after": 5.0, "cpu": 10.0, "disk": 65536, "net": 16384}
    assert v["idle"]["source"] == "vm"

    v = suspended_by_idle(fast, "sleepy")
    print(f"\nidle: suspended {time.monotonic() - t0:.1f}s after launch (window 5 s)")
    (action, message), = idle_events(fast, "sleepy")
    assert action == "suspend" and message.startswith("idle for ") and "suspending to disk" in message
    assert "suspended (wakes)" in fast.cli("ls").stdout
    shown = fast.cli("show", "sleepy").stdout
    assert "suspended (idle: no activity for" in shown and "suspend after 5s idle (cpu < 10%" in shown
    report = json.loads(fast.cli("report", "--format", "json").stdout)
    row, = report["groups"][0]["vms"]
    assert row["idle_suspended"] and row["last_activity"] is not None

    t1 = time.monotonic()
    out = guest(fast, "sleepy", "sh", "-c", "cat /proc/uptime /proc/sys/kernel/random/boot_id")
    print(f"idle: exec on the suspended VM answered in {time.monotonic() - t1:.1f}s")
    up_after, resumed_boot = float(out.split()[0]), out.splitlines()[1]
    assert resumed_boot == boot_id.strip(), "the same boot, not a new one"
    assert up_after >= up_before, (up_before, up_after)
    # (not its state now: with a 5 s window, a loaded host may see it suspended again by the next command)
    assert [a for a, _ in idle_events(fast, "sleepy")][:2] == ["suspend", "resume"]
    assert "exec by" in idle_events(fast, "sleepy")[1][1]

    # `corral cp` wakes it too.
    suspended_by_idle(fast, "sleepy")
    dest = fast.home / "mark"
    r = fast.cli("cp", "-q", "sleepy:/root/mark", str(dest))
    assert r.returncode == 0, r.stderr
    assert dest.read_text() == "kept\n"
    assert any("copy files to or from" in m for a, m in idle_events(fast, "sleepy") if a == "resume")


def test_busy_vm_is_not_suspended_until_it_rests(fast: CorralEnv) -> None:
    r = fast.cli("launch", "busy", "--idle-suspend", "4s")
    assert r.returncode == 0, r.stderr
    guest(fast, "busy", "sh", "-c", "(while :; do :; done) >/dev/null 2>&1 & echo $! > /tmp/burn")
    time.sleep(14)  # more than three windows
    v = show(fast, "busy")
    assert v["state"] == "running" and idle_events(fast, "busy") == [], idle_events(fast, "busy")
    assert any(b.startswith("cpu ") for b in v["idle"]["busy"]), v["idle"]
    assert v["idle"]["cpu"] > 20, v["idle"]
    assert "quiet 0s/4s" in fast.cli("ls").stdout

    guest(fast, "busy", "sh", "-c", "kill $(cat /tmp/burn)")
    suspended_by_idle(fast, "busy")

    ls = fast.cli("idle", "ls").stdout
    assert "busy" in ls and "suspended (wakes)" in ls and "suspend after 4s idle" in ls, ls

    # Idle control off: exec on the suspended VM is then a clear error, and it stays suspended.
    assert fast.cli("idle", "off", "busy").returncode == 0
    r = fast.cli("exec", "busy", "--", "true")
    assert r.returncode == 4 and "while it is suspended: it has no idle policy" in r.stderr, r.stderr
    assert show(fast, "busy")["state"] == "suspended"

    # On again: `corral shell` wakes it.
    r = fast.cli("idle", "set", "busy", "5m", "--cpu", "20%")
    assert r.returncode == 0 and "suspend after 5m idle (cpu < 20%" in r.stdout, r.stderr
    r = fast.cli("shell", "busy", "--", "echo", "awake")
    assert r.returncode == 0 and r.stdout.strip() == "awake", r.stderr
    assert show(fast, "busy")["state"] == "running"


def refused(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def fetch(port: int, timeout: float = 120.0) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=timeout) as r:
        return str(r.read().decode())


def test_a_connection_to_a_forwarded_port_wakes_it(fast: CorralEnv) -> None:
    port = free_port()
    r = fast.cli("launch", "web", "-p", f"{port}:80")
    assert r.returncode == 0, r.stderr
    guest(fast, "web", "sh", "-c", "mkdir -p /tmp/www && echo hello-idle > /tmp/www/index.html && "
          "httpd -p 80 -h /tmp/www")
    boot_id = guest(fast, "web", "cat", "/proc/sys/kernel/random/boot_id")
    # The project's default policy applies to a VM without its own, at once.
    r = fast.cli("project", "set", "default", "--idle-suspend", "5s")
    assert r.returncode == 0 and "suspend after 5s idle" in r.stdout, r.stderr
    assert show(fast, "web")["idle"]["source"] == "project"

    v = suspended_by_idle(fast, "web")
    assert v["idle"]["held_ports"] == [f"127.0.0.1:{port}"]
    t0 = time.monotonic()
    assert fetch(port).strip() == "hello-idle"  # held while the VM resumes, then relayed
    print(f"\nidle: HTTP answer through the held port {time.monotonic() - t0:.1f}s after connecting")
    assert any(a == "resume" and "a connection to a forwarded port" in m for a, m in idle_events(fast, "web"))
    assert guest(fast, "web", "cat", "/proc/sys/kernel/random/boot_id") == boot_id

    # The listener comes back after a daemon restart (kill -9).
    suspended_by_idle(fast, "web")
    fast.kill_daemon()
    # (the dying daemon's last threads may hold its sockets for a moment after its pid is a zombie)
    until(lambda: refused(port), 15, "nothing listening while the daemon is away")
    fast.start_daemon()
    assert show(fast, "web")["state"] == "suspended"
    assert fetch(port).strip() == "hello-idle"
    assert guest(fast, "web", "cat", "/proc/sys/kernel/random/boot_id") == boot_id


@pytest.mark.parametrize("args,code,words", [
    (["launch", "x", "--idle-suspend", "3x"], 2, "--idle-suspend: '3x' is not a duration"),
    (["launch", "x", "--idle-suspend", "5m", "--idle-cpu", "150%"], 2, "--idle-cpu: '150%' is out of range"),
    (["launch", "x", "--idle-suspend", "5m", "--idle-disk", "fast"], 2, "--idle-disk: 'fast' is not a rate"),
    (["launch", "x", "--idle-net", "16K/s"], 2, "need --idle-suspend"),
    (["idle", "set", "ghost", "5m"], 3, "no VM named 'ghost'"),
    (["idle", "set", "keep", "soon"], 2, "AFTER: 'soon' is not a duration"),
    (["idle", "set", "keep", "5m", "--net", "-1"], 2, "--net:"),
    (["project", "set", "p", "--idle-suspend", "0.1s"], 2, "at least 1 s"),
    (["project", "set", "p", "--idle-suspend", "none", "--idle-cpu", "5%"], 2, "give no thresholds"),
])
def test_bad_idle_input_changes_nothing(corral: CorralEnv, args: list[str], code: int, words: str) -> None:
    if not corral.client.list_vms():
        assert corral.cli("launch", "keep", "--no-wait").returncode == 0
    before = (json.dumps([v.spec.model_dump(mode="json") for v in corral.client.list_vms()]),
              corral.cli("project", "ls", "--json").stdout)
    r = corral.cli(*args)
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    err = r.stderr.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1 and words in err, err
    assert (json.dumps([v.spec.model_dump(mode="json") for v in corral.client.list_vms()]),
            corral.cli("project", "ls", "--json").stdout) == before
