"""What a VM launched from a template gets before it is reported ready: its own identity and its provisioning, in
one guest command (corral.guest.identity), and afterwards its forwards pointed at its address when QEMU's NAT gave it
another one. Used by corral.templates.service through the hooks of corral.vm.machine.Origin.

The order, which is what makes a template launch fast (docs/explanation/templates.md, "What `launch --template`
does"): while the new QEMU starts, its keys are made on the host (:meth:`Personalizer.prepare`); before the state
loads, the host connects to the guest channel (:meth:`Personalizer.open_channel`); once it loaded and before the
vCPUs run, the command goes into the channel and the agent's sync into its socket (:meth:`Personalizer.after_load`),
so the guest reads both the moment it runs; :meth:`Personalizer.personalize` then waits for their answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses

from corral.engine import guest_channel
from corral.engine.guest_agent import GuestAgent
from corral.errors import CorralError, GuestAgentError
from corral.guest import identity, ssh
from corral.network import forwards
from corral.vm.machine import Machine
from corral.vm.readiness import READY_TIMEOUT
from corral.vm.service import VMService
from corral.vm.spec import PortForward

#: The guest address QEMU's NAT gives first, where every forward points by default.
NAT_GUEST = "10.0.2.15"

#: Run after the identity script, in the same guest command (builtins only): Corral's SSH key authorized for root
#: (``$keys``), then the guest's boot_id, and OpenSSH's new host key if the guest has no dropbear (whose key the host
#: made), printed for the host.
PROVISION_SCRIPT = ssh.AUTHORIZE_KEYS_SCRIPT + r"""
read -r boot_id < /proc/sys/kernel/random/boot_id
echo "boot_id $boot_id"
if [ ! -d /etc/dropbear ] && [ -s /etc/ssh/ssh_host_ed25519_key.pub ]; then
    read -r pub < /etc/ssh/ssh_host_ed25519_key.pub
    echo "$pub"
