"""Clones on real tiny VMs: a linked clone of a 100 GiB disk is as quick as of a 1 GiB one; a full clone boots with
its own MAC, machine-id and hostname (and SSH host key, pinned again); a running VM is cloned without stopping it;
a clone outlives its deleted source; quotas apply to clones."""

from __future__ import annotations

import json
import statistics

import pytest

from tests.conftest import CorralEnv, guest, ok

pytestmark = pytest.mark.vm


def identity(c: CorralEnv, name: str) -> dict[str, str]:
    out = guest(c, name, "cat /etc/machine-id; hostname; cat /sys/class/net/eth0/address; "
                         "dropbearkey -y -f /etc/dropbear/dropbear_ed25519_host_key | grep ^ssh-ed25519")
    mid, host, mac, key = out.splitlines()
    return {"machine-id": mid, "hostname": host, "mac": mac, "hostkey": key.split()[1]}


def test_linked_clone_time_does_not_depend_on_disk_size(corral: CorralEnv) -> None:
    cl = corral.client
    cl.create_vm({"name": "one", "disk": "1G"})
    cl.create_vm({"name": "hundred", "disk": "100G"})
    times: dict[str, list[float]] = {"one": [], "hundred": []}
    for i in range(5):
        for src in ("one", "hundred"):
            ev = cl.clone_vm(src, f"{src}-{i}")
            assert ev.vm is not None and ev.vm.spec.disk == cl.get_vm(src).spec.disk
            assert ev.seconds is not None
            times[src].append(ev.seconds)
    small, big = statistics.median(times["one"]), statistics.median(times["hundred"])
    assert big <= 1.5 * small + 0.05 and big < 1.0, times
    # The linked clone's disk really is the 100 GiB one (a qcow2 overlay on the frozen source layer).
    info = json.loads(ok(corral, "show", "hundred-0", "--json"))
    assert info["disks"][0]["virtual_size"] == 100 << 30, info["disks"]


def test_full_clone_of_a_running_vm_gets_its_own_identity(corral: CorralEnv) -> None:
    ok(corral, "launch", "src")
    guest(corral, "src", "echo payload > /root/mark; sync")
    before = identity(corral, "src")
    pid = corral.client.get_vm("src").pid

    ok(corral, "clone", "src", "full", "--full", "--start")
    s = corral.client.get_vm("src")
    assert s.state == "running" and s.pid == pid, "the source was never stopped"
    full = identity(corral, "full")
    assert guest(corral, "full", "cat /root/mark") == "payload\n"
    assert full["hostname"] == "full"
    for k in ("machine-id", "mac", "hostkey"):
        assert full[k] != before[k], (k, before, full)
    assert corral.client.get_vm("full").mac == full["mac"]
    assert ok(corral, "shell", "full", "--", "uname", "-n").strip() == "full", "host key pinned again"
    assert identity(corral, "src") == before, "the source kept its identity"

    # A linked clone of the running source too, then the source deleted: the clone keeps its disk.
    ok(corral, "clone", "src", "linked", "--start")
    assert corral.client.get_vm("src").pid == pid
    linked = identity(corral, "linked")
    assert linked["hostname"] == "linked" and linked["machine-id"] != before["machine-id"]
    guest(corral, "src", "echo changed > /root/mark; sync")
    assert guest(corral, "linked", "cat /root/mark") == "payload\n", "a clone is a point in time"
    ok(corral, "rm", "--force", "src")
    ok(corral, "restart", "linked")
    assert guest(corral, "linked", "cat /root/mark") == "payload\n"
    assert identity(corral, "linked")["machine-id"] == linked["machine-id"], "the identity is reset only once"


def test_clone_from_a_snapshot_and_quota(corral: CorralEnv) -> None:
    cl = corral.client
    ok(corral, "launch", "base")
    guest(corral, "base", "echo first > /root/v; sync")
    ok(corral, "snapshot", "create", "base", "first")
    guest(corral, "base", "echo second > /root/v; sync")
    ok(corral, "clone", "base", "from-snap", "--snapshot", "first", "--start")
    assert guest(corral, "from-snap", "cat /root/v") == "first\n"
    # Reverting (and deleting) the source's snapshot never breaks the clone.
    ok(corral, "snapshot", "revert", "base", "first", "--force")
    ok(corral, "snapshot", "rm", "base", "first")
    ok(corral, "restart", "from-snap")
    assert guest(corral, "from-snap", "cat /root/v") == "first\n"

    ok(corral, "quota", "set", "--project", "default", "--vms", "2")
    vms = [v.name for v in cl.list_vms()]
    r = corral.cli("clone", "base", "third")
    assert r.returncode == 5 and "over its limit of 2 VMs" in r.stderr, r.stderr
    assert [v.name for v in cl.list_vms()] == vms
