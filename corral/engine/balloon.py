"""The memory balloon of a running QEMU, over QMP: its size (``query-balloon``), its target (``balloon``) and the
guest's memory statistics (the device's ``guest-stats`` QOM property, refreshed every
:data:`~corral.engine.cmdline.BALLOON_STATS_INTERVAL` seconds while the guest driver runs).

Only a VM started with the device (``-device virtio-balloon-pci,id=balloon0``, corral.engine.cmdline) has one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from corral.engine.cmdline import BALLOON_ID
from corral.engine.monitor import Monitor

#: The device's QOM path.
BALLOON_PATH = f"/machine/peripheral/{BALLOON_ID}"

#: QEMU reports a statistic the guest never sent as (uint64) -1.
_UNSET = (1 << 64) - 1


@dataclass(frozen=True)
class GuestMemoryStats:
    """The guest's own view (its /proc/meminfo), bytes; None: not (yet) reported by its driver."""

    total: int | None
    free: int | None
    available: int | None
    disk_caches: int | None
    last_update: int  # guest-stats' last-update, seconds since the epoch (0: never)


async def size(monitor: Monitor) -> int:
    """The memory the guest has now, bytes: the VM's memory less what is in the balloon."""
    return int((await monitor.execute("query-balloon"))["actual"])


async def set_target(monitor: Monitor, target: int) -> None:
    """Ask the guest to give back memory (or take it again) until it has ``target`` bytes. Returns at once: the
    guest's driver inflates or deflates the balloon in the background."""
    await monitor.execute("balloon", {"value": int(target)})


def parse_stats(reply: dict[str, Any]) -> GuestMemoryStats:
    """The ``guest-stats`` QOM property's value, as :class:`GuestMemoryStats`."""
    stats = reply.get("stats") or {}

    def one(key: str) -> int | None:
        v = stats.get(key)
        return None if v is None or int(v) == _UNSET else int(v)

    return GuestMemoryStats(total=one("stat-total-memory"), free=one("stat-free-memory"),
                            available=one("stat-available-memory"), disk_caches=one("stat-disk-caches"),
                            last_update=int(reply.get("last-update") or 0))


async def guest_stats(monitor: Monitor) -> GuestMemoryStats:
    reply = await monitor.execute("qom-get", {"path": BALLOON_PATH, "property": "guest-stats"})
    return parse_stats(reply if isinstance(reply, dict) else {})
