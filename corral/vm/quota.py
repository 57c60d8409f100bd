"""Quotas: per project and per owner limits on VMs, vCPUs, memory and disk, checked in one place.

What counts: every *defined* VM of the project (or owner), whatever its state — VM count, vCPUs, memory and disk
alike. A stopped VM still holds its quota, so a VM that was created can always be started and the numbers never
depend on what happens to be running. :func:`check` is pure: it takes the VM specs and the quota rows and raises
:class:`CapacityError` naming the first limit the request would exceed, and by how much.

It is called by :meth:`corral.vm.service.VMService.create` (so also by ``corral launch``) with the new spec, and by
``start``/``resume`` with the VM's own spec against the *other* VMs (so a VM over a quota lowered after it was
created is refused a start), and by corral.storage.disks when an extra disk is added or grown (a VM's disk is its root
disk plus its extra disks: VMService.disk_size). Image import creates no VM.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from corral.errors import CapacityError
from corral.vm.sizes import format_size
from corral.vm.spec import VMSpec

Scope = Literal["project", "owner"]
RESOURCES = ("vms", "vcpus", "memory", "disk")


@dataclass(frozen=True)
class Quota:
    """Limits for one project or owner; ``None`` means no limit. ``memory`` is in MiB, ``disk`` in bytes."""

    scope: Scope
    name: str
    vms: int | None = None
    vcpus: int | None = None
    memory: int | None = None
    disk: int | None = None

    def limits(self) -> dict[str, int]:
        return {r: v for r in RESOURCES if (v := getattr(self, r)) is not None}


@dataclass
class Usage:
    vms: int = 0
    vcpus: int = 0
    memory: int = 0  # MiB
    disk: int = 0  # bytes
    names: list[str] = field(default_factory=list)

    def add(self, spec: VMSpec, disk_bytes: int) -> None:
        self.vms += 1
        self.vcpus += spec.vcpus
        self.memory += spec.memory
        self.disk += disk_bytes
        self.names.append(spec.name)


def _member(spec: VMSpec, scope: Scope, name: str) -> bool:
    return (spec.project if scope == "project" else spec.owner) == name


def usage(scope: Scope, name: str, specs: Iterable[tuple[VMSpec, int]]) -> Usage:
    """What the project (or owner) ``name`` holds: ``specs`` are (spec, disk bytes) of every defined VM."""
    u = Usage()
    for spec, disk in specs:
        if _member(spec, scope, name):
            u.add(spec, disk)
    return u


def _amount(resource: str, n: int) -> str:
    if resource == "vms":
        return f"{n} VM{'s' if n != 1 else ''}"
    if resource == "vcpus":
        return f"{n} vCPU{'s' if n != 1 else ''}"
    if resource == "memory":
        return format_size(n << 20) + " of memory"
    return format_size(n) + " of disk"


def _over(resource: str, n: int) -> str:
    if resource == "memory":
        return format_size(n << 20)
    if resource == "disk":
        return format_size(n)
    return str(n)


def check(request: VMSpec, request_disk: int, others: Iterable[tuple[VMSpec, int]], quotas: Iterable[Quota]) -> None:
    """Refuse ``request`` (with ``request_disk`` bytes of disk) if, added to ``others`` (every other defined VM,
    as (spec, disk bytes)), it would exceed a quota of its project or its owner. Projects are checked first."""
    others = list(others)
    for q in sorted(quotas, key=lambda q: (q.scope != "project", q.name)):
        if not _member(request, q.scope, q.name):
            continue
        u = usage(q.scope, q.name, others)
        u.add(request, request_disk)
        for resource, limit in q.limits().items():
            used = getattr(u, resource)
            if used > limit:
                raise CapacityError(
                    f"{q.scope} '{q.name}' would use {_amount(resource, used)}, {_over(resource, used - limit)} "
                    f"over its limit of {_amount(resource, limit)}: "
                    f"raise it with `corral quota set --{q.scope} {q.name} --{resource} N` or remove a VM"
                )
