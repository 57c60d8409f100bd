"""Recovery after a daemon restart: re-attach to every VM whose QEMU still runs, settle the ones that died meanwhile.

QEMU runs detached from the daemon, so a restarted daemon finds each VM's process again by its recorded pid and
start time (or, if it died between spawning QEMU and recording it, by the VM's id on QEMU's command line), reconnects
to its monitor and supervises it as before.

What holds after a failure:
- ``recover`` never deletes or recreates a VM it could not see: a live QEMU whose monitor does not answer is
  shown as ``unknown`` and left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from corral import fileio
from corral.engine import migration, process
from corral.engine.guest_agent import GuestAgent
from corral.engine.monitor import Monitor, MonitorError
from corral.store.db import RuntimeRecord, VMRecord
from corral.vm import logs
from corral.vm.core import VMCore
from corral.vm.machine import Machine
from corral.vm.spec import RestartPolicy
from corral.vm.states import LIVE, VMState
from corral.vm.supervision import Supervisor

log = logging.getLogger(__name__)


class Recovery:
    """Re-attaches the daemon to the VMs it finds at start; hands each live one to the supervisor."""

    def __init__(self, vms: VMCore, supervisor: Supervisor) -> None:
        self.vms = vms
        self.supervisor = supervisor

    async def recover(self) -> None:
        """Re-attach to every VM whose QEMU still runs; settle the ones that died while the daemon was away."""
        await asyncio.gather(*(self._recover_one(rec) for rec in self.vms.store.list_vms()))
        await self.vms.networks.recover(r for r in self.vms.store.list_vms() if r.state in LIVE)
        for path in await asyncio.to_thread(fileio.sweep_removed, self.vms.settings.vms_dir):
            log.info("removed %s, a deleted VM's folder a crash left behind", path)

    async def _recover_one(self, rec: VMRecord) -> None:
        """Find the VM's QEMU again; attach to it, or settle the state of a VM whose QEMU is gone."""
        name = rec.name
        if rec.state == VMState.INCOMING:  # a live migration arriving: removed by its own recovery (corral.migration)
            return
        rt = self.vms.store.get_runtime(name)
        ident: process.ProcessIdentity | None = None
        if rt is not None:
            candidate = process.ProcessIdentity(rt.pid, rt.start_ticks)
            if process.matches(candidate, rec.id):
                ident = candidate
        else:
            ident = process.find_qemu(rec.id)  # spawned but not yet recorded when the daemon died
        if ident is None:
            if rec.state == VMState.SUSPENDED:  # a resting state: no QEMU is expected
                if not self.vms.paths(name).state_file.is_file():
                    await self.vms._set_state(name, VMState.STOPPED, "its saved state file is gone")
                return
            if rec.state == VMState.SUSPENDING and self.vms.paths(name).state_file.is_file():
                self.vms.store.delete_runtime(name)  # saved whole (renamed), then QEMU quit while the daemon was away
                await self.vms._set_state(name, VMState.SUSPENDED, "suspended by user")
                return
            await self.supervisor.release_nics(name)  # taps left by a QEMU that exited while the daemon was away
            if rec.state in LIVE or rt is not None:
                self.vms.store.delete_runtime(name)
                reason = "QEMU exited while the daemon was away"
                tail = process.tail(self.vms.paths(name).qemu_log, 2)
                if tail:
                    reason += f": {tail}"
                self.vms.store.set_exit_reason(name, reason)
                self.vms.store.set_exit_code(name, logs.main_exit_code(self.vms.paths(name)))  # an OCI main process
                await self.vms._set_state(name, VMState.CRASHED, reason)
                if rec.spec.restart != RestartPolicy.NEVER:
                    self.vms.spawn_background(self.supervisor.restart_later(name, 0.0), f"restart-{name}")
            return
        paths = self.vms.paths(name)
        accel = rt.accel if rt else "unknown"
        started_at = rt.started_at if rt else time.time()
        if rt is None:
            self.vms.store.put_runtime(RuntimeRecord(name, ident.pid, ident.start_ticks, started_at, accel))
        m = Machine(name=name, vm_id=rec.id, ident=ident, accel=accel, started_at=started_at, monitor=None,
                    agent=GuestAgent(paths.qga_socket), ssh_port=rt.ssh_port if rt else None)
        monitor = Monitor(name, paths.qmp_socket)
        try:
            await monitor.connect(timeout=3.0, alive=lambda: process.is_alive(ident.pid))
            status = await monitor.execute("query-status", timeout=3.0)
        except MonitorError as exc:
            await monitor.close()
            self.supervisor.attach(m)
            await self.vms._set_state(name, VMState.UNKNOWN, f"QEMU pid {ident.pid} runs but its monitor does not "
                                      f"answer: {exc.message}")
            self.vms.spawn_background(self._reconnect(m), f"reconnect-{name}")
            return
        m.monitor = monitor
        origin_of = self.vms.origin_of  # asked only for a VM whose identity is pending: it prepares keys
        origin = origin_of(rec) if origin_of is not None and self.vms.paths(name).identity_pending.is_file() else None
        if origin is not None:
            # Loaded from its template's state, the daemon died before the guest took its own identity: it runs
            # with the template's hostname, MAC and keys. It takes its own now, before it is reported ready.
            m.personalize, m.after_ready = origin.personalize, origin.after_ready
            self.vms.event(name, "reattach", "its launch from a template was interrupted before it took its own "
                           "identity: taking it now")
        self.supervisor.attach(m)
        if rec.state == VMState.SUSPENDING:  # the daemon died while suspending this VM: finish or undo it
            await self._settle_suspending(m, monitor, str(status.get("status")))
            return
        if rec.state == VMState.STARTING and status.get("status") == "inmigrate":
            await self._undo_start(m, monitor, rec)
            return
        running = status.get("running", False)
        if rec.state == VMState.STARTING and rec.state_reason == "resuming" and running:
            self.vms.paths(name).state_file.unlink(missing_ok=True)  # loaded: the guest moved on from it
        if not running:
            m.agent.vcpus_stopped()  # no STOP event comes for a pause from before the restart
        await self.vms._set_state(name, VMState.RUNNING if running else VMState.PAUSED,
                                  "" if running else f"paused ({status.get('status')})")
        self.vms.event(name, "reattach", f"re-attached to QEMU pid {ident.pid}")

    async def _undo_start(self, m: Machine, monitor: Monitor, rec: VMRecord) -> None:
        """The daemon died while this QEMU waited for the machine state it was to load (a resume, or a launch from
        a template): nothing will give it one, so it quits. A suspended VM stays suspended, its saved state intact
        (QEMU never writes to it), to be resumed again; a template's VM is stopped, its template's state still to
        load at its next start."""
        resuming = rec.state_reason == "resuming" and self.vms.paths(m.name).state_file.is_file()
        m.requested = "suspend" if resuming else "stop"
        m.suspend_reason = "its resume was interrupted by a restart of corrald: start it again"
        m.stop_reason = "its start was interrupted by a restart of corrald: start it again"
        with contextlib.suppress(MonitorError):
            await monitor.execute("quit")
        await m.exited.wait()
        self.vms.event(m.name, "reattach", f"QEMU pid {m.ident.pid} waited for a machine state no one will give it: "
                       f"quit, the VM {'suspended as before' if resuming else 'stopped'}")

    async def _settle_suspending(self, m: Machine, monitor: Monitor, status: str) -> None:
        """Finish a suspend the daemon died in (its state file is whole) or undo it."""
        paths = self.vms.paths(m.name)
        if status == "postmigrate" and paths.state_file.is_file():  # saved whole: quit, as suspend would have
            m.requested = "suspend"
            with contextlib.suppress(MonitorError):
                await monitor.execute("quit")
            self.vms.event(m.name, "reattach", f"finished suspending (QEMU pid {m.ident.pid} quit)")
            return
        await migration.cancel(monitor)  # a save still under way would leave the VM paused once it completes
        paths.state_file.with_name(paths.state_file.name + ".partial").unlink(missing_ok=True)
        with contextlib.suppress(MonitorError):
            await monitor.execute("cont")
        await self.vms._set_state(m.name, VMState.RUNNING, "suspend interrupted by a daemon restart")
        self.vms.event(m.name, "reattach", f"re-attached to QEMU pid {m.ident.pid}; the interrupted suspend undone")

    async def _reconnect(self, m: Machine) -> None:
        """Keep trying the monitor of an ``unknown`` VM; re-attach when it answers."""
        while not m.exited.is_set() and m.monitor is None:
            await asyncio.sleep(5.0)
            monitor = Monitor(m.name, self.vms.paths(m.name).qmp_socket)
            try:
                await monitor.connect(timeout=3.0, alive=lambda: process.is_alive(m.ident.pid))
                status = await monitor.execute("query-status", timeout=3.0)
            except MonitorError:
                await monitor.close()
                continue
            m.monitor = monitor
            monitor.watch(lambda ev, data: self.supervisor.on_qmp_event(m, ev, data))
            await self.vms._set_state(m.name, VMState.RUNNING if status.get("running") else VMState.PAUSED)
            self.vms.event(m.name, "reattach", f"monitor of QEMU pid {m.ident.pid} answers again")
