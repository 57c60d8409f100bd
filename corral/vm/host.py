"""What the host can give: memory and CPU under their overcommit settings. Read from /proc, not assumed."""

from __future__ import annotations

import os
from pathlib import Path

from corral.errors import CapacityError


def host_memory_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("MemTotal missing from /proc/meminfo")


def host_cpus() -> int:
    return os.cpu_count() or 1


def memory_limit_mib(overcommit: float) -> int:
    return int(host_memory_mib() * overcommit)


def check_spec_fits(name: str, memory_mib: int, overcommit: float) -> None:
    """A VM that could never start on this host is refused at create time."""
    limit = memory_limit_mib(overcommit)
    if memory_mib > limit:
        raise CapacityError(
            f"VM '{name}' asks for {memory_mib} MiB of memory but this host allows at most {limit} MiB "
            f"(host RAM x CORRAL_MEMORY_OVERCOMMIT={overcommit}): ask for less memory"
        )


def check_start_fits(name: str, memory_mib: int, in_use_mib: int, overcommit: float) -> None:
    limit = memory_limit_mib(overcommit)
    if in_use_mib + memory_mib > limit:
        raise CapacityError(
            f"cannot start '{name}': it needs {memory_mib} MiB but only {max(0, limit - in_use_mib)} MiB of the "
            f"{limit} MiB this host allows are free: stop another VM or raise CORRAL_MEMORY_OVERCOMMIT"
        )


def cpu_limit(overcommit: float) -> int:
    """vCPUs the running VMs may have together: host threads x CORRAL_CPU_OVERCOMMIT (at least 1)."""
    return max(1, int(host_cpus() * overcommit))


def check_start_cpus(name: str, vcpus: int, in_use: int, overcommit: float) -> None:
    """Refuse a start that would take the running VMs' vCPUs beyond the host's threads x overcommit."""
    limit = cpu_limit(overcommit)
    if in_use + vcpus > limit:
        raise CapacityError(
            f"cannot start '{name}': it needs {vcpus} vCPUs but only {max(0, limit - in_use)} of the {limit} this "
            f"host allows ({host_cpus()} threads x CORRAL_CPU_OVERCOMMIT={overcommit:g}) are free: "
            "stop another VM or raise CORRAL_CPU_OVERCOMMIT"
        )
