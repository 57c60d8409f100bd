"""`corral capacity`: the host's CPUs, memory and disk; what VMs were given; what is left; what is really used."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from corral.vm import host
from corral.vm.states import LIVE

if TYPE_CHECKING:  # the client imports the wire models below: it need not load the store
    from corral.settings import Settings
    from corral.store.db import Store


class CapacityAmounts(BaseModel):
    vcpus: int
    memory: int = Field(description="MiB")
    disk: int = Field(description="bytes")


class CapacityInfo(BaseModel):
    """`corral capacity`: what the host has, what VMs were given, what is left under the overcommit settings,
    and what is actually used (QEMU processes' RSS, bytes the VM disks occupy)."""

    host: CapacityAmounts = Field(description="host threads, RAM, and the size of the Corral home's file system")
    cpu_overcommit: float
    memory_overcommit: float
    limit: CapacityAmounts = Field(description="vCPUs and memory running VMs may have under the overcommit "
                                   "settings; disk: the home file system's size")
    allocated_running: CapacityAmounts = Field(description="sum over running (live) VMs")
    allocated_defined: CapacityAmounts = Field(description="sum over every defined VM")
    available: CapacityAmounts = Field(description="limit minus allocated_running; disk: free on the file system")
    used_memory: int = Field(description="MiB: resident memory of the QEMU processes (/proc)")
    used_disk: int = Field(description="bytes the VMs' disks (root qcow2 overlays and extra disks) occupy on disk")
    running: list[str]
    vms: int


def rss_mib(pid: int) -> int:
    """Resident memory of ``pid`` in MiB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError):
        pass
    return 0


def bytes_on_disk(path: Path) -> int:
    """Bytes ``path`` really occupies (allocated blocks: a sparse qcow2 overlay counts what it holds), 0 if gone."""
    try:
        return os.stat(path).st_blocks * 512
    except OSError:
        return 0


def capacity(settings: Settings, store: Store, disk_size: dict[str, int]) -> CapacityInfo:
    """``disk_size``: each defined VM's disk virtual size, root and extra disks (as quotas count it)."""
    recs = store.list_vms()
    live = [r for r in recs if r.state in LIVE]
    settings.home.mkdir(parents=True, exist_ok=True)
    fs = shutil.disk_usage(settings.home)
    host_amounts = CapacityAmounts(vcpus=host.host_cpus(), memory=host.host_memory_mib(), disk=fs.total)
    limit = CapacityAmounts(vcpus=host.cpu_limit(settings.cpu_overcommit),
                            memory=host.memory_limit_mib(settings.memory_overcommit), disk=fs.total)
    running = CapacityAmounts(vcpus=sum(r.spec.vcpus for r in live), memory=sum(r.spec.memory for r in live),
                              disk=sum(disk_size.get(r.name, 0) for r in live))
    defined = CapacityAmounts(vcpus=sum(r.spec.vcpus for r in recs), memory=sum(r.spec.memory for r in recs),
                              disk=sum(disk_size.get(r.name, 0) for r in recs))
    used_memory = 0
    for r in live:
        rt = store.get_runtime(r.name)
        if rt is not None:
            used_memory += rss_mib(rt.pid)
    used_disk = sum(bytes_on_disk(settings.vm_paths(r.name).disk) for r in recs)
    used_disk += sum(bytes_on_disk(Path(d.file)) for d in store.list_disks())  # extra disks (corral disk)
    return CapacityInfo(
        host=host_amounts, cpu_overcommit=settings.cpu_overcommit, memory_overcommit=settings.memory_overcommit,
        limit=limit, allocated_running=running, allocated_defined=defined,
        available=CapacityAmounts(vcpus=max(0, limit.vcpus - running.vcpus),
                                  memory=max(0, limit.memory - running.memory), disk=fs.free),
        used_memory=used_memory, used_disk=used_disk, running=[r.name for r in live], vms=len(recs),
    )
