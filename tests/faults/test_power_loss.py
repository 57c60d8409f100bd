"""Power loss while guests write: every record a guest saw made durable survives a SIGKILL of everything.

Two tiny VMs each run a writer that appends numbered records to a file on its ext4 root (``echo >> FILE`` then
busybox ``sync FILE``, which is fsync(2) of that file), and one of them also writes fixed-size records straight to
an extra disk (``corral disk add``; busybox ``dd ... conv=notrunc,fsync`` on the block device, no file system). The
writer prints ``ack N`` only after the fsync returned; the test reads those lines as they come (the client's
streamed exec), so the host knows each record the guest was told is durable. Then every process of this test's
Corral is SIGKILLed by pid (each VM's QEMU, then corrald), the daemon is started again, the VMs are started again,
and the test asserts that:

- every acknowledged record is in the guest's file (and on the raw disk), read back in the guest after the restart,
  in order and intact, including the records of earlier cycles (soak);
- ``qemu-img check`` finds no corruption in any qcow2 of each VM's chain (as QEMU had it open: read from its
  command line), before the daemon touches them; leaked clusters (space, no data) are allowed, and the daemon's own
  check before the start (corral/storage/check.py) must repair them: its ``image-check`` event reports every image
  clean or its leaks fixed;
- the VMs come back usable (exec works, and the file system takes more writes).

What the flush semantics guarantee, and hence what is asserted: QEMU opens every drive with the ``file`` driver's
defaults (corral/engine/cmdline.py states no ``cache.*`` option): ``cache.direct=off, cache.no-flush=off``, that is
``cache=writeback``. The guest sees a volatile write cache (``/sys/block/vdX/queue/write_cache`` is "write back",
asserted) so its fsync ends in a virtio-blk FLUSH, which QEMU completes only after writing its qcow2 metadata
caches and an fdatasync(2) of each image file. So a record is on the host's stable storage when its ``ack`` is
printed; a record not yet acknowledged may or may not be there (not asserted).

What this test proves and what it cannot: killing QEMU loses everything QEMU held in its own memory (its qcow2 L2
and refcount caches, requests in flight, the guest's page cache), exactly as a power cut would; it does not drop
the host's page cache, so data QEMU had written but not yet fdatasync'd still reaches the image files, and a
host disk that lies about flushes is not exercised. A real power cut is stricter for unacknowledged data; for
acknowledged records this test checks the chain guest fsync -> virtio FLUSH -> QEMU flush -> fdatasync of the image
file, which is the part Corral controls (the cache mode of its drives), and that Corral's restart path (crash
detection, image check, leak repair, start) gives the data back.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from corral.client import Client
from corral.engine import process
from tests.conftest import CorralEnv, guest, ok, show

pytestmark = pytest.mark.vm

# Appends "rec N" to FILE and fsyncs it (busybox `sync FILE` is fsync(2) of FILE) before printing "ack N".
FILE_WRITER = r"""f=$1; n=$2; end=$3
while [ "$n" -le "$end" ]; do
  echo "rec $n" >> "$f" || exit 1
  sync "$f" || exit 2
  echo "ack $n"
  n=$((n+1))
done"""

RECORD = 16  # bytes of a raw record: "rec %011d\n"
# Writes record N at byte N*16 of the block device DEV, then fsync(2)s the device (dd conv=fsync), then "ack N".
RAW_WRITER = r"""d=$1; n=$2; end=$3
while [ "$n" -le "$end" ]; do
  printf 'rec %011d\n' "$n" | dd of="$d" bs=16 seek="$n" conv=notrunc,fsync 2>/dev/null || exit 1
  echo "ack $n"
  n=$((n+1))
