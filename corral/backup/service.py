"""BackupService: backups of VM disks into repositories, verification, restore, retention and schedules.

Composed over :class:`corral.vm.service.VMService` (its per-VM lock, its monitors, its event log); the disk is read
through :mod:`corral.engine.disk_backup`, the repository is :mod:`corral.backup.repo`.

A backup holds the VM's lock from start to end (one operation per VM at a time) and the repository's exclusive
lock (prune never removes a chunk a backup is about to refer to). Which kind it is:

- incremental (read ``bitmap``): the VM runs, its top disk node has the persistent bitmap ``corral-backup``, that
  bitmap is consistent, and the VM's ``backup-bitmap.json`` says it was started by the newest backup of this VM in
  this repository, on this same top file. QEMU copies only the marked clusters; the chunks they touch are rebuilt
  (read-modify-write over the parent's chunk when a chunk changed in part) and the rest are the parent's.
- full (read ``full``): otherwise. The whole disk is read, but only chunks not already in the repository are stored.
  The reason is recorded in the index. A full backup of a running VM restarts the bitmap at the same instant (one
  QMP transaction); of a stopped VM, in the qcow2 itself (``qemu-img bitmap``).

``backup-bitmap.json`` is removed before QEMU touches the bitmap and written after the index: if anything fails in
between, the next backup is a full one. A bitmap left inconsistent by a killed QEMU is never used.

What holds after a failure: no index is written, the temporary target is removed, chunks already stored are kept
(unreferenced until a later backup refers to them, or a prune removes them). A failed restore creates nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from corral import faults
from corral.backup import chunks, gc, retention, transfer
from corral.backup.models import (
    BackupIndex,
    BackupSummary,
    PruneRequest,
    PruneResult,
    RepoInfo,
    RestoreResult,
    Schedule,
    VerifyReport,
)
from corral.backup.repo import CorruptBackup, Repository
from corral.backup.schedule import ScheduleStore, next_run
from corral.backup.transfer import Progress
from corral.engine import disk_backup
from corral.errors import Conflict, CorralError, EngineError, InvalidInput, NotFound, StateError
from corral.operations import journal
from corral.operations.recovery import Outcome, Recovery
from corral.paths import BACKUPS_DIR
from corral.settings import Settings
from corral.storage.service import StorageService
from corral.store.db import OperationRecord, VMRecord
from corral.vm.service import VMService
from corral.vm.states import VMState

log = logging.getLogger(__name__)

RUNNING = (VMState.RUNNING, VMState.PAUSED)
AT_REST = (VMState.STOPPED, VMState.CRASHED, VMState.SUSPENDED)


@dataclass(frozen=True)
class _Made:
    """A backup copied and stored, its index not yet written."""

    index: BackupIndex
    keep_bitmap: bool
    top_file: str


def _noop(stage: str, done: int, total: int | None) -> None:
    pass


def given_repo_path(raw: str) -> Path:
    """A repository path from a request: absolute, since the daemon knows neither the client's working directory
    nor its home (the CLI sends ``~/b`` and ``./b`` resolved); a relative one would land in the daemon's cwd."""
    if "\0" in raw:
        raise InvalidInput(f"repository path {raw!r} contains a NUL byte: give an absolute path")
    if not os.path.isabs(raw):
        raise InvalidInput(f"repository path {raw!r} is not absolute: give the whole path (the daemon does not "
                           "know the client's working directory)")
    return Path(os.path.normpath(raw))


@contextlib.asynccontextmanager
async def _locked(repo: Repository, exclusive: bool) -> AsyncIterator[None]:
    cm = repo.lock(exclusive)
    await asyncio.to_thread(cm.__enter__)
    try:
        yield
    finally:
        cm.__exit__(None, None, None)


