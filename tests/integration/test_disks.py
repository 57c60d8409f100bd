"""Extra disks on real VMs: hot-plugged into a running guest (seen by its serial), used, grown online, throttled,
detached and re-attached with their data; on the command line of a stopped VM; one-line refusals."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.conftest import CorralEnv, guest, ok

pytestmark = pytest.mark.vm


def dev_of(c: CorralEnv, vm: str, serial: str) -> str:
    """The guest's block device whose virtio serial is ``serial`` ('' when there is none); the tiny guest has no
    udev, so its /sys/block/*/serial stands in for /dev/disk/by-id/virtio-SERIAL."""
    return guest(c, vm, f"for d in /sys/block/vd*; do [ \"$(cat $d/serial)\" = {serial} ] && echo /dev/${{d##*/}}; "
                        "done; true").strip()


def sectors(c: CorralEnv, vm: str, dev: str) -> int:
    return int(guest(c, vm, f"cat /sys/block/{dev.removeprefix('/dev/')}/size"))


def disks(c: CorralEnv, vm: str) -> list[dict]:  # type: ignore[type-arg]
    return json.loads(ok(c, "disk", "ls", vm, "--json"))  # type: ignore[no-any-return]


def test_hot_plug_use_grow_throttle_detach_attach(corral: CorralEnv) -> None:
    ok(corral, "launch", "hp")
    pid = corral.qemu_pids()["hp"]
    out = ok(corral, "disk", "add", "hp", "data", "--size", "64M")
    assert "/dev/disk/by-id/virtio-data" in out
    dev = dev_of(corral, "hp", "data")
    assert dev.startswith("/dev/vd"), dev
    assert sectors(corral, "hp", dev) * 512 == 64 << 20
    guest(corral, "hp", f"mke2fs -q {dev} && mkdir -p /mnt/data && mount {dev} /mnt/data && "
                        "echo corral-data > /mnt/data/hello && sync")

    # Grown online: the guest sees the new size at once.
    ok(corral, "disk", "resize", "hp", "data", "96M")
    deadline = time.monotonic() + 10
    while sectors(corral, "hp", dev) * 512 != 96 << 20 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert sectors(corral, "hp", dev) * 512 == 96 << 20

    # Throttled to 1 MiB/s of writes: 4 MiB take seconds; the limit removed, they do not (timed in the guest).
    ok(corral, "disk", "throttle", "hp", "data", "--write-bps", "1M")
    write = (f"a=$(cut -d' ' -f1 /proc/uptime); dd if=/dev/zero of={dev} bs=1M count=4 seek=80 oflag=direct "
             "2>/dev/null; b=$(cut -d' ' -f1 /proc/uptime); echo \"$b - $a\" | bc")
    assert float(guest(corral, "hp", write)) >= 2.0
    assert disks(corral, "hp")[0]["limits"] == {"bps-write": 1 << 20}
    ok(corral, "disk", "throttle", "hp", "data", "--clear")
    assert float(guest(corral, "hp", write)) < 2.0

    # A running VM's attached disk is not deleted without --force.
    r = corral.cli("disk", "rm", "hp", "data")
    assert r.returncode == 4 and "detach it first" in r.stderr and len(r.stderr.strip().splitlines()) == 1

    # A paused guest cannot release a disk: refused at once, not after a timeout.
    ok(corral, "pause", "hp")
    r = corral.cli("disk", "detach", "hp", "data")
    assert r.returncode == 4 and "is paused: its guest cannot release disk 'data'" in r.stderr, r.stderr
    ok(corral, "resume", "hp")

    # Detached (the guest releases it) and re-attached with its data.
    guest(corral, "hp", "umount /mnt/data")
    ok(corral, "disk", "detach", "hp", "data")
    assert dev_of(corral, "hp", "data") == ""
    assert disks(corral, "hp")[0]["attached"] is False
    assert Path(disks(corral, "hp")[0]["file"]).is_file()
    ok(corral, "disk", "attach", "hp", "data")
    dev = dev_of(corral, "hp", "data")
    assert guest(corral, "hp", f"mount {dev} /mnt/data && cat /mnt/data/hello").strip() == "corral-data"
    assert corral.qemu_pids()["hp"] == pid, "all of it without restarting QEMU"

    ok(corral, "disk", "rm", "hp", "data", "--force")
    assert disks(corral, "hp") == [] and dev_of(corral, "hp", "data") == ""
    events = [e.message for e in corral.client.events(vm="hp") if e.type == "disk"]
    assert any("hot-plugged, the guest has it" in m for m in events)
    assert any("grown 64M -> 96M online" in m for m in events)


def test_stopped_vm_gets_its_disks_on_the_command_line(corral: CorralEnv) -> None:
    corral.client.create_vm({"name": "st"})
    ok(corral, "disk", "add", "st", "logs", "--size", "32M", "--iops", "500")
    ok(corral, "disk", "add", "st", "gone", "--size", "16M")
    ok(corral, "disk", "detach", "st", "gone")
    ok(corral, "disk", "resize", "st", "logs", "48M")
    ok(corral, "start", "st")
    start = [e for e in corral.client.events(vm="st") if e.type == "start"][-1]
    argv = " ".join(start.data["argv"])
    assert "serial=logs,bus=hp0" in argv and '"iops-total":500' in argv and "gone" not in argv
    dev = dev_of(corral, "st", "logs")
    assert sectors(corral, "st", dev) * 512 == 48 << 20
    assert dev_of(corral, "st", "gone") == ""
    # Deleted with the VM: its files go with its directory.
    files = [Path(d["file"]) for d in disks(corral, "st")]
    ok(corral, "rm", "--force", "st")
    assert not any(f.exists() for f in files)


def test_bad_disk_requests_are_one_line_and_change_nothing(corral: CorralEnv) -> None:
    corral.client.create_vm({"name": "bad", "project": "pq"})
    ok(corral, "disk", "add", "bad", "data", "--size", "16M")
    ok(corral, "quota", "set", "--project", "pq", "--disk", "2G")  # the root disk holds 1G of it
    before = disks(corral, "bad")
    vm_dir = corral.settings.vms_dir / "bad" / "disks"
    files = sorted(p.name for p in vm_dir.iterdir())
    cases = [
        (["disk", "add", "nope", "x", "--size", "1G"], 3, "no VM named 'nope'"),
        (["disk", "resize", "bad", "nope", "1G"], 3, "VM 'bad' has no disk named 'nope' (its disks: data)"),
        (["disk", "detach", "bad", "nope"], 3, "has no disk named 'nope'"),
        (["disk", "resize", "bad", "data", "8M"], 2, "shrinking it to 8M would destroy data"),
        (["disk", "add", "bad", "data", "--size", "1G"], 4, "already has a disk named 'data'"),
        (["disk", "add", "bad", "big", "--size", "1G"], 5, "project 'pq' would use 2.0G of disk, 16M over its limit"),
        (["disk", "resize", "bad", "data", "1056M"], 5, "32M over its limit of 2G"),
        (["disk", "add", "bad", "x", "--size", "lots"], 2, "'lots' is not a size"),
        (["disk", "throttle", "bad", "data", "--iops", "5", "--read-iops", "5"], 2, "cannot be combined"),
    ]
    for args, code, message in cases:
        r = corral.cli(*args)
        assert r.returncode == code, (args, r.returncode, r.stderr)
        assert message in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert disks(corral, "bad") == before
    assert sorted(p.name for p in vm_dir.iterdir()) == files
