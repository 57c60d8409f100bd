"""The VM service: the facade other packages use, and the lifecycle operations (create, start, stop, kill, pause,
resume, suspend, restart, delete, and commands run in the guest).

Operations on one VM are serialized by a per-VM lock; different VMs proceed in parallel. Every state change goes
through ``_set_state`` (:mod:`corral.vm.core`, with the shared state), which checks the declared transition, stores it
and logs it as an event. Each other concern is a part of its own, reached through an attribute:

- ``events`` (:mod:`corral.vm.eventlog`): the event log and its live subscriptions;
- ``booter`` (:mod:`corral.vm.boot`): starting a VM's QEMU;
- ``supervisor`` (:mod:`corral.vm.supervision`): a running QEMU's events, its exit, restart policies;
- ``readiness`` (:mod:`corral.vm.readiness`): each boot's guest agent, provisioning, addresses;
- ``recovery`` (:mod:`corral.vm.recovery`): re-attach after a daemon restart;
- ``expiry`` (:mod:`corral.vm.expiry_service`): expiry times, `corral extend`, the periodic check;
- ``forwards`` (:mod:`corral.vm.port_forwards`): host ports forwarded to a VM;
- ``specs`` (:mod:`corral.vm.spec_updates`): labels and the other spec changes.

What holds after a failure:
- ``create`` leaves no directory, disk or record behind.
- ``suspend`` leaves the VM running (or paused, as it was) and no state file.
- ``start`` and ``resume``: see :mod:`corral.vm.boot`; ``recover``: see :mod:`corral.vm.recovery`.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from corral import faults, fileio
from corral.engine import migration, process, qemu_img
from corral.engine.cmdline import ARCHES
from corral.engine.guest_agent import ExecExit, ExecOutput, GuestAgent
from corral.engine.monitor import MonitorError
from corral.errors import Conflict, CorralError, EngineError, InvalidInput, StateError
from corral.images.store import ImageStore
from corral.mounts import host as mount_host
from corral.network.private import NetworkService
from corral.paths import IMAGE_KERNEL
from corral.settings import Settings
from corral.store.db import Store, VMRecord
from corral.vm import host, logs
from corral.vm.actor import ACTOR
from corral.vm.boot import Booter
from corral.vm.core import VMCore
from corral.vm.expiry_service import ExpiryService
from corral.vm.machine import Machine
from corral.vm.port_forwards import PortForwards
from corral.vm.readiness import Readiness
from corral.vm.recovery import Recovery
from corral.vm.spec import VMSpec
from corral.vm.spec_updates import SpecUpdates
from corral.vm.states import LIVE, VMState, check_operation
from corral.vm.supervision import Supervisor

CLEAN_REBOOT_TIMEOUT = 30.0  # then a clean reboot becomes a hard reset


class VMService(VMCore):
    """Every VM operation; the shared state and helpers are :class:`~corral.vm.core.VMCore`'s."""

    def __init__(self, settings: Settings, store: Store, images: ImageStore,
                 networks: NetworkService | None = None) -> None:
        super().__init__(settings, store, images, networks)
        self.readiness = Readiness(self)
        self.supervisor = Supervisor(self, self.readiness, self._start)
        self.booter = Booter(self, self.supervisor)
        self.recovery = Recovery(self, self.supervisor)
        self.expiry = ExpiryService(self, self)
        self.forwards = PortForwards(self)
        self.specs = SpecUpdates(self)

    # ------------------------------------------------------------------------------------------------- create --
    async def create(self, spec: VMSpec, base: tuple[Path, str] | None = None,
                     overlay: Path | None = None) -> VMRecord:
        """Define a VM and make its disk (an overlay on its image's disk, or on ``base``: (path, format)); with
        ``overlay`` (an empty overlay on ``base`` of the VM's disk size, made earlier), a copy of it instead. Fails
        with nothing left behind."""
        async with self._lock(spec.name):
            if self.store.get_vm(spec.name) is not None:
                raise Conflict(
                    f"a VM named '{spec.name}' already exists: choose another name or `corral rm {spec.name}`"
                )
            manifest = self.images.get(spec.image_ref)
            if spec.command is not None and manifest.oci is None:
                raise InvalidInput(f"image '{spec.image}' is not an OCI image: only an OCI image's cmd can be "
                                   "replaced (`-- ARGS`)")
            await self.nested_flag(spec, self.images.dir(spec.image_ref) / IMAGE_KERNEL
                                   if manifest.boot == "kernel" else None)  # refused here: nothing is made
            self.networks.check_spec(spec.networks)
            self.forwards.check_unclaimed(spec.name, spec.ports)
            host.check_spec_fits(spec.name, spec.memory, self.settings.memory_overcommit)
            if spec.disk is not None and spec.disk < manifest.disk_virtual_size:
                raise InvalidInput(
                    f"disk size {spec.disk} bytes is smaller than image '{spec.image}' "
                    f"({manifest.disk_virtual_size} bytes): ask for at least that much"
                )
            spec = self.expiry.with_expiry(spec)
            spec = spec.model_copy(update={"mounts": [mount_host.check_host(m, self.settings.home)
                                                      for m in spec.mounts]})
            paths = self.paths(spec.name)
            if paths.root.exists():
                raise Conflict(f"{paths.root} already exists but no VM '{spec.name}' is defined: move it away first")
            self.check_quotas(spec, spec.disk or manifest.disk_virtual_size)
            mac = "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))  # QEMU's locally assigned OUI
            rec = VMRecord(spec=spec, id=str(uuid.uuid4()), state=VMState.STOPPED, state_reason="", mac=mac,
                           created_at=time.time(), last_exit_reason="", restart_count=0)
            paths.root.parent.mkdir(parents=True, exist_ok=True)
            paths.root.mkdir(mode=0o700)
            self._creating[spec.name] = spec  # counted by other creates' quota checks until it is in the store
            try:
                if overlay is not None:
                    await asyncio.to_thread(shutil.copyfile, overlay, paths.disk)  # mode from the umask, as qemu-img
                else:
                    await qemu_img.create_overlay(
                        paths.disk, *(base or (self.images.dir(spec.image_ref) / "disk.qcow2", manifest.disk_format)),
                        spec.disk)
                self.store.insert_vm(rec)
            except BaseException:
                shutil.rmtree(paths.root, ignore_errors=True)
                raise
            finally:
                self._creating.pop(spec.name, None)
            self.event(spec.name, "create", f"created from image '{spec.image}'", spec=spec.model_dump(mode="json"))
            return rec

    # -------------------------------------------------------------------------------------------------- start --
    async def start(self, name: str) -> VMRecord:
        """Boot the VM (or resume a suspended one from its saved state), under its lock."""
        async with self._lock(name):
            await self._start(name)
            return self._get(name)

    async def _start(self, name: str) -> None:
        """Boot the VM; a suspended VM instead gets a QEMU that loads its saved state (and continues)."""
        try:
            await self.booter.boot(name)
        finally:
            self._starting.pop(name, None)

    # ------------------------------------------------------------------------------------------- stop / kill --
    async def stop(self, name: str, timeout: float = 30.0, force: bool = True) -> VMRecord:
        """Ask the guest to power off (ACPI); after ``timeout`` seconds kill QEMU if ``force``."""
        async with self._lock(name):
            return await self._stop(name, timeout, force)

    async def _stop(self, name: str, timeout: float, force: bool) -> VMRecord:
        """Stop without taking the lock (the caller holds it: ``stop``, an expiry)."""
        rec = self._get(name)
        check_operation(name, "stop", rec.state)
        if rec.state == VMState.SUSPENDED:
            return await self._discard_suspended(name, force)
        m = self._machines.get(name)
        if m is None:
            raise EngineError(f"VM '{name}' has no supervised QEMU process: try `corral kill {name}`")
        m.requested, m.requested_by = "stop", ACTOR.get()
        await self._set_state(name, VMState.STOPPING)
        try:
            if rec.state == VMState.PAUSED and m.monitor is not None:
                await m.monitor.execute("cont")
            await self._power_off(m, rec.spec)
            await asyncio.wait_for(m.exited.wait(), timeout)
        except (TimeoutError, MonitorError) as exc:
            if not force:
                m.requested = None
                await self._set_state(name, VMState.RUNNING, "")
                raise EngineError(f"VM '{name}' did not power off within {timeout:.0f}s: "
                                  f"use `corral stop --force {name}` or `corral kill {name}`") from exc
            self.event(name, "stop", f"guest did not power off ({exc or 'timeout'}); killing QEMU")
            await self._kill_machine(m)
        return self._get(name)

    @staticmethod
    async def _power_off(m: Machine, spec: VMSpec) -> None:
        """Ask the guest to power off: through its power button (ACPI on q35, gpio-keys on arm's virt), or where the
        machine has none (riscv64's virt: ArchProfile.power_button) through its guest agent."""
        if ARCHES[spec.arch].power_button or not m.agent_ready:
            if m.monitor is not None:
                await m.monitor.execute("system_powerdown")
            return
        with contextlib.suppress(CorralError):  # guest-shutdown never answers on success: the agent goes down
            await m.agent.execute("guest-shutdown", {"mode": "powerdown"}, timeout=2.0)

    async def _discard_suspended(self, name: str, force: bool) -> VMRecord:
        """Stop a suspended VM: like pulling the plug, its saved memory is thrown away (only with ``force``)."""
        if not force:
            raise Conflict(f"VM '{name}' is suspended: stopping it discards its saved memory; "
                           f"`corral resume {name}` or `corral stop --force {name}`")
        self.paths(name).state_file.unlink(missing_ok=True)
        self.store.set_exit_reason(name, "saved state discarded by stop")
        await self._set_state(name, VMState.STOPPED, "saved state discarded by stop")
        return self._get(name)

    async def kill(self, name: str) -> VMRecord:
        """Kill the VM's QEMU at once (SIGKILL): the exit is recorded as requested, not as a crash."""
        async with self._lock(name):
            rec = self._get(name)
            check_operation(name, "kill", rec.state)
            m = self._machines.get(name)
            if m is None:
                raise EngineError(f"VM '{name}' has no supervised QEMU process to kill")
            m.requested, m.requested_by = "kill", ACTOR.get()
            await self._kill_machine(m)
            return self._get(name)

    async def _kill_machine(self, m: Machine) -> None:
        """SIGKILL the QEMU (checked to be this VM's process) and wait for the supervisor to see it exit."""
        process.kill(m.ident, m.vm_id, signal.SIGKILL)
        try:
            await asyncio.wait_for(m.exited.wait(), 30)
        except TimeoutError as exc:
            raise EngineError(f"QEMU of '{m.name}' (pid {m.ident.pid}) did not exit after SIGKILL") from exc

    # ---------------------------------------------------------------------------------- pause / resume / restart --
    async def _qmp(self, name: str, operation: str, cmd: str, args: dict[str, Any] | None = None) -> Machine:
        """Send one QMP command to the VM's QEMU, if the operation is allowed in its state."""
        rec = self._get(name)
        check_operation(name, operation, rec.state)
        m = self._machines.get(name)
        if m is None or m.monitor is None:
            raise EngineError(f"the monitor of VM '{name}' is not connected")
        await m.monitor.execute(cmd, args)
        return m

    async def pause(self, name: str, reason: str = "paused by user") -> VMRecord:
        """Stop the VM's vCPUs (QMP ``stop``); its QEMU stays."""
        async with self._lock(name):
            await self._qmp(name, "pause", "stop")
            await self._set_state(name, VMState.PAUSED, reason)
            return self._get(name)

    async def resume(self, name: str) -> VMRecord:
        """Continue a paused VM's vCPUs, or bring a suspended VM back from its saved state."""
        async with self._lock(name):
            if self._get(name).state == VMState.SUSPENDED:
                await self._start(name)
                return self._get(name)
            await self._qmp(name, "resume", "cont")
            await self._set_state(name, VMState.RUNNING)
            return self._get(name)

    async def suspend(self, name: str, timeout: float = 600.0, reason: str = "suspended by user") -> VMRecord:
        """Save the VM's machine state to its state file, then quit QEMU: the VM is ``suspended`` (``reason``).

        On failure nothing is saved and the VM runs (or stays paused) as before.
        """
        async with self._lock(name):
            return await self._suspend(name, timeout, reason)

    async def _suspend(self, name: str, timeout: float, reason: str = "suspended by user") -> VMRecord:
        """Suspend without taking the lock (the caller holds it: ``suspend``, idle control, an expiry)."""
        rec = self._get(name)
        check_operation(name, "suspend", rec.state)
        m = self._machines.get(name)
        if m is None or m.monitor is None:
            raise EngineError(f"the monitor of VM '{name}' is not connected")
        paths = self.paths(name)
        shared = bool(mount_host.read_layout(paths)) and rec.state == VMState.RUNNING and m.agent_ready
        if shared:
            await self.readiness.unmount_shares(m)
        await self._set_state(name, VMState.SUSPENDING)
        faults.point("suspend.during-save")
        try:
            saved = await migration.save_state(m.monitor, paths.state_file,
                                               was_running=rec.state == VMState.RUNNING, timeout=timeout)
        except BaseException as exc:
            if not m.exited.is_set() and self._get(name).state == VMState.SUSPENDING:
                await self._set_state(name, rec.state, rec.state_reason)
            if shared and not m.exited.is_set():
                await self.readiness.mount_shares(m)
            if isinstance(exc, CorralError):
                self.event(name, "suspend", f"suspend failed: {exc.message}")
            raise
        m.requested, m.suspend_reason = "suspend", reason
        with contextlib.suppress(MonitorError):  # QEMU may close the monitor before it answers
            await m.monitor.execute("quit")
        try:
            await asyncio.wait_for(m.exited.wait(), 30)
        except TimeoutError:
            await self._kill_machine(m)  # the state is saved and whole: nothing is lost
        self.event(name, "suspend", f"state saved ({saved.size >> 20} MiB in {saved.seconds:.2f}s), "
                   "QEMU exited", bytes=saved.size, seconds=saved.seconds)
        return self._get(name)

    async def restart(self, name: str, hard: bool = False, timeout: float = 60.0) -> VMRecord:
        """Reboot the guest in the same QEMU process: through the agent (clean) or a hard reset."""
        async with self._lock(name):
            rec = self._get(name)
            check_operation(name, "restart", rec.state)
            m = self._machines.get(name)
            if m is None or m.monitor is None:
                raise EngineError(f"the monitor of VM '{name}' is not connected")
            m.reset.clear()
            self.event(name, "restart", "hard reset" if hard else "reboot requested")
            if not hard and m.agent_ready:
                with contextlib.suppress(CorralError):
                    # guest-shutdown never answers on success: the agent goes down with the guest.
                    await m.agent.execute("guest-shutdown", {"mode": "reboot"}, timeout=2.0)
                try:
                    await asyncio.wait_for(m.reset.wait(), min(timeout, CLEAN_REBOOT_TIMEOUT))
                except TimeoutError:
                    self.event(name, "restart", f"the guest did not reboot within {CLEAN_REBOOT_TIMEOUT:.0f}s; "
                               "resetting it")
            if m.exited.is_set():
                raise EngineError(f"VM '{name}' powered off instead of rebooting: {self._get(name).state_reason}")
            if not m.reset.is_set():
                await m.monitor.execute("system_reset")
                try:
                    await asyncio.wait_for(m.reset.wait(), 10.0)
                except TimeoutError as exc:
                    raise EngineError(f"VM '{name}' did not reset: see `corral logs {name}`") from exc
        await self.readiness.wait_ready(name, timeout)
        return self._get(name)

    # ---------------------------------------------------------------------------------------------- delete --
    async def delete(self, name: str, force: bool = False) -> None:
        """Delete the VM with its disks (``force``: kill its QEMU first); its lock is dropped after."""
        async with self._lock(name):
            await self._delete(name, force)
        self._locks.pop(name, None)

    async def _delete(self, name: str, force: bool) -> None:
        """Delete without taking the lock (the caller holds it: ``delete``, an expiry)."""
        rec = self._get(name)
        if force and rec.state in LIVE and (m := self._machines.get(name)) is not None:
            m.requested, m.requested_by = "delete", ACTOR.get()
            await self._kill_machine(m)
            rec = self._get(name)
        if rec.state in LIVE:
            if rec.state == VMState.UNKNOWN or self._machines.get(name) is None:
                raise Conflict(f"VM '{name}' is {rec.state} and its QEMU process may still run: "
                               "it is not deleted; check it with `corral show`")
            check_operation(name, "delete", rec.state)
        paths = self.paths(name)
        await self.supervisor.release_nics(name)
        for hook in self.delete_hooks:
            await hook(rec)
        self.store.delete_vm(name)
        await asyncio.to_thread(fileio.remove_dir, paths.root)
        self.event(name, "delete", "deleted with its disks", owner=rec.spec.owner)

    # ------------------------------------------------------------------------------------------ guest agent --
    async def agent(self, name: str, operation: str = "reach the guest of", timeout: float = 60.0) -> GuestAgent:
        """The shared guest agent of a running, ready VM, for domain code that drives it itself (file copy)."""
        rec = self._get(name)
        if rec.state != VMState.RUNNING:
            raise StateError(name, operation, rec.state, [VMState.RUNNING.value])
        await self.readiness.wait_ready(name, timeout=timeout)
        return self._machines[name].agent

    async def exec(
        self, name: str, argv: list[str], *, env: dict[str, str] | None = None, cwd: str | None = None,
        stdin: bytes | None = None, timeout: float | None = None,
    ) -> AsyncIterator[ExecOutput | ExecExit]:
        """Run ``argv`` in the guest, yielding its output as it comes and then its exit."""
        rec = self._get(name)
        check_operation(name, "exec", rec.state)
        if not argv:
            raise InvalidInput("no command given: `corral exec VM -- COMMAND [ARGS...]`")
        await self.readiness.wait_ready(name, timeout=60.0)
        m = self._machines[name]
        async for item in m.agent.exec_stream(argv, env=env, cwd=cwd, stdin=stdin, timeout=timeout):
            yield item

    async def shutdown(self) -> None:
        """Daemon exit: stop supervising, leave every QEMU running, end the event streams."""
        self.events.end_streams()
        for task in list(self._background):
            task.cancel()
        for m in list(self._machines.values()):
            for watcher in (m.supervisor, m.ready_task):
                if watcher is not None:
                    watcher.cancel()
            if m.monitor is not None:
                await m.monitor.close()
            with contextlib.suppress(Exception):
                await m.agent.close()
        self._machines.clear()

    # ------------------------------------------------------------------------------------------- log files --
    def maintain_logs(self) -> None:
        """Rotate the serial logs of running VMs that grew too large."""
        for name in list(self._machines):
            logs.rotate_running(self.paths(name).serial_log)

