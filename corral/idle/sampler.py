"""Reading one running VM's activity counters, all cumulative since its QEMU started:

- CPU: the QEMU process's user + system time (``/proc/PID/stat``, every thread). Under TCG an idle guest still
  costs its QEMU a little (about 0.2-0.4 % of a host CPU for an idle tiny guest here): the CPU threshold sits well
  above that.
- disk: bytes read + written by the VM's block devices, from QMP ``query-blockstats``.
- network: bytes received + sent by the guest's NICs (loopback excluded), from the guest agent's
  ``guest-network-get-interfaces`` statistics (QEMU's agent reports them since 7.1). QEMU's user-mode network has
  no byte counters of its own, and a NIC's traffic is what the guest did, whichever network it is on.

A counter that cannot be read is None; the detector counts an unknown interval as activity, so a VM whose guest
agent does not answer (booting, or an image without one) is never judged idle.
"""

from __future__ import annotations

import time
from typing import Any

from corral.engine import process
from corral.errors import CorralError
from corral.idle.detector import Counters
from corral.vm.machine import Machine

QMP_TIMEOUT = 3.0
AGENT_TIMEOUT = 5.0


def disk_bytes(blockstats: list[dict[str, Any]]) -> int:
    """Bytes read + written by every block device in a ``query-blockstats`` answer."""
    return sum(int(b.get("stats", {}).get("rd_bytes", 0)) + int(b.get("stats", {}).get("wr_bytes", 0))
               for b in blockstats)


def interface_bytes(interfaces: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    """(received, sent) bytes of each of the guest's NICs (not loopback) in a ``guest-network-get-interfaces``
    answer, by interface name; only the interfaces the agent gives statistics for (QEMU 7.1's agent and later).
    Also read by the metrics sampler (corral.metrics.sampler)."""
    found: dict[str, tuple[int, int]] = {}
    for iface in interfaces:
        if iface.get("name") == "lo" or "statistics" not in iface:
            continue
        st = iface["statistics"]
        found[str(iface.get("name", ""))] = (int(st.get("rx-bytes", 0)), int(st.get("tx-bytes", 0)))
    return found


def net_bytes(interfaces: list[dict[str, Any]]) -> int | None:
    """Bytes received + sent by the guest's NICs (not loopback) in a ``guest-network-get-interfaces`` answer;
    None when the agent gives no statistics (an agent older than QEMU 7.1)."""
    found = interface_bytes(interfaces)
    return sum(rx + tx for rx, tx in found.values()) if found else None


async def sample(m: Machine) -> Counters:
    """The counters of the running VM ``m`` now. Never raises for a counter it cannot read: that one is None."""
    t = time.monotonic()
    cpu = process.cpu_seconds(m.ident.pid)
    disk: int | None = None
    if m.monitor is not None:
        try:
            disk = disk_bytes(await m.monitor.execute("query-blockstats", timeout=QMP_TIMEOUT))
        except CorralError:
            disk = None
    net: int | None = None
    if m.agent_ready:
        try:
            interfaces = await m.agent.execute("guest-network-get-interfaces", timeout=AGENT_TIMEOUT)
            m.interfaces_seen = (time.monotonic(), interfaces)
            net = net_bytes(interfaces)
        except CorralError:
            net = None
    return Counters(t=t, cpu_seconds=cpu, disk_bytes=disk, net_bytes=net)
