"""Snapshots and clones over a tree of external qcow2 layers.

A VM's root disk is a chain (corral.storage.chain): the image's disk at the bottom, frozen (read-only) layers above
it, and the VM's own writable top. Freezing is the one primitive: the top stops being written and the VM goes on
writing into a new, empty overlay on it (``blockdev-snapshot`` on a running VM, ``qemu-img create`` on a stopped
one). A snapshot is a frozen layer with a name (and, whole-machine, a saved machine state); a linked clone is a new
top on a frozen layer; a full clone is a standalone copy of the chain. A layer file is removed only when nothing
uses it: no snapshot names it and no other layer backs onto it (``_collect``).

What holds after a failure:
- creating a snapshot or a clone that fails leaves no snapshot or clone record and no new file; if the failure came
  after the VM's disk was frozen, the VM simply goes on writing into its new top (the chain in the store is always
  the chain QEMU uses) and nothing is lost;
- deleting a snapshot never loses data: its layer is merged into each child before its file is removed; a layer
  still under another VM's disk is kept (hidden) until nothing uses it.

A VM created before any of this has no layer rows: its chain is the image's disk under ``vms/NAME/disk.qcow2``. It
is adopted at its first snapshot or clone: that file is hard-linked into ``layers/`` (same inode, so a running QEMU
keeps writing to it) and gets a row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from corral import faults
from corral import paths as P
from corral.engine import blockjobs, migration, qemu_img
from corral.engine.blockjobs import inode
from corral.engine.cmdline import BootSource
from corral.engine.guest_agent import GuestAgent
from corral.errors import Conflict, CorralError, EngineError, InvalidInput, NotFound, StateError
from corral.guest.identity import reset_identity
from corral.operations import journal
from corral.paths import TemplatePaths
from corral.storage import qcow2
from corral.storage.chain import Chain, ChainLayer
from corral.store.db import LayerRecord, SnapshotRecord, VMRecord
from corral.vm.actor import ACTOR
from corral.vm.machine import Machine
from corral.vm.service import VMService
from corral.vm.spec import VMSpec
from corral.vm.states import LIVE, VMState

log = logging.getLogger(__name__)

FREEZE_TIMEOUT = 10.0  # a guest whose file systems do not freeze in this time is snapshotted unfrozen
THAW_TIMEOUT = 10.0
THAW_RETRY_INTERVAL = 5.0
THAW_RETRIES = 360  # half an hour of asking
#: A bottom layer's ``image`` naming a template's disk rather than an image's.
TEMPLATE_REF = "template:"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")

#: States in which a VM's disk can be frozen: live through QMP, or offline with qemu-img.
LIVE_DISK = (VMState.RUNNING, VMState.PAUSED)
OFFLINE_DISK = (VMState.STOPPED, VMState.CRASHED, VMState.SUSPENDED)

Progress = Callable[[float], None]  # percent done


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


class StorageService:
    def __init__(self, vms: VMService) -> None:
        self.vms = vms
        self.store = vms.store
        self.dir = vms.settings.home / P.LAYERS_DIR
        vms.root_chain = self.chain_for
        vms.provision_hooks.append(self._first_boot)
        vms.delete_hooks.append(self._release_vm)

    # ------------------------------------------------------------------------------------------------ chain --
    def _walk(self, top: LayerRecord) -> list[LayerRecord]:
        """``top`` and every layer under it, top first."""
        out = [top]
        while out[-1].backing is not None:
            below = self.store.get_layer(out[-1].backing)
            if below is None:
                raise EngineError(f"layer {out[-1].id} backs onto layer {out[-1].backing}, which is not in the store")
            out.append(below)
        return out

    def chain_for(self, rec: VMRecord, boot: BootSource) -> Chain | None:
        """The chain QEMU boots ``rec`` from (None: never adopted, the image's disk under its disk.qcow2)."""
        top = self.store.top_layer(rec.name)
        if top is None:
            return None
        self._point_disk(rec.name)  # the VM is not running yet: a hard-linked disk.qcow2 becomes a link now
        layers = self._walk(top)[::-1]
        items = [ChainLayer(*self.base_file(layers[0].image))] if layers[0].image is not None else []
        return Chain((*items, *(ChainLayer(Path(layer.path)) for layer in layers)))

    def _below(self, layer: LayerRecord) -> tuple[Path | None, str]:
        """The file under ``layer`` and its format: a layer, the image's disk, or nothing (standalone)."""
        if layer.backing is not None:
            return Path(self._layer(layer.backing).path), "qcow2"
        if layer.image is not None:
            return self.base_file(layer.image)
        return None, "qcow2"

    def base_ref(self, rec: VMRecord) -> str:
        """What the bottom of a VM's chain is: its image's disk, or (``template:NAME``) the disk of the template it
        was launched from. Kept in each bottom layer's row, so a clone's chain knows it too."""
        link = self.store.template_of(rec.name)
        return f"{TEMPLATE_REF}{link[0]}" if link else rec.spec.image

    def base_file(self, ref: str) -> tuple[Path, str]:
        """The file (and format) a :meth:`base_ref` names."""
        if ref.startswith(TEMPLATE_REF):
            name = ref.removeprefix(TEMPLATE_REF)
            return TemplatePaths(self.vms.settings.home / P.TEMPLATES_DIR / name).disk, "qcow2"
        manifest = self.vms.images.get(ref)
        return self.vms.images.dir(ref) / P.IMAGE_DISK, manifest.disk_format

    def _descendants(self, id_: str) -> list[LayerRecord]:
        """Every layer above ``id_`` in the tree (children, their children...)."""
        out: list[LayerRecord] = []
        todo = [id_]
        while todo:
            for child in self.store.layer_children(todo.pop()):
                out.append(child)
                todo.append(child.id)
        return out

    def _layer(self, id_: str) -> LayerRecord:
        layer = self.store.get_layer(id_)
        if layer is None:
            raise EngineError(f"layer {id_} is not in the store")
        return layer

    def _new_path(self) -> tuple[str, Path]:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        id_ = secrets.token_hex(6)
        path = self.dir / f"{id_}.qcow2"
        path.touch(mode=0o600)  # qemu-img keeps the mode of a file it writes into: private, as the VM's directory
        return id_, path

    async def _create_layer(self, backing: Path, at: tuple[str, Path] | None = None) -> tuple[str, Path]:
        """A new empty qcow2 layer file on ``backing``: (id, path), at ``at`` if given (an id and path from
        :meth:`_new_path` that the caller wrote down first); nothing is left if it fails."""
        id_, path = at or self._new_path()
        try:
            await qemu_img.create_layer(path, backing, qcow2.virtual_size(backing))
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return id_, path

    def _adopt(self, rec: VMRecord) -> LayerRecord:
        """The VM's top layer row, made for a VM that has none yet (its disk.qcow2, hard-linked into layers/)."""
        top = self.store.top_layer(rec.name)
        if top is not None:
            return top
        id_, path = self._new_path()
        path.unlink()
        os.link(self.vms.paths(rec.name).disk, path)  # same inode: a running QEMU keeps writing to the same file
        top = LayerRecord(id_, str(path), None, self.base_ref(rec), rec.name, "top", time.time())
        self.store.insert_layer(top)
        self._point_disk(rec.name)
        return top

    def _remove_file(self, layer: LayerRecord, vm: str | None = None) -> None:
        """Remove a layer's file, and the VM's disk.qcow2 if that is still the same file (a hard link)."""
        if vm is not None:
            legacy = self.vms.paths(vm).disk
            if not legacy.is_symlink() and (key := inode(layer.path)) is not None and key == inode(legacy):
                legacy.unlink(missing_ok=True)
        Path(layer.path).unlink(missing_ok=True)

    def _point_disk(self, vm: str) -> None:
        """The VM's disk.qcow2 becomes a symbolic link to its top layer: what `show` and capacity read. Not while a
        QEMU has it open by that name (adopted while running): that node is found by its inode until the next
        start (see :meth:`chain_for`)."""
        top = self.store.top_layer(vm)
        link = self.vms.paths(vm).disk
        rec = self.store.get_vm(vm)
        if top is None or not link.parent.is_dir():
            return
        if rec is not None and rec.state in LIVE and link.exists() and not link.is_symlink():
            return
        tmp = link.with_name(".disk.qcow2.new")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(top.path)
        os.replace(tmp, link)

    def stack_top(self, vm: str, old: str, new_id: str, new_path: Path, created_at: float) -> None:
        """In the store, the VM's top ``old`` becomes frozen under the new top ``new_id`` (its file ``new_path``),
        as QEMU now writes into it; the VM's disk.qcow2 points at the new top."""
        self.store.update_layer(old, purpose="frozen")
        self.store.insert_layer(LayerRecord(new_id, str(new_path), old, None, vm, "top", created_at))
        self._point_disk(vm)

    def replace_top(self, vm: str, file: Path) -> None:
        """Make the standalone qcow2 ``file`` the stopped VM's disk (a backup restored): it becomes the VM's top
        layer, with no backing; the old top goes; the snapshots stay, but the VM's state descends from none of
        them. The caller holds the VM's lock."""
        rec = self.vms.get(vm)
        if rec.state in LIVE:
            raise StateError(vm, "replace the disk of", rec.state.value, [VMState.STOPPED.value])
        old = self._adopt(rec)
        id_, path = self._new_path()
        os.replace(file, path)
        path.chmod(0o600)
        self.store.delete_layer(old.id)
        self.store.insert_layer(LayerRecord(id_, str(path), None, None, vm, "top", time.time()))
        self._remove_file(old, vm)
        self._point_disk(vm)
        self.store.set_current_snapshot(vm, None)
        self._collect()

    def _collect(self) -> None:
        """Remove every frozen layer nothing uses any more: no snapshot names it, no layer backs onto it."""
        changed = True
        while changed:
            changed = False
            for layer in self.store.list_layers():
                if layer.purpose != "frozen" or self.store.layer_children(layer.id) or \
                        self.store.snapshots_of_layer(layer.id):
                    continue
                self.store.delete_layer(layer.id)
                self._remove_file(layer, layer.vm)
                log.info("layer %s (%s) removed: nothing uses it", layer.id, layer.path)
                changed = True

    # ------------------------------------------------------------------------------------------ freezing --
    def _machine(self, name: str) -> Machine:
        m = self.vms.machine(name)
        if m is None or m.monitor is None:
            raise EngineError(f"the monitor of VM '{name}' is not connected")
        return m

    @contextlib.asynccontextmanager
    async def _fs_frozen(self, m: Machine, wanted: bool) -> AsyncIterator[list[str]]:
        """Freeze the guest's file systems (if ``wanted`` and the agent answers), always thawing them after."""
        note = ["file systems not frozen (--no-freeze)"]
        asked = False
        rec = self.store.get_vm(m.name)
        if wanted and rec is not None and rec.state == VMState.PAUSED:
            # Its vCPUs are stopped: no write is in flight, and the agent could not answer (a freeze it read later,
            # on resume, would have no thaw after it).
            note = ["file systems not frozen: the VM is paused"]
        elif wanted and not m.agent_ready:
            note = ["file systems not frozen: the guest agent is not ready"]
        elif wanted:
            asked = True
            journal.current().note(frozen=True)
            try:
                n = await m.agent.execute("guest-fsfreeze-freeze", timeout=FREEZE_TIMEOUT)
                note = [f"{n} file system(s) frozen"]
            except CorralError as exc:
                note = [f"file systems not frozen: {exc.message}"]
        try:
            yield note
        finally:
            if asked:  # thaw even after a failed freeze: it may have frozen some, or may yet act on it
                try:
                    await m.agent.execute("guest-fsfreeze-thaw", timeout=THAW_TIMEOUT)
                    journal.current().note(frozen=None)
                except CorralError as exc:
                    log.warning("%s: thawing the guest's file systems failed: %s", m.name, exc.message)
                    self.vms.spawn_background(self._thaw_later(m), f"thaw-{m.name}")

    async def _thaw_later(self, m: Machine) -> None:
        """Keep asking a guest agent that did not answer to thaw, until it does (the agent handles requests in
        order, so an answer means any freeze it read before has been undone) or the VM is gone."""
        for _ in range(THAW_RETRIES):
            if m.exited.is_set():
                return
            await asyncio.sleep(THAW_RETRY_INTERVAL)
            try:
                await m.agent.execute("guest-fsfreeze-thaw", timeout=THAW_TIMEOUT)
            except CorralError:
                continue
            self.vms.event(m.name, "snapshot", "the guest agent answers again: file systems thawed")
            return
        self.vms.event(m.name, "snapshot", "the guest agent never answered the thaw: its file systems may be "
                       "frozen (`corral restart --hard` if it hangs)", result="error")

    async def _freeze_top(self, rec: VMRecord, *, fsfreeze: bool = True,
                          state_file: Path | None = None) -> tuple[LayerRecord, str]:
        """Freeze the VM's top layer; the VM goes on writing into a new empty top. With ``state_file`` (running VM),
        its machine state at that instant is saved there too. Returns the frozen layer and how it was done."""
        if rec.state not in (*LIVE_DISK, *OFFLINE_DISK):
            raise StateError(rec.name, "freeze the disk of", rec.state.value,
                             sorted(s.value for s in (*LIVE_DISK, *OFFLINE_DISK)))
        m = self._machine(rec.name) if rec.state in LIVE_DISK else None
        old = self._adopt(rec)
        op = journal.current()
        new_id, new_path = self._new_path()
        # Written down before the file exists: a daemon dying from here on leaves a disk between two tops, settled
        # at the next start by corral.storage.recovery (the overlay adopted if QEMU writes into it, else removed).
        overlay = {"vm": rec.name, "old": old.id, "new": new_id, "path": str(new_path), "live": m is not None}
        op.note(overlay=overlay)
        try:
            await self._create_layer(Path(old.path), at=(new_id, new_path))
        except BaseException:
            op.note(overlay=None)
            raise

        def commit() -> None:
            self.stack_top(rec.name, old.id, new_id, new_path, time.time())
            op.note(overlay=overlay | {"committed": True})

        if m is None:
            commit()
            return old, "the VM is not running: its disk as it is"
        assert m.monitor is not None
        monitor = m.monitor
        node = f"l-{new_id}"
        try:
            top = await blockjobs.top_node(monitor)
            await blockjobs.add_overlay(monitor, node, new_path)
        except BaseException:
            new_path.unlink(missing_ok=True)
            op.note(overlay=None)
            raise
        async def freeze() -> None:
            """The new overlay takes the top's place; if that fails, it is removed and the top goes on as it was."""
            try:
                await blockjobs.freeze_onto(monitor, top, node)
            except BaseException:
                await blockjobs.remove_node(monitor, node)
                new_path.unlink(missing_ok=True)
                op.note(overlay=None)
                raise
            faults.point("snapshot.after-overlay")

        if state_file is None:
            async with self._fs_frozen(m, fsfreeze) as note:
                faults.point("snapshot.after-freeze")
                await freeze()
            commit()
            return old, note[0]
        # Whole machine: vCPUs stopped, disk frozen and memory saved at the same instant, then the VM runs on.
        was_running = rec.state == VMState.RUNNING
        if was_running:
            op.note(paused=True)
        await monitor.execute("stop")
        try:
            faults.point("snapshot.memory-paused")
            await freeze()
            commit()
            op.add("files", str(state_file.with_name(state_file.name + ".partial")))
            op.note(migrating=True)
            saved = await migration.save_state(monitor, state_file, was_running=False)
            op.note(migrating=None)
        finally:
            if was_running:
                await monitor.execute("cont")  # from postmigrate too: QEMU takes its disks back
                op.note(paused=None)
        return old, f"machine state saved ({saved.size >> 20} MiB in {saved.seconds:.1f}s)"

    # -------------------------------------------------------------------------------------------- snapshots --
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

    # ------------------------------------------------------------------------------------------------ clones --
    def _clone_spec(self, src: VMRecord, new: str) -> VMSpec:
        data = src.spec.model_dump() | {"name": new, "ports": [], "hostname": None, "expires_at": None}
        try:
            spec = VMSpec.model_validate(data)
        except ValidationError as exc:
            e = exc.errors()[0]
            raise InvalidInput(f"{'.'.join(str(x) for x in e['loc'])}: "
                               f"{str(e['msg']).removeprefix('Value error, ')}") from None
        return self.vms.expiry.with_expiry(spec)

    async def clone(self, src: str, new: str, *, full: bool = False, snapshot: str | None = None,
                    progress: Progress | None = None) -> VMRecord:
        """A new VM from ``src``'s disk (now, or at ``snapshot``): linked (a new top on a frozen layer: instant) or
        ``full`` (a standalone copy, with ``progress``). It gets its own id, MAC, and, at its first boot, its own
        machine-id, hostname and SSH host keys. ``src`` keeps running."""
        rec = self.vms.get(src)
        spec = self._clone_spec(rec, new)
        if self.store.get_vm(new) is not None or new in self.vms._creating:
            raise Conflict(f"a VM named '{new}' already exists: choose another name or `corral rm {new}`")
        paths = self.vms.paths(new)
        if paths.root.exists():
            raise Conflict(f"{paths.root} already exists but no VM '{new}' is defined: move it away first")
        self.vms.check_quotas(spec, self.vms.disk_size(spec))
        async with self.vms._lock(src), self.vms._lock(new):
            rec = self.vms.get(src)
            snap = self._snapshot(src, snapshot) if snapshot is not None else None
            if snap is None and rec.state not in (*LIVE_DISK, *OFFLINE_DISK):
                raise StateError(src, "clone", rec.state.value, sorted(s.value for s in (*LIVE_DISK, *OFFLINE_DISK)))
            if self.store.get_vm(new) is not None or new in self.vms._creating:
                raise Conflict(f"a VM named '{new}' already exists: choose another name or `corral rm {new}`")
            self.vms.check_quotas(spec, self.vms.disk_size(spec))
            self.vms._creating[new] = spec
            t0 = time.monotonic()
            try:
                with self.vms.journal.run("clone", src, clone=new, full=full, dirs=[str(paths.root)]):
                    top = await self._clone_disk(rec, snap, new, full, progress)
                    faults.point("clone.before-record")
                    self._record_clone(src, spec, paths, top)
            finally:
                self.vms._creating.pop(new, None)
            kind = "full" if full else "linked"
            at = f" at snapshot '{snapshot}'" if snapshot else ""
            took = time.monotonic() - t0
            self.vms.event(src, "clone", f"{kind} clone '{new}' made{at} in {took:.2f}s", clone=new, full=full)
            self.vms.event(new, "create", f"{kind} clone of '{src}'{at} ({took:.2f}s)", source=src, full=full,
                           snapshot=snapshot, spec=spec.model_dump(mode="json"))
            return self.vms.get(new)

    async def _clone_disk(self, src: VMRecord, snap: SnapshotRecord | None, new: str, full: bool,
                          progress: Progress | None) -> LayerRecord:
        try:
            return await (self._full(src, snap, new, progress) if full else self._linked(src, snap, new))
        except CorralError as exc:
            self.vms.event(src.name, "clone", f"clone '{new}' failed: {exc.message}", result="error", clone=new)
            raise

    def _record_clone(self, src: str, spec: VMSpec, paths: P.VMPaths, top: LayerRecord) -> None:
        """The clone's directory and rows, its disk made; if this fails, nothing of the clone is left."""
        try:
            paths.root.parent.mkdir(parents=True, exist_ok=True)
            paths.root.mkdir(mode=0o700)
            paths.identity_reset.write_text(f"cloned from {src}\n")
            mac = "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))
            clone = VMRecord(spec=spec, id=str(uuid.uuid4()), state=VMState.STOPPED, state_reason="",
                             mac=mac, created_at=time.time(), last_exit_reason="", restart_count=0)
            self.store.insert_vm(clone)
            self.store.insert_layer(top)
            self._point_disk(spec.name)
        except BaseException:
            self.store.delete_vm(spec.name)
            Path(top.path).unlink(missing_ok=True)
            shutil.rmtree(paths.root, ignore_errors=True)
            raise

    async def _linked(self, src: VMRecord, snap: SnapshotRecord | None, new: str) -> LayerRecord:
        if snap is not None:
            base = self._layer(snap.layer)
        elif (reuse := self._unchanged_since_freeze(src)) is not None:
            base = reuse
        else:
            base = (await self._freeze_top(src))[0]
        id_, path = await self._create_layer(Path(base.path))
        journal.current().add("files", str(path))
        return LayerRecord(id_, str(path), base.id, None, new, "top", time.time())

    def _unchanged_since_freeze(self, src: VMRecord) -> LayerRecord | None:
        """The frozen layer under a stopped VM's top when nothing was written into that top since: another linked
        clone can share it (instead of a new, empty layer in the source's chain for each clone)."""
        top = self.store.top_layer(src.name)
        if src.state not in OFFLINE_DISK or top is None or top.backing is None:
            return None
        try:
            return self._layer(top.backing) if qcow2.is_empty(Path(top.path)) else None
        except (OSError, qcow2.NotQcow2):
            return None

    async def _full(self, src: VMRecord, snap: SnapshotRecord | None, new: str,
                    progress: Progress | None) -> LayerRecord:
        id_, path = self._new_path()
        journal.current().add("files", str(path))
        try:
            if snap is not None:  # a frozen layer: nobody writes it
                await qemu_img.convert(Path(self._layer(snap.layer).path), path, progress)
            elif src.state in OFFLINE_DISK:
                top = self.store.top_layer(src.name)
                await qemu_img.convert(Path(top.path) if top else self.vms.paths(src.name).disk, path, progress)
            else:
                await self._backup_running(src, id_, path, progress)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return LayerRecord(id_, str(path), None, None, new, "top", time.time())

    async def _backup_running(self, src: VMRecord, id_: str, path: Path, progress: Progress | None) -> None:
        """Copy a running VM's whole disk, as it was when the copy began, while the guest goes on."""
        m = self._machine(src.name)
        assert m.monitor is not None
        monitor = m.monitor
        top = await blockjobs.top_node(monitor)
        size = next(int(d["inserted"]["image"]["virtual-size"]) for d in await monitor.execute("query-block")
                    if blockjobs.ROOT_DEVICE in str(d.get("qdev", "")) and "inserted" in d)
        await qemu_img.create(path, size)
        node, job = f"c-{id_}", f"clone-{id_}"
        op = journal.current()
        op.add("nodes", node)
        await blockjobs.add_target(monitor, node, path)
        try:
            async with self._fs_frozen(m, True):
                op.add("jobs", job)
                await blockjobs.start_backup(monitor, job, top, node)  # the point in time: file systems frozen
                faults.point("clone.after-freeze")
            faults.point("clone.during-copy")
            await blockjobs.wait_job(monitor, job, None if progress is None else
                                     lambda done, total: progress(100.0 * done / total if total else 0.0))
        finally:
            await blockjobs.remove_node(monitor, node)

    # ---------------------------------------------------------------------------------------- VM service hooks --
    async def _first_boot(self, name: str, agent: GuestAgent) -> None:
        """A clone's first boot: its own machine-id, hostname and SSH host keys, before it is reported ready."""
        marker = self.vms.paths(name).identity_reset
        if not marker.exists():
            return
        rec = self.vms.get(name)
        await reset_identity(agent, hostname=rec.spec.guest_hostname)
        marker.unlink(missing_ok=True)
        self.vms.event(name, "identity", "new machine-id, hostname and SSH host keys (a clone's first boot)")

    async def _release_vm(self, rec: VMRecord) -> None:
        """A VM is deleted: its snapshots and top go; its frozen layers go too unless another VM's disk uses them."""
        for s in self.store.list_snapshots(rec.name):
            if s.state_file:
                Path(s.state_file).unlink(missing_ok=True)
        self.store.forget_vm_storage(rec.name)
        top = self.store.top_layer(rec.name)
        if top is not None:
            self.store.delete_layer(top.id)
            self._remove_file(top, rec.name)
        for layer in self.store.list_layers(rec.name):
            self.store.update_layer(layer.id, vm=None)  # shared from now on: kept while a clone backs onto it
        self._collect()

