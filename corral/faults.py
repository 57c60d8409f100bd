"""Named fault points: where the fault suite kills the daemon in the middle of an operation.

``CORRAL_FAULT=snapshot.after-overlay`` (several: comma-separated) makes corrald SIGKILL itself the moment it reaches
:func:`point` with that name: no ``finally`` runs, no socket is closed, exactly as a crash or ``kill -9`` would leave
things. Without the variable :func:`point` is a function that does nothing (decided once, at import), so the points
cost nothing in production.

Every name is declared in :data:`POINTS`, so that the suite (``tests/faults``) can walk all of them and a typo in a
call fails at once instead of silently never firing.
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)

ENV = "CORRAL_FAULT"

#: Every fault point, with where it is: the operation's state when the daemon dies there.
POINTS: dict[str, str] = {
    "snapshot.after-freeze": "guest file systems frozen, no overlay yet",
    "snapshot.after-overlay": "the new overlay is QEMU's top, the store does not know it yet",
    "snapshot.memory-paused": "vCPUs stopped for a whole-machine snapshot, its state not yet saved",
    "snapshot.before-record": "disk frozen (and memory saved), no snapshot row yet",
    "revert.after-quit": "QEMU quit for a revert, the disk not yet replaced",
    "clone.after-freeze": "a full clone of a running VM: file systems frozen, its backup job started",
    "clone.during-copy": "a full clone's copy under way",
    "clone.before-record": "the clone's disk made, its VM row not yet written",
    "backup.during-copy": "a backup's block job under way, its target file in the VM's directory",
    "backup.before-index": "a backup's chunks stored, its index not yet written",
    "restore.before-disk": "restore: the backup's disk written beside the VM (a new VM created), not yet its disk",
    "template.after-pause": "template create: the source VM stopped for the capture",
    "export.after-freeze": "export of a running VM: its disk frozen",
    "import.after-row": "import: the layers placed and the VM's row written, its layers and snapshots not yet",
    "disk.after-plug": "disk add: the file made and hot-plugged, no row yet",
    "mount.after-plug": "mount add on a running VM: the folder's device plugged and mounted, not yet in the spec",
    "disk.resize.before-record": "disk resize: QEMU resized it, the store not yet",
    "suspend.during-save": "suspend: the machine state being written",
    "launch.after-spawn": "launch: QEMU spawned, the VM not yet ready",
    "template-launch.before-identity": "launch from a template: its state loaded and running, its guest still with "
                                       "the template's identity",
    "resume.after-spawn": "resume of a suspended VM: QEMU spawned to load its saved state, the load not begun",
    "migrate.during-mirror": "live migration, the source: its disks mirrored to the target (ready), no state sent",
    "migrate.before-commit": "live migration, the source: the state sent (vCPUs stopped), the target not yet told",
    "migrate.after-commit": "live migration, the source: the VM runs on the target, its copy here not yet removed",
}

_armed = frozenset(n.strip() for n in os.environ.get(ENV, "").split(",") if n.strip())


def _check(name: str) -> None:
    if name not in POINTS:
        raise ValueError(f"unknown fault point {name!r} (declared in corral.faults.POINTS)")


def _fire(name: str) -> None:
    _check(name)
    if name in _armed:
        log.warning("fault point %s reached: killing corrald (%s=%s)", name, ENV, ",".join(sorted(_armed)))
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)


def _off(name: str) -> None:
    """No fault armed: nothing to do."""


def armed() -> frozenset[str]:
    """The fault points armed in this process (empty in production)."""
    return _armed


#: Reach the fault point ``name``: kills the process if it is armed; a no-op when CORRAL_FAULT is unset.
point = _fire if _armed else _off

for _name in _armed:
    _check(_name)  # a misspelt CORRAL_FAULT fails the daemon's start, not silently
