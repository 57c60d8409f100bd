"""Port forwards: at launch (-p), added and removed at runtime through QEMU's monitor, refused when taken."""

from __future__ import annotations

import json
import socket
import time
import urllib.request

import pytest

from corral.network.ports import free_port
from tests.conftest import CorralEnv

pytestmark = pytest.mark.vm


def fetch(port: int, timeout: float = 30.0) -> str:
    """GET / through the forward, retrying while the guest's server comes up."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                return str(r.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def refused(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(5)
        try:
            s.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return True
    return False


def test_forwards_at_launch_and_at_runtime(corral: CorralEnv) -> None:
    p_launch, p_runtime = free_port(), free_port()
    r = corral.cli("launch", "web", "-p", f"{p_launch}:80", "-p", "5353:53/udp")
    assert r.returncode == 0, r.stderr
    r = corral.cli("exec", "web", "--", "sh", "-c",
                   "mkdir -p /tmp/www && echo hello-corral > /tmp/www/index.html && httpd -p 80 -h /tmp/www")
    assert r.returncode == 0, r.stderr
    assert fetch(p_launch).strip() == "hello-corral"

    # Added while the VM runs: no restart.
    pid = corral.qemu_pids()["web"]
    r = corral.cli("port", "add", "web", f"{p_runtime}:80")
    assert r.returncode == 0, r.stderr
    assert fetch(p_runtime).strip() == "hello-corral"
    assert corral.qemu_pids()["web"] == pid
    r = corral.cli("port", "ls", "web", "--json")
    listed = {(f["host_port"], f["guest_port"], f["proto"]) for f in json.loads(r.stdout)}
    assert listed == {(p_launch, 80, "tcp"), (5353, 53, "udp"), (p_runtime, 80, "tcp")}
    assert f"127.0.0.1:{p_runtime}->80/tcp" in corral.cli("show", "web").stdout

    # A host port held by another process: a clear conflict (exit 4), and nothing changes.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        r = corral.cli("port", "add", "web", f"{taken}:80")
        assert r.returncode == 4, r.stderr
        assert "not available" in r.stderr and str(taken) in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    r = corral.cli("port", "ls", "web", "--json")
    assert {f["host_port"] for f in json.loads(r.stdout)} == {p_launch, 5353, p_runtime}

    # Removed: the host port is closed again, the launch forward still works.
    r = corral.cli("port", "rm", "web", str(p_runtime))
    assert r.returncode == 0, r.stderr
    assert refused(p_runtime)
    assert fetch(p_launch).strip() == "hello-corral"
    r = corral.cli("port", "rm", "web", "5353/udp")
    assert r.returncode == 0, r.stderr
    r = corral.cli("port", "rm", "web", str(p_runtime))
    assert r.returncode == 3, r.stderr

    # Kept in the spec: a forward added at runtime survives a stop/start.
    assert corral.cli("port", "add", "web", f"{p_runtime}:80").returncode == 0
    assert corral.cli("stop", "web").returncode == 0
    r = corral.cli("port", "ls", "web", "--json")
    assert {f["host_port"] for f in json.loads(r.stdout)} == {p_launch, p_runtime}
    assert corral.cli("start", "web").returncode == 0
    r = corral.cli("exec", "web", "--", "sh", "-c",
                   "mkdir -p /tmp/www && echo hello-corral > /tmp/www/index.html && httpd -p 80 -h /tmp/www")
    assert fetch(p_runtime).strip() == "hello-corral"


def test_port_taken_by_another_vm_is_refused(corral: CorralEnv) -> None:
    port = free_port()
    assert corral.cli("launch", "one", "-p", f"{port}:80").returncode == 0
    r = corral.cli("launch", "two", "-p", f"{port}:80", "--no-wait")
    assert r.returncode == 4, r.stderr
    assert "already forwarded to VM 'one'" in r.stderr
    assert "two" not in corral.cli("ls").stdout
    r = corral.cli("port", "add", "one", "not-a-forward")
    assert r.returncode == 2, r.stderr
