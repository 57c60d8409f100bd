"""The backup repository and chunk logic, without QEMU: chunk format and checksums, dedup, zero chunks, indexes,
verify naming bad chunks and their backups, id prefixes, the lock, and cutting a (fake) backup target into chunks,
full and incremental (read-modify-write of partly changed chunks)."""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from corral.backup import chunks
from corral.backup.models import BackupIndex
from corral.backup.repo import CorruptBackup, Repository, RepositoryError
from corral.backup.transfer import store_target, write_raw
from corral.engine.disk_backup import Extent
from corral.errors import InvalidInput, NotFound

C = chunks.CHUNK_SIZE


def test_chunk_roundtrip_and_every_kind_of_damage() -> None:
    data = os.urandom(1000) * 50
    name = chunks.digest(data)
    stored = chunks.encode(data)
    assert chunks.decode(name, stored) == data
    assert len(stored) < len(data)  # compressed
    for i in (0, 10, chunks.HEADER + 3, len(stored) - 1):
        bad = bytearray(stored)
        bad[i] ^= 1
        with pytest.raises(chunks.ChunkError):
            chunks.decode(name, bytes(bad))
    with pytest.raises(chunks.ChunkError, match="name"):
        chunks.decode("0" * 64, stored)


def test_chunk_arithmetic() -> None:
    assert chunks.count(0) == 0 and chunks.count(1) == 1 and chunks.count(C) == 1 and chunks.count(C + 1) == 2
    assert chunks.chunk_length(1, C + 5) == 5
    assert list(chunks.touched([(0, 1), (C - 1, 2), (5 * C, C)])) == [0, 1, 5]
    assert list(chunks.touched([(10, 0)])) == []
    assert chunks.clip([(0, 10), (20, 10)], 5, 25) == [(5, 5), (20, 5)]
    assert chunks.regions([1, 2, 3, 7, 9, 10]) == 3
    assert chunks.is_zero(bytes(C)) and chunks.is_zero(bytes(7)) and not chunks.is_zero(b"\0\1")


def index(repo: Repository, vm: str, table: list[str | None], size: int, created: datetime | None = None,
          bid: str | None = None) -> BackupIndex:
    idx = BackupIndex(id=bid or repo.new_id(), vm=vm, virtual_size=size, chunk_size=C,
                      created=created or datetime.now(UTC), kind="full", read="full", spec={"name": vm},
                      chunks=table)
    repo.write_index(idx)
    return idx


def test_repo_init_open_dedup_verify(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="repo init"):
        Repository.open(tmp_path / "r")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(InvalidInput, match="not an empty directory"):
        Repository.init(tmp_path / "full")
    with pytest.raises(RepositoryError, match="not a backup repository"):
        Repository.open(tmp_path / "full")
    repo = Repository.init(tmp_path / "r")
    with pytest.raises(InvalidInput, match="already"):
        Repository.init(tmp_path / "r")
    repo = Repository.open(tmp_path / "r")

    a, b = os.urandom(C), os.urandom(C)
    na, stored = repo.put_chunk(a)
    assert stored > 0 and repo.put_chunk(a) == (na, 0)  # deduplicated
    nb, _ = repo.put_chunk(b)
    i1 = index(repo, "vm1", [na, None, nb], 3 * C, bid="aaaa1111")
    i2 = index(repo, "vm2", [nb], C, bid="aaaa2222")
    assert repo.load_index(i1.id) == i1
    assert [i.id for i in repo.indexes()] == [i1.id, i2.id]
    report = repo.verify(None)
    assert report.ok and report.chunks == 2

    # Damage chunk b: both backups are bad, named with it; a missing chunk too.
    p = repo.chunk_path(nb)
    raw = bytearray(p.read_bytes())
    raw[-5] ^= 0xFF
    p.write_bytes(bytes(raw))
    report = repo.verify(None)
    assert not report.ok and report.bad_backups == [i1.id, i2.id]
    assert report.problems[0].chunk == nb and report.problems[0].backups == [i1.id, i2.id]
    with pytest.raises(CorruptBackup, match=nb[:16]):
        repo.get_chunk(nb)
    repo.chunk_path(na).unlink()
    report = repo.verify([i1.id])
    assert {pr.chunk: pr.problem for pr in report.problems}[na] == "missing"

    with pytest.raises(InvalidInput, match="ambiguous"):
        repo.resolve("aaaa")
    assert repo.resolve("aaaa2") == i2.id
    with pytest.raises(NotFound):
        repo.resolve("bbbb")
    with pytest.raises(InvalidInput, match="not a backup id"):
        repo.resolve("../etc")
    (repo.indexes_dir / "cccc.json").write_text("{not json")
    assert "cccc" in repo.verify(None).bad_backups


def test_repo_lock_excludes_writers(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "r")
    with repo.lock(True), pytest.raises(RepositoryError, match="busy"), repo.lock(True, timeout=0.3):
        pass
    with repo.lock(False), repo.lock(False, timeout=0.3):
        pass  # readers share
    order: list[str] = []

    def writer() -> None:
        with repo.lock(True, timeout=5):
            order.append("second")

    with repo.lock(True):
        t = threading.Thread(target=writer)
        t.start()
        time.sleep(0.5)
        order.append("first")
    t.join()
    assert order == ["first", "second"]


