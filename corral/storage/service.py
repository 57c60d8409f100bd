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

The service is built in layers, one concern a module: corral.storage.layers (the layer tree and its files),
corral.storage.freezing (freezing a top), corral.storage.snapshots (named snapshots), and here clones and the
hooks the VM service calls.
"""


from __future__ import annotations

import logging
import secrets
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from corral import faults
from corral import paths as P
from corral.engine import blockjobs, qemu_img
from corral.engine.guest_agent import GuestAgent
from corral.errors import Conflict, CorralError, InvalidInput, StateError
from corral.guest.identity import reset_identity
from corral.operations import journal
from corral.storage import qcow2
from corral.storage.freezing import LIVE_DISK, OFFLINE_DISK
from corral.storage.layers import TEMPLATE_REF
from corral.storage.snapshots import Snapshots, SnapshotView, check_name
from corral.store.db import LayerRecord, SnapshotRecord, VMRecord
from corral.vm.service import VMService
from corral.vm.spec import VMSpec
from corral.vm.states import VMState

__all__ = ["LIVE_DISK", "OFFLINE_DISK", "TEMPLATE_REF", "Progress", "SnapshotView", "StorageService", "check_name"]

log = logging.getLogger(__name__)

Progress = Callable[[float], None]  # percent done


class StorageService(Snapshots):
    def __init__(self, vms: VMService) -> None:
        self.vms = vms
        self.store = vms.store
        self.dir = vms.settings.home / P.LAYERS_DIR
        vms.root_chain = self.chain_for
        vms.provision_hooks.append(self._first_boot)
        vms.delete_hooks.append(self._release_vm)


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
