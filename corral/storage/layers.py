"""The tree of a VM's disk layers: the chain QEMU boots from, new and adopted layers, and the collection of
layers nothing uses any more (the base of corral.storage.service, see its docstring).

A VM created before layers existed has no layer rows: its chain is the image's disk under ``vms/NAME/disk.qcow2``.
It is adopted at its first snapshot or clone: that file is hard-linked into ``layers/`` (same inode, so a running
QEMU keeps writing to it) and gets a row.
"""


from __future__ import annotations

import logging
import os
import secrets
import time
from pathlib import Path

from corral import paths as P
from corral.engine import qemu_img
from corral.engine.blockjobs import inode
from corral.engine.cmdline import BootSource
from corral.errors import EngineError, StateError
from corral.operations import journal
from corral.paths import TemplatePaths
from corral.storage import qcow2
from corral.storage.chain import Chain, ChainLayer
from corral.store.db import LayerRecord, Store, VMRecord
from corral.vm.service import VMService
from corral.vm.states import LIVE, VMState

log = logging.getLogger(__name__)

#: A bottom layer's ``image`` naming a template's disk rather than an image's.
TEMPLATE_REF = "template:"


class LayerTree:
    """The layer rows and files of every VM's root disk; what the storage service is built on."""

    vms: VMService
    store: Store
    dir: Path

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
        return f"{TEMPLATE_REF}{link[0]}" if link else rec.spec.image_ref

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

    async def standalone_top(self, vm: str, size: int, op: journal.Operation | None = None) -> Path:
        """An empty standalone qcow2 of ``size`` bytes as the new VM's root disk: its one layer, no backing (the
        target of a live migration, corral.migration, which fills it). Noted in the operation's files first (``op``,
        else the current one)."""
        id_, path = self._new_path()
        (op or journal.current()).add("files", str(path))
        await qemu_img.create(path, size)
        self.store.insert_layer(LayerRecord(id_, str(path), None, None, vm, "top", time.time()))
        self._point_disk(vm)
        return path

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
        journal.current().note(new_top=id_)  # a daemon dying from here: the VM's top is this one, or the old one
        os.replace(file, path)  # until the swap nothing names it: a crash here leaves it for the layers sweep
        path.chmod(0o600)
        self.store.swap_layer(old.id, LayerRecord(id_, str(path), None, None, vm, "top", time.time()))
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
