"""`corral report`: VMs grouped by owner, project or a label, with what they were given and what they use.

Allocation is the spec (vCPUs, memory, the root disk's virtual size); use is what is cheap to read on the host: is
it running and since when, the QEMU process's resident memory (``VmRSS`` in ``/proc/PID/status``) and the disk
overlay's allocated bytes. Last activity is when the daemon last saw the VM active (CPU, disk or network at or
over its idle thresholds, or a user reaching it: see corral.idle), or for a VM it never measured, the time of its
newest event.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, Field

from corral.errors import InvalidInput
from corral.vm.labels import check_key

BY_RE = re.compile(r"^(owner|project|label:.+)$")


class ReportRow(BaseModel):
    name: str
    owner: str
    project: str
    labels: dict[str, str] = Field(default_factory=dict)
    state: str
    created_at: float
    age: float = Field(description="seconds since the VM was created")
    last_activity: float | None = Field(default=None, description="when the VM was last active, as the daemon "
                                        "measured it (else the time of its newest event)")
    idle_suspended: bool = Field(default=False, description="suspended by idle control")
    vcpus: int
    memory_mib: int
    disk_bytes: int | None = Field(default=None, description="root disk virtual size")
    disk_used_bytes: int | None = Field(default=None, description="bytes the disk overlay takes on the host")
    running: bool = False
    uptime: float | None = None
    rss_bytes: int | None = Field(default=None, description="resident memory of the QEMU process")


class ReportTotals(BaseModel):
    vms: int = 0
    running: int = 0
    vcpus: int = 0
    memory_mib: int = 0
    disk_bytes: int = 0
    disk_used_bytes: int = 0
    rss_bytes: int = 0


class ReportGroup(BaseModel):
    key: str | None = Field(description="the owner, project or label value; null: VMs without the label")
    vms: list[ReportRow]
    totals: ReportTotals


class Report(BaseModel):
    by: str
    generated_at: float
    groups: list[ReportGroup]
    totals: ReportTotals


def check_by(by: str) -> str:
    """``owner``, ``project`` or ``label:KEY``; InvalidInput otherwise."""
    if not BY_RE.match(by):
        raise InvalidInput(f"cannot group by {by!r}: use owner, project or label:KEY")
    if by.startswith("label:"):
        try:
            check_key(by.removeprefix("label:"))
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
    return by


def group_key(row: ReportRow, by: str) -> str | None:
    if by == "owner":
        return row.owner
    if by == "project":
        return row.project
    return row.labels.get(by.removeprefix("label:"))


def totals(rows: Iterable[ReportRow]) -> ReportTotals:
    t = ReportTotals()
    for r in rows:
        t.vms += 1
        t.running += r.running
        t.vcpus += r.vcpus
        t.memory_mib += r.memory_mib
        t.disk_bytes += r.disk_bytes or 0
        t.disk_used_bytes += r.disk_used_bytes or 0
        t.rss_bytes += r.rss_bytes or 0
    return t


def build(rows: list[ReportRow], by: str, now: float) -> Report:
    """Group ``rows`` (sorted by key; VMs without the label last), with totals per group and overall."""
    check_by(by)
    groups: dict[str | None, list[ReportRow]] = {}
    for r in sorted(rows, key=lambda r: r.name):
        groups.setdefault(group_key(r, by), []).append(r)
    ordered = sorted(groups, key=lambda k: (k is None, k or ""))
    return Report(by=by, generated_at=now, totals=totals(rows),
                  groups=[ReportGroup(key=k, vms=groups[k], totals=totals(groups[k])) for k in ordered])


def rss_bytes(pid: int, proc: Path = Path("/proc")) -> int | None:
    """Resident memory of ``pid`` (VmRSS), None if it is gone."""
    try:
        for line in (proc / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def allocated_bytes(path: Path) -> int | None:
    try:
        return path.stat().st_blocks * 512
    except OSError:
        return None