done"""

# The block device whose serial (the Corral disk's name) is $1.
FIND_DISK = r"""for b in /sys/block/vd*; do [ "$(cat "$b/serial" 2>/dev/null)" = "$1" ] && echo "/dev/${b##*/}"; done"""

MIN_ACKS = 8  # records each writer must have acknowledged before the power goes
SPAN = 100_000  # record numbers reserved per cycle (raw: 1.6 MB of the extra disk)
DATA_DISK = "data"


@dataclass
class Writer:
    """One guest writer: ``kind`` "file" (a file on the root file system) or "raw" (the extra disk's device)."""

    vm: str
    kind: str
    target: str  # the guest file, or the disk's name (its device is found by serial each boot)
    first: int  # the first record number of this cycle
    acks: list[int] = field(default_factory=list)
    ended: str = ""  # how its stream ended

    def run(self, client: Client, device: str) -> None:
        script, where = (FILE_WRITER, self.target) if self.kind == "file" else (RAW_WRITER, device)
        argv = ["sh", "-c", script, "writer", where, str(self.first), str(self.first + SPAN - 1)]
        buf = b""
        try:
            for chunk in client.exec_stream(self.vm, argv):
                if chunk.kind == "stdout":
                    buf += base64.b64decode(chunk.data_b64 or "")
                    *lines, buf = buf.split(b"\n")
                    self.acks += [int(m.group(1)) for ln in lines if (m := re.fullmatch(rb"ack (\d+)", ln))]
                elif chunk.kind in ("exit", "error"):
                    self.ended = f"{chunk.kind}: {chunk.exit_code if chunk.kind == 'exit' else chunk.message}"
                    return
            self.ended = "stream ended"
        except Exception as exc:  # the daemon's death ends the stream: expected
            self.ended = f"{type(exc).__name__}: {exc}"
        finally:
            client.close()


def chain_images(c: CorralEnv, vm: str, pid: int) -> set[str]:
    """Every qcow2 file QEMU ``pid`` has open for a drive: the ones on its command line (the root chain exactly as
    QEMU opened it, and the extra disks it started with) and the attached extra disks (hot-plugged ones are not on
    it). Also asserts the cache mode: no ``cache.*`` option on any drive (the file driver's default: writeback,
    with the guest's flushes honoured)."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    nodes: dict[str, dict[str, str]] = {}
    for flag, val in zip(argv, argv[1:], strict=False):
        if flag == b"-blockdev":
            opts = dict(kv.split("=", 1) for kv in val.decode().split(","))
            assert not any(k.startswith("cache.") for k in opts), f"a drive with a cache option: {val.decode()}"
            nodes[opts["node-name"]] = opts
    files = {nodes[o["file"]]["filename"] for o in nodes.values() if o["driver"] == "qcow2"}
    return files | {d.file for d in c.client.list_disks(vm) if d.attached}


def qemu_img_check(path: str) -> dict[str, int]:
    r = subprocess.run(["qemu-img", "check", "-f", "qcow2", "--output=json", path],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode in (0, 3), f"qemu-img check {path}: exit {r.returncode}: {r.stderr.strip()} {r.stdout}"
    data = json.loads(r.stdout)
    return {k: int(data.get(k, 0)) for k in ("corruptions", "check-errors", "leaks")}


def power_cut(c: CorralEnv) -> None:
    """SIGKILL this test's QEMUs and corrald, by pid, as close together as we can; wait until they are gone."""
    pids = [*c.qemu_pids().values()]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    c.kill_daemon(signal.SIGKILL)  # by the pid in its pid file; waits for it, closes the fixture's client
    deadline = time.monotonic() + 15
    while any(process.is_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(process.is_alive(p) for p in pids), "a QEMU outlived SIGKILL"


def read_file_records(c: CorralEnv, vm: str, path: str) -> list[str]:
    return guest(c, vm, f"cat {path}").splitlines()


def read_raw_records(c: CorralEnv, vm: str, device: str, first: int, last: int) -> list[str]:
    out = guest(c, vm, f"dd if={device} bs={RECORD} skip={first} count={last - first + 1} 2>/dev/null")
    return [out[i:i + RECORD] for i in range(0, len(out), RECORD)]


def device_of(c: CorralEnv, vm: str) -> str:
    dev = guest(c, vm, FIND_DISK.replace("$1", DATA_DISK)).strip()
    assert dev.startswith("/dev/vd"), f"no device with serial {DATA_DISK} in {vm}"
    return dev


def verify(c: CorralEnv, done: list[Writer], current: list[Writer]) -> dict[str, int]:
    """Every acknowledged record of every cycle so far is there; the number of unacknowledged records of this
    cycle's writers found in the files (written, not yet acknowledged when the power went: allowed, not required)."""
    extra = 0
    files: dict[tuple[str, str], list[str]] = {}
    for w in done:
        if w.kind == "file":
            lines = files.setdefault((w.vm, w.target), read_file_records(c, w.vm, w.target))
            if not w.acks:
                continue
            want = [f"rec {n}" for n in range(w.first, max(w.acks) + 1)]
            assert lines[:len(want)] == want, f"{w.vm}:{w.target}: acknowledged records lost or damaged"
            if any(w is x for x in current):
                extra += len(lines) - len(want)
        else:
            if not w.acks:
                continue
            got = read_raw_records(c, w.vm, device_of(c, w.vm), w.first, max(w.acks))
            want = [f"rec {n:011d}\n" for n in range(w.first, max(w.acks) + 1)]
            assert got == want, f"{w.vm}:{DATA_DISK}: acknowledged raw records lost or damaged"
    return {"unacknowledged_found": extra}


def boot(c: CorralEnv, names: list[str]) -> None:
    for n in names:
        ok(c, "start", n, "--no-wait")
    for n in names:
        c.client.wait_ready(n, 180)


def power_loss(c: CorralEnv, cycles: int) -> list[dict[str, Any]]:
    vms = ["pa", "pb"]
    for n in vms:
        ok(c, "launch", n, "--memory", "128M", "--no-wait")
    for n in vms:
        c.client.wait_ready(n, 180)
    ok(c, "disk", "add", "pa", DATA_DISK, "--size", "64M")
    for n in vms:
        assert guest(c, n, "cat /sys/block/vda/queue/write_cache").strip() == "write back"
    assert guest(c, "pa", f"cat /sys/block/{device_of(c, 'pa')[5:]}/queue/write_cache").strip() == "write back"

    done: list[Writer] = []
    figures: list[dict[str, Any]] = []
    rng = random.Random()
    for cycle in range(cycles):
        base = 1 + cycle * SPAN
        writers = [Writer("pa", "file", f"/root/rec-{cycle}.log", base), Writer("pb", "file",
                   f"/root/rec-{cycle}.log", base), Writer("pa", "raw", DATA_DISK, base)]
        dev = device_of(c, "pa")
        threads = [threading.Thread(target=w.run, args=(Client(c.settings.socket), dev), daemon=True)
                   for w in writers]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        while min(len(w.acks) for w in writers) < MIN_ACKS:
            assert all(t.is_alive() for t in threads), [w.ended for w in writers]
            assert time.monotonic() < deadline, f"writers too slow: {[len(w.acks) for w in writers]}"
            time.sleep(0.1)
        time.sleep(rng.uniform(0.5, 3.0))  # the cut lands anywhere in a record's write, flush or ack
        chains = {n: chain_images(c, n, pid) for n, pid in c.qemu_pids().items()}
        assert set(chains) == set(vms) and any(p.endswith(f"/{DATA_DISK}.qcow2") for p in chains["pa"])
        power_cut(c)
        write_s = time.monotonic() - t0
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads)
        done += writers

        checks = {p: qemu_img_check(p) for n in vms for p in chains[n]}
        bad = {p: r for p, r in checks.items() if r["corruptions"] or r["check-errors"]}
        assert not bad, f"corrupt images after the power cut: {bad}"

        t1 = time.monotonic()
        c.start_daemon()
        for n in vms:
            assert show(c, n)["state"] == "crashed"
        after = c.client.events(type="image-check")  # the daemon's own check, before each start
        boot(c, vms)
        restart_s = time.monotonic() - t1
        for n in vms:
            ev = [e for e in c.client.events(vm=n, type="image-check") if e.id > max((a.id for a in after), default=0)]
            assert ev and ev[-1].result == "ok", f"{n}: the daemon's image check: {ev}"
            images = ev[-1].data["images"]
            assert isinstance(images, list)
            for img in images:
                assert img["corruptions"] == 0 and img["leaks"] == img["leaks_fixed"], img
        found = verify(c, done, writers)
        for n in vms:  # usable: exec works and the file system takes writes
            assert guest(c, n, "echo ok > /root/after && sync /root/after && cat /root/after") == "ok\n"
        figures.append({
            "cycle": cycle + 1, "acks": {f"{w.vm}:{w.kind}": len(w.acks) for w in writers},
            "write_s": round(write_s, 1), "restart_s": round(restart_s, 1),
            "leaks": sum(r["leaks"] for r in checks.values()), "images": len(checks), **found,
        })
        print(f"power-loss cycle {figures[-1]}")
    return figures


def test_power_loss_keeps_acknowledged_writes(corral: CorralEnv) -> None:
    power_loss(corral, cycles=1)


@pytest.mark.soak
def test_power_loss_soak(corral: CorralEnv) -> None:
    figures = power_loss(corral, cycles=5)
    total = sum(sum(f["acks"].values()) for f in figures)
    print(f"power-loss soak: {len(figures)} cycles, {total} acknowledged records, all found")