def _target(tmp_path: Path, pieces: dict[int, bytes]) -> tuple[Path, list[Extent]]:
    """A fake standalone target: data at file offsets, with its map (data extents, one zero extent)."""
    path = tmp_path / "target"
    extents, off = [], 4096
    with open(path, "wb") as f:
        for start, data in sorted(pieces.items()):
            f.seek(off)
            f.write(data)
            extents.append(Extent(start, len(data), True, True, off))
            off += len(data)
    return path, extents


def test_store_full_then_incremental_read_modify_write(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "r")
    size = 4 * C + 100  # a short last chunk
    disk = bytearray(size)
    disk[0:C] = os.urandom(C)
    disk[2 * C + 10:2 * C + 20] = b"x" * 10
    disk[4 * C:] = os.urandom(100)
    target, ext = _target(tmp_path, {0: bytes(disk[0:C]), 2 * C: bytes(disk[2 * C:3 * C]),
                                     4 * C: bytes(disk[4 * C:])})
    full = store_target(repo, target, ext, size, None, lambda *a: None)
    assert full["chunks"][1] is None and full["chunks"][3] is None and full["new_chunks"] == 3
    parent = index(repo, "vm", full["chunks"], size)

    # Incremental: 8 bytes changed inside chunk 0, chunk 1 written whole, chunk 2 zeroed (a present zero extent).
    disk[100:108] = b"CHANGED!"
    disk[C:2 * C] = os.urandom(C)
    disk[2 * C:3 * C] = bytes(C)
    target2, ext2 = _target(tmp_path, {64: bytes(disk[64:128]), C: bytes(disk[C:2 * C])})
    ext2.append(Extent(2 * C, C, True, False, None))
    ext2.sort(key=lambda e: e.start)
    inc = store_target(repo, target2, ext2, size, parent, lambda *a: None)
    assert inc["changed_chunks"] == 3 and inc["changed_regions"] == 1
    assert inc["chunks"][2] is None and inc["chunks"][4] == full["chunks"][4]  # zeroed / untouched
    assert inc["data_bytes_read"] == 64 + C
    idx = index(repo, "vm", inc["chunks"], size)
    out = tmp_path / "out.raw"
    write_raw(repo, idx, out, lambda *a: None)
    assert out.read_bytes() == bytes(disk), "restored = the disk after the changes, byte for byte"
    assert out.stat().st_blocks * 512 < size, "zero chunks are holes"

    # An old backup still restores as it was.
    write_raw(repo, parent, out, lambda *a: None)
    assert out.read_bytes()[100:108] != b"CHANGED!"


def test_prune_removes_only_unreferenced_chunks(tmp_path: Path) -> None:
    from corral.backup import retention
    from corral.backup.gc import prune

    repo = Repository.init(tmp_path / "r")
    shared, old = repo.put_chunk(os.urandom(C))[0], repo.put_chunk(os.urandom(C))[0]
    other = repo.put_chunk(os.urandom(C))[0]
    now = datetime.now(UTC)
    a = index(repo, "vm", [shared, old], 2 * C, now - timedelta(days=2))
    b = index(repo, "vm", [shared, None], 2 * C, now)
    index(repo, "other", [other], C, now - timedelta(days=9))
    (repo.tmp_dir / "x.tmp").write_bytes(b"junk")
    dry = prune(repo, "vm", retention.Policy(keep_last=1), dry_run=True)
    assert dry.removed == [a.id] and dry.chunks_removed == 1 and repo.has_chunk(old)
    res = prune(repo, "vm", retention.Policy(keep_last=1), dry_run=False)
    assert res.kept == [b.id] and not repo.has_chunk(old)
    assert repo.has_chunk(shared) and repo.has_chunk(other), "other backups' chunks stay"
    assert not list(repo.tmp_dir.iterdir())
    with pytest.raises(NotFound):
        prune(repo, "nobody", retention.Policy(keep_last=1), dry_run=False)


def test_an_interrupted_backups_chunks_are_dropped_and_indexed_ones_kept(tmp_path: Path) -> None:
    """Recovery of a backup that died before its index: the chunks it stored (named by no index) go, every
    indexed chunk stays; a repository another backup holds is left alone (its new chunks are not garbage)."""
    from corral.backup.gc import drop_unindexed

    repo = Repository.init(tmp_path / "r")
    kept = repo.put_chunk(os.urandom(C))[0]
    index(repo, "vm", [kept], C, datetime.now(UTC))
    orphans = [repo.put_chunk(os.urandom(C))[0] for _ in range(3)]
    with repo.lock(exclusive=True):
        holder_done = threading.Event()

        def other() -> None:
            try:
                drop_unindexed(repo)
            except RepositoryError:
                holder_done.set()

        t = threading.Thread(target=other)
        t.start()
        t.join(10)
        assert holder_done.is_set(), "a busy repository must be refused, not swept"
    assert all(repo.has_chunk(o) for o in orphans)
    assert drop_unindexed(repo) == 3
    assert repo.has_chunk(kept) and not any(repo.has_chunk(o) for o in orphans)
