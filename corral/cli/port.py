"""`corral port`: host port forwards of a VM, changed at once while it runs (no restart) and kept in its spec."""

from __future__ import annotations

import typer
from rich.table import Table

from corral.cli.common import api, out, print_json

app = typer.Typer(help="Forward host ports to a VM: add, rm, ls.", no_args_is_help=True)


@app.command("add")
def add(vm: str, forward: str = typer.Argument(..., help="\\[ADDR:]HOST:GUEST\\[/udp], e.g. 8080:80")) -> None:
    """Forward a host port to the VM (at once if it runs; kept across restarts)."""
    with api() as client:
        client.add_port(vm, forward)
    out.print(f"{vm}: forwarding {forward}", highlight=False)


@app.command("rm")
def rm(vm: str, which: str = typer.Argument(..., help="host port (8080, 8080/udp) or the whole forward")) -> None:
    """Stop forwarding a host port."""
    with api() as client:
        client.remove_port(vm, which)
    out.print(f"{vm}: forward {which} removed", highlight=False)


@app.command("ls")
def ls(vm: str, json_: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """List a VM's forwards."""
    with api() as client:
        forwards = client.list_ports(vm)
    if json_:
        print_json(forwards)
        return
    t = Table(box=None)
    for col in ("HOST", "GUEST", "PROTO"):
        t.add_column(col)
    for f in forwards:
        t.add_row(f"{f.host_addr}:{f.host_port}", str(f.guest_port), f.proto)
    out.print(t)
