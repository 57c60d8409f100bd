"""Templates on real VMs: capture a running VM (it keeps running), launch VMs from it that are ready at once and each
have their own identity (MAC, hostname, machine-id, SSH host key, clock), share the template's memory file, and keep
the template from being removed while they exist; bad input is a one-line error that changes nothing."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from corral.engine import process
from tests.conftest import CorralEnv, show

pytestmark = pytest.mark.vm


def guest(c: CorralEnv, name: str, script: str) -> str:
    r = c.cli("exec", name, "--", "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


IDENTITY = ("hostname; cat /sys/class/net/eth0/address; cat /etc/machine-id; "
            "dropbearkey -y -f /etc/dropbear/dropbear_ed25519_host_key | grep ^ssh-ed25519 | cut -d' ' -f2")


def test_template_create_launch_identity_and_rm(corral: CorralEnv) -> None:
    assert corral.cli("launch", "src", "--memory", "128M").returncode == 0
    src_pid = show(corral, "src")["pid"]
    src_id = guest(corral, "src", IDENTITY).split("\n")

    r = corral.cli("template", "create", "base", "--from", "src")
    assert r.returncode == 0, r.stderr
    assert "template base created from src" in r.stdout
    # The source runs on: same QEMU, its guest answers, its identity is unchanged.
    s = show(corral, "src")
    assert s["state"] == "running" and s["pid"] == src_pid and process.is_alive(src_pid)
    assert guest(corral, "src", IDENTITY).split("\n") == src_id
    tdir = corral.settings.home / "templates" / "base"
    assert sorted(p.name for p in tdir.iterdir()) == ["disk.qcow2", "memory.ram", "overlay.qcow2", "state.bin",
                                                      "template.json"]
    assert not list((corral.settings.home / "templates").glob(".*")), "no partial directory left"
    # Captured with a shell waiting on the guest channel; the source's own listener is gone again.
    assert json.loads(corral.cli("template", "ls", "--json").stdout)[0]["channel"] is True
    assert "sh -s" not in guest(corral, "src", "ps -o args")

    ids = {}
    for name in ("a1", "a2"):
        t0 = time.monotonic()
        r = corral.cli("launch", name, "--template", "base")
        assert r.returncode == 0, r.stderr
        assert f"{name} ready in" in r.stdout and "from template base" in r.stdout
        info = show(corral, name)
        assert info["state"] == "running" and info["agent_ready"], info
        assert info["spec"]["memory"] == 128 and info["spec"]["image"] == "tiny"
        hostname, mac, machine_id, host_key = guest(corral, name, IDENTITY).split("\n")
        assert hostname == name
        assert mac == info["mac"], "the guest's NIC has the VM's own MAC"
        events = corral.client.events(vm=name)
        assert any("through the guest channel" in e.message for e in events), events
        before = time.time()
        clock = float(guest(corral, name, "date +%s"))
        assert before - 2 <= clock <= time.time() + 2, "the guest clock was set"
        # Its SSH host key is the one Corral pinned, and `corral shell` connects with it.
        known = (corral.settings.vms_dir / name / "known_hosts").read_text()
        assert host_key in known
        r = corral.cli("shell", name, "--", "hostname")
        assert r.returncode == 0 and r.stdout.strip() == name, r.stderr
        ids[name] = (mac, machine_id, host_key)
        assert time.monotonic() - t0 < 120
    # A template without the channel (captured by an older Corral): the identity goes through the agent.
    with sqlite3.connect(corral.settings.home / "corral.db") as db:
        db.execute("UPDATE templates SET channel = 0 WHERE name = 'base'")
    r = corral.cli("launch", "a3", "--template", "base")
    assert r.returncode == 0, r.stderr
    assert any("through the guest agent" in e.message for e in corral.client.events(vm="a3"))
    assert guest(corral, "a3", "hostname") == "a3"
    r = corral.cli("shell", "a3", "--", "hostname")
    assert r.returncode == 0 and r.stdout.strip() == "a3", r.stderr
    assert corral.cli("rm", "--force", "a3").returncode == 0
    # No two alike, and none like the source.
    for i in range(3):
        values = [ids["a1"][i], ids["a2"][i], src_id[i + 1]]
        assert len(set(values)) == 3, values
    # Each VM's disk is an overlay on the template's standalone disk; the template's RAM is mapped, not copied.
    r = corral.cli("show", "a1", "--json")
    pid = json.loads(r.stdout)["pid"]
    maps = Path(f"/proc/{pid}/maps").read_text()
    assert str(tdir / "memory.ram") in maps

    r = corral.cli("template", "ls", "--json")
    (t,) = json.loads(r.stdout)
    assert t["name"] == "base" and t["source"] == "src" and sorted(t["vms"]) == ["a1", "a2"]

    # Refused while used, nothing changed.
    r = corral.cli("template", "rm", "base")
    assert r.returncode == 4 and "used by 2 VM(s)" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert tdir.is_dir()
    # Bad input: one line, a non-zero code, nothing left behind.
    for args, code, words in (
        (("launch", "a1", "--template", "base"), 4, "already exists"),
        (("launch", "b1", "--template", "nope"), 3, "no template named 'nope'"),
        (("launch", "b2", "--template", "base", "--memory", "1G"), 2, "come from the template"),
        (("launch", "b3", "--template", "base", "--hostname", "x"), 2, "not possible with a template"),
        (("template", "create", "base", "--from", "src"), 4, "already exists"),
        (("template", "create", "Bad_Name", "--from", "src"), 2, "not a DNS label"),
        (("template", "create", "t2", "--from", "nope"), 3, "no VM named 'nope'"),
        (("template", "create", "t3", "--from", "a1"), 2, "made from a template"),
        (("template", "rm", "nope"), 3, "no template named 'nope'"),
    ):
        r = corral.cli(*args)
        assert r.returncode == code and words in r.stderr, (args, r.returncode, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert sorted(v.name for v in corral.client.list_vms()) == ["a1", "a2", "src"]
    assert sorted(p.name for p in corral.settings.vms_dir.iterdir()) == ["a1", "a2", "src"]
    assert [p.name for p in (corral.settings.home / "templates").iterdir()] == ["base"]

    assert corral.cli("rm", "--force", "a1").returncode == 0
    assert corral.cli("rm", "--force", "a2").returncode == 0
    r = corral.cli("template", "rm", "base")
    assert r.returncode == 0, r.stderr
    assert not tdir.exists()
    assert json.loads(corral.cli("template", "ls", "--json").stdout) == []


def test_template_vm_suspends_and_boots_with_its_own_mac_and_source_must_be_running(corral: CorralEnv) -> None:
    assert corral.cli("launch", "src", "--memory", "128M").returncode == 0
    boot = "cat /proc/sys/kernel/random/boot_id"
    src_boot = guest(corral, "src", boot)
    assert corral.cli("template", "create", "base", "--from", "src").returncode == 0
    assert corral.cli("pause", "src").returncode == 0
    r = corral.cli("template", "create", "again", "--from", "src")
    assert r.returncode == 4 and "is paused" in r.stderr, r.stderr
    assert not (corral.settings.home / "templates" / "again").exists()

    assert corral.cli("launch", "c1", "--template", "base").returncode == 0
    mac = show(corral, "c1")["mac"]
    assert guest(corral, "c1", boot) == src_boot, "it continues the captured boot"
    # A guest reboot in the same QEMU: the NAT (its state came from the template) gives the guest another address;
    # Corral points the forwards at it, so `corral shell` still reaches the guest.
    r = corral.cli("restart", "c1")
    assert r.returncode == 0, r.stderr
    r = corral.cli("shell", "c1", "--", "hostname")
    assert r.returncode == 0 and r.stdout.strip() == "c1", r.stderr
    assert guest(corral, "c1", "cat /sys/class/net/eth0/address") == mac
    # Suspend and resume: its state is an ordinary one (x-ignore-shared was for the template's load only).
    guest(corral, "c1", "echo kept > /root/mark")
    assert corral.cli("suspend", "c1").returncode == 0
    r = corral.cli("resume", "c1")
    assert r.returncode == 0, r.stderr
    assert guest(corral, "c1", "cat /root/mark") == "kept"
    # Stopped and started again: the guest kernel boots afresh from the VM's own disk (an overlay on the template's)
    # instead of loading the template's state, and QEMU's NIC (-device mac=) has the VM's MAC, as the guest had.
    assert corral.cli("stop", "c1").returncode == 0
    assert corral.cli("start", "c1").returncode == 0
    assert corral.cli("wait", "c1", "--ready", "--timeout", "300").returncode == 0
    assert guest(corral, "c1", "cat /sys/class/net/eth0/address") == mac
    assert guest(corral, "c1", "hostname") == "c1"
    assert guest(corral, "c1", boot) != src_boot, "a new boot"
    assert corral.cli("template", "rm", "base").returncode == 4


def test_snapshots_and_clones_of_a_template_vm_sit_on_the_template_disk(corral: CorralEnv) -> None:
    """A VM from a template has the template's disk under its own: its snapshots, their deletion and its linked
    clones keep that base (not the image's disk), and the template cannot go while a clone of it exists."""
    assert corral.cli("launch", "tsrc", "--memory", "128M").returncode == 0
    guest(corral, "tsrc", "echo from-template > /root/mark && sync")
    assert corral.cli("template", "create", "tb", "--from", "tsrc").returncode == 0
    assert corral.cli("disk", "add", "tsrc", "d1", "--size", "16M").returncode == 0
    r = corral.cli("template", "create", "tb2", "--from", "tsrc")
    assert r.returncode == 2 and "extra disks" in r.stderr, r.stderr
    assert corral.cli("launch", "tv", "--template", "tb").returncode == 0
    guest(corral, "tv", "echo one > /root/f && sync")
    assert corral.cli("snapshot", "create", "tv", "s1").returncode == 0
    guest(corral, "tv", "echo two > /root/f && sync")
    assert corral.cli("snapshot", "create", "tv", "s2").returncode == 0
    r = corral.cli("clone", "tv", "tvc", "--start")
    assert r.returncode == 0, r.stderr
    assert guest(corral, "tvc", "cat /root/mark /root/f").split() == ["from-template", "two"]
    r = corral.cli("snapshot", "rm", "tv", "s1")  # the bottom snapshot: merged onto the template's disk
    assert r.returncode == 0, r.stderr
    assert corral.cli("stop", "tv").returncode == 0
    assert corral.cli("snapshot", "revert", "tv", "s2").returncode == 0
    assert corral.cli("start", "tv").returncode == 0
    assert corral.cli("wait", "tv", "--ready", "--timeout", "120").returncode == 0
    assert guest(corral, "tv", "cat /root/mark /root/f").split() == ["from-template", "two"]
    assert corral.cli("rm", "--force", "tv").returncode == 0
    r = corral.cli("template", "rm", "tb")
    assert r.returncode == 4 and "tvc" in r.stderr, r.stderr
    assert guest(corral, "tvc", "cat /root/mark").strip() == "from-template"
