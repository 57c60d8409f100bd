"""Rename a live VM: what a warm pool (corral.pools) does to the member it hands out.

A VM's name keys its store rows and its directory (``vms/<name>/``). Renaming a live VM moves both while its QEMU
runs on: QEMU keeps its open files (disk, logs) by descriptor, and its listening unix sockets (QMP, agent, console)
keep working after the directory's rename, because the listening socket is the inode, which moves with the directory;
new connections use the new path. The daemon's own handles follow: the supervised :class:`Machine`, its monitor's and
agent's socket paths, the VM service's maps keyed by name.

Only a VM without extra disks or snapshots is renamed (their files' paths are stored); the caller holds the
operation locks of both names.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from corral.errors import Conflict, EngineError
from corral.vm.machine import Machine
from corral.vm.spec import VMSpec

if TYPE_CHECKING:
    from corral.vm.service import VMService


async def rename(vms: VMService, old: str, spec: VMSpec) -> Machine:
    """VM ``old`` becomes ``spec.name`` with ``spec`` as its spec. If this fails nothing changed."""
    new = spec.name
    store = vms.store
    if store.get_vm(new) is not None:
        raise Conflict(f"a VM named '{new}' already exists: choose another name or `corral rm {new}`")
    if store.list_disks(old) or store.list_snapshots(old):
        raise Conflict(f"VM '{old}' has extra disks or snapshots: it cannot be renamed")
    m = vms.machine(old)
    if m is None:
        raise EngineError(f"VM '{old}' has no supervised QEMU process")
    src, dst = vms.paths(old), vms.paths(new)
    if dst.root.exists():
        raise Conflict(f"{dst.root} already exists but no VM '{new}' is defined: move it away first")
    os.rename(src.root, dst.root)
    try:
        store.rename_vm(old, new, spec)
    except BaseException:
        os.rename(dst.root, src.root)
        raise
    machines, locks = vms._machines, vms._locks  # noqa: SLF001 - the service's own maps, kept by name
    machines.pop(old, None)
    m.name = new
    machines[new] = m
    m.agent.socket_path = dst.qga_socket
    if m.monitor is not None:
        m.monitor.socket, m.monitor.name = dst.qmp_socket, new
    locks.pop(old, None)  # the caller holds it (and the new name's); nothing may find the old name again
    return m
