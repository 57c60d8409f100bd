"""`corral project`: per-project settings: a default TTL, so that nothing lives forever by accident."""

from __future__ import annotations

import typer
from rich.table import Table

from corral.cli import idle as idle_cli
from corral.cli.common import EXIT_INVALID, api, fail, out, print_json
from corral.vm.expiry import ExpiryAction, format_duration, parse_duration

app = typer.Typer(help="Projects: default TTL and expiry action of new VMs, default idle policy (set, ls).",
                  no_args_is_help=True)


@app.command("set")
def set_(
    name: str = typer.Argument(..., help="project name"),
    default_ttl: str | None = typer.Option(None, "--default-ttl", help="TTL given to new VMs of the project that "
                                           "have none of their own, e.g. 8h or 7d; 'none' removes it"),
    on_expiry: ExpiryAction | None = typer.Option(None, "--on-expiry", help="with the default TTL: stop "
                                                  "(default), suspend (to disk) or delete (with its disks; a VM "
                                                  "launched with --backup-first gets a final backup first)"),
    idle_suspend: str | None = typer.Option(None, "--idle-suspend", help="default idle policy of the project's VMs "
                                            "that have none of their own: suspend after this long idle, e.g. 1h; "
                                            "'none' removes it. Applies at once, to existing VMs too"),
    idle_cpu: str | None = typer.Option(None, "--idle-cpu", help=idle_cli.CPU_HELP),
    idle_disk: str | None = typer.Option(None, "--idle-disk", help=idle_cli.DISK_HELP),
    idle_net: str | None = typer.Option(None, "--idle-net", help=idle_cli.NET_HELP),
) -> None:
    """Set a project's default TTL (for VMs created from now on) and/or its default idle policy (at once). Without
    --idle-* options only the TTL settings change; with only --idle-* options only the idle policy does."""
    remove_idle = idle_suspend is not None and idle_suspend.strip().lower() == "none"
    idle = None if remove_idle else idle_cli.policy_from_flags(idle_suspend, idle_cpu, idle_disk, idle_net)
    if remove_idle and any(v is not None for v in (idle_cpu, idle_disk, idle_net)):
        fail("--idle-suspend none removes the idle policy: give no thresholds with it", EXIT_INVALID)
    idle_given = idle_suspend is not None
    ttl_given = default_ttl is not None or on_expiry is not None or not idle_given
    ttl: float | None = None
    if default_ttl is not None and default_ttl.lower() != "none":
        try:
            ttl = parse_duration(default_ttl)
        except ValueError as exc:
            fail(f"--default-ttl: {exc}", EXIT_INVALID)
    with api() as client:
        if ttl_given:
            p = client.set_project(name, ttl, on_expiry or ExpiryAction.STOP)
        if idle_given:
            p = client.set_project_idle(name, idle)
    what = f"default TTL {format_duration(p.default_ttl)}, then {p.on_expiry.value}" if p.default_ttl else \
        "no default TTL"
    out.print(f"project {p.name}: {what}; idle policy {p.idle.describe() if p.idle else 'none'}", highlight=False)


@app.command("ls")
def ls(json_: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """List projects (those with settings or VMs): default TTL, expiry action, number of VMs."""
    with api() as client:
        projects = client.list_projects()
    if json_:
        print_json(projects)
        return
    t = Table(box=None)
    for col in ("NAME", "DEFAULT TTL", "ON EXPIRY", "IDLE POLICY", "VMS"):
        t.add_column(col)
    for p in projects:
        t.add_row(p.name, format_duration(p.default_ttl) if p.default_ttl else "-",
                  p.on_expiry.value if p.default_ttl else "-", p.idle.describe() if p.idle else "-", str(p.vms))
    out.print(t, highlight=False)
