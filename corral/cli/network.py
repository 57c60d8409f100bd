"""`corral network`: private networks between VMs (no root needed), and bridged ones (root)."""

from __future__ import annotations

import typer
from rich.table import Table

from corral.cli.common import api, out, print_json

app = typer.Typer(help="Private networks between VMs: create, ls, rm.", no_args_is_help=True)


@app.command("create")
def create(
    name: str,
    subnet: str | None = typer.Option(None, "--subnet", help="IPv4 subnet, e.g. 10.1.2.0/24 (default: a free /24)"),
    bridge: bool = typer.Option(False, "--bridge", help="a Linux bridge with tap devices (root only)"),
) -> None:
    """Create a network; attach VMs with `corral launch --network NAME`."""
    with api() as client:
        n = client.create_network(name, subnet, bridge)
    out.print(f"network {n.name} created ({n.subnet}{', bridge ' + n.bridge if n.bridge else ''})", highlight=False)


@app.command("ls")
def ls(json_: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """List networks with their VMs and addresses."""
    with api() as client:
        nets = client.list_networks()
    if json_:
        print_json(nets)
        return
    t = Table(box=None)
    for col in ("NAME", "KIND", "SUBNET", "VMS"):
        t.add_column(col)
    for n in nets:
        addr = {m.vm: m.address for m in n.members}
        vms = ", ".join(f"{v} ({addr[v]})" if v in addr else v for v in n.vms) or "-"
        t.add_row(n.name, n.kind, n.subnet, vms)
    out.print(t)


@app.command("rm")
def rm(name: str) -> None:
    """Remove a network (refused while a VM uses it)."""
    with api() as client:
        client.delete_network(name)
    out.print(f"network {name} removed")
