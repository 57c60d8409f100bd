"""The two facts Corral reads from a qcow2 header itself, without opening the backing chain (which qemu-img would,
at a cost growing with its depth): the virtual size, and whether the layer holds any data at all."""

from __future__ import annotations

import struct
from pathlib import Path

MAGIC = b"QFI\xfb"


class NotQcow2(ValueError):
    pass


def _header(f: object) -> tuple[int, int, int]:
    """(virtual size, L1 entries, L1 table offset)."""
    data = f.read(48)  # type: ignore[attr-defined]
    if len(data) < 48 or data[:4] != MAGIC:
        raise NotQcow2("not a qcow2 image")
    size, = struct.unpack(">Q", data[24:32])
    l1_size, = struct.unpack(">I", data[36:40])
    l1_offset, = struct.unpack(">Q", data[40:48])
    return size, l1_size, l1_offset


def virtual_size(path: Path) -> int:
    with open(path, "rb") as f:
        return _header(f)[0]


def is_empty(path: Path) -> bool:
    """True when no cluster of this layer is allocated (every L1 entry zero): it shows exactly its backing."""
    with open(path, "rb") as f:
        _, l1_size, l1_offset = _header(f)
        f.seek(l1_offset)
        table = f.read(8 * l1_size)
    return len(table) == 8 * l1_size and not any(table)
