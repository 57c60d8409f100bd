"""Supervision of a running QEMU: its QMP events, its exit, and the restart policy that follows.

Each supervised QEMU (a :class:`~corral.vm.machine.Machine`) has a task waiting for its exit; its monitor's events
move the VM between ``running`` and ``paused`` (a guest pause, a full disk) and say why it is exiting. The exit
settles the state: a stop, kill, delete or suspend someone asked for is not a crash; a guest power-off is a clean stop;
anything else is a crash, and the VM's restart policy may start it again after a back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

from corral.engine import process
from corral.errors import CorralError
from corral.storage import full
from corral.vm import logs
from corral.vm.actor import ACTOR, SYSTEM_ACTOR, system_task
from corral.vm.core import VMCore
from corral.vm.machine import Machine
from corral.vm.readiness import Readiness
from corral.vm.spec import RestartPolicy
from corral.vm.states import VMState

#: The VM service's log (the daemon log names it so), whichever of its modules writes the line.
log = logging.getLogger("corral.vm.service")

RESTART_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
STABLE_AFTER = 600.0  # a VM up this long has its restart count reset
#: QMP events not worth an event-log line each (a block job's every status change; its end is logged).
QUIET_QMP_EVENTS = frozenset({"JOB_STATUS_CHANGE", "BLOCK_JOB_PENDING"})


class Supervisor:
    """Watches the VMs' QEMU processes; ``start`` (the VM service's, without its lock) applies restart policies."""

    def __init__(self, vms: VMCore, readiness: Readiness, start: Callable[[str], Awaitable[None]]) -> None:
        self.vms = vms
        self.readiness = readiness
        self.start = start

    def attach(self, m: Machine) -> None:
        """Supervise ``m``: its QMP events, its readiness and its exit."""
        self.vms._machines[m.name] = m
        if m.monitor is not None:
            m.monitor.watch(lambda ev, data: self.on_qmp_event(m, ev, data))
        m.supervisor = system_task(self._supervise(m), name=f"supervise-{m.name}")
        self.readiness.watch(m)

    async def on_qmp_event(self, m: Machine, event: str, data: dict[str, Any]) -> None:
        """What one QMP event of the VM's QEMU means for the VM: a state, a reason, an event."""
        ACTOR.set(SYSTEM_ACTOR)  # QEMU's doing, even in a monitor task a request started
        name = m.name
        if event == "SHUTDOWN":
            m.shutdown_reason = str(data.get("reason", ""))
            self.vms.event(name, "qmp", f"SHUTDOWN ({m.shutdown_reason})", **data)
        elif event == "RESET":
            m.reset.set()
            await m.agent.close()  # the agent of the old boot is gone; the next call re-syncs with the new one
            self.readiness.watch(m)
            self.vms.event(name, "qmp", "RESET: the guest rebooted", **data)
        elif event == "GUEST_PANICKED":
            m.panicked = True
            self.vms.event(name, "qmp", "GUEST_PANICKED: the guest kernel panicked", **data)
        elif event == "STOP":
            m.agent.vcpus_stopped()
            rec = self.vms.store.get_vm(name)
            if rec is not None and rec.state == VMState.RUNNING:
                await self.vms._set_state(name, VMState.PAUSED, "paused by QEMU")
        elif event == "RESUME":
            m.agent.vcpus_resumed()
            rec = self.vms.store.get_vm(name)
            if rec is not None and rec.state == VMState.PAUSED:
                await self.vms._set_state(name, VMState.RUNNING)
        elif event == "VSERPORT_CHANGE" and not data.get("open"):
            closed = m.port_closed.get(str(data.get("id")))
            if closed is not None:
                closed.set()
        elif event == "BLOCK_IO_ERROR":
            if data.get("action") == "stop":  # paused until its disk has room or is fixed: nobody waits for that
                m.agent.stopped_until_acted_on()
            reason = data.get("reason") or data.get("operation", "")
            if data.get("nospace"):  # werror=enospc: paused until its file system has room (corral.storage.full)
                image = full.image_of(str(data.get("node-name") or data.get("device") or ""), self.vms.paths(name).disk,
                                      self.vms.store.list_disks(name))
                reason = full.reason(name, image)
            self.vms.event(name, "disk-full" if data.get("nospace") else "qmp",
                           f"BLOCK_IO_ERROR on {data.get('device') or data.get('node-name')}: {reason}", **data)
            rec = self.vms.store.get_vm(name)
            if rec is not None and data.get("action") == "stop" and rec.state in (VMState.RUNNING, VMState.PAUSED):
                await self.vms._set_state(name, VMState.PAUSED,
                                          reason if data.get("nospace") else f"disk I/O error: {reason}")
        elif event not in QUIET_QMP_EVENTS:  # a block job's every step: too chatty
            self.vms.event(name, "qmp", event, **data)

    async def _supervise(self, m: Machine) -> None:
        """Wait for QEMU to exit, then settle the VM's state and apply its restart policy."""
        returncode: int | None = None
        try:
            if m.child is not None:
                returncode = await m.child.wait()
            else:
                await process.wait_exit(m.ident.pid)
        except asyncio.CancelledError:
            raise
        await self._on_exit(m, returncode)

    async def _on_exit(self, m: Machine, returncode: int | None) -> None:
        """QEMU exited: release what it held, settle the state by why it exited, apply the restart policy."""
        name = m.name
        if m.requested and m.requested_by:
            ACTOR.set(m.requested_by)  # the stop (or kill, or delete) that ended it was theirs
        self.vms._machines.pop(name, None)
        if m.ready_task is not None:
            m.ready_task.cancel()
        if m.monitor is not None:
            await m.monitor.close()
        with contextlib.suppress(Exception):
            await m.agent.close()
        self.vms.store.delete_runtime(name)
        await self.release_nics(name)
        if returncode == 0:  # QEMU closed its images itself
            self.vms.paths(name).images_open.unlink(missing_ok=True)
        if returncode is None:
            how = ""
        elif returncode < 0:
            how = f" (killed by {signal.Signals(-returncode).name})"
        else:
            how = f" (exit code {returncode})"
        code = logs.main_exit_code(self.vms.paths(name))  # an OCI image's main process; None for other guests
        if m.requested == "suspend":
            state, reason, failed = VMState.SUSPENDED, m.suspend_reason, False
        elif m.requested:
            state, reason, failed = VMState.STOPPED, m.stop_reason or f"{m.requested} requested by user", False
        elif m.panicked or m.shutdown_reason == "guest-panic":
            state, reason, failed = VMState.CRASHED, "the guest kernel panicked", True
        elif m.shutdown_reason == "guest-shutdown" and code is not None:  # as docker's on-failure: a non-zero exit
            state, reason, failed = VMState.STOPPED, f"its main process exited with code {code}", code != 0
        elif m.shutdown_reason == "guest-shutdown":
            state, reason, failed = VMState.STOPPED, "the guest powered off", False
        elif m.shutdown_reason:
            state, reason, failed = VMState.STOPPED, f"QEMU shut down ({m.shutdown_reason})", False
        else:
            tail = process.tail(self.vms.paths(name).qemu_log, 2)
            state, failed = VMState.CRASHED, True
            reason = f"QEMU exited unexpectedly{how}" + (f": {tail}" if tail else "")
        self.vms.store.set_exit_reason(name, reason)
        self.vms.store.set_exit_code(name, code)
        if self.vms.store.get_vm(name) is not None:
            await self.vms._set_state(name, state, reason)
        m.exited.set()
        rec = self.vms.store.get_vm(name)
        if rec is not None and not m.requested:
            policy = rec.spec.restart
            if policy == RestartPolicy.ALWAYS or (policy == RestartPolicy.ON_FAILURE and failed):
                self.vms.spawn_background(self.restart_later(name, m.started_at), f"restart-{name}")

    async def release_nics(self, name: str) -> None:
        """The VM's host-side NICs (tap devices on bridges) are deleted; a failure is logged, never raised."""
        rec = self.vms.store.get_vm(name)
        if rec is None:
            return
        try:
            await self.vms.networks.release(rec)
        except Exception as exc:  # noqa: BLE001 - cleanup must not break exit handling
            log.warning("%s: cannot release its network devices: %s", name, exc)

    async def restart_later(self, name: str, started_at: float) -> None:
        """Start the VM again after its back-off (reset once it had run :data:`STABLE_AFTER` seconds), unless someone
        else moved it meanwhile."""
        rec = self.vms.store.get_vm(name)
        if rec is None:
            return
        count = 0 if time.time() - started_at > STABLE_AFTER else rec.restart_count
        delay = RESTART_BACKOFF[min(count, len(RESTART_BACKOFF) - 1)]
        self.vms.store.set_restart_count(name, count + 1)
        self.vms.event(name, "restart-policy", f"restarting in {delay:.0f}s (policy {rec.spec.restart}, "
                       f"restart #{count + 1})", delay=delay, count=count + 1)
        await asyncio.sleep(delay)
        async with self.vms._lock(name):
            rec = self.vms.store.get_vm(name)
            if rec is None or rec.state not in (VMState.STOPPED, VMState.CRASHED):
                return  # deleted or started by someone else meanwhile
            try:
                await self.start(name)
            except CorralError as exc:
                self.vms.event(name, "restart-policy", f"restart failed: {exc.message}")
