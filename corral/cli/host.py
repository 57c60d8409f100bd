"""`corral host`: the hosts of this host's cluster: ls, show, drain, undrain (docs/explanation/cluster.md)."""

from __future__ import annotations

import time

import typer
from rich.table import Table

from corral.cli.common import EXIT_ENGINE, api, out, print_json
from corral.vm.sizes import format_size

app = typer.Typer(help="The cluster's hosts: ls, show, drain, undrain.", no_args_is_help=True)


def _age(t: float) -> str:
    s = max(0.0, time.time() - t)
    return f"{s:.0f}s ago" if s < 120 else f"{s / 60:.0f}m ago"


@app.command("ls")
def ls(json_: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Every host of the cluster: address, state (ready, draining, down), vCPUs and memory allocated/allowed, VMs,
    versions, accelerator."""
    with api() as client:
        found = client.hosts()
    if json_:
        print_json(found)
        return
    t = Table(box=None)
    for col in ("NAME", "ADDRESS", "STATE", "VCPUS", "MEMORY", "VMS", "CORRAL", "QEMU", "ACCEL", "SEEN"):
        t.add_column(col)
    for h in found:
        t.add_row(h.name, h.address, h.state.value, f"{h.vcpus_allocated}/{h.cpu_limit}",
                  f"{format_size(h.memory_allocated_mib << 20)}/{format_size(h.memory_limit_mib << 20)}",
                  str(h.vms), h.corral_version, h.qemu_version, h.accelerator or "-", _age(h.updated_at))
    out.print(t)


@app.command("show")
def show_host(name: str, json_: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    with api() as client:
        h = client.host(name)
    if json_:
        print_json(h)
        return
    for k, v in h.model_dump(exclude={"cert_pem"}).items():
        out.print(f"{k}: {v.value if hasattr(v, 'value') else v}", highlight=False)


@app.command("drain")
def drain(name: str) -> None:
    """The host takes no new VMs (placement skips it) and its running VMs move live to the others; stopped VMs stay
    with their disks. Exits non-zero if a VM could not move (it runs on where it was)."""
    with api() as client, out.status(f"draining host {name}: moving its running VMs...", spinner="dots"):
        r = client.drain(name)
    out.print(f"host {r.host}: draining; moved {len(r.moved)} VMs" + (f" ({', '.join(r.moved)})" if r.moved else "")
              + (f"; left {len(r.stayed)} not running ({', '.join(r.stayed)})" if r.stayed else ""), highlight=False)
    for vm, why in r.failed.items():
        out.print(f"  {vm} did not move: {why}", highlight=False)
    if r.failed:
        raise typer.Exit(EXIT_ENGINE)


@app.command("undrain")
def undrain(name: str) -> None:
    """The host takes new VMs again."""
    with api() as client:
        h = client.undrain(name)
    out.print(f"host {h.name}: {h.state.value}", highlight=False)
