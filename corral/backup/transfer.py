"""Moving a disk's data into and out of a backup repository: a backup target (QEMU's copy of the disk, mapped into
extents) cut into content-addressed chunks, full or over its parent's table (read-modify-write of chunks changed in
part); and a backup written back out as a sparse raw file, every chunk checked on the way."""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from corral.backup import chunks
from corral.backup.models import BackupIndex
from corral.backup.repo import CorruptBackup, Repository
from corral.engine import disk_backup
from corral.errors import EngineError

Progress = Callable[[str, int, int | None], None]


def store_target(r: Repository, target: Path, extents: list[disk_backup.Extent], size: int,
                 parent: BackupIndex | None, progress: Progress) -> dict[str, Any]:
    """Cut the target into chunks and store the new ones. ``parent``: an incremental backup over it (only present
    extents changed); None: the target holds the whole disk."""
    n = chunks.count(size)
    if parent is not None:
        table: list[str | None] = list(parent.chunks)
        changed = [(e.start, e.length) for e in extents if e.present]
    else:
        table = [None] * n
        changed = [(e.start, e.length) for e in extents if e.data]
    todo = list(chunks.touched(changed))
    starts = [e.start for e in extents]
    new_chunks = stored_bytes = read = 0
    with open(target, "rb") as f:
        for k, i in enumerate(todo):
            lo = i * chunks.CHUNK_SIZE
            hi = lo + chunks.chunk_length(i, size)
            first = max(0, bisect.bisect_right(starts, lo) - 1)
            here = [e for e in extents[first:] if e.start < hi and e.start + e.length > lo and e.present]
            covered = sum(length for _, length in chunks.clip([(e.start, e.length) for e in here], lo, hi))
            if parent is not None and covered < hi - lo and table[i] is not None:
                buf = bytearray(r.get_chunk(table[i]))  # type: ignore[arg-type]  # changed in part: read-modify
            else:
                buf = bytearray(hi - lo)
            for e in here:
                s, end = max(e.start, lo), min(e.start + e.length, hi)
                if e.data and e.offset is not None:
                    f.seek(e.offset + (s - e.start))
                    data = f.read(end - s)
                    if len(data) != end - s:
                        raise EngineError(f"backup target {target} is shorter than its map says")
                    buf[s - lo:end - lo] = data
                    read += end - s
                else:
                    buf[s - lo:end - lo] = bytes(end - s)
            plain = bytes(buf)
            if chunks.is_zero(plain):
                table[i] = None
            else:
                name, stored = r.put_chunk(plain)
                table[i] = name
                if stored:
                    new_chunks += 1
                    stored_bytes += stored
            progress("store", k + 1, len(todo))
    data_bytes = sum(chunks.chunk_length(i, size) for i, c in enumerate(table) if c is not None)
    return {"chunks": table, "new_chunks": new_chunks, "stored_bytes": stored_bytes, "changed_chunks": len(todo),
            "changed_regions": chunks.regions(todo), "data_bytes": data_bytes, "data_bytes_read": read}


def write_raw(r: Repository, index: BackupIndex, raw: Path, progress: Progress) -> None:
    """The backup's disk as a sparse raw file; every chunk checked (CorruptBackup on the first bad one)."""
    todo = [(i, c) for i, c in enumerate(index.chunks) if c is not None]
    with open(raw, "wb") as f:
        f.truncate(index.virtual_size)
        for k, (i, name) in enumerate(todo):
            data = r.get_chunk(name)
            if len(data) != chunks.chunk_length(i, index.virtual_size, index.chunk_size):
                raise CorruptBackup(f"chunk {name[:16]} has the wrong length")
            f.seek(i * index.chunk_size)
            f.write(data)
            progress("restore", k + 1, len(todo))
        f.flush()
        os.fsync(f.fileno())
