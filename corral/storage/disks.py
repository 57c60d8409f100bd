"""Extra disks of a VM: added, attached, detached, grown, throttled and removed, also while the VM runs.

Each disk is a qcow2 file in the VM's directory (``vms/<vm>/disks/<name>.qcow2``, deleted with the VM) and a row
of the ``disks`` table. An attached disk sits in one of the VM's hot-plug ports (``hpN``, see
:data:`corral.engine.cmdline.HOTPLUG_PORTS`): on the command line when the VM starts, through QMP when it runs
(:mod:`corral.engine.hotplug`). The guest sees the disk's name as its serial: ``/dev/disk/by-id/virtio-NAME``
(with udev), ``/sys/block/vdX/serial`` always.

Operations on a VM's disks hold the VM's lock, so they never race a start or stop. What holds after a failure:
nothing changed: no new file, no row, no device (``add``); the disk still attached (``detach`` the guest did not
release in time: say so, try again); the old size (``resize``); the old limits (``throttle``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from corral import faults
from corral.engine import hotplug, qemu_img
from corral.engine.cmdline import HOTPLUG_PORTS, check_hotplug
from corral.engine.monitor import Monitor
from corral.errors import CapacityError, Conflict, EngineError, InvalidInput, NotFound, StateError
from corral.operations.recovery import Outcome, Recovery
from corral.storage import check, throttle
from corral.storage.attachments import attachments
from corral.storage.check import CheckResult
from corral.store.db import DiskRecord, OperationRecord, VMRecord
from corral.vm.sizes import format_size
from corral.vm.states import VMState

if TYPE_CHECKING:
    from corral.vm.service import VMService

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,19}$")  # 20 = virtio-blk's serial length; node names stay under 32
MAX_SIZE = 64 << 40
#: States in which disks change on the command line only (no QEMU), or through QMP (a live, answering QEMU).
STOPPED = (VMState.STOPPED, VMState.CRASHED)
HOTPLUG = (VMState.RUNNING, VMState.PAUSED)


def check_name(name: str) -> None:
    if not _NAME.match(name):
        raise InvalidInput(f"bad disk name '{name}': 1-20 lowercase letters, digits or '-', starting with a letter")


def check_size(size: int) -> None:
    if size < 1 << 20 or size > MAX_SIZE:
        raise InvalidInput(f"disk size {format_size(size)} is out of range: from 1M to {format_size(MAX_SIZE)}")
    if size % 512:
        raise InvalidInput(f"disk size {size} is not a multiple of 512 bytes")


def free_port(disks: list[DiskRecord], vm: str) -> int:
    used = {d.port for d in disks if d.port is not None}
    for port in range(HOTPLUG_PORTS):
        if port not in used:
            return port
    raise CapacityError(f"VM '{vm}' already has {HOTPLUG_PORTS} disks attached, the most it can have: "
                        f"detach one first (`corral disk detach {vm} NAME`)")


class DiskService:
    """Extra disks, composed over the :class:`VMService` (its store, locks, machines and events)."""

    def __init__(self, vms: VMService) -> None:
        self.vms = vms
        self.store = vms.store

    # ------------------------------------------------------------------------------------------------ helpers --
    def _disk(self, vm: str, name: str) -> DiskRecord:
        self.vms.get(vm)  # NotFound for an unknown VM first
        d = self.store.get_disk(vm, name)
        if d is None:
            names = [x.name for x in self.store.list_disks(vm)]
            hint = f" (its disks: {', '.join(names)})" if names else f" (it has none: `corral disk add {vm} NAME`)"
            raise NotFound(f"VM '{vm}' has no disk named '{name}'{hint}")
        return d

    def _monitor(self, rec: VMRecord, operation: str) -> Monitor | None:
        """The monitor to hot-plug through (None: the VM has no QEMU, change the record only); refuses in states
        where neither is safe."""
        if rec.state in STOPPED:
            return None
        m = self.vms.machine(rec.name)
        if rec.state in HOTPLUG and m is not None and m.monitor is not None:
            check_hotplug(rec.spec, rec.name, operation)
            return m.monitor
        if rec.state in (VMState.SUSPENDED, VMState.SUSPENDING):
            raise Conflict(f"VM '{rec.name}' is {rec.state}: its saved state holds its devices; resume or stop it "
                           f"before you {operation}")
        raise StateError(rec.name, operation, rec.state,
                         [s.value for s in (*STOPPED, *HOTPLUG)])

    async def _plug(self, monitor: Monitor, vm: str, d: DiskRecord) -> None:
        try:
            await hotplug.plug(monitor, attachments([d])[0])
        except hotplug.NoHotplugPort as exc:
            raise Conflict(f"VM '{vm}' was started without hot-plug ports (by an older Corral): stop and start it "
                           "once, or change its disks while it is stopped") from exc

    async def _taken_up(self, monitor: Monitor, rec: VMRecord, name: str) -> str:
        """After a hot-plug: wait (a little) until a running guest's driver has the disk, so that it is there for
        whatever the caller does next in the guest."""
        if rec.state == VMState.RUNNING and await hotplug.wait_driver(monitor, name):
            return "hot-plugged, the guest has it"
        return "hot-plugged"

    # ---------------------------------------------------------------------------------------------- recovery --
    def register_recovery(self, recovery: Recovery) -> None:
        recovery.kinds.update({"disk": self._recover_add, "disk-resize": self._recover_resize})

    async def _recover_add(self, op: OperationRecord) -> Outcome:
        """A disk add a dead daemon left: finished (its row written) if the VM's QEMU has the disk plugged in (the
        guest may already use it), else rolled back (its file is removed with the journal's ``files``)."""
        d = DiskRecord(**op.data["disk"])
        if self.store.get_disk(d.vm, d.name) is not None:
            return Outcome(True, f"disk '{d.name}' added")
        m = self.vms.machine(d.vm)
        if d.port is not None and m is not None and m.monitor is not None and \
                await hotplug.is_plugged(m.monitor, d.name):
            self.store.insert_disk(d)
            return Outcome(True, f"disk '{d.name}' added (QEMU had it plugged in)")
        return Outcome(False, f"disk '{d.name}' not added")

    async def _recover_resize(self, op: OperationRecord) -> Outcome:
        """A resize a dead daemon left: the store takes the size the image really has now."""
        name, want = str(op.data["disk"]), int(op.data["size"])
        d = self.store.get_disk(str(op.vm), name)
        if d is None:
            return Outcome(False, f"disk '{name}' is gone")
        m = self.vms.machine(d.vm)
        if d.attached and m is not None and m.monitor is not None:
            size = await hotplug.virtual_size(m.monitor, name)
        else:
            size = int((await qemu_img.info(Path(d.file)))["virtual-size"])
        if size != d.size:
            self.store.update_disk(replace(d, size=size))
        if size == want:
            return Outcome(True, f"disk '{name}' is {format_size(size)}")
        return Outcome(False, f"disk '{name}' stays {format_size(size)}")

    def _lock(self, vm: str) -> asyncio.Lock:
        return self.vms._lock(vm)  # the VM's own operation lock: disk changes never race a start or a stop

    # ------------------------------------------------------------------------------------------------ queries --
    def list_disks(self, vm: str) -> list[DiskRecord]:
        self.vms.get(vm)
        return self.store.list_disks(vm)

    def get(self, vm: str, name: str) -> DiskRecord:
        return self._disk(vm, name)

    # ---------------------------------------------------------------------------------------------- add / rm --
    async def add(self, vm: str, name: str, size: int, limits: Mapping[str, int | None] | None = None) -> DiskRecord:
        """Create a qcow2 of ``size`` bytes and attach it (hot-plugged if the VM runs). All or nothing."""
        check_name(name)
        check_size(size)
        new_limits = throttle.merge({}, limits or {})
        async with self._lock(vm):
            rec = self.vms.get(vm)
            if self.store.get_disk(vm, name) is not None:
                raise Conflict(f"VM '{vm}' already has a disk named '{name}': choose another name")
            monitor = self._monitor(rec, "add a disk to it")
            disks = self.store.list_disks(vm)
            port = free_port(disks, vm)
            self.vms.check_quotas(rec.spec, self.vms.disk_size(rec.spec) + size)
            path = self.vms.paths(vm).extra_disk(name)
            if path.exists():
                raise Conflict(f"{path} already exists but VM '{vm}' has no disk '{name}': move it away first")
            path.parent.mkdir(mode=0o700, exist_ok=True)
            d = DiskRecord(vm=vm, name=name, file=str(path), size=size, serial=name, created_at=time.time(),
                           limits=new_limits, port=port)
            with self.vms.journal.run("disk", vm, disk=dataclasses.asdict(d), files=[str(path)]):
                try:
                    await qemu_img.create(path, size)
                    if monitor is not None:
                        await self._plug(monitor, vm, d)
                        faults.point("disk.after-plug")
                    self.store.insert_disk(d)
                except BaseException:
                    path.unlink(missing_ok=True)
                    raise
            how = await self._taken_up(monitor, rec, name) if monitor else "attached"
            self.vms.event(vm, "disk", f"disk '{name}' added ({format_size(size)}, {how}, "
                           f"limits {throttle.describe(new_limits)})", disk=name, size=size, limits=new_limits)
            return d

    async def remove(self, vm: str, name: str, force: bool = False) -> None:
        """Delete a disk and its file. An attached disk of a running VM only with ``force`` (hot-unplugged
        first: the guest loses it)."""
        async with self._lock(vm):
            d = self._disk(vm, name)
            rec = self.vms.get(vm)
            if d.attached:
                monitor = self._monitor(rec, "remove a disk from it")
                if monitor is not None:
                    if not force:
                        raise Conflict(f"disk '{name}' is attached to running VM '{vm}': detach it first "
                                       f"(`corral disk detach {vm} {name}`) or use --force")
                    await self._unplug(monitor, vm, name)
            self.store.delete_disk(vm, name)
            Path(d.file).unlink(missing_ok=True)
            self.vms.event(vm, "disk", f"disk '{name}' removed, its file deleted", disk=name)

    # -------------------------------------------------------------------------------------- attach / detach --
    async def _unplug(self, monitor: Monitor, vm: str, name: str) -> None:
        if self.vms.get(vm).state == VMState.PAUSED:
            raise Conflict(f"VM '{vm}' is paused: its guest cannot release disk '{name}'; resume it first "
                           f"(`corral resume {vm}`) or stop it")
        try:
            await hotplug.unplug(monitor, name)
        except hotplug.HotplugTimeout as exc:
            raise EngineError(f"{exc.message} from VM '{vm}': it stays attached; unmount it in the guest and "
                              f"try again, or stop the VM first") from exc

    async def detach(self, vm: str, name: str) -> DiskRecord:
        """Take the disk out of the VM (hot-unplug if it runs: the guest must release it); its file is kept."""
        async with self._lock(vm):
            d = self._disk(vm, name)
            if not d.attached:
                raise Conflict(f"disk '{name}' of VM '{vm}' is already detached")
            monitor = self._monitor(self.vms.get(vm), "detach a disk from it")
            if monitor is not None:
                await self._unplug(monitor, vm, name)
            d = replace(d, port=None)
            self.store.update_disk(d)
            self.vms.event(vm, "disk", f"disk '{name}' detached{' (hot-unplugged)' if monitor else ''}", disk=name)
            return d

    async def attach(self, vm: str, name: str) -> DiskRecord:
        """Put a detached disk back (hot-plugged if the VM runs), with its data and limits."""
        async with self._lock(vm):
            d = self._disk(vm, name)
            if d.attached:
                raise Conflict(f"disk '{name}' of VM '{vm}' is already attached")
            monitor = self._monitor(self.vms.get(vm), "attach a disk to it")
            if not Path(d.file).is_file():
                raise NotFound(f"the file of disk '{name}' ({d.file}) is gone: `corral disk rm {vm} {name}`")
            d = replace(d, port=free_port(self.store.list_disks(vm), vm))
            if monitor is not None:
                await self._plug(monitor, vm, d)
            self.store.update_disk(d)
            how = await self._taken_up(monitor, self.vms.get(vm), name) if monitor else "on its next start"
            self.vms.event(vm, "disk", f"disk '{name}' attached ({how})", disk=name)
            return d

    # ---------------------------------------------------------------------------------- resize / throttle --
    async def resize(self, vm: str, name: str, size: int) -> DiskRecord:
        """Grow the disk (online if it is attached to a running VM: the guest sees the new size at once)."""
        async with self._lock(vm):
            d = self._disk(vm, name)
            if size < d.size:
                raise InvalidInput(f"disk '{name}' is {format_size(d.size)}: shrinking it to {format_size(size)} "
                                   "would destroy data, and is refused (grow only)")
            check_size(size)
            if size == d.size:
                return d
            rec = self.vms.get(vm)
            monitor = self._monitor(rec, "resize its disk") if d.attached else None
            self.vms.check_quotas(rec.spec, self.vms.disk_size(rec.spec) + size - d.size)
            with self.vms.journal.run("disk-resize", vm, disk=name, size=size):
                if monitor is not None:
                    await hotplug.resize(monitor, name, size)
                else:
                    await qemu_img.resize(Path(d.file), size)
                faults.point("disk.resize.before-record")
                new = replace(d, size=size)
                self.store.update_disk(new)
            self.vms.event(vm, "disk", f"disk '{name}' grown {format_size(d.size)} -> {format_size(size)}"
                           f"{' online' if monitor else ''}", disk=name, old=d.size, new=size)
            return new

    async def set_limits(self, vm: str, name: str, changes: Mapping[str, int | None], clear: bool = False
                         ) -> DiskRecord:
        """Change the disk's I/O limits (0 or ``clear`` removes them), at once if the VM runs."""
        async with self._lock(vm):
            d = self._disk(vm, name)
            limits = throttle.merge({} if clear else d.limits, changes)
            rec = self.vms.get(vm)
            monitor = None
            if d.attached and rec.state not in STOPPED and rec.state not in (VMState.SUSPENDED,):
                monitor = self._monitor(rec, "throttle its disk")
            if monitor is not None:
                await hotplug.set_limits(monitor, name, throttle.for_qemu(limits))
            new = replace(d, limits=limits)
            self.store.update_disk(new)
            self.vms.event(vm, "disk", f"disk '{name}' limits: {throttle.describe(limits)}", disk=name,
                           limits=limits)
            return new

    # --------------------------------------------------------------------------------------------- repair --
    async def repair(self, vm: str, name: str | None = None) -> list[CheckResult]:
        """``qemu-img check -r all`` of the VM's images (or one extra disk): only while no QEMU has them open."""
        async with self._lock(vm):
            rec = self.vms.get(vm)
            if rec.state not in STOPPED:
                raise StateError(vm, "repair the disks of", rec.state, [s.value for s in STOPPED])
            if name is None:
                images = [self.vms.paths(vm).disk, *(Path(d.file) for d in self.store.list_disks(vm))]
            else:
                images = [Path(self._disk(vm, name).file)]
            results = await check.repair(images)
            bad = [r for r in results if r.corrupt]
            self.vms.event(vm, "image-repair", "; ".join(r.summary() for r in results),
                           result="error" if bad else "ok", images=[r.file for r in results])
            return results
