"""Private networks: VMs on one network reach each other (by address and by name), and nothing else does.

A network is a row in the store (name, subnet) and, while a VM on it runs, a switch process
(:mod:`corral.network.switch`) under ``$CORRAL_HOME/networks/<name>/``. Each VM on a network has an attachment: a
MAC and an address from the subnet (the first free host address), both chosen once and kept, so they survive
restarts. After every boot the guest gets its addresses (found by MAC under /sys/class/net) and an /etc/hosts
block naming every VM on its networks; the running members' blocks are refreshed when a VM joins.

With root, a network can instead be a Linux bridge (``--bridge``, named ``crl-<name>``, holding the subnet's first
address): each VM NIC is then a persistent tap device (``crt...``) created on the bridge just before QEMU starts and
deleted when that QEMU exits (stop, kill, crash, failed start), when the VM is deleted and, for any left over, when
the network is removed. The bridge is made again if it is missing when a VM starts (e.g. after a host reboot).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import secrets
import shlex
import subprocess
import time
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

from corral.engine.cmdline import NicAttachment
from corral.engine.guest_agent import GuestAgent
from corral.errors import Conflict, CorralError, EngineError, InvalidInput, NotFound
from corral.guest.commands import run
from corral.network import switch
from corral.settings import Settings
from corral.store.db import AttachmentRecord, NetworkRecord, Store, VMRecord
from corral.vm.spec import NAME_RE

log = logging.getLogger(__name__)

NETWORKS_DIR = "networks"
DEFAULT_POOL = ipaddress.IPv4Network("10.77.0.0/16")  # default subnets: the first free /24 in here
HOSTS_BEGIN = "# BEGIN corral networks (managed by corral: replaced at every boot)"
HOSTS_END = "# END corral networks"


# ------------------------------------------------------------------------------------------------ pure parts --
def parse_subnet(text: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise InvalidInput(f"subnet {text!r} is not a network address like 10.1.2.0/24: {exc}") from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise InvalidInput(f"subnet {text!r} is not IPv4: use one like 10.1.2.0/24")
    if net.prefixlen > 29 or net.prefixlen < 8:
        raise InvalidInput(f"subnet {text!r} must have a prefix between /8 and /29")
    return net


def pick_subnet(taken: Iterable[str], pool: ipaddress.IPv4Network = DEFAULT_POOL) -> str:
    """The first /24 of ``pool`` that overlaps no subnet in ``taken``."""
    used = [ipaddress.ip_network(t) for t in taken]
    for cand in pool.subnets(new_prefix=24):
        if not any(cand.overlaps(u) for u in used):
            return str(cand)
    raise Conflict(f"every /24 of {pool} is used by a network: give one with --subnet")


def allocate_address(subnet: str, taken: Iterable[str]) -> str:
    """The first host address of ``subnet`` not in ``taken``."""
    net = ipaddress.ip_network(subnet)
    used = set(taken)
    for host in net.hosts():
        if str(host) not in used:
            return str(host)
    raise Conflict(f"network subnet {subnet} has no free address left")


def render_hosts(existing: str, entries: list[tuple[str, str]]) -> str:
    """``existing`` /etc/hosts with Corral's block (address, names) replaced, or appended if absent."""
    lines, inside = [], False
    for line in existing.splitlines():
        if line.strip() == HOSTS_BEGIN:
            inside = True
        elif line.strip() == HOSTS_END and inside:
            inside = False
        elif not inside:
            lines.append(line)
    block = [HOSTS_BEGIN, *(f"{addr}\t{names}" for addr, names in entries), HOSTS_END]
    return "\n".join([*lines, *block]) + "\n"


def random_mac() -> str:
    return "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))


# ------------------------------------------------------------------------------------------------ the service --
AgentLookup = Callable[[str], GuestAgent | None]


