"""What corral.storage does at the daemon's start for operations a dead daemon left half done.

- A disk left between its old top and a new overlay (``overlay`` in the journal, written by ``_freeze_top`` before
  the overlay file exists): if the VM runs and QEMU's root disk writes into the overlay, or the VM's QEMU is gone
  after it was frozen live (it may have written into the overlay before it died), the overlay is adopted as the
  VM's top, the old top frozen under it: the chain in the store is again the chain QEMU uses, and nothing the guest
  wrote is lost. Otherwise the overlay is removed (its node from QEMU, its file from ``layers/``).
- ``snapshot``: finished (the snapshot recorded) when its disk was frozen and, for a whole-machine snapshot, its
  machine state file is whole; else rolled back (a disk layer that was adopted stays in the chain, unnamed).
- ``clone``: finished when the clone's VM row and disk exist; else its rows, disk and directory are removed.
- ``revert``: finished by reverting again once the VM's QEMU is gone (each step of a revert can be done twice);
  rolled back (nothing changed) while the VM still runs.
- The sweeper removes files in ``layers/`` that no layer or snapshot names and no QEMU has open. It does nothing
  while any VM's QEMU cannot be seen (state unknown): a file that VM uses could not be told from an orphan.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corral.engine import blockjobs, qemu_img
from corral.errors import CorralError
from corral.operations.recovery import Outcome, Recovery
from corral.store.db import OperationRecord
from corral.vm.states import LIVE, VMState

if TYPE_CHECKING:
    from corral.storage.service import StorageService


class StorageRecovery:
    def __init__(self, storage: StorageService) -> None:
        self.storage = storage
        self.store = storage.store
        self.vms = storage.vms

    def register(self, recovery: Recovery) -> None:
        recovery.overlay = self.overlay
        recovery.kinds.update(snapshot=self.snapshot, clone=self.clone, revert=self.revert)
        recovery.referenced.append(self.named_files)
        recovery.sweepers.append(self.sweep_layers)

    def named_files(self) -> set[str]:
        """Every file a row of the store names: layers, snapshot states, extra disks."""
        out = {layer.path for layer in self.store.list_layers()}
        out |= {s.state_file for s in self.store.list_snapshots() if s.state_file}
        out |= {d.file for d in self.store.list_disks()}
        return out

    # ------------------------------------------------------------------------------------------- overlay --
    async def overlay(self, op: OperationRecord, ov: dict[str, Any]) -> str:
        if ov.get("committed"):
            return ""
        vm, path, new_id = str(ov["vm"]), Path(ov["path"]), str(ov["new"])
        rec = self.store.get_vm(vm)
        top = self.store.top_layer(vm)
        if rec is None or top is None or top.id != ov["old"] or not path.is_file():
            path.unlink(missing_ok=True)
            return ""
        m = self.vms.machine(vm)
        if m is not None and m.monitor is not None:
            in_use = await blockjobs.top_node(m.monitor) == await blockjobs.node_of(m.monitor, path)
        else:
            # QEMU is gone: if the disk was frozen live, QEMU may have written into the overlay before it died.
            in_use = bool(ov.get("live")) and rec.state not in LIVE and await _backs_onto(path, Path(top.path))
        if not in_use:
            if m is not None and m.monitor is not None:
                await blockjobs.remove_node(m.monitor, f"l-{new_id}")
            path.unlink(missing_ok=True)
            return "its new disk layer was not in use: removed"
        self.storage.stack_top(vm, top.id, new_id, path, os.stat(path).st_mtime)
        ov["committed"] = True
        return f"the disk layer QEMU writes into ({path.name}) adopted as the VM's top"

    # ------------------------------------------------------------------------------------------- kinds --
    async def snapshot(self, op: OperationRecord) -> Outcome:
        d, vm = op.data, str(op.vm)
        ov = d.get("overlay") or {}
        state = d.get("state_file")
        if not ov.get("committed"):
            return Outcome(False, f"snapshot '{d.get('snapshot')}' not taken")
        if state and not os.path.isfile(state):
            return Outcome(False, f"snapshot '{d.get('snapshot')}' not taken: its machine state was not saved whole")
        if any(s.id == d["id"] for s in self.store.list_snapshots(vm)):
            return Outcome(True, f"snapshot '{d['snapshot']}' recorded")
        self.storage._record_snapshot(vm, str(d["snapshot"]), str(d["id"]), str(ov["old"]),  # noqa: SLF001
                                      Path(state) if state else None, "finished after a daemon restart")
        return Outcome(True, f"snapshot '{d['snapshot']}' recorded")

    async def clone(self, op: OperationRecord) -> Outcome:
        new = str(op.data.get("clone"))
        rec, top = self.store.get_vm(new), self.store.top_layer(new)
        if rec is not None and top is not None and os.path.isfile(top.path):
            return Outcome(True, f"clone '{new}' made")
        if rec is not None:
            for layer in self.store.list_layers(new):
                self.store.delete_layer(layer.id)
            self.store.delete_vm(new)
        return Outcome(False, f"clone '{new}' not made")

    async def revert(self, op: OperationRecord) -> Outcome:
        vm, name = str(op.vm), str(op.data.get("snapshot"))
        rec = self.store.get_vm(vm)
        if rec is None:
            return Outcome(False, "the VM is gone")
        if rec.state in LIVE and rec.state != VMState.SUSPENDED:
            return Outcome(False, f"not reverted to '{name}': the VM was not touched")
        try:
            await self.storage.revert(vm, name, force=True)
        except CorralError as exc:
            return Outcome(False, f"reverting to '{name}' again failed: {exc.message}")
        return Outcome(True, f"reverted to snapshot '{name}'")

    # ------------------------------------------------------------------------------------------- sweep --
    async def sweep_layers(self) -> list[str]:
        folder = self.storage.dir
        if not folder.is_dir():
            return []
        open_files: set[tuple[int, int]] = set()
        for rec in self.store.list_vms():
            if rec.state == VMState.UNKNOWN:
                return []  # its QEMU cannot be asked which files it has open
            m = self.vms.machine(rec.name)
            if m is not None and m.monitor is not None:
                open_files |= set(await blockjobs.format_nodes(m.monitor))
        named = self.named_files()
        removed = []
        for f in sorted(folder.iterdir()):
            if str(f) in named or not f.is_file() or blockjobs.inode(f) in open_files:
                continue
            f.unlink(missing_ok=True)
            removed.append(str(f))
        return removed


async def _backs_onto(overlay: Path, backing: Path) -> bool:
    """Is ``overlay`` a qcow2 whose backing file is ``backing`` (made by ``_freeze_top``, not something else)?"""
    try:
        info = await qemu_img.info(overlay)
    except CorralError:
        return False
    name = info.get("full-backing-filename") or info.get("backing-filename")
    if not name:
        return False
    try:
        return await asyncio.to_thread(os.path.samefile, str(name), backing)
    except OSError:
        return False
