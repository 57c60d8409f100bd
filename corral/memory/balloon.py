"""The balloon of a ``--balloon`` VM: a live memory target (``corral balloon VM SIZE``, libvirt's ``setmem --live``)
and what `corral show` reports (the balloon's size, the guest's own memory statistics).

Composed over :class:`~corral.vm.service.VMService`; only the engine (:mod:`corral.engine.balloon`) talks QMP.

The target lives as long as the VM's QEMU, as libvirt's ``--live``: it holds across guest reboots and a
suspend/resume (the balloon's size is part of the saved device state), and a stop/start begins with all of the
VM's memory again. It is not part of the spec: the spec's ``memory`` is what the VM has at start.
"""

from __future__ import annotations

import time

from corral.engine import balloon as engine
from corral.engine.monitor import Monitor
from corral.errors import Conflict, InvalidInput
from corral.memory.models import BalloonStatus
from corral.vm.service import VMService
from corral.vm.sizes import format_size, parse_size
from corral.vm.spec import MIN_MEMORY_MIB
from corral.vm.states import VMState

#: The smallest target: the smallest VM Corral makes (a guest squeezed further starts killing processes).
MIN_TARGET = MIN_MEMORY_MIB << 20


class BalloonService:
    def __init__(self, vms: VMService) -> None:
        self.vms = vms
        #: The last target set per VM, with the pid of the QEMU it was set on (a new QEMU starts full).
        self._targets: dict[str, tuple[int, int]] = {}

    def _running(self, name: str, operation: str) -> Monitor:
        rec = self.vms.get(name)
        if not rec.spec.balloon:
            raise InvalidInput(f"VM '{name}' has no balloon: only VMs launched with --balloon have one "
                               "(`corral launch --balloon`)")
        m = self.vms.machine(name)
        if rec.state not in (VMState.RUNNING, VMState.PAUSED) or m is None or m.monitor is None:
            raise Conflict(f"VM '{name}' is {rec.state}: {operation} a running VM (`corral start {name}`)")
        return m.monitor

    @staticmethod
    def parse_target(value: str | int) -> int:
        """Bytes from ``96M``, ``1G``, a bare number of MiB (a string) or bytes (an integer)."""
        if isinstance(value, int):
            return value
        try:
            return parse_size(value, default_unit="M")
        except ValueError as exc:
            raise InvalidInput(f"balloon target {value!r}: {exc}") from None

    async def set_target(self, name: str, value: str | int) -> BalloonStatus:
        """Set the memory the guest of VM ``name`` should have; the guest's driver gets there within seconds. Fails
        (nothing changed) for a VM without a balloon, one not running, or a target out of range."""
        target = self.parse_target(value)
        monitor = self._running(name, "the balloon target is set on")
        memory = self.vms.get(name).spec.memory << 20
        if not MIN_TARGET <= target <= memory:
            raise InvalidInput(f"balloon target {format_size(target)} is out of range for VM '{name}': give "
                               f"{format_size(MIN_TARGET)} to {format_size(memory)} (its memory)")
        target &= ~((1 << 20) - 1)  # whole MiB
        await engine.set_target(monitor, target)
        m = self.vms.machine(name)
        if m is not None:
            self._targets[name] = (m.ident.pid, target)
        self.vms.event(name, "balloon", f"memory target {format_size(target)} of {format_size(memory)}",
                       target=target)
        status = await self.status(name)
        assert status is not None
        return status

    async def status(self, name: str) -> BalloonStatus | None:
        """The balloon of a running ``--balloon`` VM; None for any other VM."""
        rec = self.vms.get(name)
        m = self.vms.machine(name)
        if not rec.spec.balloon or m is None or m.monitor is None or \
                rec.state not in (VMState.RUNNING, VMState.PAUSED):
            return None
        size = await engine.size(m.monitor)
        stats = await engine.guest_stats(m.monitor)
        pid, target = self._targets.get(name, (0, None))
        return BalloonStatus(
            memory=rec.spec.memory << 20, size=size, target=target if pid == m.ident.pid else None,
            guest_total=stats.total, guest_free=stats.free, guest_available=stats.available,
            stats_age=max(0.0, time.time() - stats.last_update) if stats.last_update else None)

    async def require_status(self, name: str) -> BalloonStatus:
        """:meth:`status`, or the error saying why there is none."""
        self._running(name, "the balloon is read on")
        status = await self.status(name)
        if status is None:
            raise Conflict(f"VM '{name}' stopped running")
        return status
