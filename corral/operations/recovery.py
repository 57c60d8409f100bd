"""Finish or undo what a dead daemon left in the middle of an operation, then sweep what nothing names.

Run once at the daemon's start, after every VM was re-attached (corral.vm re-attach) and before the API serves.
For each operation left in the journal (corral.operations.journal), in order:

1. in the VM's QEMU: its jobs are cancelled, a machine-state save under way is cancelled;
2. helper processes it started (a template's builder QEMU) are killed, by pid and start time;
3. a disk it was freezing onto a new overlay is settled by corral.storage (``overlay`` hook): the overlay becomes
   part of the chain if QEMU writes into it, else it is removed;
4. its kind's own recovery (``kinds``) decides whether it can be finished (a snapshot whose disk and state are whole
   is recorded) or is rolled back (a clone without its VM row is removed);
5. the block nodes it added are deleted, the files it made that no row names are removed, and (rolled back) its
   directories;
6. vCPUs it stopped are started again. File systems it froze are thawed when the guest agent answers (the VM
   service thaws every re-attached guest it finds frozen: Corral is the only one that freezes them).

Each gets one event of the operation's type saying ``finished`` or ``rolled back`` and what was done. If recovering
one fails, its row stays (tried again at the next start) and an error event says why; the others go on.

Then the sweepers run: each domain removes files in its own folders that no row names and no QEMU has open
(a layer under ``layers/``, a backup target in a VM's directory, a template's work directory).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from corral.engine import blockjobs, disk_backup, migration, process
from corral.engine.monitor import Monitor
from corral.errors import CorralError
from corral.operations.journal import Journal
from corral.store.db import OperationRecord
from corral.vm.states import VMState

if TYPE_CHECKING:
    from corral.vm.service import VMService

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What a kind's recovery did: ``finished`` (the operation's result stands) or not (rolled back)."""

    finished: bool
    detail: str = ""


KindRecovery = Callable[[OperationRecord], Awaitable[Outcome]]
OverlayRecovery = Callable[[OperationRecord, dict], Awaitable[str]]  # type: ignore[type-arg]
Sweeper = Callable[[], Awaitable[list[str]]]


@dataclass
class Recovery:
    vms: VMService
    journal: Journal
    #: Per operation kind: how to finish or roll back what only that kind knows about.
    kinds: dict[str, KindRecovery] = field(default_factory=dict)
    #: Set by corral.storage: settle a disk left between its old top and a new overlay.
    overlay: OverlayRecovery | None = None
    #: Files the store names (layers, state files, extra disks): never removed by recovery or a sweep.
    referenced: list[Callable[[], set[str]]] = field(default_factory=list)
    sweepers: list[Sweeper] = field(default_factory=list)

    def named_files(self) -> set[str]:
        out: set[str] = set()
        for f in self.referenced:
            out |= f()
        return out

    async def run(self) -> None:
        for op in self.journal.pending():
            try:
                outcome, done = await self._recover(op)
            except Exception as exc:  # one bad row must not keep the daemon from starting
                log.exception("recovering operation %s (%s of %s) failed", op.id, op.kind, op.vm)
                msg = exc.message if isinstance(exc, CorralError) else str(exc)
                self.vms.event(op.vm, op.kind, f"{op.kind} interrupted by a daemon restart; recovering it failed "
                               f"(tried again at the next start): {msg}", result="error", operation=op.id)
                continue
            self.journal.store.delete_operation(op.id)
            word = "finished" if outcome.finished else "rolled back"
            parts = [p for p in (outcome.detail, *done) if p]
            self.vms.event(op.vm, op.kind, f"{op.kind} interrupted by a daemon restart: {word}"
                           + (f" ({'; '.join(parts)})" if parts else ""), operation=op.id, outcome=word,
                           actions=parts)
        await self.sweep()

    async def sweep(self) -> list[str]:
        removed: list[str] = []
        for sweeper in self.sweepers:
            try:
                removed += await sweeper()
            except Exception:
                log.exception("sweep failed")
        if removed:
            self.vms.event(None, "sweep", f"removed {len(removed)} file(s) left by interrupted operations that "
                           f"nothing names: {', '.join(removed)}", files=removed)
        return removed

    def _monitor(self, vm: str | None) -> Monitor | None:
        m = self.vms.machine(vm) if vm else None
        return m.monitor if m is not None else None

    async def _recover(self, op: OperationRecord) -> tuple[Outcome, list[str]]:
        data, done = op.data, []
        monitor = self._monitor(op.vm)
        rec = self.vms.store.get_vm(op.vm) if op.vm else None
        if op.vm and rec is not None and rec.state == VMState.UNKNOWN:
            raise CorralError(f"the monitor of VM '{op.vm}' does not answer: its QEMU cannot be seen")
        if monitor is not None:
            for job in data.get("jobs", []):
                await disk_backup.cancel_job(monitor, job)
                done.append(f"job {job} cancelled")
            if data.get("migrating"):
                await migration.cancel(monitor)
                done.append("state save cancelled")
        for pid, ticks in data.get("pids", []):
            if process.start_ticks(pid) == ticks:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                done.append(f"helper process {pid} killed")
        if "overlay" in data and self.overlay is not None:
            done.append(await self.overlay(op, data["overlay"]))
        kind = self.kinds.get(op.kind)
        outcome = await kind(op) if kind is not None else Outcome(False)
        if monitor is not None:
            for node in data.get("nodes", []):
                await blockjobs.remove_node(monitor, node)
        named = self.named_files()
        for f in data.get("files", []):
            if f not in named and os.path.lexists(f):
                Path(f).unlink(missing_ok=True)
                done.append(f"removed {f}")
        if not outcome.finished:
            for d in data.get("dirs", []):
                if os.path.isdir(d):
                    await asyncio.to_thread(shutil.rmtree, d, True)
                    done.append(f"removed {d}")
        if monitor is not None and data.get("paused"):
            status = await monitor.execute("query-status")
            if not status.get("running"):
                await monitor.execute("cont")  # from postmigrate too: QEMU takes its disks back
                done.append("vCPUs started again")
            rec = self.vms.store.get_vm(op.vm) if op.vm else None
            if rec is not None and rec.state == VMState.PAUSED:
                await self.vms._set_state(rec.name, VMState.RUNNING, "")  # noqa: SLF001
        if data.get("frozen"):
            done.append("file systems thawed as soon as the guest agent answers")
        return outcome, [d for d in done if d]
