"""Full disks: a VM whose host storage filled up is paused (``werror=enospc``) and resumes once space is freed.

QEMU does the pausing: a write that fails with ENOSPC is kept, QEMU emits BLOCK_IO_ERROR (``nospace``) and stops
the vCPUs (status ``io-error``); on ``cont`` it retries the write. Corral says why (:func:`reason`: which image,
on which file system), and the daemon's poll (:func:`resume_when_freed`, every few seconds) sends ``cont`` once every
file system the VM writes to has room again. Nothing is lost in between: the guest only sees a pause.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from corral.errors import CorralError
from corral.paths import VMPaths
from corral.storage.check import written_images
from corral.store.db import DiskRecord, EventRecord, Store, VMRecord
from corral.vm.sizes import format_size
from corral.vm.states import VMState

log = logging.getLogger(__name__)

#: The state reason of a VM paused because its storage is full (the poll looks for it).
DISK_FULL = "disk full"
#: Resumed once this much is free on each file system (or a tenth of a small file system).
RESUME_FREE = 64 << 20
POLL_SECONDS = 2.0


class PausedVMs(Protocol):
    """What the poll needs of the VM service (which imports this module for :func:`image_of` and :func:`reason`,
    so this one names only these members, not the service)."""

    store: Store

    def paths(self, name: str) -> VMPaths: ...

    async def resume(self, name: str) -> VMRecord: ...

    def event(self, vm: str | None, type_: str, message: str, *, result: str = "ok", owner: str | None = None,
              **data: Any) -> EventRecord: ...


def mount_point(path: Path) -> Path:
    """The mount point of the file system holding ``path``."""
    p = path.resolve()
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return p


def free_space(path: Path) -> tuple[int, int]:
    """(bytes free to unprivileged users, total bytes) of the file system holding ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def has_room(path: Path) -> bool:
    free, total = free_space(path)
    return free >= min(RESUME_FREE, total // 10)


def image_of(node: str, root_disk: Path, disks: Iterable[DiskRecord]) -> Path:
    """The image behind a block node named in a QEMU event: an extra disk's (``xd-NAME...``), else the root disk."""
    for d in disks:
        if node == f"xd-{d.name}" or node.startswith(f"xd-{d.name}-"):
            return Path(d.file)
    return root_disk


def reason(vm: str, image: Path) -> str:
    """The state reason of a VM paused on ENOSPC: which image, which file system, what to do."""
    mp = mount_point(image.parent)
    return (f"{DISK_FULL}: no space left on the file system at {mp} (holding {image}); "
            f"it resumes by itself once space is freed there, or `corral resume {vm}`")


async def resume_when_freed(vms: PausedVMs) -> None:
    """One pass of the daemon's poll: resume every VM paused on a full disk whose file systems have room again."""
    for rec in vms.store.list_vms():
        if rec.state != VMState.PAUSED or not (rec.state_reason.startswith(DISK_FULL)
                                               or rec.state_reason == "paused (io-error)"):
            continue
        images = written_images(vms.paths(rec.name).disk, vms.store.list_disks(rec.name))
        dirs = {p.parent for p in images if p.parent.exists()}
        if not all(has_room(d) for d in dirs):
            continue
        rooms = ", ".join(f"{mount_point(d)} {format_size(free_space(d)[0])} free" for d in sorted(dirs))
        try:
            await vms.resume(rec.name)
        except CorralError as exc:
            log.warning("%s: cannot resume after its disk was full: %s", rec.name, exc.message)
            continue
        vms.event(rec.name, "disk-full", f"space freed ({rooms}): resumed", mounts=[str(mount_point(d)) for d in dirs])
