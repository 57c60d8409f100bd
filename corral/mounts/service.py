"""``corral mount add|rm|ls``: shared folders of a VM, changed while it is stopped (its spec) or while it runs (its
spec, the slot's device hot-plugged or unplugged, the folder mounted or unmounted in the guest).

Operations hold the VM's lock, so they never race a start, a stop or a suspend. What holds after a failure: nothing
changed. An ``add`` whose guest mount fails takes the device out again and leaves the spec as it was; an ``rm``
whose guest unmount fails (a process in the guest uses the folder) leaves the mount in place and says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import ValidationError

from corral import faults
from corral.engine import shares
from corral.engine.cmdline import MountAttachment, check_hotplug, mount_tag
from corral.engine.monitor import Monitor, MonitorError
from corral.errors import Conflict, CorralError, EngineError, InvalidInput, NotFound, StateError
from corral.mounts import guest, host
from corral.operations.recovery import Outcome, Recovery
from corral.store.db import OperationRecord
from corral.vm.spec import Mount, VMSpec
from corral.vm.states import VMState

if TYPE_CHECKING:
    from corral.vm.machine import Machine
from corral.vm.service import VMService

STOPPED = (VMState.STOPPED, VMState.CRASHED)


@dataclass(frozen=True)
class MountStatus:
    """One shared folder as `corral mount ls` shows it: its spec and, for a running VM, whether the guest has it."""

    mount: Mount
    slot: int | None
    state: str  # "mounted", "not mounted", "stopped" (the VM runs no QEMU)


def _spec_with(spec: VMSpec, mounts: list[Mount]) -> VMSpec:
    try:
        return VMSpec.model_validate(spec.model_dump() | {"mounts": [m.model_dump() for m in mounts]})
    except ValidationError as exc:
        raise InvalidInput(str(exc.errors()[0]["msg"]).removeprefix("Value error, ")) from None


class MountService:
    """Shared folders, composed over the :class:`VMService` (its store, locks, machines and events)."""

    def __init__(self, vms: VMService) -> None:
        self.vms = vms

    def _running(self, vm: str, operation: str) -> bool:
        """True: change the running QEMU too; False: the spec only. Refuses states where neither is right."""
        rec = self.vms.get(vm)
        if rec.state in STOPPED:
            return False
        if rec.state == VMState.RUNNING:
            check_hotplug(rec.spec, vm, operation)
            return True
        if rec.state == VMState.PAUSED:
            raise Conflict(f"VM '{vm}' is paused: its guest cannot {operation}; resume it first (`corral resume {vm}`)")
        raise StateError(vm, operation, rec.state, [VMState.RUNNING.value, *(s.value for s in STOPPED)])

    async def list(self, vm: str) -> list[MountStatus]:
        """The VM's shared folders; for a running VM, whether its guest has each mounted now."""
        rec = self.vms.get(vm)
        layout = host.read_layout(self.vms.paths(vm))
        m = self.vms.machine(vm)
        live: dict[str, str] | None = None
        if rec.state == VMState.RUNNING and m is not None and m.agent_ready:
            try:
                live = await guest.mounted(m.agent)
            except CorralError:
                live = None
        out = []
        for mount in rec.spec.mounts:
            slot = host.slot_of(layout, mount.guest) if rec.state not in STOPPED else None
            if rec.state in STOPPED:
                state = "stopped"
            elif live is None or slot is None:
                state = "unknown" if slot is not None else "not mounted"
            else:
                state = "mounted" if live.get(mount_tag(slot)) == mount.guest else "not mounted"
            out.append(MountStatus(mount, slot, state))
        return out

    async def add(self, vm: str, mount: Mount) -> Mount:
        """Share a host folder: in the spec (from the next start) or, on a running VM, at once."""
        async with self.vms.operation_lock(vm):
            rec = self.vms.get(vm)
            mount = host.check_host(mount, self.vms.settings.home)
            new = _spec_with(rec.spec, [*rec.spec.mounts, mount])
            if self._running(vm, "mount a folder"):
                with self.vms.journal.run("mount", vm, mount=mount.model_dump()):
                    await self._plug_and_mount(vm, mount)
                    faults.point("mount.after-plug")
                    self.vms.store.update_spec(new)
                how = "mounted in the guest"
            else:
                self.vms.store.update_spec(new)
                how = "mounted at its next start"
            self.vms.event(vm, "mount", f"{mount.host} shared at {mount.guest} "
                           f"({'read-only' if mount.read_only else 'read-write'}), {how}",
                           host=mount.host, guest=mount.guest, read_only=mount.read_only)
            return mount

    def _machine(self, vm: str) -> tuple[Machine, Monitor]:
        """The running VM's machine and its connected monitor (EngineError if not connected)."""
        m = self.vms.machine(vm)
        if m is None or m.monitor is None:
            raise EngineError(f"the monitor of VM '{vm}' is not connected")
        return m, m.monitor

    async def _plug_and_mount(self, vm: str, mount: Mount) -> None:
        paths = self.vms.paths(vm)
        m, monitor = self._machine(vm)
        await self.vms.readiness.wait_ready(vm, timeout=60.0)
        layout = host.read_layout(paths)
        before = dict(layout)
        slot = host.free_slot(layout, vm)
        layout[slot] = mount
        host.write_layout(paths, layout)
        att = MountAttachment(slot=slot, read_only=mount.read_only)
        try:
            await shares.plug(monitor, att)
        except BaseException as exc:
            host.write_layout(paths, before)
            if isinstance(exc, MonitorError):
                raise EngineError(f"cannot share {mount.host} with VM '{vm}': {exc.message}") from exc
            raise
        try:
            await guest.mount(m.agent, slot, mount)
        except BaseException:
            try:
                await shares.unplug(monitor, slot)
                host.write_layout(paths, before)
            except CorralError:
                pass  # the device stays plugged (unmounted): layout.json still says where, for a later rm
            raise

    async def remove(self, vm: str, guest_dir: str) -> Mount:
        """Stop sharing the folder mounted at ``guest_dir``: unmounted in a running guest first, then unplugged."""
        async with self.vms.operation_lock(vm):
            rec = self.vms.get(vm)
            want = os.path.normpath(guest_dir) if guest_dir.startswith("/") else guest_dir
            mount = next((x for x in rec.spec.mounts if x.guest == want), None)
            if mount is None:
                have = ", ".join(x.guest for x in rec.spec.mounts)
                raise NotFound(f"VM '{vm}' has no shared folder at {guest_dir}"
                               + (f" (its mounts: {have})" if have else " (it has none)"))
            if self._running(vm, "unmount a folder"):
                await self._unmount_and_unplug(vm, mount)
            self.vms.store.update_spec(_spec_with(rec.spec, [x for x in rec.spec.mounts if x is not mount]))
            self.vms.event(vm, "mount", f"{mount.host} no longer shared at {mount.guest}", host=mount.host,
                           guest=mount.guest)
            return mount

    async def _unmount_and_unplug(self, vm: str, mount: Mount) -> None:
        paths = self.vms.paths(vm)
        m, monitor = self._machine(vm)
        layout = host.read_layout(paths)
        slot = host.slot_of(layout, mount.guest)
        if slot is None:
            return  # never plugged in this QEMU
        await self.vms.readiness.wait_ready(vm, timeout=60.0)
        try:
            await guest.umount(m.agent, slot, mount)
        except CorralError as exc:
            raise Conflict(f"{exc.message}: it stays mounted; stop what uses it and try again") from exc
        try:
            await shares.unplug(monitor, slot)
        except shares.ShareUnplugTimeout as exc:
            raise EngineError(f"{exc.message}: try `corral mount rm {vm} {mount.guest}` again") from exc
        del layout[slot]
        host.write_layout(paths, layout)

    # ---------------------------------------------------------------------------------------------- recovery --
    def register_recovery(self, recovery: Recovery) -> None:
        recovery.kinds["mount"] = self._recover_add

    async def _recover_add(self, op: OperationRecord) -> Outcome:
        """A `mount add` on a running VM that a dead daemon left: finished (the mount written into the VM's spec)
        if its QEMU has the slot's device plugged, since the guest may use the folder already and the re-attach's
        readiness mounts what layout.json names; else rolled back (the slot freed in layout.json). Never a folder
        shared that `corral mount ls` does not show."""
        mount, vm = Mount(**op.data["mount"]), str(op.vm)
        rec = self.vms.store.get_vm(vm)
        if rec is None:
            return Outcome(False, f"VM '{vm}' is gone")
        if any(x.guest == mount.guest for x in rec.spec.mounts):
            return Outcome(True, f"{mount.host} shared at {mount.guest}")
        paths = self.vms.paths(vm)
        layout = host.read_layout(paths)
        slot = host.slot_of(layout, mount.guest)
        m = self.vms.machine(vm)
        if slot is not None and m is not None and m.monitor is not None and slot in await shares.plugged(m.monitor):
            self.vms.store.update_spec(_spec_with(rec.spec, [*rec.spec.mounts, mount]))
            return Outcome(True, f"{mount.host} shared at {mount.guest} (QEMU had its device plugged)")
        if slot is not None:
            del layout[slot]
            host.write_layout(paths, layout)
        return Outcome(False, f"{mount.host} not shared")
