"""How a VM's attached extra disks appear on QEMU's command line (pure).

Its own module, below both users: the VM service builds a starting QEMU's command line with it, and
:mod:`corral.storage.disks` hot-plugs one disk with it. Neither has to import the other for it.
"""

from __future__ import annotations

from pathlib import Path

from corral.engine.cmdline import DiskAttachment
from corral.store.db import DiskRecord


def attachments(disks: list[DiskRecord]) -> tuple[DiskAttachment, ...]:
    """The attached disks (those with a hot-plug port) as the command line takes them."""
    return tuple(DiskAttachment(name=d.name, file=Path(d.file), port=d.port, limits=tuple(sorted(d.limits.items())))
                 for d in disks if d.port is not None)
