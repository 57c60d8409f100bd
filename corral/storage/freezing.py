"""Freezing a VM's top layer, the one primitive of snapshots and clones: the guest's file systems frozen through
its agent (always thawed after, or asked again until it answers), the top made read-only under a new empty overlay
QEMU writes into, and for a whole-machine snapshot its memory saved at the same instant.
"""


from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

from corral import faults
from corral.engine import blockjobs, migration
from corral.errors import CorralError, EngineError, StateError
from corral.operations import journal
from corral.storage.layers import LayerTree
from corral.store.db import LayerRecord, VMRecord
from corral.vm.machine import Machine
from corral.vm.states import VMState

log = logging.getLogger(__name__)

FREEZE_TIMEOUT = 10.0  # a guest whose file systems do not freeze in this time is snapshotted unfrozen
THAW_TIMEOUT = 10.0
THAW_RETRY_INTERVAL = 5.0
THAW_RETRIES = 360  # half an hour of asking

#: States in which a VM's disk can be frozen: live through QMP, or offline with qemu-img.
LIVE_DISK = (VMState.RUNNING, VMState.PAUSED)
OFFLINE_DISK = (VMState.STOPPED, VMState.CRASHED, VMState.SUSPENDED)


class Freezer(LayerTree):
    """Freezes a VM's top layer (running: through QMP and the guest agent; at rest: with qemu-img)."""

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
