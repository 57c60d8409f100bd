"""Full disks and crashes on real VMs: a VM whose storage fills up pauses, says which file system, and continues by
itself once space is freed, its data whole; after QEMU is killed its images are checked before the next start, and
a corrupt image refuses the start with one line until `corral disk repair`."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CorralEnv, guest, ok, show

pytestmark = pytest.mark.vm


def wait_state(c: CorralEnv, vm: str, state: str, timeout: float = 90) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while (s := show(c, vm))["state"] != state:
        assert time.monotonic() < deadline, f"{vm} is {s['state']} ({s['state_reason']}), not {state}"
        time.sleep(0.5)
    return s


def qemu_img_check(path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-img", "check", "-f", "qcow2", path], capture_output=True, text=True)


@pytest.fixture
def small_fs(corral: CorralEnv) -> Iterator[Path]:
    """A 200 MiB ext4 file system, loop-mounted where the VM 'full' keeps its extra disks; unmounted afterwards,
    even when the test fails."""
    if os.geteuid() != 0:
        pytest.skip("mounting a loop file system needs root")
    corral.client.create_vm({"name": "full"})
    image = corral.home / "small-fs.img"
    mnt = corral.settings.vms_dir / "full" / "disks"
    mnt.mkdir(mode=0o700)
    subprocess.run(["truncate", "-s", "200M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        yield mnt
    finally:
        if (pids := corral.qemu_pids()).get("full"):
            os.kill(pids["full"], signal.SIGKILL)
            time.sleep(1)
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_pauses_says_why_and_resumes_when_freed(corral: CorralEnv, small_fs: Path) -> None:
    ok(corral, "disk", "add", "full", "data", "--size", "160M")
    ok(corral, "start", "full")
    filler = small_fs / "filler"
    free = os.statvfs(small_fs).f_bavail * os.statvfs(small_fs).f_frsize
    subprocess.run(["fallocate", "-l", str(free - (24 << 20)), str(filler)], check=True)  # ~24M left
    dev = guest(corral, "full", "for d in /sys/block/vd*; do [ \"$(cat $d/serial)\" = data ] && "
                                "echo /dev/${d##*/}; done; true").strip()
    src_sum = guest(corral, "full", "dd if=/dev/urandom of=/tmp/src bs=1M count=48 2>/dev/null && "
                                    "sha256sum /tmp/src").split()[0]
    # In the background: the guest is paused in the middle of this, and its agent with it.
    guest(corral, "full", f"(dd if=/tmp/src of={dev} bs=1M oflag=direct && echo ok > /tmp/done) "
                          ">/tmp/dd.log 2>&1 &")

    s = wait_state(corral, "full", "paused")
    assert s["state_reason"].startswith(f"disk full: no space left on the file system at {small_fs}")
    assert "`corral resume full`" in s["state_reason"]
    assert any(e.type == "disk-full" and "BLOCK_IO_ERROR on xd-data: disk full" in e.message
               for e in corral.client.events(vm="full"))
    time.sleep(3)
    assert show(corral, "full")["state"] == "paused", "no room yet: it stays paused"

    filler.unlink()  # space freed on the host: the daemon's poll resumes the VM by itself
    wait_state(corral, "full", "running", timeout=30)
    assert any(e.type == "disk-full" and "resumed" in e.message for e in corral.client.events(vm="full"))
    deadline = time.monotonic() + 60
    while guest(corral, "full", "cat /tmp/done 2>/dev/null; true").strip() != "ok":
        assert time.monotonic() < deadline, guest(corral, "full", "cat /tmp/dd.log")
        time.sleep(1)
    assert guest(corral, "full", f"dd if={dev} bs=1M count=48 iflag=direct 2>/dev/null | sha256sum").split()[0] \
        == src_sum
    ok(corral, "stop", "full")
    r = qemu_img_check(str(small_fs / "data.qcow2"))
    assert r.returncode == 0 and "No errors were found" in r.stdout, r.stdout + r.stderr


def corrupt_refcounts(path: Path) -> None:
    """Zero the refcount of a cluster that holds guest data: qemu-img check reports an error (not a leak)."""
    extents = json.loads(subprocess.run(["qemu-img", "map", "-f", "qcow2", "--output=json", str(path)],
                                        capture_output=True, text=True, check=True).stdout)
    offset = next((e["offset"] for e in extents if e.get("data") and "offset" in e), None)
    assert offset is not None, f"no data in {path}: {extents}"
    with path.open("r+b") as f:
        header = f.read(104)
        cluster_bits = struct.unpack(">I", header[20:24])[0]
        f.seek(struct.unpack(">Q", header[48:56])[0])  # the refcount table; its first block covers the start
        block = struct.unpack(">Q", f.read(8))[0]
        f.seek(block + 2 * (offset >> cluster_bits))  # 16-bit refcounts (the default refcount_order 4)
        f.write(b"\0\0")


def test_killed_qemu_images_checked_corrupt_image_refused(corral: CorralEnv) -> None:
    ok(corral, "launch", "kc")
    ok(corral, "disk", "add", "kc", "data", "--size", "64M")
    # 2 MiB flushed (conv=fsync: QEMU writes the qcow2 metadata too), then writes in flight when QEMU is killed.
    guest(corral, "kc", "dev=$(for d in /sys/block/vd*; do [ \"$(cat $d/serial)\" = data ] && echo /dev/${d##*/}; "
                        "done); dd if=/dev/urandom of=$dev bs=64k count=32 oflag=direct conv=fsync 2>/dev/null; "
                        "(dd if=/dev/urandom of=$dev bs=64k seek=32 count=1000 oflag=direct; sync) >/dev/null 2>&1 &")
    time.sleep(1.5)
    os.kill(show(corral, "kc")["pid"], signal.SIGKILL)  # while it writes
    wait_state(corral, "kc", "crashed")

    ok(corral, "start", "kc")
    checks = [e for e in corral.client.events(vm="kc") if e.type == "image-check"]
    assert len(checks) == 1 and checks[0].result == "ok", checks
    assert "its last stop was not clean" in checks[0].message and "data.qcow2" in checks[0].message
    assert guest(corral, "kc", "echo alive").strip() == "alive"

    # Killed again, and this time an image is damaged: the start is refused, the image untouched.
    os.kill(show(corral, "kc")["pid"], signal.SIGKILL)
    wait_state(corral, "kc", "crashed")
    data = Path(json.loads(ok(corral, "disk", "ls", "kc", "--json"))[0]["file"])
    corrupt_refcounts(data)
    damaged = data.read_bytes()
    r = corral.cli("start", "kc")
    assert r.returncode != 0
    assert f"disk image {data} of VM 'kc' is corrupt" in r.stderr and "`corral disk repair kc`" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert show(corral, "kc")["state"] == "crashed" and "kc" not in corral.qemu_pids()
    assert data.read_bytes() == damaged, "never used, never changed"

    r = corral.cli("disk", "repair", "kc", "--yes")
    assert r.returncode == 0 and "errors and" in r.stdout, r.stdout + r.stderr
    assert qemu_img_check(str(data)).returncode == 0
    ok(corral, "start", "kc", "--no-wait")
    assert show(corral, "kc")["state"] == "running"
