"""Export a VM to one archive and import it on any host with Corral: spec, disk layers, snapshot tree, image, and
the machine state when asked (the archive format: corral.portable.archive, docs/explanation/export-format.md).

Export reads only layers nobody writes: a stopped VM's whole tree as it is; a running VM's disk is first frozen
(corral.storage: the guest goes on writing into a new top, with its file systems frozen for that instant, or with
``state`` its whole machine saved at the same instant), the archive holds the frozen layer as the VM's disk, and
afterwards that layer is merged back into the VM's top so its chain does not grow with every export.

Import trusts nothing in the archive until the manifest's checksums match (corral.portable.archive.read), then
checks every layer's qcow2 header as for an imported image (no external data file, no encryption, no unknown
features), rewrites each layer's backing name to where its backing now lives on this host, and only then records
the VM. What holds after a failure: no VM, layer, snapshot or image is left; the unpacked files are removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from corral import faults
from corral import paths as P
from corral.engine import qemu_img
from corral.errors import Conflict, CorralError, InvalidInput, NotFound
from corral.images.artifacts import Manifest, sha256_file
from corral.images.boot import VM_EFI_VARS
from corral.images.inspect import inspect
from corral.operations import journal
from corral.operations.recovery import Outcome, Recovery
from corral.portable import archive
from corral.portable.archive import ArchiveError, ArchiveProgress, Member
from corral.storage import check as image_check
from corral.storage.service import LIVE_DISK, OFFLINE_DISK, TEMPLATE_REF, StorageService, check_name
from corral.store.db import DiskRecord, LayerRecord, OperationRecord, SnapshotRecord, VMRecord
from corral.vm.arch import image_ref, split_ref
from corral.vm.spec import VMSpec
from corral.vm.states import VMState

#: The version of the ``meta`` section this code writes and reads.
META_VERSION = 1


@dataclass(frozen=True)
class ExportResult:
    path: Path
    size: int
    layers: int
    snapshots: int
    state: bool
    seconds: float


def _layer_member(id_: str) -> str:
    return f"layers/{id_}.qcow2"


def _state_member(snapshot_id: str) -> str:
    return f"states/{snapshot_id}.state"


def _new_mac() -> str:
    return "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))


class PortableService:
    def __init__(self, storage: StorageService) -> None:
        self.storage = storage
        self.vms = storage.vms
        self.store = storage.store

    # ---------------------------------------------------------------------------------------------- recovery --
    def register_recovery(self, recovery: Recovery) -> None:
        recovery.kinds["import"] = self._recover_import
        recovery.sweepers.append(self._sweep)

    async def _recover_import(self, op: OperationRecord) -> Outcome:
        """An import a dead daemon left: finished if every row was written, else rolled back: the half-imported VM
        is deleted (its layers and directory with it), an image the import installed goes unless a VM uses it."""
        vm = op.data.get("vm")
        if op.data.get("done") and vm and self.store.get_vm(str(vm)) is not None:
            return Outcome(True, f"VM '{vm}' imported from {op.data.get('path')}")
        done = []
        created = op.data.get("created")
        if created and self.store.get_vm(str(created)) is not None:
            await self.vms.delete(str(created), force=True)
            done.append(f"the half-imported VM '{created}' was deleted")
        image = op.data.get("image_installed")
        if image and not any(r.spec.image_ref == image for r in self.store.list_vms()):
            with contextlib.suppress(CorralError):
                await asyncio.to_thread(self.vms.images.remove, str(image), [])
                done.append(f"image '{image}' it had installed was removed")
        return Outcome(False, "; ".join(done) or f"nothing of {op.data.get('path')} was imported")

    async def _sweep(self) -> list[str]:
        """Work directories of imports no operation runs any more (the journal is settled before sweeps)."""
        removed = []
        for d in self.vms.settings.home.glob(".import-*"):
            await asyncio.to_thread(shutil.rmtree, d, True)
            removed.append(str(d))
        return removed

    # ------------------------------------------------------------------------------------------------ export --
    async def export(self, name: str, dest: Path, *, state: bool = False,
                     progress: ArchiveProgress | None = None) -> ExportResult:
        """Write VM ``name`` to the archive ``dest`` (which must not exist). With ``state``, its machine state too:
        a running or paused VM's, saved now without stopping it, or a suspended VM's saved state."""
        t0 = time.monotonic()
        if not dest.is_absolute():
            raise InvalidInput(f"export path {dest} is not absolute")
        if dest.exists() or dest.is_symlink():
            raise Conflict(f"{dest} already exists: choose another file or remove it first")
        if not dest.parent.is_dir():
            raise InvalidInput(f"directory {dest.parent} does not exist: create it first")
        async with self.vms._lock(name):
            rec = self.vms.get(name)
            if rec.state not in (*LIVE_DISK, *OFFLINE_DISK):
                raise Conflict(f"VM '{name}' is {rec.state}: export it when it is running, paused, stopped or "
                               "suspended")
            if state and rec.state not in (*LIVE_DISK, VMState.SUSPENDED):
                raise Conflict(f"VM '{name}' is {rec.state}: it has no machine state to export (export without "
                               "--state, or start it first)")
            live = rec.state in LIVE_DISK
            if live and self.store.list_disks(name):
                raise Conflict(f"VM '{name}' has extra disks, which are exported only from a stopped VM (their "
                               f"contents would change while they are copied): `corral stop {name}` first")
            tmp_state: Path | None = None
            frozen: LayerRecord | None = None
            partial = dest.with_name(dest.name + ".partial")
            with self.vms.journal.run("export", name, path=str(dest), files=[str(partial)]):
                try:
                    if live:
                        if state:
                            self.storage.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                            tmp_state = self.storage.dir / f".export-{secrets.token_hex(4)}.state"
                            journal.current().add("files", str(tmp_state))
                        frozen, _ = await self.storage._freeze_top(rec, state_file=tmp_state)
                        faults.point("export.after-freeze")
                        top = frozen
                    else:
                        top = self.storage._adopt(rec)
                        if state:
                            tmp_state = self.vms.paths(name).state_file
                    members, meta = self._describe(self.vms.get(name), top, tmp_state)
                    manifest = await asyncio.to_thread(archive.write, dest, members, meta, progress)
                finally:
                    if tmp_state is not None and live:
                        tmp_state.unlink(missing_ok=True)
                    if frozen is not None:
                        await self._merge_back(name, frozen)
            size = dest.stat().st_size
            self.vms.event(name, "export", f"exported to {dest} ({size >> 20} MiB, {len(meta['layers'])} layer(s), "
                           f"{len(meta['snapshots'])} snapshot(s){', machine state' if tmp_state else ''})",
                           path=str(dest), size=size, files=len(manifest["files"]))
            return ExportResult(dest, size, len(meta["layers"]), len(meta["snapshots"]), tmp_state is not None,
                                time.monotonic() - t0)

    async def _merge_back(self, name: str, frozen: LayerRecord) -> None:
        """Merge the layer an export froze back into the VM's top (best effort: if it fails, the chain is one layer
        longer, which is correct, just not tidy)."""
        try:
            rec = self.vms.get(name)
            if rec.state in (*LIVE_DISK, *OFFLINE_DISK) and not self.store.snapshots_of_layer(frozen.id):
                await self.storage._merge_away(rec, self.storage._layer(frozen.id))
                self.storage._collect()
        except CorralError as exc:
            self.vms.event(name, "export", f"the layer frozen for the export stays in the disk chain: {exc.message}")

    def _describe(self, rec: VMRecord, top: LayerRecord,
                  state_file: Path | None) -> tuple[list[Member], dict[str, Any]]:
        """The archive's members and meta for ``rec`` whose current disk is ``top``."""
        snaps = self.store.list_snapshots(rec.name)
        layers: dict[str, LayerRecord] = {}
        for start in [top, *(self.storage._layer(s.layer) for s in snaps)]:
            for layer in self.storage._walk(start):
                layers.setdefault(layer.id, layer)
        bottoms = {layer.image for layer in layers.values() if layer.backing is None}
        if any(b is not None and b.startswith(TEMPLATE_REF) for b in bottoms):
            raise Conflict(f"VM '{rec.name}' sits on a template's disk, which an export does not carry yet: export a "
                           f"full clone of it (`corral clone {rec.name} NEW --full`)")
        # The image store's key (corral.vm.arch.image_ref): tiny, or tiny@aarch64 for a VM of another architecture.
        image = rec.spec.image_ref if rec.spec.image_ref in bottoms else None
        members = [Member(_layer_member(i), Path(layer.path)) for i, layer in layers.items()]
        for s in snaps:
            if s.state_file:
                members.append(Member(_state_member(s.id), Path(s.state_file)))
        if state_file is not None:
            members.append(Member("state.bin", state_file))
        disks = self.store.list_disks(rec.name)
        members += [Member(f"disks/{d.name}.qcow2", Path(d.file)) for d in disks]
        efivars = self.vms.paths(rec.name).root / VM_EFI_VARS
        if efivars.is_file():
            members.append(Member(VM_EFI_VARS, efivars))
        image_meta: dict[str, Any] | None = None
        if image is not None:
            manifest = self.vms.images.get(image)
            idir = self.vms.images.dir(image)
            names = (P.IMAGE_MANIFEST, P.IMAGE_KERNEL, P.IMAGE_INITRD, P.IMAGE_DISK)
            files = [f for f in names if (idir / f).is_file()]
            members += [Member(f"image/{f}", idir / f) for f in files]
            image_meta = {"name": image, "disk_sha256": manifest.disk_sha256, "disk_format": manifest.disk_format}
        meta = {
            "version": META_VERSION,
            "exported_at": time.time(),
            "vm": {"spec": rec.spec.model_dump(mode="json"), "mac": rec.mac, "id": rec.id},
            "top": top.id,
            "layers": [{"id": i, "backing": layer.backing, "image": layer.image} for i, layer in layers.items()],
            "snapshots": [{"id": s.id, "name": s.name, "parent": s.parent, "layer": s.layer,
                           "state": bool(s.state_file), "note": s.note, "created_at": s.created_at} for s in snaps],
            "current": self.store.current_snapshot(rec.name),
            "state": state_file is not None,
            "image": image_meta,
            "disks": [{"name": d.name, "size": d.size, "serial": d.serial, "limits": d.limits, "port": d.port}
                      for d in disks],
        }
        return members, meta

    # ------------------------------------------------------------------------------------------------ import --
    async def import_(self, src: Path, *, name: str | None = None,
                      progress: ArchiveProgress | None = None) -> VMRecord:
        """Recreate the VM in archive ``src`` (as ``name``, else its own name): stopped, or suspended when the
        archive holds its machine state, with its snapshot tree."""
        if not src.is_absolute():
            raise InvalidInput(f"import path {src} is not absolute")
        if not src.is_file():
            raise NotFound(f"{src} does not exist or is not a file")
        home = self.vms.settings.home
        with self.vms.journal.run("import", None, path=str(src)) as op:
            work = Path(tempfile.mkdtemp(dir=home, prefix=".import-"))
            op.add("dirs", str(work))  # removed by recovery if the daemon dies in the middle
            try:
                meta = await asyncio.to_thread(archive.read, src, work, progress)
                return await self._recreate(src, work, meta, name)
            finally:
                await asyncio.to_thread(shutil.rmtree, work, True)

    def _spec(self, src: Path, meta: dict[str, Any], name: str | None) -> VMSpec:
        if meta.get("version") != META_VERSION:
            raise ArchiveError(f"{src} was written by a Corral whose export version ({meta.get('version')}) this "
                               f"one does not read ({META_VERSION})")
        try:
            data = dict(meta["vm"]["spec"])
            if name is not None:
                data["name"] = name
            return VMSpec.model_validate(data)
        except (KeyError, TypeError) as exc:
            raise ArchiveError(f"{src}: the VM description is incomplete ({exc})") from exc
        except ValidationError as exc:
            e = exc.errors()[0]
            raise InvalidInput(f"{'.'.join(str(x) for x in e['loc'])}: "
                               f"{str(e['msg']).removeprefix('Value error, ')}") from None

    async def _recreate(self, src: Path, work: Path, meta: dict[str, Any], name: str | None) -> VMRecord:
        spec = self._spec(src, meta, name)
        vm = spec.name
        undo: list[Any] = []  # callables, run in reverse on failure
        async with self.vms._lock(vm):
            if self.store.get_vm(vm) is not None or vm in self.vms._creating:
                raise Conflict(f"a VM named '{vm}' already exists: import under another name (--name NEW) or "
                               f"`corral rm {vm}` first")
            paths = self.vms.paths(vm)
            if paths.root.exists():
                raise Conflict(f"{paths.root} already exists but no VM '{vm}' is defined: move it away first")
            try:
                op = journal.current()
                op.note(vm=vm)
                image, installed = await asyncio.to_thread(self._image, src, work, meta)
                if installed and image is not None:
                    op.note(image_installed=image)
                    undo.append(lambda name=image: self.vms.images.remove(name, []))
                if image is not None and image != spec.image_ref:
                    spec = spec.model_copy(update={"image": split_ref(image)[0]})
                self.vms.check_quotas(spec, self.vms.disk_size(spec))
                self.vms._creating[vm] = spec
                undo.append(lambda: self.vms._creating.pop(vm, None))
                ids = await self._place_layers(src, work, meta, image, undo)
                paths.root.parent.mkdir(parents=True, exist_ok=True)
                op.add("dirs", str(paths.root))
                paths.root.mkdir(mode=0o700)
                undo.append(lambda: shutil.rmtree(paths.root, ignore_errors=True))
                if (work / VM_EFI_VARS).is_file():
                    shutil.move(work / VM_EFI_VARS, paths.root / VM_EFI_VARS)
                has_state = bool(meta.get("state")) and (work / "state.bin").is_file()
                if has_state:
                    shutil.move(work / "state.bin", paths.state_file)
                mac = str(meta["vm"].get("mac") or "")
                if not mac or any(r.mac == mac for r in self.store.list_vms()):
                    mac = _new_mac()
                rec = VMRecord(spec=spec, id=str(uuid.uuid4()),
                               state=VMState.SUSPENDED if has_state else VMState.STOPPED,
                               state_reason=f"imported from {src.name}" + (" with its machine state" if has_state
                                                                          else ""),
                               mac=mac, created_at=time.time(), last_exit_reason="", restart_count=0)
                self.store.insert_vm(rec)
                op.note(created=vm)
                undo.append(lambda: self.store.delete_vm(vm))
                faults.point("import.after-row")
                self._record_layers(vm, meta, ids, undo)
                self._record_snapshots(vm, meta, ids, work, undo)
                await self._place_disks(src, work, meta, vm, undo)
                self.storage._point_disk(vm)
                op.note(done=True)
            except BaseException:
                for step in reversed(undo):
                    with contextlib.suppress(Exception):
                        step()
                raise
            finally:
                self.vms._creating.pop(vm, None)
        n_snaps = len(meta.get("snapshots") or [])
        self.vms.event(vm, "import", f"imported from {src} ({len(ids)} layer(s), {n_snaps} snapshot(s)"
                       f"{', machine state' if has_state else ''})", path=str(src),
                       spec=spec.model_dump(mode="json"))
        return self.vms.get(vm)

    def _image(self, src: Path, work: Path, meta: dict[str, Any]) -> tuple[str | None, bool]:
        """The image the VM's disk sits on here: the same image if this host has it (same disk checksum), else
        the archive's copy, installed (under a new name if this host has another image by that name)."""
        want = meta.get("image")
        if want is None:
            return None, False
        idir = work / "image"
        try:
            manifest = Manifest.model_validate_json((idir / P.IMAGE_MANIFEST).read_text())
        except (OSError, ValidationError) as exc:
            raise ArchiveError(f"{src}: the image's manifest is missing or invalid") from exc
        if manifest.disk_sha256 != want.get("disk_sha256") or \
                sha256_file(idir / P.IMAGE_DISK) != manifest.disk_sha256:
            raise ArchiveError(f"{src}: the image's disk does not match its manifest")
        bare, arch = split_ref(str(want["name"]))  # a store key: tiny, or tiny@aarch64
        for candidate in (str(want["name"]), image_ref(f"{bare}-{manifest.disk_sha256[:8]}", arch)):
            try:
                have = self.vms.images.get(candidate)
            except NotFound:
                if split_ref(candidate)[0] != manifest.name:
                    manifest = manifest.model_copy(update={"name": split_ref(candidate)[0]})
                    os.chmod(idir / P.IMAGE_MANIFEST, 0o644)
                    (idir / P.IMAGE_MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n")
                self.vms.images.install_from(idir, candidate)
                return candidate, True
            if have.disk_sha256 == manifest.disk_sha256:
                return candidate, False
        raise Conflict(f"images '{want['name']}' and '{want['name']}-{manifest.disk_sha256[:8]}' here differ from "
                       f"the one in {src}: remove one of them first")

    async def _place_layers(self, src: Path, work: Path, meta: dict[str, Any], image: str | None,
                            undo: list[Any]) -> dict[str, str]:
        """Move every layer into this host's layer directory under a new id, check its header, and point its
        backing at its new place. Returns old id -> new id."""
        layers = {str(x["id"]): x for x in meta.get("layers") or []}
        if str(meta.get("top")) not in layers:
            raise ArchiveError(f"{src}: the VM's disk layer is not in the archive")
        ids: dict[str, str] = {}
        for old in layers:
            new, path = self.storage._new_path()
            journal.current().add("files", str(path))
            undo.append(lambda path=path: path.unlink(missing_ok=True))
            ids[old] = new
            file = work / _layer_member(old)
            if not file.is_file():
                raise ArchiveError(f"{src}: layer {old} is missing")
            await asyncio.to_thread(inspect, file, "qcow2", allow_backing=True)
            os.replace(file, path)
            path.chmod(0o600)
        for old, info in layers.items():
            backing = info.get("backing")
            path = self.storage.dir / f"{ids[old]}.qcow2"
            if backing is not None:
                if str(backing) not in ids:
                    raise ArchiveError(f"{src}: layer {old} backs onto layer {backing}, which is not in the archive")
                await qemu_img.set_backing(path, self.storage.dir / f"{ids[str(backing)]}.qcow2", "qcow2")
            elif info.get("image") is not None:
                if image is None:
                    raise ArchiveError(f"{src}: layer {old} sits on an image the archive does not hold")
                manifest = self.vms.images.get(image)
                await qemu_img.set_backing(path, self.vms.images.dir(image) / P.IMAGE_DISK, manifest.disk_format)
            else:
                await qemu_img.set_backing(path, None)
        for old in layers:  # every layer, now on its new backing, must have whole qcow2 metadata
            result = await image_check.check(self.storage.dir / f"{ids[old]}.qcow2")
            if result.corrupt:
                raise ArchiveError(f"{src}: layer {old} is damaged ({result.summary()})")
        return ids

    async def _place_disks(self, src: Path, work: Path, meta: dict[str, Any], vm: str, undo: list[Any]) -> None:
        """The VM's extra disks: each checked like a layer (it must have no backing file), put in its directory."""
        paths = self.vms.paths(vm)
        for d in meta.get("disks") or []:
            name = str(d["name"])
            check_name(name, "disk")
            file = work / f"disks/{name}.qcow2"
            if not file.is_file():
                raise ArchiveError(f"{src}: extra disk '{name}' is missing")
            await asyncio.to_thread(inspect, file, "qcow2")
            result = await image_check.check(file)
            if result.corrupt:
                raise ArchiveError(f"{src}: extra disk '{name}' is damaged ({result.summary()})")
            dest = paths.extra_disk(name)
            dest.parent.mkdir(mode=0o700, exist_ok=True)
            os.replace(file, dest)
            dest.chmod(0o600)
            port = d.get("port")
            self.store.insert_disk(DiskRecord(vm=vm, name=name, file=str(dest), size=int(d["size"]),
                                              serial=str(d.get("serial") or name), created_at=time.time(),
                                              limits={str(k): int(v) for k, v in (d.get("limits") or {}).items()},
                                              port=int(port) if port is not None else None))
            undo.append(lambda name=name: self.store.delete_disk(vm, name))

    def _record_layers(self, vm: str, meta: dict[str, Any], ids: dict[str, str], undo: list[Any]) -> None:
        for rec in self._bottom_up(meta, ids, vm, time.time()):  # every backing row before the rows above it
            self.store.insert_layer(rec)
            undo.append(lambda id_=rec.id: self.store.delete_layer(id_))

    def _image_name(self, vm: str) -> str:
        return self.vms.get(vm).spec.image_ref

    def _bottom_up(self, meta: dict[str, Any], ids: dict[str, str], vm: str, now: float) -> list[LayerRecord]:
        top = str(meta["top"])
        by_id = {str(x["id"]): x for x in meta["layers"]}
        done: dict[str, LayerRecord] = {}

        def place(old: str) -> None:
            if ids[old] in done:
                return
            info = by_id[old]
            backing = info.get("backing")
            if backing is not None:
                place(str(backing))
            image = None if backing is not None or info.get("image") is None else self._image_name(vm)
            done[ids[old]] = LayerRecord(ids[old], str(self.storage.dir / f"{ids[old]}.qcow2"),
                                         ids[str(backing)] if backing is not None else None, image, vm,
                                         "top" if old == top else "frozen", now)

        for old in by_id:
            place(old)
        return list(done.values())

    def _record_snapshots(self, vm: str, meta: dict[str, Any], ids: dict[str, str], work: Path,
                          undo: list[Any]) -> None:
        snaps = meta.get("snapshots") or []
        sids = {str(s["id"]): secrets.token_hex(6) for s in snaps}
        for s in snaps:
            old = str(s["id"])
            state_file: str | None = None
            if s.get("state"):
                file = work / _state_member(old)
                if not file.is_file():
                    raise ArchiveError(f"snapshot '{s['name']}' has a machine state the archive does not hold")
                dest = self.storage.dir / f"{sids[old]}.state"
                shutil.move(file, dest)
                undo.append(lambda dest=dest: dest.unlink(missing_ok=True))
                state_file = str(dest)
            parent = s.get("parent")
            self.store.insert_snapshot(SnapshotRecord(
                sids[old], vm, str(s["name"]), sids.get(str(parent)) if parent is not None else None,
                ids[str(s["layer"])], state_file, str(s.get("note") or ""), float(s.get("created_at") or 0)))
        undo.append(lambda: self.store.forget_vm_storage(vm))
        current = meta.get("current")
        self.store.set_current_snapshot(vm, sids.get(str(current)) if current is not None else None)

