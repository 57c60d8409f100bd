"""corrald SIGKILLed in the middle of `corral apply` of a fleet file: at the first VM's start (QEMU spawned, the VM
not yet ready), and from outside while the second VM is created. After each kill the daemon is started again,
everything in tests/faults/invariants.py holds, and applying the same file again brings the fleet to what it
declares: every VM there, running, each once, and nothing outside the fleet touched."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from corral.client import start_daemon
from corral.fleet import FLEET_LABEL
from corral.vm.spec import VMSpec
from tests.conftest import CORRAL, CorralEnv, ok
from tests.faults.invariants import check_after_restart, run_killed, wait_dead

pytestmark = pytest.mark.vm

FLEET = """\
fleet: f
defaults: {image: tiny, memory: 128M}
vms:
  web: {count: 2}
"""


def _converges(c: CorralEnv, fleet: Path) -> None:
    """Start the daemon again, apply the file again: the fleet is what it declares; then the invariants hold."""
    c.start_daemon()
    ok(c, "apply", "-f", str(fleet), "--yes", "--wait", "--timeout", "180", timeout=400)
    vms = {v["name"]: v for v in json.loads(ok(c, "ls", "--all", "--json"))}
    assert sorted(vms) == ["outsider", "web-1", "web-2"], sorted(vms)
    for name in ("web-1", "web-2"):
        assert vms[name]["state"] == "running", vms[name]
        assert vms[name]["spec"]["labels"][FLEET_LABEL] == "f"
        r = c.cli("exec", name, "--", "echo", "up")
        assert r.returncode == 0 and r.stdout.strip() == "up", (name, r.stdout, r.stderr)
    assert vms["outsider"]["state"] == "stopped", "a VM outside the fleet was touched"
    plan = c.cli("diff", "-f", str(fleet), "--exit-code")
    assert plan.returncode == 0, plan.stdout  # nothing left to do
    check_after_restart(c)


@pytest.mark.soak
def test_apply_killed_at_a_vms_start_then_applied_again(corral_home: CorralEnv, tmp_path: Path) -> None:
    c = corral_home
    c.start_daemon()
    c.client.build_image("tiny")
    c.client.create_vm(_spec("outsider"))
    c.kill_daemon()
    start_daemon(c.settings, environ=dict(c.env, CORRAL_FAULT="launch.after-spawn"))
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(FLEET)
    run_killed(c, "apply", "-f", str(fleet), "--yes")
    _converges(c, fleet)


def test_apply_killed_from_outside_while_creating(corral: CorralEnv, tmp_path: Path) -> None:
    c = corral
    c.client.create_vm(_spec("outsider"))
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(FLEET)
    proc = subprocess.Popen([CORRAL, "apply", "-f", str(fleet), "--yes"], env=c.env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        names = {v.name for v in c.client.list_vms()}
        if "web-2" in names:
            break
        time.sleep(0.01)
    pid = c.daemon_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=120)
    wait_dead(c)
    _converges(c, fleet)


def _spec(name: str) -> VMSpec:
    return VMSpec(name=name, image="tiny", memory=128)
