"""`corral images ls|build|rm`."""

from __future__ import annotations

from datetime import datetime

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from corral.api.models import BuildEvent
from corral.cli.common import api, out, print_json
from corral.client import Client
from corral.images.artifacts import Manifest
from corral.vm.sizes import format_size

app = typer.Typer(help="Guest images: built from Debian's archive, kept read-only in the store.", no_args_is_help=True)


def build_with_progress(client: Client, name: str, refresh: bool = False) -> Manifest:
    """Build (or fetch from the cache) an image, showing the builder's stages and bytes."""
    with Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                  TimeElapsedColumn(), console=out, transient=True) as bar:
        task = bar.add_task(f"image {name}", total=None)

        def progress(ev: BuildEvent) -> None:
            bar.update(task, description=f"{name}: {ev.stage}", completed=ev.done, total=ev.total)

        return client.build_image(name, refresh=refresh, progress=progress)


@app.command("ls")
def ls(json_: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """List the images in the store."""
    with api() as client:
        images = client.list_images()
    if json_:
        print_json(images)
        return
    t = Table(box=None)
    for col in ("NAME", "ARCH", "SIZE", "DISK", "BUILT", "PACKAGES"):
        t.add_column(col)
    for m in images:
        t.add_row(m.name, m.arch, format_size(m.size), format_size(m.disk_virtual_size),
                  datetime.fromisoformat(m.build_date).strftime("%Y-%m-%d %H:%M"), str(len(m.packages)))
    out.print(t)


@app.command()
def build(name: str = typer.Argument(..., help="tiny or debian-12"),
          refresh: bool = typer.Option(False, help="rebuild even if a built copy is cached")) -> None:
    """Build an image from Debian's package archive (verified) and put it in the store."""
    with api() as client:
        m = build_with_progress(client, name, refresh)
    out.print(f"image [bold]{m.name}[/] ready: {format_size(m.size)}, {len(m.packages)} packages, "
              f"disk sha256 {m.disk_sha256[:12]}")


@app.command("rm")
def rm(name: str) -> None:
    """Remove an image (refused while a VM uses it)."""
    with api() as client:
        client.remove_image(name)
    out.print(f"image {name} removed")
