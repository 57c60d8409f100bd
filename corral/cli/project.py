"""`corral project`: per-project settings: a default TTL, so that nothing lives forever by accident."""

from __future__ import annotations

import typer
from rich.table import Table

from corral.cli.common import EXIT_INVALID, api, fail, out, print_json
from corral.vm.expiry import ExpiryAction, format_duration, parse_duration

app = typer.Typer(help="Projects: default TTL and expiry action of new VMs (set, ls).", no_args_is_help=True)


@app.command("set")
def set_(
    name: str = typer.Argument(..., help="project name"),
    default_ttl: str | None = typer.Option(None, "--default-ttl", help="TTL given to new VMs of the project that "
                                           "have none of their own, e.g. 8h or 7d; 'none' removes it"),
    on_expiry: ExpiryAction = typer.Option(ExpiryAction.STOP, "--on-expiry", help="with the default TTL: stop, "
                                           "suspend (to disk) or delete (with its disks; there is no final backup: "
                                           "Corral has no backups yet)"),
) -> None:
    """Set a project's default TTL. It applies to VMs created from now on, not to existing ones."""
    ttl: float | None = None
    if default_ttl is not None and default_ttl.lower() != "none":
        try:
            ttl = parse_duration(default_ttl)
        except ValueError as exc:
            fail(f"--default-ttl: {exc}", EXIT_INVALID)
    with api() as client:
        p = client.set_project(name, ttl, on_expiry)
    what = f"default TTL {format_duration(p.default_ttl)}, then {p.on_expiry.value}" if p.default_ttl else \
        "no default TTL"
    out.print(f"project {p.name}: {what}", highlight=False)


@app.command("ls")
def ls(json_: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """List projects (those with settings or VMs): default TTL, expiry action, number of VMs."""
    with api() as client:
        projects = client.list_projects()
    if json_:
        print_json(projects)
        return
    t = Table(box=None)
    for col in ("NAME", "DEFAULT TTL", "ON EXPIRY", "VMS"):
        t.add_column(col)
    for p in projects:
        t.add_row(p.name, format_duration(p.default_ttl) if p.default_ttl else "-",
                  p.on_expiry.value if p.default_ttl else "-", str(p.vms))
    out.print(t, highlight=False)
