"""`corral quota`: limits per project and owner; `corral capacity`: the host's capacity and its use."""

from __future__ import annotations

import typer
from rich.table import Table

from corral.cli.common import EXIT_INVALID, api, fail, out, print_json
from corral.vm.sizes import format_size, parse_size

app = typer.Typer(help="Limits per project and owner on VMs, vCPUs, memory and disk: set, ls, rm.",
                  no_args_is_help=True)


def _scope(project: str | None, owner: str | None) -> tuple[str, str]:
    if (project is None) == (owner is None):
        fail("give exactly one of --project NAME or --owner NAME", EXIT_INVALID)
    return ("project", project) if project is not None else ("owner", owner or "")


def _size(text: str | None, what: str, unit: str) -> int | None:
    if text is None:
        return None
    try:
        return parse_size(text, default_unit=unit)
    except ValueError as exc:
        fail(f"--{what}: {exc}", EXIT_INVALID)


@app.command("set")
def set_(
    project: str | None = typer.Option(None, "--project", help="the project the limits apply to"),
    owner: str | None = typer.Option(None, "--owner", help="the owner the limits apply to (across projects)"),
    vms: int | None = typer.Option(None, "--vms", min=0, help="VMs defined"),
    vcpus: int | None = typer.Option(None, "--vcpus", min=0, help="vCPUs of its VMs together"),
    memory: str | None = typer.Option(None, "--memory", help="memory of its VMs together, e.g. 32G (default M)"),
    disk: str | None = typer.Option(None, "--disk", help="root disk sizes together, e.g. 500G (default G)"),
) -> None:
    """Set (or change) limits; a limit not given keeps its value. Every defined VM counts, running or not."""
    scope, name = _scope(project, owner)
    limits: dict[str, int | None] = {}
    if vms is not None:
        limits["vms"] = vms
    if vcpus is not None:
        limits["vcpus"] = vcpus
    if (mem := _size(memory, "memory", "M")) is not None:
        limits["memory"] = mem >> 20
    if (d := _size(disk, "disk", "G")) is not None:
        limits["disk"] = d
    if not limits:
        fail("give at least one of --vms, --vcpus, --memory, --disk", EXIT_INVALID)
    with api() as client:
        q = client.set_quota(scope, name, limits)
    out.print(f"quota for {scope} {name} set: {_limits(q.vms, q.vcpus, q.memory, q.disk)}", highlight=False)


def _limits(vms: int | None, vcpus: int | None, memory: int | None, disk: int | None) -> str:
    parts = [f"{vms} VMs" if vms is not None else "", f"{vcpus} vCPUs" if vcpus is not None else "",
             f"{format_size(memory << 20)} memory" if memory is not None else "",
             f"{format_size(disk)} disk" if disk is not None else ""]
    return ", ".join(p for p in parts if p) or "no limits"


def _cell(used: int, limit: int | None, fmt: str = "") -> str:
    f = (lambda n: format_size(n << 20)) if fmt == "mib" else format_size if fmt == "bytes" else str
    return f"{f(used)}/{f(limit) if limit is not None else '-'}"


@app.command("ls")
def ls(json_: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """List quotas with what each project or owner uses now (used/limit)."""
    with api() as client:
        quotas = client.list_quotas()
    if json_:
        print_json(quotas)
        return
    t = Table(box=None)
    for col in ("SCOPE", "NAME", "VMS", "VCPUS", "MEMORY", "DISK"):
        t.add_column(col)
    for q in quotas:
        t.add_row(q.scope, q.name, _cell(q.used.vms, q.vms), _cell(q.used.vcpus, q.vcpus),
                  _cell(q.used.memory, q.memory, "mib"), _cell(q.used.disk, q.disk, "bytes"))
    out.print(t)


@app.command("rm")
def rm(
    project: str | None = typer.Option(None, "--project", help="the project whose quota to remove"),
    owner: str | None = typer.Option(None, "--owner", help="the owner whose quota to remove"),
) -> None:
    """Remove a project's or owner's quota (no limits then)."""
    scope, name = _scope(project, owner)
    with api() as client:
        client.delete_quota(scope, name)
    out.print(f"quota for {scope} {name} removed", highlight=False)


def capacity(json_: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """The host's CPUs, memory and disk; what VMs are given; what is left under the overcommit settings; what
    QEMU really uses."""
    with api() as client:
        c = client.capacity()
    if json_:
        print_json(c)
        return
    t = Table(box=None)
    for col in ("", "HOST", "LIMIT", "RUNNING", "DEFINED", "AVAILABLE", "USED"):
        t.add_column(col)
    t.add_row("vcpus", str(c.host.vcpus), f"{c.limit.vcpus} (x{c.cpu_overcommit:g})", str(c.allocated_running.vcpus),
              str(c.allocated_defined.vcpus), str(c.available.vcpus), "-")
    t.add_row("memory", format_size(c.host.memory << 20), f"{format_size(c.limit.memory << 20)} "
              f"(x{c.memory_overcommit:g})", format_size(c.allocated_running.memory << 20),
              format_size(c.allocated_defined.memory << 20), format_size(c.available.memory << 20),
              format_size(c.used_memory << 20) + " RSS")
    t.add_row("disk", format_size(c.host.disk), format_size(c.limit.disk), format_size(c.allocated_running.disk),
              format_size(c.allocated_defined.disk), format_size(c.available.disk) + " free",
              format_size(c.used_disk))
    out.print(t)
    out.print(f"{len(c.running)} of {c.vms} VMs running", highlight=False)


def register(root: typer.Typer) -> None:
    root.command("capacity")(capacity)