class BackupService:
    def __init__(self, vms: VMService, settings: Settings, storage: StorageService | None = None) -> None:
        self.vms = vms
        self.settings = settings
        self.storage = storage  # the disk layer tree: a restored disk becomes the VM's top layer
        self.schedules = ScheduleStore(vms.store)
        vms.before_expiry_delete = self.final_backup

    # ------------------------------------------------------------------------------------------ repositories --
    def repo_path(self, repo: str | None) -> Path:
        """The repository ``repo`` names (an absolute path), or the default one under the Corral home."""
        return given_repo_path(repo) if repo else self.settings.home / BACKUPS_DIR

    def open_repo(self, repo: str | None) -> Repository:
        """The repository at ``repo``; the default one (under the Corral home) is made on first use."""
        path = self.repo_path(repo)
        if repo is None and not path.exists():
            return Repository.init(path)
        return Repository.open(path)

    async def init_repo(self, path: str) -> RepoInfo:
        repo = await asyncio.to_thread(Repository.init, given_repo_path(path))
        self.vms.event(None, "backup", f"backup repository made at {repo.path}", repo=str(repo.path))
        return await asyncio.to_thread(repo.info)

    async def repo_info(self, repo: str | None) -> RepoInfo:
        r = await asyncio.to_thread(self.open_repo, repo)
        return await asyncio.to_thread(r.info)

    async def list_backups(self, repo: str | None, vm: str | None = None) -> list[BackupSummary]:
        path = self.repo_path(repo)
        if repo is None and not path.exists():
            return []
        r = await asyncio.to_thread(Repository.open, path)
        return [i.summary() for i in await asyncio.to_thread(r.indexes) if vm is None or i.vm == vm]

    # ------------------------------------------------------------------------------------------------ create --
    async def create(self, name: str, repo: str | None = None, full: bool = False,
                     progress: Progress = _noop, *, locked: bool = False) -> BackupIndex:
        """Back up VM ``name``'s root disk (running or not). ``locked``: the caller holds the VM's lock."""
        self.vms.get(name)
        r = await asyncio.to_thread(self.open_repo, repo)
        try:
            async with contextlib.nullcontext() if locked else self.vms.operation_lock(name), _locked(r, True):
                index = await self._create(name, r, full, progress)
        except CorralError as exc:
            self.vms.event(name, "backup", f"backup failed: {exc.message}", result="error", repo=str(r.path))
            raise
        how = "bitmap: only what changed was read" if index.read == "bitmap" else f"whole disk read ({index.reason})"
        self.vms.event(name, "backup", f"backup {index.id} ({index.kind}; {how}): read {_mib(index.read_bytes)}, "
                       f"stored {_mib(index.stored_bytes)} in {index.new_chunks} new chunks",
                       backup=index.id, repo=str(r.path), kind=index.kind, read=index.read,
                       read_bytes=index.read_bytes, stored_bytes=index.stored_bytes)
        return index

    async def _create(self, name: str, r: Repository, full: bool, progress: Progress) -> BackupIndex:
        rec = self.vms.get(name)
        paths = self.vms.paths(name)
        t0 = time.monotonic()
        created = datetime.now(UTC)
        history = [i for i in await asyncio.to_thread(r.indexes) if i.vm_id == rec.id and i.disk == "root"]
        parent = history[-1] if history else None
        target = paths.backup_target(secrets.token_hex(4))
        state_file = paths.backup_bitmap
        for stale in paths.root.glob("backup-*.qcow2"):
            stale.unlink(missing_ok=True)  # left by a daemon that died mid-backup (we hold the VM's lock)
        with self.vms.journal.run("backup", name, repo=str(r.path), files=[str(target)]):
            made = await self._copy_and_store(name, rec, r, full, progress, parent, target, state_file, created, t0)
            faults.point("backup.before-index")
            await asyncio.to_thread(r.write_index, made.index)
            if made.keep_bitmap:
                state = {"repo": str(r.path), "backup": made.index.id, "top_file": made.top_file, "vm_id": rec.id}
                await asyncio.to_thread(state_file.write_text, json.dumps(state) + "\n")
        return made.index

    async def _copy_and_store(self, name: str, rec: VMRecord, r: Repository, full: bool, progress: Progress,
                              parent: BackupIndex | None, target: Path, state_file: Path, created: datetime,
                              t0: float) -> _Made:
        """Copy the disk into ``target`` (QEMU's backup job, or qemu-img for a VM at rest), then its chunks into the
        repository; ``target`` is removed whatever happens. The index is not written yet."""
        keep_bitmap = True
        try:
            if rec.state in RUNNING:
                m = self.vms.machine(name)
                if m is None or m.monitor is None:
                    raise EngineError(f"the monitor of VM '{name}' is not connected: try again when it is")
                if await disk_backup.sweep(m.monitor):
                    self.vms.event(name, "backup", "removed the job and target of an interrupted backup from QEMU")
                disk = await disk_backup.root_node(m.monitor)
                reason = "--full asked" if full else self._why_full(disk, parent, state_file, r)
                state_file.unlink(missing_ok=True)  # from here the bitmap matches no backup until this one is done
                def copying(done: int, total: int) -> None:
                    faults.point("backup.during-copy")
                    progress("copy", done, total or None)

                copied = await disk_backup.backup_to_target(m.monitor, disk, target, incremental=not reason,
                                                            progress=copying)
                size, top_file = disk.virtual_size, disk.filename
            elif rec.state in AT_REST:
                top = self.top_disk(name)
                state_file.unlink(missing_ok=True)
                reason = f"the VM is {rec.state}"
                if rec.state == VMState.SUSPENDED:
                    keep_bitmap = False  # its saved state goes with the disk as it is: the bitmap is left alone
                else:
                    await disk_backup.set_bitmap_offline(top)
                progress("read", 0, None)
                size = await disk_backup.convert_to_target(top, target)
                copied, top_file = -1, str(top)
            else:
                raise StateError(name, "back up", rec.state.value, [s.value for s in (*RUNNING, *AT_REST)])
            extents = await disk_backup.map_target(target)
            if parent is not None and parent.virtual_size != size and not reason:
                reason = "the disk's size changed"  # not reachable through the bitmap check; kept for safety
            incremental = not reason and parent is not None
            stats = await asyncio.to_thread(transfer.store_target, r, target, extents, size,
                                            parent if incremental else None, progress)
        finally:
            target.unlink(missing_ok=True)
        # What QEMU copied for an incremental (the bitmap's clusters); for a full read, the data the disk held.
        read_bytes = copied if incremental else stats["data_bytes_read"]
        index = BackupIndex(
            id=r.new_id(), vm=name, vm_id=rec.id, disk="root", virtual_size=size, chunk_size=chunks.CHUNK_SIZE,
            created=created, kind="incremental" if incremental else "full",
            parent=parent.id if incremental and parent else None, read="bitmap" if incremental else "full",
            reason=reason, vm_state=rec.state.value, read_bytes=read_bytes, changed_chunks=stats["changed_chunks"],
            changed_regions=stats["changed_regions"], new_chunks=stats["new_chunks"],
            stored_bytes=stats["stored_bytes"], data_bytes=stats["data_bytes"],
            seconds=round(time.monotonic() - t0, 3), spec=rec.spec.model_dump(mode="json"), chunks=stats["chunks"],
        )
        return _Made(index, keep_bitmap, top_file)

    def _why_full(self, disk: disk_backup.DiskNode, parent: BackupIndex | None, state_file: Path,
                  r: Repository) -> str:
        """'' if an incremental backup can trust the bitmap, else why not."""
        if parent is None:
            return "no earlier backup of this VM in this repository"
        bm = disk.bitmaps.get(disk_backup.BITMAP)
        if bm is None:
            return "the disk has no backup bitmap (new disk layer, or never backed up while running)"
        if bm.inconsistent:
            return "the backup bitmap is inconsistent (QEMU did not close the disk cleanly)"
        if bm.busy or not bm.recording or not bm.persistent:
            return "the backup bitmap is not usable (busy, disabled or not persistent)"
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            return "no record of which backup the bitmap counts from"
        if state.get("repo") != str(r.path):
            return "the bitmap counts from a backup in another repository"
        if state.get("backup") != parent.id:
            return "the bitmap does not count from the newest backup in the repository"
        if state.get("top_file") != disk.filename:
            return "the disk's top layer changed since the last backup"
        if disk.virtual_size != parent.virtual_size:
            return "the disk's size changed"
        return ""

    # ---------------------------------------------------------------------------------------------- recovery --
    def register_recovery(self, recovery: Recovery) -> None:
        recovery.kinds["backup"] = self._recover
        recovery.kinds["restore"] = self._recover_restore
        recovery.sweepers.append(self._sweep)

    async def _recover_restore(self, op: OperationRecord) -> Outcome:
        """A restore a dead daemon left: finished if the backup's disk became the VM's top layer (the store names
        the layer it noted), else rolled back: a new VM it had created is deleted (nothing half-restored stays), an
        existing VM keeps its disk as it was; its work files go with the journal's ``files``."""
        name = str(op.vm)
        new_top = op.data.get("new_top")
        if new_top is not None and self.vms.store.get_layer(str(new_top)) is not None:
            return Outcome(True, f"VM '{name}' has the disk of backup {op.data.get('backup')}")
        created = op.data.get("created")
        if created and self.vms.store.get_vm(str(created)) is not None:
            await self.vms.delete(str(created), force=True)
            return Outcome(False, f"the half-restored VM '{created}' was deleted")
        return Outcome(False, f"VM '{name}' keeps its disk as it was" if not op.data.get("new_vm") else
                       "no VM was created")

    async def _recover(self, op: OperationRecord) -> Outcome:
        """A backup a dead daemon left: finished if its index was written, else rolled back: QEMU's job and target
        node go with the sweep, and the chunks it stored that no index names are removed here (see
        :func:`_drop_unindexed`)."""
        name = str(op.vm)
        rec = self.vms.store.get_vm(name)
        try:
            r = await asyncio.to_thread(self.open_repo, str(op.data.get("repo")))
            done = [i for i in await asyncio.to_thread(r.indexes)
                    if rec is not None and i.vm_id == rec.id and i.created.timestamp() >= op.started_at - 1]
        except CorralError:
            return Outcome(False, "no backup recorded (its repository cannot be opened)")
        if done:
            return Outcome(True, f"backup {done[-1].id} recorded")
        try:
            dropped = await asyncio.to_thread(gc.drop_unindexed, r)
        except CorralError as exc:
            return Outcome(False, f"no backup recorded; its stored chunks are left for `backup prune` ({exc.message})")
        return Outcome(False, f"no backup recorded; removed the {dropped} chunk(s) it had stored")

    async def _sweep(self) -> list[str]:
        """What interrupted backups left: QEMU's backup jobs and target nodes, and the target files."""
        removed = []
        for rec in self.vms.store.list_vms():
            m = self.vms.machine(rec.name)
            if m is not None and m.monitor is not None and await disk_backup.sweep(m.monitor):
                self.vms.event(rec.name, "backup", "removed the job and target of an interrupted backup from QEMU")
            for stale in self.vms.paths(rec.name).root.glob("backup-*.qcow2"):
                stale.unlink(missing_ok=True)
                removed.append(str(stale))
        return removed

    def top_disk(self, name: str) -> Path:
        """The top qcow2 of a stopped VM's root disk chain (what QEMU opens as the root disk)."""
        return self.vms.paths(name).disk

    async def final_backup(self, name: str) -> None:
        """The backup taken before an expired VM is deleted (``backup_before_delete``); the caller holds its lock.
        Raises if it fails: the VM is then not deleted."""
        index = await self.create(name, None, locked=True)
        self.vms.event(name, "backup", f"final backup {index.id} taken before deletion", backup=index.id)

    # ------------------------------------------------------------------------------------------------ verify --
    async def verify(self, repo: str | None, ids: list[str], progress: Progress = _noop) -> VerifyReport:
        r = await asyncio.to_thread(self.open_repo, repo)
        async with _locked(r, False):
            full_ids = [await asyncio.to_thread(r.resolve, i) for i in ids]
            report = await asyncio.to_thread(r.verify, full_ids or None, progress)
        ok = "ok" if report.ok else "error"
        self.vms.event(None, "backup", f"verify of {len(report.backups)} backup(s) in {r.path}: "
                       + ("all chunks intact" if report.ok else f"{len(report.problems)} problem(s), bad backups: "
                          f"{', '.join(report.bad_backups)}"), result=ok, repo=str(r.path),
                       bad=report.bad_backups)
        return report

    # ----------------------------------------------------------------------------------------------- restore --
    async def restore(self, bid: str, repo: str | None, to: str | None, in_place: str | None,
                      progress: Progress = _noop) -> RestoreResult:
        """Restore backup ``bid`` to a new VM ``to`` (its backed-up spec), or into the stopped VM ``in_place``.

        Every chunk is checked as it is read; one that fails refuses the restore and nothing is created or changed.
        """
        if (to is None) == (in_place is None):
            raise InvalidInput("give either --to NEW (a new VM) or --in-place VM (an existing, stopped VM)")
        r = await asyncio.to_thread(self.open_repo, repo)
        async with _locked(r, False):
            bid = await asyncio.to_thread(r.resolve, bid)
            index = await asyncio.to_thread(r.load_index, bid)
            if to is not None:
                from corral.vm.spec import VMSpec

                if self.vms.store.get_vm(to) is not None:
                    raise Conflict(f"a VM named '{to}' already exists: choose another name for the restore")
                spec_data = index.spec | {"name": to, "disk": index.virtual_size, "expires_at": None}
                try:
                    spec = VMSpec.model_validate(spec_data)
                except ValueError as exc:
                    raise InvalidInput(f"cannot restore to '{to}': {str(exc).splitlines()[-1].strip()}") from None
                self.vms.images.get(spec.image_ref)  # the image gives the kernel: it must exist before we start
            else:
                assert in_place is not None
                self._check_in_place(in_place)
            self.vms.settings.vms_dir.mkdir(parents=True, exist_ok=True)
            work = self.vms.settings.vms_dir / f".restore-{secrets.token_hex(4)}"
            raw, qcow2 = work.with_suffix(".raw"), work.with_suffix(".qcow2")
            with self.vms.journal.run("restore", to or in_place, backup=bid, new_vm=to is not None,
                                      files=[str(raw), str(qcow2)]), contextlib.ExitStack() as cleanup:
                cleanup.callback(raw.unlink, missing_ok=True)
                cleanup.callback(qcow2.unlink, missing_ok=True)
                try:
                    await asyncio.to_thread(transfer.write_raw, r, index, raw, progress)
                except CorruptBackup as exc:
                    raise CorruptBackup(f"backup {bid} fails verification ({exc.message}): not restored, nothing "
                                        f"changed; `corral backup verify {bid}`") from exc
                progress("convert", 0, None)
                await disk_backup.raw_to_qcow2(raw, qcow2)
                raw.unlink(missing_ok=True)
                if to is not None:
                    result = await self._restore_new(index, spec, qcow2)
                else:
                    assert in_place is not None
                    result = await self._restore_in_place(index, in_place, qcow2)
        return result

    def _check_in_place(self, name: str) -> None:
        rec = self.vms.get(name)
        if rec.state not in (VMState.STOPPED, VMState.CRASHED):
            raise StateError(name, "restore into", rec.state.value, [VMState.STOPPED.value, VMState.CRASHED.value])

    async def _restore_new(self, index: BackupIndex, spec: Any, qcow2: Path) -> RestoreResult:
        dropped = []
        taken = {p.key(): r.name for r in self.vms.store.list_vms() for p in r.spec.ports}
        if any(p.key() in taken for p in spec.ports):
            dropped = [str(p) for p in spec.ports if p.key() in taken]
            spec = spec.model_copy(update={"ports": [p for p in spec.ports if p.key() not in taken]})
        await self.vms.create(spec)
        journal.current().note(created=spec.name)
        try:
            faults.point("restore.before-disk")
            self._put_disk(spec.name, qcow2)
        except BaseException:
            with contextlib.suppress(CorralError):
                await self.vms.delete(spec.name, force=True)
            raise
        self.vms.event(spec.name, "restore", f"restored from backup {index.id} of '{index.vm}' "
                       f"({index.created:%Y-%m-%d %H:%M:%S}Z)", backup=index.id, source_vm=index.vm)
        return RestoreResult(vm=spec.name, backup=index.id, disk_bytes=index.virtual_size, dropped_ports=dropped)

    def _put_disk(self, name: str, qcow2: Path) -> None:
        """The restored standalone qcow2 becomes the VM's disk: its top layer in the layer tree (its snapshots
        stay), or, without one, its disk.qcow2."""
        if self.storage is not None:
            self.storage.replace_top(name, qcow2)
        else:
            os.replace(qcow2, self.vms.paths(name).disk)

    async def _restore_in_place(self, index: BackupIndex, name: str, qcow2: Path) -> RestoreResult:
        async with self.vms.operation_lock(name):
            self._check_in_place(name)
            rec = self.vms.get(name)
            paths = self.vms.paths(name)
            paths.backup_bitmap.unlink(missing_ok=True)  # a new disk: the next backup reads it whole
            faults.point("restore.before-disk")
            self._put_disk(name, qcow2)
            if rec.spec.disk != index.virtual_size:
                self.vms.store.update_spec(rec.spec.model_copy(update={"disk": index.virtual_size}))
        self.vms.event(name, "restore", f"disk replaced by backup {index.id} of '{index.vm}' "
                       f"({index.created:%Y-%m-%d %H:%M:%S}Z)", backup=index.id, source_vm=index.vm)
        return RestoreResult(vm=name, backup=index.id, disk_bytes=index.virtual_size)

    # ------------------------------------------------------------------------------------------------- prune --
    async def prune(self, req: PruneRequest) -> PruneResult:
        policy = retention.Policy(req.keep_last, req.keep_daily, req.keep_weekly)
        if policy.empty:
            raise InvalidInput("say what to keep: --keep-last N, --keep-daily N and/or --keep-weekly N")
        r = await asyncio.to_thread(self.open_repo, req.repo)
        async with _locked(r, True):
            result = await asyncio.to_thread(gc.prune, r, req.vm, policy, req.dry_run)
        if not req.dry_run:
            self.vms.event(req.vm if self.vms.store.get_vm(req.vm) else None, "backup",
                           f"prune: removed {len(result.removed)} backup(s) of '{req.vm}' and {result.chunks_removed} "
                           f"chunk(s) ({_mib(result.bytes_freed)})", removed=result.removed, repo=str(r.path))
        return result

    # --------------------------------------------------------------------------------------------- schedules --
    def set_schedule(self, s: Schedule) -> Schedule:
        self.vms.get(s.vm)
        if (s.every is None) == (s.daily_at is None):
            raise InvalidInput("give either --every DURATION or --daily HH:MM")
        if s.every is not None and s.every < 1:
            raise InvalidInput("--every must be at least 1 second")
        self.repo_path(s.repo)
        if s.repo is not None:
            Repository.open(self.repo_path(s.repo))
            s = s.model_copy(update={"repo": str(self.repo_path(s.repo))})
        s = s.model_copy(update={"created": time.time(), "last_run": None, "last_result": ""})
        self.schedules.put(s)
        saved = self.schedules.get(s.vm)
        assert saved is not None
        when = f"every {s.every:g}s" if s.every is not None else f"daily at {s.daily_at}"
        self.vms.event(s.vm, "backup-schedule", f"backups {when} into {self.repo_path(s.repo)}",
                       every=s.every, daily_at=s.daily_at)
        return saved

    def list_schedules(self) -> list[Schedule]:
        return self.schedules.list()

    def delete_schedule(self, vm: str) -> None:
        if not self.schedules.delete(vm):
            raise NotFound(f"VM '{vm}' has no backup schedule: see `corral backup schedules`")
        self.vms.event(vm, "backup-schedule", "backup schedule removed")

    async def run_due(self, now: float | None = None) -> None:
        """One pass of the daemon's schedule check: every due backup, then its retention (a busy VM waits)."""
        for s in self.schedules.list():
            now_ = time.time() if now is None else now
            if next_run(s) > now_:
                continue
            if self.vms.store.get_vm(s.vm) is None:
                self.schedules.delete(s.vm)
                self.vms.event(None, "backup-schedule", f"schedule of deleted VM '{s.vm}' removed")
                continue
            if self.vms.operation_lock(s.vm).locked():
                continue  # an operation is under way: next pass
            try:
                index = await self.create(s.vm, s.repo)
                result = f"ok: {index.id}"
                if s.keep_last or s.keep_daily or s.keep_weekly:
                    await self.prune(PruneRequest(vm=s.vm, repo=s.repo, keep_last=s.keep_last,
                                                  keep_daily=s.keep_daily, keep_weekly=s.keep_weekly))
            except CorralError as exc:
                result = f"error: {exc.message}"
            except Exception as exc:  # noqa: BLE001 - one bad schedule must not stop the others
                log.exception("scheduled backup of %s failed", s.vm)
                result = f"error: {exc}"
            self.schedules.record_run(s.vm, now_, result)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"
