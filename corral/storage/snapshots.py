"""Named snapshots of a VM: a frozen layer with a name (and, whole-machine, a saved machine state), listed as a tree,
reverted to, and deleted without losing data (a layer is merged into each child before its file goes).
"""


from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from corral import faults
from corral.engine import blockjobs, qemu_img
from corral.engine.blockjobs import inode
from corral.errors import Conflict, CorralError, EngineError, InvalidInput, NotFound, StateError
from corral.storage.freezing import LIVE_DISK, OFFLINE_DISK, Freezer
from corral.store.db import LayerRecord, SnapshotRecord, VMRecord
from corral.vm.actor import ACTOR
from corral.vm.machine import Machine
from corral.vm.states import LIVE, VMState

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


@dataclass(frozen=True)
class SnapshotView:
    """A snapshot as listed: its record, its parent's name, whether the VM's state descends from it, its size."""

    rec: SnapshotRecord
    parent: str | None
    current: bool
    size: int


def check_name(name: str, what: str = "snapshot") -> None:
    if not NAME_RE.match(name):
        raise InvalidInput(f"{what} name {name!r} is not valid: use letters, digits, '.', '_' and '-' "
                           "(up to 63, starting with a letter or digit)")



class Snapshots(Freezer):
    """Snapshot create, list, revert and delete."""

    def _snapshot(self, vm: str, name: str) -> SnapshotRecord:
        snaps = self.store.list_snapshots(vm)
        for s in snaps:
            if s.name == name:
                return s
        have = ", ".join(s.name for s in snaps)
        raise NotFound(f"VM '{vm}' has no snapshot named '{name}'" +
                       (f" (snapshots: {have})" if have else f" (it has none: `corral snapshot create {vm} NAME`)"))

    def list_snapshots(self, vm: str) -> list[SnapshotView]:
        self.vms.get(vm)
        snaps = self.store.list_snapshots(vm)
        names = {s.id: s.name for s in snaps}
        current = self.store.current_snapshot(vm)
        out = []
        for s in snaps:
            layer = self.store.get_layer(s.layer)
            size = 0
            for f in (layer.path if layer else None, s.state_file):
                with contextlib.suppress(OSError):
                    size += os.stat(f).st_blocks * 512 if f else 0
            out.append(SnapshotView(s, names.get(s.parent) if s.parent else None, s.id == current, size))
        return out

    async def create_snapshot(self, vm: str, name: str, *, memory: bool = False,
                              freeze: bool = True) -> SnapshotView:
        """Snapshot the VM's disk (and with ``memory`` its whole machine: a running or paused VM only)."""
        check_name(name)
        async with self.vms._lock(vm):
            rec = self.vms.get(vm)
            if any(s.name == name for s in self.store.list_snapshots(vm)):
                raise Conflict(f"VM '{vm}' already has a snapshot named '{name}': choose another name or "
                               f"`corral snapshot rm {vm} {name}`")
            if memory and rec.state not in LIVE_DISK:
                raise Conflict(f"VM '{vm}' is {rec.state}: a whole-machine snapshot (--memory) needs it running or "
                               f"paused; without --memory its disk alone is snapshotted")
            if memory and any(d.attached for d in self.store.list_disks(vm)):
                raise Conflict(f"VM '{vm}' has extra disks attached, which snapshots do not cover yet: a whole-machine "
                               f"snapshot would bring its memory back without their contents; detach them "
                               f"(`corral disk detach {vm} NAME`) or take a disk-only snapshot of the root disk")
            if memory and rec.spec.mounts:
                raise Conflict(f"VM '{vm}' has shared folders: QEMU cannot save the state of a guest with a 9p "
                               f"folder mounted, and a revert would bring back mounts that may have changed; take "
                               f"a disk-only snapshot, or remove them first (`corral mount rm {vm} GUEST_DIR`)")
            snap_id = secrets.token_hex(6)
            state_file = self.dir / f"{snap_id}.state" if memory else None
            if state_file is not None:
                self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            with self.vms.journal.run("snapshot", vm, snapshot=name, id=snap_id,
                                      state_file=str(state_file) if state_file else None) as op:
                if state_file is not None:
                    op.add("files", str(state_file))
                frozen, note = await self._freeze_top(rec, fsfreeze=freeze, state_file=state_file)
                faults.point("snapshot.before-record")
                self._record_snapshot(vm, name, snap_id, frozen.id, state_file, note)
            kind = "whole-machine" if memory else "disk"
            self.vms.event(vm, "snapshot", f"{kind} snapshot '{name}' taken ({note})", snapshot=name,
                           memory=memory, note=note, layer=frozen.id)
        return next(v for v in self.list_snapshots(vm) if v.rec.id == snap_id)

    def _record_snapshot(self, vm: str, name: str, snap_id: str, layer: str, state_file: Path | None,
                         note: str) -> None:
        snap = SnapshotRecord(snap_id, vm, name, self.store.current_snapshot(vm), layer,
                              str(state_file) if state_file else None, note, time.time())
        self.store.insert_snapshot(snap)
        self.store.set_current_snapshot(vm, snap_id)

    async def revert(self, vm: str, name: str, *, force: bool = False) -> VMRecord:
        """Put the VM back to snapshot ``name``: its disk (a new empty top on the snapshot's layer) and, for a
        whole-machine snapshot, its running machine. A running, paused or suspended VM needs ``force``: what it
        is doing now is discarded."""
        async with self.vms._lock(vm):
            rec = self.vms.get(vm)
            snap = self._snapshot(vm, name)
            if rec.state in LIVE and rec.state not in LIVE_DISK:
                raise StateError(vm, "revert", rec.state.value, sorted(s.value for s in (*LIVE_DISK, *OFFLINE_DISK)))
            if rec.state not in (VMState.STOPPED, VMState.CRASHED) and not force:
                raise Conflict(f"VM '{vm}' is {rec.state}: reverting to '{name}' discards its current state; stop "
                               f"it first (`corral stop {vm}`) or pass --force")
            with self.vms.journal.run("revert", vm, snapshot=name):
                return await self._revert(rec, snap)

    async def _revert(self, rec: VMRecord, snap: SnapshotRecord) -> VMRecord:
        """The revert itself, under the VM's lock. Each step can be done again: a revert a crash interrupted is
        finished at the next start by doing it once more (corral.storage.recovery)."""
        vm, name = rec.name, snap.name
        if rec.state in LIVE_DISK:
            await self._quit(self._machine(vm))
            faults.point("revert.after-quit")
        elif rec.state == VMState.SUSPENDED:
            self.vms.paths(vm).state_file.unlink(missing_ok=True)
            await self.vms._set_state(vm, VMState.STOPPED, f"saved state discarded: reverting to '{name}'")
        old = self._adopt(rec)
        new_id, new_path = await self._create_layer(Path(self._layer(snap.layer).path))
        self.store.delete_layer(old.id)
        self.store.insert_layer(LayerRecord(new_id, str(new_path), snap.layer, None, vm, "top", time.time()))
        self._remove_file(old, vm)
        self._point_disk(vm)
        self.store.set_current_snapshot(vm, snap.id)
        self._collect()
        self.vms.event(vm, "snapshot", f"reverted to snapshot '{name}'", snapshot=name)
        if snap.state_file:
            state = self.vms.paths(vm).state_file
            state.unlink(missing_ok=True)
            os.link(snap.state_file, state)  # the load removes this name; the snapshot keeps its own
            await self.vms._set_state(vm, VMState.SUSPENDED, f"reverted to whole-machine snapshot '{name}'")
            await self.vms._start(vm)
        return self.vms.get(vm)

    async def _quit(self, m: Machine) -> None:
        """End the VM's QEMU at once, its state discarded, but its images closed cleanly (flushed), unlike a kill."""
        assert m.monitor is not None
        m.requested, m.requested_by = "revert", ACTOR.get()
        with contextlib.suppress(CorralError):  # QEMU may close the monitor before it answers
            await m.monitor.execute("quit")
        try:
            await asyncio.wait_for(m.exited.wait(), 30)
        except TimeoutError:
            await self.vms._kill_machine(m)

    async def delete_snapshot(self, vm: str, name: str) -> None:
        """Remove snapshot ``name``; its layer is merged into each layer above it, so nothing else changes."""
        async with self.vms._lock(vm):
            rec = self.vms.get(vm)
            snap = self._snapshot(vm, name)
            if rec.state in LIVE and rec.state not in LIVE_DISK:
                raise StateError(vm, "delete a snapshot of", rec.state.value,
                                 sorted(s.value for s in (*LIVE_DISK, *OFFLINE_DISK)))
            # Merged first: if that fails, the snapshot is still there (and whatever was merged stays correct).
            how = await self._merge_away(rec, self._layer(snap.layer))
            self.store.reparent_snapshots(vm, snap.id, snap.parent)
            if self.store.current_snapshot(vm) == snap.id:
                self.store.set_current_snapshot(vm, snap.parent)
            self.store.delete_snapshot(snap.id)
            if snap.state_file:
                Path(snap.state_file).unlink(missing_ok=True)
            self._collect()
            self.vms.event(vm, "snapshot", f"snapshot '{name}' deleted ({how})", snapshot=name)

    async def _merge_away(self, rec: VMRecord, layer: LayerRecord) -> str:
        """Merge ``layer`` into every layer backing onto it, then remove it; kept while another VM uses it."""
        children = self.store.layer_children(layer.id)
        if any(c.vm != rec.name for c in self._descendants(layer.id)):
            # Another VM's chain runs through the layers above: they must not change under its QEMU.
            return "its layer is kept, hidden, while a clone uses it"
        under, under_format = self._below(layer)
        m = self._machine(rec.name) if rec.state in LIVE_DISK else None
        nodes = await blockjobs.format_nodes(m.monitor) if m is not None and m.monitor is not None else {}
        streamed = 0
        for child in children:
            key = inode(child.path)
            node = nodes.get(key) if key else None
            if m is not None and m.monitor is not None and node is not None:  # in the running chain: QEMU copies
                base_key = inode(under) if under is not None else None
                base_node = nodes.get(base_key) if base_key else None
                if under is not None and base_node is None:
                    raise EngineError(f"cannot find {under} in the block graph of the running '{rec.name}': stop "
                                      "it and delete the snapshot again")
                layer_key = inode(layer.path)
                await blockjobs.make_writable(m.monitor, node, Path(child.path),
                                              nodes.get(layer_key) if layer_key else None)
                await blockjobs.stream(m.monitor, f"merge-{child.id}", node, base_node,
                                       str(under) if under is not None else None)
                streamed += 1
            else:
                await qemu_img.rebase(Path(child.path), under, under_format)
            self.store.update_layer(child.id, backing=layer.backing, image=layer.image)
        if m is not None and m.monitor is not None and (key := inode(layer.path)) and (node := nodes.get(key)):
            await blockjobs.remove_node(m.monitor, node)
        self.store.update_layer(layer.id, purpose="frozen")  # now unused: _collect removes it with its snapshot row
        return f"merged into {len(children)} layer(s)" + (f", {streamed} while running" if streamed else "")