fi
"""


@dataclasses.dataclass(frozen=True)
class _Command:
    """The identity and provisioning command of one new VM (IDENTITY_SCRIPT, PROVISION_SCRIPT, IDENTITY_FINISH), with
    its positional parameters and the SSH host key they carry."""

    script: str
    args: list[str]
    host_key: identity.HostKey


@dataclasses.dataclass(frozen=True)
class _Pending:
    """A new VM's identity command sent before its vCPUs ran (see Personalizer.after_load), and its agent's
    readiness question (guest-set-time: the clock error, or None)."""

    command: _Command
    channel: guest_channel.GuestChannel
    run: asyncio.Future[tuple[int, bytes]]
    agent_ready: asyncio.Future[str | None]

    def cancel(self) -> None:
        self.run.cancel()
        self.agent_ready.cancel()


class Personalizer:
    """The identity of the new VMs of every template, from the first hook of their start to their readiness."""

    def __init__(self, vms: VMService) -> None:
        self.vms = vms
        #: Host keys made (on the host, in a thread) while a new VM's QEMU starts, by VM name.
        self._host_keys: dict[str, asyncio.Future[identity.HostKey]] = {}
        #: Corral's SSH key pair of each new VM, made likewise (its public key).
        self._keypairs: dict[str, asyncio.Future[str]] = {}
        #: Connections to new VMs' guest channels, made before their state loaded, by VM name (for after_load).
        self._channels: dict[str, guest_channel.GuestChannel] = {}
        #: Identity commands sent before the new VMs' vCPUs ran, by VM name (for personalize).
        self._pending: dict[str, _Pending] = {}

    def prepare(self, name: str) -> None:
        """The new VM's keys made in threads while its QEMU starts: the host key its guest gets, and Corral's SSH
        key pair."""
        self._host_keys[name] = asyncio.ensure_future(asyncio.to_thread(identity.new_host_key))
        self._keypairs[name] = asyncio.ensure_future(asyncio.to_thread(ssh.ensure_keypair, self.vms.paths(name)))

    async def discard(self, name: str) -> None:
        """Everything held for a VM whose start failed: keys being made, the channel, a command sent."""
        channel = self._channels.pop(name, None)
        if channel is not None:
            await channel.close()
        sent = self._pending.pop(name, None)
        if sent is not None:
            sent.cancel()
            await sent.channel.close()
        for pending in (self._host_keys.pop(name, None), self._keypairs.pop(name, None)):
            if pending is not None:
                pending.cancel()

    async def open_channel(self, name: str) -> None:
        """Before the state loads: connect to the new QEMU's channel socket (see GuestChannel), for after_load.
        If that fails the VM still starts, and takes its identity through the agent."""
        old = self._channels.pop(name, None)
        if old is not None:
            await old.close()
        try:
            self._channels[name] = await guest_channel.GuestChannel.connect(self.vms.paths(name).channel_socket)
        except GuestAgentError as exc:
            self.vms.event(name, "identity", f"no guest channel ({exc.message}): the identity goes through the agent")

    async def follow_address(self, m: Machine) -> None:
        """After a guest reboot in a QEMU whose NAT state came from the template: that NAT's DHCP server still has
        10.0.2.15 leased to the template's MAC and gives the guest another address, so the forwards (which point
        at 10.0.2.15) are pointed at the guest's address. Best effort, for up to a minute (the guest's DHCP client
        runs in the background of its boot)."""
        await self._point_forwards(m, NAT_GUEST, until_changed=False, seconds=60.0)

    async def _follow_lease(self, m: Machine) -> None:
        """After the identity change of a guest whose DHCP client renews its lease when the MAC changes (systemd-
        networkd, dhclient: unlike the tiny image's udhcpc, which the identity script stops): the NAT gives the new
        MAC another address a moment later, and the forwards follow it."""
        await self._point_forwards(m, NAT_GUEST, until_changed=True, seconds=60.0)

    async def _point_forwards(self, m: Machine, current: str, *, until_changed: bool, seconds: float) -> None:
        """Watch the guest's IPv4 address (every 0.5 s, for up to ``seconds``) and point the VM's forwards (SSH,
        ports) at it when it is not ``current``. Without ``until_changed`` the first address seen decides; with it,
        the watch goes on until the address changed once."""
        rec = self.vms.get(m.name)
        for _ in range(int(seconds / 0.5)):
            if m.exited.is_set() or m.monitor is None:
                return
            with contextlib.suppress(CorralError):
                await self.vms.readiness.refresh_addresses(m.name)
            v4 = [a for a in m.addresses if a.count(".") == 3]
            if v4 and (v4[0] != current or not until_changed):
                break
            await asyncio.sleep(0.5)
        else:
            return
        addr = v4[0]
        if addr == current:
            return
        rules = [PortForward(host_addr=ssh.SSH_HOST, host_port=m.ssh_port, guest_port=22)] if m.ssh_port else []
        for f in [*rules, *rec.spec.ports]:
            try:
                await forwards.remove(m.monitor, f)
                await forwards.add(m.monitor, f, guest_addr=addr)
            except CorralError as exc:
                self.vms.event(m.name, "port", f"could not point the forward {f} at {addr}: {exc.message}")
                return
        self.vms.event(m.name, "port", f"forwards pointed at the guest's address {addr} (QEMU's NAT, whose state "
                       "came from the template, leased it another one than the template's)", address=addr)

    async def _set_clock(self, m: Machine) -> None:
        try:
            await identity.set_time(m.agent)
        except GuestAgentError as exc:
            self.vms.event(m.name, "identity", f"could not set the guest clock: {exc.message}")

    async def _command(self, name: str) -> _Command:
        """The identity and provisioning command of the new VM ``name`` (its keys made while its QEMU started)."""
        rec = self.vms.get(name)
        paths = self.vms.paths(name)
        keypair = self._keypairs.pop(name, None)
        public_key = await keypair if keypair is not None else await asyncio.to_thread(ssh.ensure_keypair, paths)
        keys = "\n".join([public_key, *rec.spec.ssh_keys]) + "\n"
        pending = self._host_keys.pop(name, None)
        host_key = await pending if pending is not None else await asyncio.to_thread(identity.new_host_key)
        script = "keys=$7\n" + identity.IDENTITY_SCRIPT + PROVISION_SCRIPT + identity.IDENTITY_FINISH
        args = [*identity.identity_args(rec.spec.guest_hostname, rec.mac, "eth0", host_key), keys]
        return _Command(script, args, host_key)

    async def after_load(self, name: str, agent: GuestAgent) -> None:
        """The state loaded, the vCPUs not yet running: the identity command goes into the guest channel and the
        agent's sync into its socket now, so that the guest reads both the moment it runs, while the host records
        the start (~15 ms). Both are awaited by personalize."""
        channel = self._channels.pop(name, None)
        if channel is None:
            return
        cmd = await self._command(name)
        self._pending[name] = _Pending(cmd, channel, asyncio.ensure_future(channel.run(cmd.script, cmd.args)),
                                       asyncio.ensure_future(agent.wait_ready(READY_TIMEOUT, set_time=True)))

    async def personalize(self, m: Machine) -> str:
        """Identity and provisioning of a VM just loaded from a template, in one guest command; its boot_id."""
        paths = self.vms.paths(m.name)
        pending = self._pending.pop(m.name, None)
        if pending is not None:  # a shell was waiting in the guest: the command went in before the vCPUs ran
            cmd = pending.command
            try:  # meanwhile the agent: it must answer before the VM is ready; its answer sets the clock
                clock = await pending.agent_ready
                if clock is not None:
                    self.vms.event(m.name, "identity", f"could not set the guest clock: {clock}")
                code, out = await pending.run
            finally:
                pending.cancel()
                await pending.channel.close()
            err = out
            how = "the guest channel (a shell waiting since the template's capture)"
        else:
            cmd = await self._command(m.name)
            await m.agent.wait_ready(READY_TIMEOUT)
            pid = await identity.start_script(m.agent, cmd.script, cmd.args)
            await self._set_clock(m)  # while the script runs: the agent answers meanwhile
            code, out, err = await identity.wait_script(m.agent, pid)
            how = "the guest agent"
        if code != 0:
            step = identity.IDENTITY_STEPS.get(code) or ("SSH key" if code == 20 else str(code))
            raise GuestAgentError(f"the guest could not take its own identity ({step}): "
                                  f"{err.decode(errors='replace').strip()}")
        self.vms.event(m.name, "identity", f"took its own identity through {how}")
        text = out.decode(errors="replace")
        boot_id = next((ln.split()[1] for ln in text.splitlines() if ln.startswith("boot_id ")), "")
        if any(ln.strip() == "lease-renewal" for ln in text.splitlines()):
            self.vms.spawn_background(self._follow_lease(m), f"follow-lease-{m.name}")
        paths.known_hosts.unlink(missing_ok=True)
        host_keys = ssh.parse_host_keys(text) or ssh.parse_host_keys(cmd.host_key.public)
        if m.ssh_port is not None and host_keys:
            ssh.write_known_hosts(paths, m.ssh_port, host_keys)
        elif m.ssh_port is not None:
            self.vms.event(m.name, "ssh", "no SSH host key read from the guest")
        return boot_id
