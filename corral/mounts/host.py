"""The host side of shared folders: which directories may be shared, and the slots a VM's QEMU uses for them.

A VM's QEMU has :data:`~corral.engine.cmdline.MOUNT_SLOTS` slots; slot N's fsdev opens ``mounts/slotN``, a symlink
this module points at the host directory before the slot's device is plugged (on the command line or hot-plugged).
``mounts/layout.json`` says which mount sits in which slot in the VM's current (or saved) QEMU: a suspended VM's
saved state holds the devices where they were, so its resume must put them back there, whatever the order of the
spec's list since (a mount removed from a running VM frees its slot, the others keep theirs).

Which host directories may be shared (:func:`check_host`): an existing directory, given by an absolute path and
stored resolved (``realpath``: no symlink left, so what is shared is what `corral mount ls` shows); never ``/``,
the kernel's trees (``/proc``, ``/sys``, ``/dev``), nor the Corral home, anything inside it or any directory
holding it (the guest would read other VMs' disks and keys).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from corral.engine.cmdline import MOUNT_SLOTS, MountAttachment
from corral.errors import InvalidInput, NotFound
from corral.fileio import atomic_write_text
from corral.paths import VMPaths
from corral.vm.spec import Mount

HOST_VIRTUAL_TREES = ("/proc", "/sys", "/dev")


def _within(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def check_host(mount: Mount, home: Path) -> Mount:
    """``mount`` with its host directory resolved, if it may be shared; InvalidInput or NotFound saying why not."""
    given = mount.host
    if not os.path.lexists(given):
        raise NotFound(f"host directory {given} does not exist: create it or give another HOST_DIR")
    real = os.path.realpath(given)
    if not os.path.isdir(real):
        raise InvalidInput(f"{given} is not a directory: share the directory that holds it")
    shown = given if real == given else f"{given} (which is {real})"
    if real == "/" or any(_within(real, t) for t in HOST_VIRTUAL_TREES):
        raise InvalidInput(f"{shown} cannot be shared: it is the host's root or a kernel file system")
    corral_home = os.path.realpath(home)
    if _within(real, corral_home) or _within(corral_home, real):
        raise InvalidInput(f"{shown} cannot be shared: it holds, or is inside, the Corral home {corral_home} "
                           "(other VMs' disks and keys); share a directory outside it")
    return mount.model_copy(update={"host": real})


def check_still_there(mount: Mount) -> None:
    """Before a start: the shared directory (stored resolved) is still a directory."""
    if not os.path.isdir(mount.host) or os.path.islink(mount.host):
        raise NotFound(f"shared folder {mount.host} (for {mount.guest}) is gone or no longer a directory: "
                       f"create it again, or remove the mount (`corral mount rm VM {mount.guest}`)")


# -- the layout: which mount in which slot ---------------------------------------------------------------------

Layout = dict[int, Mount]


def read_layout(paths: VMPaths) -> Layout:
    """The slots of the VM's QEMU as last written ({} if none)."""
    try:
        raw = json.loads(paths.mount_layout.read_text())
    except FileNotFoundError:
        return {}
    return {int(slot): Mount.model_validate(m) for slot, m in raw.items()}


def write_layout(paths: VMPaths, layout: Layout) -> None:
    """Point each used slot's symlink at its folder (unused ones removed), then record the layout."""
    paths.mounts_dir.mkdir(mode=0o700, exist_ok=True)
    for slot in range(MOUNT_SLOTS):
        link = paths.mount_slot(slot)
        if slot in layout:
            tmp = link.with_name(link.name + ".new")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(layout[slot].host)
            os.replace(tmp, link)
        else:
            link.unlink(missing_ok=True)
    atomic_write_text(paths.mount_layout, json.dumps(
        {str(k): m.model_dump(mode="json") for k, m in sorted(layout.items())}, indent=1) + "\n")


def fresh_layout(mounts: list[Mount]) -> Layout:
    """A cold start's layout: the spec's mounts in slots 0, 1, ..."""
    return dict(enumerate(mounts))


def free_slot(layout: Layout, vm: str) -> int:
    for slot in range(MOUNT_SLOTS):
        if slot not in layout:
            return slot
    raise InvalidInput(f"VM '{vm}' already has {MOUNT_SLOTS} shared folders, the most it can have: remove one "
                       f"first (`corral mount rm {vm} GUEST_DIR`)")


def slot_of(layout: Layout, guest: str) -> int | None:
    return next((s for s, m in layout.items() if m.guest == guest), None)


def attachments(layout: Layout, plugged: bool) -> tuple[MountAttachment, ...]:
    """The layout as the command line takes it; ``plugged=False``: the devices are hot-plugged after start."""
    return tuple(MountAttachment(slot=s, read_only=m.read_only, plugged=plugged) for s, m in sorted(layout.items()))
