"""`corral template`: capture a running VM as a template (create), list (ls) and remove (rm) templates.

`corral launch NAME --template T` starts a VM from one."""

from __future__ import annotations

import time
from datetime import datetime

import typer
from rich.table import Table

from corral.cli.common import api, out, print_json
from corral.vm.sizes import format_size

app = typer.Typer(help="Templates: running VMs captured to launch new VMs from in a fraction of a boot "
                  "(create, ls, rm).", no_args_is_help=True)


@app.command("create")
def create(
    name: str = typer.Argument(..., help="template name"),
    source: str = typer.Option(..., "--from", help="the running, ready VM to capture (it keeps running)"),
) -> None:
    """Capture a running VM's memory, devices and disk as a template. The VM pauses for a moment, then runs on."""
    t0 = time.monotonic()
    with api() as client, out.status(f"capturing [bold]{source}[/] as template [bold]{name}[/]...",
                                     spinner="dots"):
        t = client.create_template(name, source)
    out.print(f"template [bold]{t.name}[/] created from {t.source} in {time.monotonic() - t0:.1f}s "
              f"({t.image}, {t.vcpus} vCPU, {t.memory}M, {format_size(t.size)} on disk): "
              f"`corral launch NAME --template {t.name}`", highlight=False)


@app.command("ls")
def ls(json_: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """List templates: what a VM launched from one gets, its size on disk, and the VMs made from it."""
    with api() as client:
        templates = client.list_templates()
    if json_:
        print_json(templates)
        return
    t = Table(box=None)
    for col in ("NAME", "SOURCE", "IMAGE", "CPUS", "MEMORY", "SIZE", "VMS", "CREATED"):
        t.add_column(col)
    for x in templates:
        t.add_row(x.name, x.source, x.image, str(x.vcpus), f"{x.memory}M", format_size(x.size), str(len(x.vms)),
                  datetime.fromtimestamp(x.created_at).strftime("%Y-%m-%d %H:%M"))
    out.print(t, highlight=False)


@app.command("rm")
def rm(name: str = typer.Argument(..., help="template name")) -> None:
    """Remove a template and its files; refused while VMs made from it exist."""
    with api() as client:
        client.delete_template(name)
    out.print(f"template {name} removed", highlight=False)
