"""What the metrics sampler keeps between scrapes: one :class:`VMSample` per defined VM and one :class:`HostSample`.

Plain frozen data, so a scrape (corral.metrics.collector) reads a consistent snapshot without locks: the sampler
replaces the whole cache at the end of each pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DiskSample:
    """One block device of a VM, from QMP ``query-blockstats``: cumulative since its QEMU started."""

    drive: str  #: root, seed, or an extra disk's name (`corral disk add VM NAME`)
    read_bytes: int
    written_bytes: int
    read_ops: int
    write_ops: int


@dataclass(frozen=True)
class NicSample:
    """One network interface of a VM: bytes from the guest's point of view (received by the guest, sent by it).

    ``source`` says who counted: ``tap`` (the host kernel's counters of the VM's tap device, /sys/class/net: only
    bridged networks have one) or ``guest-agent`` (the guest's own counters of its interface, through the guest
    agent: QEMU has no byte counters of its own for user-mode or socket networks, so this is the only figure for
    those, and it is what the guest says).
    """

    device: str  #: the tap's name, or the guest's interface name (eth0)
    source: str
    received_bytes: int
    sent_bytes: int


@dataclass(frozen=True)
class VMSample:
    vm: str
    project: str
    owner: str
    state: str
    vcpus: int
    memory_bytes: int  #: the memory it was given (its spec)
    pid: int | None = None  #: its QEMU's pid, None when no QEMU runs
    cpu_seconds: float | None = None  #: QEMU's user + system CPU time, every thread (/proc/PID/stat)
    rss_bytes: int | None = None  #: QEMU's resident memory (/proc/PID/status VmRSS)
    balloon_bytes: int | None = None  #: memory the guest has now (QMP query-balloon actual); --balloon VMs only
    disks: tuple[DiskSample, ...] = ()
    nics: tuple[NicSample, ...] = ()


@dataclass(frozen=True)
class HostSample:
    """This host's capacity and what is allocated (as `corral capacity` computes it)."""

    vcpus: int  #: host threads
    vcpus_limit: int  #: what running VMs may have together: threads x CORRAL_CPU_OVERCOMMIT
    memory_bytes: int  #: host RAM
    memory_limit_bytes: int  #: RAM x CORRAL_MEMORY_OVERCOMMIT
    disk_bytes: int  #: size of the Corral home's file system
    disk_free_bytes: int
    vcpus_running: int  #: vCPUs of the live VMs
    vcpus_defined: int  #: vCPUs of every defined VM
    memory_running_bytes: int
    memory_defined_bytes: int
    disk_running_bytes: int  #: disk virtual sizes (root and extra disks) of the live VMs
    disk_defined_bytes: int
    memory_used_bytes: int  #: resident memory of the QEMU processes
    disk_used_bytes: int  #: bytes the VMs' disks occupy on the file system


@dataclass(frozen=True)
class QuotaSample:
    """One limit of a quota (`corral quota set`) and what its project or owner holds (every defined VM counts)."""

    scope: str  #: project or owner
    name: str
    resource: str  #: vms, vcpus, memory_bytes, disk_bytes
    limit: int
    used: int


@dataclass(frozen=True)
class Cache:
    """The sampler's last pass. ``at``: when it ended (0: no pass yet)."""

    vms: dict[str, VMSample] = field(default_factory=dict)
    host: HostSample | None = None
    quotas: tuple[QuotaSample, ...] = ()
    at: float = 0.0
