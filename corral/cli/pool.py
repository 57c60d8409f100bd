"""`corral pool`: warm pools of paused VMs from a template (create, ls, resize, rm).

`corral launch NAME --template T` hands out a ready member of T's pool when it has one."""

from __future__ import annotations

import time

import typer
from rich.table import Table

from corral.api.models import PoolInfo
from corral.cli.common import EXIT_ENGINE, api, fail, out, print_json
from corral.client import Client
from corral.vm.sizes import format_size

app = typer.Typer(help="Warm pools: paused VMs from a template, ready to hand out to `corral launch NAME --template "
                  "T` (create, ls, resize, rm).", no_args_is_help=True)

TEMPLATE = typer.Option(..., "--template", "-t", help="the template whose pool it is (`corral template ls`)")


def _wait_filled(client: Client, template: str, timeout: float) -> PoolInfo:
    """Until the pool has as many ready members as its size, showing progress; fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    with out.status("", spinner="dots") as status:
        while True:
            p = client.get_pool(template)
            if p.ready >= p.size and len(p.members) == p.size:
                return p
            if time.monotonic() > deadline:
                fail(f"pool of template {template} has {p.ready} of {p.size} members ready after {timeout:.0f}s"
                     + (f": {p.note}" if p.note else "") + " (it goes on filling; see `corral pool ls`)", EXIT_ENGINE)
            status.update(f"filling the pool of [bold]{template}[/]: {p.ready}/{p.size} ready"
                          + (f" ({p.note})" if p.note else "") + "...")
            time.sleep(0.5)


@app.command("create")
def create(
    template: str = TEMPLATE,
    size: int = typer.Option(..., "--size", "-n", help="how many paused VMs to keep ready (1 to 32)"),
    wait: bool = typer.Option(False, "--wait", help="wait until every member is ready"),
    timeout: float = typer.Option(600.0, "--timeout", help="seconds to wait with --wait"),
) -> None:
    """Keep SIZE paused VMs from TEMPLATE ready: `corral launch NAME --template TEMPLATE` hands one out (ready at
    once) and the pool refills in the background. Members hold their memory and vCPUs against the host."""
    with api() as client:
        p = client.create_pool(template, size)
        if wait:
            p = _wait_filled(client, template, timeout)
    out.print(f"pool of template [bold]{template}[/]: size {p.size}, {p.ready} ready"
              + ("" if wait else " (filling in the background: `corral pool ls`)"), highlight=False)


@app.command("resize")
def resize(
    template: str = TEMPLATE,
    size: int = typer.Option(..., "--size", "-n", help="the new number of members (1 to 32)"),
    wait: bool = typer.Option(False, "--wait", help="wait until every member is ready"),
    timeout: float = typer.Option(600.0, "--timeout", help="seconds to wait with --wait"),
) -> None:
    """Change a pool's size: members are added in the background, or ready ones deleted."""
    with api() as client:
        p = client.resize_pool(template, size)
        if wait:
            p = _wait_filled(client, template, timeout)
    out.print(f"pool of template [bold]{template}[/]: size {p.size}, {p.ready} ready", highlight=False)


@app.command("ls")
def ls(
    json_: bool = typer.Option(False, "--json", help="print JSON"),
    members: bool = typer.Option(False, "--members", "-m", help="list each member VM too"),
) -> None:
    """List warm pools: template, size, members ready and filling, the memory they hold."""
    with api() as client:
        pools = client.list_pools()
    if json_:
        print_json(pools)
        return
    t = Table(box=None)
    for col in ("TEMPLATE", "SIZE", "READY", "FILLING", "MEMORY", "RSS", "NOTE"):
        t.add_column(col)
    for p in pools:
        t.add_row(p.template, str(p.size), str(p.ready), str(p.filling), f"{p.memory}M", format_size(p.rss),
                  p.note or "-")
        if members:
            for m in p.members:
                t.add_row(f"  {m.name}", "", m.condition, m.state or "-", f"{m.memory}M", format_size(m.rss), "")
    out.print(t, highlight=False)


@app.command("rm")
def rm(template: str = TEMPLATE) -> None:
    """Remove a template's pool and delete its members."""
    with api() as client:
        deleted = client.delete_pool(template)
    out.print(f"pool of template {template} removed ({len(deleted)} member(s) deleted)", highlight=False)
