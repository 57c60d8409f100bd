"""Readiness of a running guest: waiting for this boot's guest agent, then provisioning the guest (Corral's SSH key,
its private network addresses and names), and the addresses the agent reports.

Every boot of a QEMU (a start, a guest reboot, a re-attach) is watched anew: ``ready`` is set once the agent
answered and the guest was provisioned, or with ``ready_error`` when it could not be; a boot that was already
provisioned (the same ``boot_id``, after a daemon restart) is not provisioned again.
"""

from __future__ import annotations

import asyncio
import time

from corral import faults
from corral.errors import Conflict, CorralError, EngineError, GuestAgentTimeout
from corral.guest import ssh
from corral.mounts import guest as mount_guest
from corral.mounts import host as mount_host
from corral.vm.actor import system_task
from corral.vm.core import VMCore
from corral.vm.machine import Machine
from corral.vm.spec import Mount
from corral.vm.states import VMState

READY_TIMEOUT = 900.0  # how long a boot may take before the guest is reported not ready


class Readiness:
    """Watches each boot of the VMs' QEMUs until their guests are ready (and provisioned)."""

    def __init__(self, vms: VMCore) -> None:
        self.vms = vms

    def watch(self, m: Machine) -> None:
        """(Re)start waiting for this boot's guest agent, then provision the guest."""
        if m.ready_task is not None:
            m.ready_task.cancel()
        m.ready.clear()
        m.agent_ready = False
        m.ready_error = None
        m.ready_task = system_task(self._become_ready(m), name=f"ready-{m.name}")

    async def _become_ready(self, m: Machine) -> None:
        """One boot's readiness: the agent's answer, then provisioning (once per boot), then the addresses; a failure
        is kept in ``ready_error`` for those who wait."""
        try:
            if m.personalize is not None:  # from a template: its own identity and provisioning, before "ready"
                faults.point("template-launch.before-identity")
                boot_id = await m.personalize(m)  # it waits for the agent itself, meanwhile
                m.personalize = None
                self.vms.paths(m.name).identity_pending.unlink(missing_ok=True)
                m.agent_ready = True
                self.vms.store.set_provisioned_boot(m.name, boot_id)
                self.vms.event(m.name, "ready", f"took its own identity; ready {time.time() - m.started_at:.2f}s "
                               "after start")
                await self.mount_shares(m)
                m.ready.set()  # its addresses follow at once; nobody waits for them
                await self.refresh_addresses(m.name)
                return
            await m.agent.wait_ready(READY_TIMEOUT)
            if m.child is None:  # re-attached: a dead daemon may have left its file systems frozen
                await self._thaw_if_frozen(m)
            m.agent_ready = True
            if m.resumed:  # the guest's clock stood still while it was suspended: set it (best effort)
                try:
                    await m.agent.execute("guest-set-time", {"time": time.time_ns()}, timeout=5.0)
                except CorralError as exc:
                    self.vms.event(m.name, "resume", f"could not set the guest clock: {exc.message}")
            boot_id = await self._boot_id(m)
            rt = self.vms.store.get_runtime(m.name)
            if boot_id and rt is not None and rt.provisioned_boot == boot_id:
                self.vms.event(m.name, "ready", "guest agent answers; this boot was already provisioned")
            else:
                await self._provision(m)
                if boot_id:
                    self.vms.store.set_provisioned_boot(m.name, boot_id)
                self.vms.event(m.name, "ready", f"guest agent answered {time.time() - m.started_at:.1f}s after start")
            await self.mount_shares(m)
            await self.refresh_addresses(m.name)
            if m.after_ready is not None:
                self.vms.spawn_background(m.after_ready(m), f"after-ready-{m.name}")
        except asyncio.CancelledError:
            raise
        except CorralError as exc:
            m.ready_error = exc.message
            self.vms.event(m.name, "ready", f"guest not ready: {exc.message}")
        finally:
            if m.agent_ready or m.ready_error:
                m.ready.set()

    async def mount_shares(self, m: Machine) -> None:
        """Mount every shared folder of this QEMU in the guest (each readiness: a boot, a reboot, a resume, a
        re-attach; what is mounted already is left alone). A folder that cannot be mounted is an error event, and
        `corral mount ls` shows it not mounted: the guest is ready all the same."""
        for slot, mount in sorted(mount_host.read_layout(self.vms.paths(m.name)).items()):
            try:
                await mount_guest.mount(m.agent, slot, mount)
            except CorralError as exc:
                self.vms.event(m.name, "mount", exc.message, result="error", guest=mount.guest)

    async def unmount_shares(self, m: Machine) -> None:
        """Unmount every shared folder in the guest, before its state is saved: QEMU refuses to save a VM whose
        guest has a 9p folder mounted (a migration blocker). Raises Conflict if one is busy; those already
        unmounted are mounted again."""
        layout = sorted(mount_host.read_layout(self.vms.paths(m.name)).items())
        done: list[tuple[int, Mount]] = []
        for slot, mount in layout:
            try:
                await mount_guest.umount(m.agent, slot, mount)
            except CorralError as exc:
                for s, again in done:
                    try:
                        await mount_guest.mount(m.agent, s, again)
                    except CorralError:
                        pass
                raise Conflict(f"VM '{m.name}' cannot save its state: {exc.message}") from exc
            done.append((slot, mount))

    async def _thaw_if_frozen(self, m: Machine) -> None:
        """Thaw a guest found frozen. Only Corral freezes its guests' file systems (around a snapshot, a clone or an
        export, always thawing after): a re-attached guest that is frozen was left so by a daemon that died in
        between, and every write in it hangs until it is thawed."""
        try:
            status = await m.agent.execute("guest-fsfreeze-status", timeout=10.0)
            if status != "frozen":
                return
            n = await m.agent.execute("guest-fsfreeze-thaw", timeout=30.0)
        except CorralError as exc:
            self.vms.event(m.name, "reattach", f"could not check whether its file systems are frozen: {exc.message}",
                           result="error")
            return
        self.vms.event(m.name, "reattach", f"its file systems were left frozen by an interrupted operation: {n} "
                       "thawed", thawed=n)

    async def _boot_id(self, m: Machine) -> str:
        """The guest kernel's boot_id ('' if it cannot be read): tells a re-attach whether the guest rebooted."""
        try:
            return (await m.agent.read_file("/proc/sys/kernel/random/boot_id")).decode().strip()
        except CorralError:
            return ""

    async def _provision(self, m: Machine) -> None:
        """What every boot of a guest gets: Corral's SSH key, its private network addresses and names."""
        rec = self.vms._get(m.name)
        for hook in self.vms.provision_hooks:
            await hook(m.name, m.agent)
        public_key = await asyncio.to_thread(ssh.ensure_keypair, self.vms.paths(m.name))
        await self.vms.networks.configure_guest(rec, m.agent)  # first: fast, and other VMs wait for its address
        problem = await ssh.provision(m.agent, rec.spec, public_key, self.vms.paths(m.name), m.ssh_port)
        if problem:
            self.vms.event(m.name, "ssh", problem)

    async def wait_ready(self, name: str, timeout: float = 120.0) -> None:
        """Wait until the guest agent answered and the guest was provisioned for this boot."""
        rec = self.vms._get(name)
        if rec.state not in (VMState.RUNNING, VMState.STARTING):
            raise Conflict(f"VM '{name}' is {rec.state}: start it first (`corral start {name}`)")
        m = self.vms._machines.get(name)
        if m is None:
            raise EngineError(f"VM '{name}' has no supervised QEMU process")
        ready = asyncio.ensure_future(m.ready.wait())
        exited = asyncio.ensure_future(m.exited.wait())
        try:
            done, _ = await asyncio.wait({ready, exited}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            exited.cancel()
        if m.agent_ready:
            return
        if m.ready_error:
            raise EngineError(f"VM '{name}' is not ready: {m.ready_error}")
        if exited in done:
            raise EngineError(f"VM '{name}' stopped while waiting for its guest agent: "
                              f"{self.vms._get(name).state_reason}")
        raise GuestAgentTimeout(f"the guest agent of '{name}' did not answer within {timeout:.0f}s: "
                                f"see `corral logs {name}`")

    async def refresh_addresses(self, name: str, max_age: float = 0.0, join: bool = True) -> None:
        """Ask the guest agent for the guest's addresses (kept for `ls`). One question at a time per VM: a caller
        that comes while one is asked gets its answer (without ``join``: returns at once); with ``max_age``, an
        answer that recent is enough (each question costs the guest's vCPU time, and every launch asks right after
        "ready")."""
        m = self.vms._machines.get(name)
        if m is None or not m.agent_ready:
            return
        if m.addresses_task is not None and not m.addresses_task.done() and not join:
            return
        if m.addresses_task is None or m.addresses_task.done():
            if max_age and time.monotonic() - m.addresses_at <= max_age:
                return
            m.addresses_task = asyncio.ensure_future(self._read_addresses(m))
        await asyncio.shield(m.addresses_task)

    async def _read_addresses(self, m: Machine) -> None:
        ifaces = await m.agent.execute("guest-network-get-interfaces", timeout=2.0)
        m.addresses = [
            ip["ip-address"]
            for iface in ifaces if iface.get("name") != "lo"
            for ip in iface.get("ip-addresses", [])
            if not str(ip.get("ip-address", "")).startswith("fe80")
        ]
        m.addresses_at = time.monotonic()
