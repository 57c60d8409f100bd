"""Backups of real VMs (tiny image, 1 GiB disk), through the CLI.

- full backup of a running VM, 50 MiB written in the guest, incremental backup: about 50 MiB stored, and only what
  the dirty bitmap marked was read;
- bit for bit: the guest is paused only to take a reference copy of its disk (qemu-img convert -U, QEMU having
  flushed at the pause) while another incremental backup is taken at that same instant; the disk restored from that
  backup is compared with the reference by `qemu-img compare`;
- one flipped byte in one stored chunk: verify fails naming the chunk and the backups using it (exit 1), restore is
  refused in one line and creates nothing; prune removes the chunks no backup refers to;
- the bitmap survives a VM restart and a daemon restart (incremental), but not a killed QEMU (full, with the reason);
- restore in place, and to a new VM that boots with the backed-up file; schedules run by the daemon; an expired VM
  with --backup-first is backed up, then deleted.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import CorralEnv, guest, ok, start_daemon_with, until

pytestmark = pytest.mark.vm

MIB = 1 << 20
CHUNK = 4 * MIB


def backup(c: CorralEnv, name: str, *args: str) -> dict:  # type: ignore[type-arg]
    return json.loads(ok(c, "backup", "create", name, "--json", *args))  # type: ignore[no-any-return]


def chunk_files(repo: Path) -> set[str]:
    return {p.name for p in (repo / "chunks").glob("*/*")}


def test_full_incremental_restore_bit_for_bit(corral: CorralEnv, tmp_path: Path) -> None:
    ok(corral, "launch", "src", "--disk", "1G")
    repo = tmp_path / "repo"
    ok(corral, "backup", "repo", "init", str(repo))
    full = backup(corral, "src", "--repo", str(repo))
    assert full["kind"] == "full" and full["read"] == "full"

    guest(corral, "src", "dd if=/dev/urandom of=/root/big bs=1M count=50 2>/dev/null && sync")
    inc = backup(corral, "src", "--repo", str(repo))
    assert inc["kind"] == "incremental" and inc["read"] == "bitmap" and inc["parent"] == full["id"], inc
    n = 50 * MIB
    assert inc["read_bytes"] <= 1.1 * n + inc["changed_regions"] * CHUNK, inc  # only what changed was read
    assert n <= inc["stored_bytes"] <= 1.1 * n + inc["changed_regions"] * CHUNK, inc

    # The reference: the guest paused (QEMU flushes its disk at the pause), a raw copy of what it sees, and a backup
    # of that same instant.
    # Parts of chunks rewritten (zeroes over random data, a small file): read-modify-write of partly changed chunks.
    guest(corral, "src", "dd if=/dev/zero of=/root/big bs=64k count=5 seek=37 conv=notrunc 2>/dev/null; "
                         "echo more > /root/small; sync")
    ok(corral, "pause", "src")
    ref = tmp_path / "ref.raw"
    disk = corral.settings.vms_dir / "src" / "disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", str(disk), str(ref)], check=True)
    at_pause = backup(corral, "src", "--repo", str(repo))
    ok(corral, "resume", "src")
    assert at_pause["read"] == "bitmap", at_pause
    ok(corral, "backup", "restore", at_pause["id"], "--to", "copy", "--repo", str(repo))
    restored = corral.settings.vms_dir / "copy" / "disk.qcow2"
    info = json.loads(subprocess.run(["qemu-img", "info", "-f", "qcow2", "--output=json", str(restored)],
                                     check=True, capture_output=True, text=True).stdout)
    assert "backing-filename" not in info, "the restored disk stands alone"
    r = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(ref), str(restored)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr  # "Images are identical."

    show = json.loads(ok(corral, "show", "copy", "--json"))
    assert show["state"] == "stopped" and show["spec"]["disk"] == 1 << 30 and show["spec"]["image"] == "tiny"

    listed = json.loads(ok(corral, "backup", "ls", "src", "--repo", str(repo), "--json"))
    assert [b["id"] for b in listed] == [full["id"], inc["id"], at_pause["id"]]


def test_corrupt_chunk_fails_verify_and_blocks_restore_and_prune(corral: CorralEnv, tmp_path: Path) -> None:
    ok(corral, "launch", "vm", "--disk", "1G")
    repo = tmp_path / "repo"
    ok(corral, "backup", "repo", "init", str(repo))
    first = backup(corral, "vm", "--repo", str(repo))
    guest(corral, "vm", "dd if=/dev/urandom of=/root/a bs=1M count=8 2>/dev/null; sync")
    second = backup(corral, "vm", "--repo", str(repo))
    ok(corral, "backup", "verify", "--all", "--repo", str(repo))

    index = json.loads((repo / "indexes" / f"{second['id']}.json").read_text())
    only_second = [c for c in index["chunks"] if c is not None]
    first_chunks = set(json.loads((repo / "indexes" / f"{first['id']}.json").read_text())["chunks"])
    victim = next(c for c in only_second if c not in first_chunks)
    path = repo / "chunks" / victim[:2] / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))

    r = corral.cli("backup", "verify", "--all", "--repo", str(repo))
    assert r.returncode == 1, r.stdout + r.stderr
    assert victim[:16] in r.stdout and second["id"] in r.stdout and first["id"] not in r.stdout.split("fail")[-1]
    r = corral.cli("backup", "verify", first["id"], "--repo", str(repo))
    assert r.returncode == 0, r.stdout + r.stderr  # the other backup is whole

    before = sorted(p.name for p in corral.settings.vms_dir.iterdir())
    r = corral.cli("backup", "restore", second["id"], "--to", "nope", "--repo", str(repo))
    assert r.returncode != 0 and "fails verification" in r.stderr and victim[:16] in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert corral.cli("show", "nope").returncode == 3
    assert sorted(p.name for p in corral.settings.vms_dir.iterdir()) == before, "nothing created"

    # Prune: keep the newest only; the chunks only the first backup used are removed, the rest stay.
    first_only = {c for c in first_chunks if c is not None} - set(only_second)
    assert first_only and first_only <= chunk_files(repo)
    dry = json.loads(ok(corral, "backup", "prune", "vm", "--keep-last", "1", "--dry-run", "--json",
                        "--repo", str(repo)))
    assert dry["removed"] == [first["id"]] and dry["chunks_removed"] == len(first_only)
    assert first_only <= chunk_files(repo), "a dry run removes nothing"
    pruned = json.loads(ok(corral, "backup", "prune", "vm", "--keep-last", "1", "--json", "--repo", str(repo)))
    assert pruned["removed"] == [first["id"]] and pruned["kept"] == [second["id"]]
    assert not first_only & chunk_files(repo)
    assert set(only_second) <= chunk_files(repo)
    r = corral.cli("backup", "prune", "vm", "--repo", str(repo))
    assert r.returncode == 2 and "--keep-last" in r.stderr


def test_bitmap_survives_vm_and_daemon_restarts(corral: CorralEnv) -> None:
    ok(corral, "launch", "bm", "--disk", "1G")
    assert backup(corral, "bm")["read"] == "full"  # into the default repository
    assert (corral.home / "backups" / "corral-backup.json").is_file()

    guest(corral, "bm", "dd if=/dev/urandom of=/root/x bs=1M count=4 2>/dev/null; sync")
    ok(corral, "stop", "bm")
    ok(corral, "start", "bm")
    after_restart = backup(corral, "bm")
    assert after_restart["read"] == "bitmap", after_restart
    assert after_restart["read_bytes"] < 16 * MIB

    corral.kill_daemon()
    corral.start_daemon()
    guest(corral, "bm", "dd if=/dev/urandom of=/root/y bs=1M count=4 2>/dev/null; sync")
    after_daemon = backup(corral, "bm")
    assert after_daemon["read"] == "bitmap" and after_daemon["parent"] == after_restart["id"], after_daemon


def test_bitmap_of_a_killed_qemu_is_not_trusted(corral: CorralEnv) -> None:
    ok(corral, "launch", "bm", "--disk", "1G")
    guest(corral, "bm", "dd if=/dev/urandom of=/root/keep bs=1M count=32 2>/dev/null; sync")
    assert backup(corral, "bm")["read"] == "full"
    ok(corral, "stop", "bm")  # the bitmap is written into the qcow2, then loaded (and marked in use) at the start
    ok(corral, "start", "bm")
    ok(corral, "kill", "bm")
    ok(corral, "start", "bm")
    after_kill = backup(corral, "bm")
    assert after_kill["read"] == "full" and "inconsistent" in after_kill["reason"], after_kill
    # A full read still stores only what changed: the 32 MiB file's chunks are already there.
    assert after_kill["new_chunks"] <= after_kill["changed_chunks"] - 6, after_kill
    assert backup(corral, "bm")["read"] == "bitmap", "a fresh bitmap from the full backup on"

    ok(corral, "stop", "bm")
    stopped = backup(corral, "bm")
    assert stopped["read"] == "full" and stopped["vm_state"] == "stopped"
    r = corral.cli("backup", "create", "nosuch")
    assert r.returncode == 3 and "no VM named 'nosuch'" in r.stderr


def test_restore_in_place_and_to_a_new_vm_that_boots(corral: CorralEnv) -> None:
    ok(corral, "launch", "ip", "--disk", "1G")
    guest(corral, "ip", "echo before > /root/f; sync")
    b = backup(corral, "ip")  # taken while the guest runs
    guest(corral, "ip", "echo after > /root/f; sync")
    r = corral.cli("backup", "restore", b["id"], "--in-place", "ip")
    assert r.returncode == 4 and "while it is running" in r.stderr, r.stderr
    ok(corral, "stop", "ip")
    ok(corral, "backup", "restore", b["id"], "--in-place", "ip")
    ok(corral, "backup", "restore", b["id"], "--to", "twin")
    disks = [str(corral.settings.vms_dir / n / "disk.qcow2") for n in ("ip", "twin")]
    r2 = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", *disks], capture_output=True,
                        text=True)
    assert r2.returncode == 0, r2.stdout + r2.stderr  # the in-place disk is the same restored disk
    ok(corral, "start", "twin")
    ok(corral, "wait", "twin", "--ready", "--timeout", "300")
    assert guest(corral, "twin", "cat /root/f").strip() == "before"
    r = corral.cli("backup", "restore", b["id"], "--to", "ip")
    assert r.returncode == 4 and "already exists" in r.stderr
    assert json.loads(ok(corral, "backup", "create", "ip", "--json"))["reason"] == "the VM is stopped"


@pytest.fixture
def fast(corral_home: CorralEnv) -> CorralEnv:
    return start_daemon_with(corral_home, {"CORRAL_BACKUP_CHECK_INTERVAL": "0.5", "CORRAL_EXPIRY_INTERVAL": "0.5"})


def test_schedule_and_final_backup_before_expiry_delete(fast: CorralEnv) -> None:
    ok(fast, "launch", "sch")
    ok(fast, "backup", "schedule", "sch", "--every", "2s", "--keep-last", "2")
    r = fast.cli("backup", "schedule", "sch", "--daily", "25:00")
    assert r.returncode == 2 and "HH:MM" in r.stderr
    def runs() -> int:
        evs = [e for e in fast.client.events(vm="sch") if e.type == "backup"]
        return sum(e.message.startswith("backup ") for e in evs) if any("prune" in e.message for e in evs) else 0

    until(lambda: runs() >= 3, 120, "three scheduled backups and a prune")
    assert all(e.actor == "corrald" for e in fast.client.events(vm="sch") if e.type == "backup")
    ok(fast, "backup", "schedule", "sch", "--remove")
    time.sleep(1.5)
    kept = json.loads(ok(fast, "backup", "ls", "sch", "--json"))
    assert 2 <= len(kept) <= 3, kept  # pruned to 2 after each run (one more may have landed since)
    sched = json.loads(ok(fast, "backup", "schedules", "--json"))
    assert sched == []

    ok(fast, "launch", "exp", "--no-wait", "--ttl", "8s", "--on-expiry", "delete", "--backup-first")
    r = fast.cli("launch", "bad", "--backup-first")
    assert r.returncode == 2 and "--on-expiry delete" in r.stderr
    until(lambda: fast.cli("show", "exp").returncode == 3, 120, "the expired VM to be deleted")
    finals = json.loads(ok(fast, "backup", "ls", "exp", "--json"))
    assert len(finals) == 1 and finals[0]["vm_state"] == "running", finals
    expired = [e for e in fast.client.events(vm="exp") if e.type == "expired"]
    assert expired and "after a final backup" in expired[-1].message


def test_backup_bad_input(corral: CorralEnv, tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    r = corral.cli("backup", "repo", "init", str(tmp_path / "full"))
    assert r.returncode == 2 and "not an empty directory" in r.stderr
    assert list((tmp_path / "full").iterdir()) == [tmp_path / "full" / "f"]
    r = corral.cli("backup", "ls", "--repo", str(tmp_path / "none"))
    assert r.returncode == 3 and "backup repo init" in r.stderr
    assert not (tmp_path / "none").exists()
    r = corral.cli("backup", "verify")
    assert r.returncode == 2 and "--all" in r.stderr
    r = corral.cli("backup", "restore", "abcd")
    assert r.returncode == 2 and "--to NEW" in r.stderr
    r = corral.cli("backup", "restore", "abcd", "--to", "x")
    assert r.returncode == 3 and "no backup 'abcd'" in r.stderr
    r = corral.cli("backup", "restore", "../x", "--to", "x")
    assert r.returncode == 2 and "not a backup id" in r.stderr
    r = corral.cli("backup", "schedule", "nosuch", "--every", "1h")
    assert r.returncode == 3
    r = corral.cli("backup", "schedule", "nosuch", "--every", "soon")
    assert r.returncode == 2 and "--every" in r.stderr
    assert corral.cli("backup", "ls").stdout.strip() == "no backups"
