"""The idle decision, pure: activity counters sampled over time -> rates -> is the VM idle, and since when.

Each sample holds cumulative counters (QEMU's CPU seconds, bytes the VM's disks read and wrote, bytes its NICs
received and sent). Between two samples they give rates; an interval in which any rate reaches its threshold, or
whose rate is unknown (a counter could not be read), is activity. The VM is idle once no activity was seen for the
policy's whole window: ``now - last_active >= suspend_after``. Users reaching the guest (exec, a file copy, a
shell) count as activity too: the service calls :meth:`Activity.touch`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from corral.idle.policy import IdlePolicy, format_rate


@dataclass(frozen=True)
class Counters:
    """Cumulative counters of one VM at monotonic time ``t``; None: that one could not be read."""

    t: float
    cpu_seconds: float | None
    disk_bytes: int | None
    net_bytes: int | None


@dataclass(frozen=True)
class Rates:
    """Activity over one interval: CPU in percent of the VM's vCPUs, disk and network in bytes/s (None: unknown)."""

    seconds: float
    cpu: float | None
    disk: float | None
    net: float | None


def _rate(a: float | None, b: float | None, dt: float) -> float | None:
    if a is None or b is None or b < a:  # unknown, or the counter restarted (a new QEMU, a guest NIC reset)
        return None
    return (b - a) / dt


def rates(prev: Counters, cur: Counters, vcpus: int) -> Rates | None:
    """The rates between two samples; None when no time passed."""
    dt = cur.t - prev.t
    if dt <= 0:
        return None
    cpu = _rate(prev.cpu_seconds, cur.cpu_seconds, dt)
    return Rates(seconds=dt, cpu=None if cpu is None else 100.0 * cpu / max(vcpus, 1),
                 disk=_rate(prev.disk_bytes, cur.disk_bytes, dt), net=_rate(prev.net_bytes, cur.net_bytes, dt))


def over(r: Rates, p: IdlePolicy) -> list[str]:
    """Which measures of ``r`` count as activity under ``p``: at or over the threshold, or unknown."""
    found = []
    for name, value, limit, shown in (("cpu", r.cpu, p.cpu, lambda v: f"{v:.1f}%"),
                                      ("disk", r.disk, p.disk, format_rate),
                                      ("net", r.net, p.net, format_rate)):
        if value is None:
            found.append(f"{name} unknown")
        elif value >= limit and not (limit == 0 and value == 0):
            found.append(f"{name} {shown(value)}")
    return found


@dataclass
class Activity:
    """What the daemon knows about one running VM's activity. Times are wall-clock times: ``last_active`` the last
    activity known (it may come from before this daemon watched the VM: the store keeps it), ``watched_since`` when
    this daemon began watching (default: ``last_active``). Only what was watched can prove the VM idle."""

    last_active: float
    watched_since: float | None = None
    prev: Counters | None = None
    last: Rates | None = None
    #: Why the last interval counted as activity ("cpu 12.0%", "net unknown"); empty when it was quiet.
    busy: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.watched_since is None:
            self.watched_since = self.last_active

    def observe(self, c: Counters, now: float, vcpus: int, policy: IdlePolicy) -> None:
        """Take one sample taken at wall time ``now``; the first one only sets the baseline."""
        prev, self.prev = self.prev, c
        if prev is None:
            return
        r = rates(prev, c, vcpus)
        if r is None:
            return
        self.last = r
        self.busy = over(r, policy)
        if self.busy:
            self.last_active = max(self.last_active, now)

    def touch(self, now: float) -> None:
        """Someone used the VM (exec, file copy, shell): activity now."""
        self.last_active = max(self.last_active, now)

    def quiet_for(self, now: float) -> float:
        return max(0.0, now - self.last_active)

    def idle(self, now: float, policy: IdlePolicy | None) -> bool:
        """Idle for the policy's whole window, all of it watched (never without a policy that is on)."""
        if policy is None or policy.suspend_after is None:
            return False
        watched = now - (self.watched_since if self.watched_since is not None else self.last_active)
        return self.quiet_for(now) >= policy.suspend_after and watched >= policy.suspend_after
