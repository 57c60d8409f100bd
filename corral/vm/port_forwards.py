"""Port forwards of a VM: host ports forwarded to the guest, kept in its spec and, while it runs, in its QEMU.

A host port is forwarded to one VM at most (checked against every other VM's spec, at create and on add), and must be
free on the host when QEMU takes it. A running or paused VM's forwards change at once through its monitor
(:mod:`corral.network.forwards`), then in its spec; a stopped VM's only in its spec, for its next start.
"""

from __future__ import annotations

from corral.engine.monitor import Monitor
from corral.errors import Conflict
from corral.network import forwards, ports
from corral.store.db import VMRecord
from corral.vm.core import VMCore
from corral.vm.spec import PortForward
from corral.vm.states import LIVE, VMState


class PortForwards:
    """Adds and removes the forwards of the VMs of ``vms``, each under the VM's lock."""

    def __init__(self, vms: VMCore) -> None:
        self.vms = vms

    def check_unclaimed(self, name: str, forwards: list[PortForward]) -> None:
        """Conflict if another VM's spec already forwards one of these host ports."""
        for other in self.vms.store.list_vms():
            if other.name == name:
                continue
            theirs = {p.key() for p in other.spec.ports}
            for f in forwards:
                if f.key() in theirs:
                    raise Conflict(f"host port {f.host_addr}:{f.host_port}/{f.proto} is already forwarded to VM "
                                   f"'{other.name}': choose another host port")

    def _forwarding_monitor(self, rec: VMRecord) -> Monitor | None:
        """The monitor to change a live VM's forwards through; None when it has no QEMU (spec change only)."""
        if rec.state not in LIVE:
            return None
        m = self.vms._machines.get(rec.name)
        if rec.state not in (VMState.RUNNING, VMState.PAUSED) or m is None or m.monitor is None:
            raise Conflict(f"VM '{rec.name}' is {rec.state}: its forwards can change when it is running or stopped")
        return m.monitor

    async def add(self, name: str, forward: PortForward) -> VMRecord:
        """Forward a host port to the VM: at once if it runs (QMP/HMP hostfwd_add), and in its spec for later."""
        async with self.vms._lock(name):
            rec = self.vms._get(name)
            if any(f.key() == forward.key() for f in rec.spec.ports):
                raise Conflict(f"VM '{name}' already forwards host port {forward.host_addr}:{forward.host_port}/"
                               f"{forward.proto}: remove it first (`corral port rm {name} {forward.host_port}`)")
            self.check_unclaimed(name, [forward])
            new_spec = rec.spec.model_copy(update={"ports": [*rec.spec.ports, forward]})
            monitor = self._forwarding_monitor(rec)
            ports.check_free([forward], name)
            if monitor is not None:
                await forwards.add(monitor, forward)
            self.vms.store.update_spec(new_spec)
            self.vms.event(name, "port", f"forward {forward} added", forward=str(forward))
            return self.vms._get(name)

    async def remove(self, name: str, which: str) -> VMRecord:
        """Stop forwarding a host port (``which``: as :func:`corral.network.forwards.find` takes it): at once if the
        VM runs, and in its spec."""
        async with self.vms._lock(name):
            rec = self.vms._get(name)
            forward = forwards.find(rec.spec.ports, which)
            monitor = self._forwarding_monitor(rec)
            if monitor is not None:
                await forwards.remove(monitor, forward)
            self.vms.store.update_spec(rec.spec.model_copy(update={"ports": [
                f for f in rec.spec.ports if f.key() != forward.key()]}))
            self.vms.event(name, "port", f"forward {forward} removed", forward=str(forward))
            return self.vms._get(name)