class NetworkService:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        #: the guest agent of a running, ready VM (set by the VM service), to refresh members' /etc/hosts
        self.agent_of: AgentLookup = lambda _name: None
        self._lock = asyncio.Lock()

    # paths --------------------------------------------------------------------------------------------------
    def dir(self, name: str) -> Path:
        return self.settings.home / NETWORKS_DIR / name

    def socket(self, name: str) -> Path:
        return self.dir(name) / "switch.sock"

    def _pidfile(self, name: str) -> Path:
        return self.dir(name) / "switch.pid"

    def _members_file(self, name: str) -> Path:
        return self.dir(name) / "members"

    # definitions --------------------------------------------------------------------------------------------
    def get(self, name: str) -> NetworkRecord:
        rec = self.store.get_network(name)
        if rec is None:
            names = [n.name for n in self.store.list_networks()]
            hint = f" (networks: {', '.join(names)})" if names else " (there are none: `corral network create NAME`)"
            raise NotFound(f"no network named '{name}'{hint}")
        return rec

    def all(self) -> list[NetworkRecord]:
        return self.store.list_networks()

    def users(self, name: str) -> list[str]:
        """VMs whose spec lists the network."""
        return [r.name for r in self.store.list_vms() if name in r.spec.networks]

    def switch_pid(self, name: str) -> int | None:
        ident = switch.running(self.socket(name), self._pidfile(name))
        return ident.pid if ident else None

    def check_spec(self, networks: list[str]) -> None:
        """Every network a VM spec names exists (checked when the VM is created)."""
        for n in networks:
            self.get(n)

    async def create(self, name: str, subnet: str | None = None, bridge: bool = False) -> NetworkRecord:
        async with self._lock:
            if not NAME_RE.match(name):
                raise InvalidInput(f"{name!r} is not a valid network name: use lower-case letters, digits and '-'")
            if self.store.get_network(name) is not None:
                raise Conflict(f"a network named '{name}' already exists")
            existing = self.store.list_networks()
            if subnet is None:
                subnet = pick_subnet(n.subnet for n in existing)
            net = parse_subnet(subnet)
            for n in existing:
                if net.overlaps(ipaddress.ip_network(n.subnet)):
                    raise Conflict(f"subnet {net} overlaps network '{n.name}' ({n.subnet}): choose another")
            bridge_name = None
            if bridge:
                if os.geteuid() != 0:
                    raise InvalidInput("bridged networks need root (a Linux bridge and tap devices): "
                                       "run corrald as root, or create a private network without --bridge")
                bridge_name = bridge_name_for(name)
                if _link_exists(bridge_name):
                    raise Conflict(f"a network device named {bridge_name} already exists on this host: "
                                   "remove it or choose another network name")
                await _make_bridge(bridge_name, net)
            rec = NetworkRecord(name=name, subnet=str(net), created_at=time.time(), bridge=bridge_name)
            self.dir(name).mkdir(parents=True, exist_ok=True, mode=0o700)
            self.store.insert_network(rec)
            return rec

    async def remove(self, name: str) -> None:
        async with self._lock:
            rec = self.get(name)
            users = self.users(name)
            if users:
                raise Conflict(f"network '{name}' is used by VM {', '.join(users)}: "
                               "delete those VMs first (`corral rm`)")
            await asyncio.to_thread(switch.stop, self.socket(name), self._pidfile(name))
            if rec.bridge:
                for tap in await _ports_of(rec.bridge):  # taps left over (their VMs are gone)
                    await _del_link(tap)
                await _del_link(rec.bridge)
            self.store.delete_network(name)
            await asyncio.to_thread(_rmtree, self.dir(name))

    # attaching VMs ------------------------------------------------------------------------------------------
    def _attachment(self, net: NetworkRecord, vm: str) -> AttachmentRecord:
        found = self.store.attachments(network=net.name, vm=vm)
        if found:
            return found[0]
        taken = [a.address for a in self.store.attachments(network=net.name)]
        if net.bridge:  # the bridge itself holds the first host address
            taken.append(str(next(ipaddress.ip_network(net.subnet).hosts())))
        macs = {a.mac for a in self.store.attachments()}
        mac = random_mac()
        while mac in macs:
            mac = random_mac()
        att = AttachmentRecord(network=net.name, vm=vm, mac=mac, address=allocate_address(net.subnet, taken))
        self.store.insert_attachment(att)
        return att

    async def attach(self, rec: VMRecord) -> tuple[NicAttachment, ...]:
        """Before QEMU starts: each network's attachment, its switch running, the VM's socket in its members."""
        nics = []
        async with self._lock:
            try:
                for name in rec.spec.networks:
                    net = self.get(name)
                    att = self._attachment(net, rec.name)
                    local = self.settings.vm_paths(rec.name).nic_socket(name)
                    if net.bridge:
                        if not _link_exists(net.bridge):  # gone (host rebooted, removed by hand): make it again
                            await _make_bridge(net.bridge, parse_subnet(net.subnet))
                        tap = tap_name(rec.id, name)
                        await _ensure_tap(tap, net.bridge)
                        nics.append(NicAttachment(network=name, mac=att.mac, local=local, switch=self.socket(name),
                                                  tap=tap))
                        continue
                    await self._ensure_switch(name)
                    nics.append(NicAttachment(network=name, mac=att.mac, local=local, switch=self.socket(name)))
            except BaseException:
                await self._release(rec)
                raise
        return tuple(nics)

    async def release(self, rec: VMRecord) -> None:
        """After the VM's QEMU exited (or failed to start), and when it is deleted: its tap devices are deleted."""
        async with self._lock:
            await self._release(rec)

    async def _release(self, rec: VMRecord) -> None:
        for name in rec.spec.networks:
            net = self.store.get_network(name)
            if net is not None and net.bridge:
                tap = tap_name(rec.id, name)
                if _link_exists(tap):
                    await _del_link(tap)

    async def _ensure_switch(self, name: str) -> None:
        self.dir(name).mkdir(parents=True, exist_ok=True, mode=0o700)
        members = [str(self.settings.vm_paths(a.vm).nic_socket(name)) for a in self.store.attachments(network=name)]
        await asyncio.to_thread(switch.write_members, self._members_file(name), members)
        if switch.running(self.socket(name), self._pidfile(name)) is not None:
            return
        try:
            pid = await asyncio.to_thread(switch.start, self.socket(name), self._members_file(name),
                                          self._pidfile(name), self.dir(name) / "switch.log")
        except OSError as exc:
            raise EngineError(f"cannot start the switch of network '{name}': {exc}") from exc
        log.info("network %s: switch started (pid %d)", name, pid)

    async def recover(self, live_vms: Iterable[VMRecord]) -> None:
        """After a daemon restart: every network with a running VM has its switch (restarted if it died)."""
        wanted = {n for rec in live_vms for n in rec.spec.networks}
        for name in sorted(wanted):
            net = self.store.get_network(name)
            if net is None or net.bridge:
                continue
            async with self._lock:
                try:
                    await self._ensure_switch(name)
                except CorralError as exc:
                    log.warning("network %s: %s", name, exc.message)

    # inside the guest ---------------------------------------------------------------------------------------
    def hosts_entries(self, vm: str) -> list[tuple[str, str]]:
        """(address, names) of every VM on the networks of ``vm``."""
        entries: list[tuple[str, str]] = []
        seen: set[str] = set()
        for mine in self.store.attachments(vm=vm):
            for a in self.store.attachments(network=mine.network):
                if a.vm in seen:
                    continue
                seen.add(a.vm)
                other = self.store.get_vm(a.vm)
                names = [a.vm]
                if other is not None and other.spec.guest_hostname != a.vm:
                    names.append(other.spec.guest_hostname)
                entries.append((a.address, " ".join(names)))
        return entries

    async def configure_guest(self, rec: VMRecord, agent: GuestAgent) -> None:
        """After every boot: the guest's addresses on its networks, then /etc/hosts here and on the members."""
        atts = [a for a in self.store.attachments(vm=rec.name) if a.network in rec.spec.networks]
        if not atts:
            return
        for a in atts:
            net = self.get(a.network)
            prefix = ipaddress.ip_network(net.subnet).prefixlen
            await run(agent, ["/bin/sh", "-c", CONFIGURE_SCRIPT, "sh", a.mac, f"{a.address}/{prefix}"], timeout=30)
        await self.write_hosts(rec.name, agent)
        members = {m.vm for a in atts for m in self.store.attachments(network=a.network)} - {rec.name}
        for other in sorted(members):
            other_agent = self.agent_of(other)
            if other_agent is None:
                continue
            try:
                await self.write_hosts(other, other_agent)
            except CorralError as exc:  # one member's agent must not fail this VM's boot
                log.warning("cannot refresh /etc/hosts of %s: %s", other, exc.message)

    async def write_hosts(self, vm: str, agent: GuestAgent) -> None:
        current = (await agent.read_file("/etc/hosts")).decode(errors="replace")
        await agent.write_file("/etc/hosts", render_hosts(current, self.hosts_entries(vm)).encode())


# Find the interface by MAC, (re)set its address, bring it up. $1 = MAC, $2 = address/prefix.
CONFIGURE_SCRIPT = r"""
for d in /sys/class/net/*; do
    if [ "$(cat "$d/address" 2>/dev/null)" = "$1" ]; then IF=${d##*/}; fi
done
[ -n "$IF" ] || { echo "no interface with MAC $1" >&2; exit 1; }
ip -4 addr flush dev "$IF"
ip addr add "$2" dev "$IF"
ip link set "$IF" up
"""


def bridge_name_for(network: str) -> str:
    """``crl-<network>``; a long name is cut and made unique with a checksum (device names have 15 bytes)."""
    name = f"crl-{network}"
    if len(name) <= 15:
        return name
    return f"crl-{network[:5]}-{zlib.crc32(network.encode()) & 0xFFFFF:05x}"


def tap_name(vm_id: str, network: str) -> str:
    """The tap of VM ``vm_id`` on ``network``: ``crt`` + 6 hex digits of the VM's UUID + 5 of the network's."""
    return f"crt{vm_id.replace('-', '')[:6]}{zlib.crc32(network.encode()) & 0xFFFFF:05x}"


def _link_exists(dev: str) -> bool:
    return Path("/sys/class/net", dev).exists()


async def _ip(args: list[str]) -> str:
    try:
        proc = await asyncio.create_subprocess_exec("ip", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as exc:
        raise EngineError(f"cannot run `ip` (iproute2) for a bridged network: {exc}") from exc
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise EngineError(f"`ip {shlex.join(args)}` failed: {err.decode(errors='replace').strip()}")
    return out.decode(errors="replace")


async def _make_bridge(bridge: str, net: ipaddress.IPv4Network) -> None:
    """The bridge, holding the subnet's first address, up; nothing left behind if a step fails."""
    await _ip(["link", "add", "name", bridge, "type", "bridge"])
    try:
        await _ip(["addr", "add", f"{next(net.hosts())}/{net.prefixlen}", "dev", bridge])
        await _ip(["link", "set", bridge, "up"])
    except BaseException:
        with contextlib.suppress(CorralError):
            await _ip(["link", "del", bridge])
        raise


async def _ensure_tap(tap: str, bridge: str) -> None:
    """A persistent tap on ``bridge``, up (QEMU opens it by name: ``-netdev tap,ifname=...,script=no``)."""
    created = False
    if not _link_exists(tap):
        await _ip(["tuntap", "add", "dev", tap, "mode", "tap"])
        created = True
    try:
        await _ip(["link", "set", tap, "master", bridge, "up"])
    except BaseException:
        if created:
            await _del_link(tap)
        raise


async def _ports_of(bridge: str) -> list[str]:
    """The devices enslaved to ``bridge`` (none if it is gone)."""
    if not _link_exists(bridge):
        return []
    try:
        out = await _ip(["-o", "link", "show", "master", bridge])
    except CorralError:
        return []
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if line.count(":") >= 2]


async def _del_link(dev: str) -> None:
    """Delete a device we made; a failure is logged (the caller's operation goes on)."""
    try:
        await _ip(["link", "del", dev])
    except CorralError as exc:
        log.warning("cannot delete network device %s: %s", dev, exc.message)


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
