"""`corral disk`: extra disks of a VM, changed at once on a running VM (hot-plug) and kept for its next start."""

from __future__ import annotations

from datetime import datetime

import typer
from rich.table import Table

from corral.cli.common import EXIT_INVALID, api, err, fail, out, print_json
from corral.storage import throttle
from corral.vm.sizes import format_size

app = typer.Typer(help="Extra disks of a VM: add, ls, rm, attach, detach, resize, throttle, repair.",
                  no_args_is_help=True)

IOPS = typer.Option(None, "--iops", help="I/O operations per second, reads and writes together (0: no limit)")
READ_IOPS = typer.Option(None, "--read-iops", help="read operations per second")
WRITE_IOPS = typer.Option(None, "--write-iops", help="write operations per second")
BPS = typer.Option(None, "--bps", help="bytes per second, reads and writes together, e.g. 10M (0: no limit)")
READ_BPS = typer.Option(None, "--read-bps", help="bytes read per second, e.g. 10M")
WRITE_BPS = typer.Option(None, "--write-bps", help="bytes written per second, e.g. 1M")


def _limits(iops: int | None, read_iops: int | None, write_iops: int | None, bps: str | None,
            read_bps: str | None, write_bps: str | None) -> dict[str, int | str | None]:
    return {"iops": iops, "read_iops": read_iops, "write_iops": write_iops, "bps": bps, "read_bps": read_bps,
            "write_bps": write_bps}


@app.command("add")
def add(vm: str, name: str, size: str = typer.Option(..., "--size", "-s", help="virtual size, e.g. 10G"),
        iops: int | None = IOPS, read_iops: int | None = READ_IOPS, write_iops: int | None = WRITE_IOPS,
        bps: str | None = BPS, read_bps: str | None = READ_BPS, write_bps: str | None = WRITE_BPS) -> None:
    """Create a disk and attach it (hot-plugged if the VM runs; the guest sees serial NAME)."""
    with api() as client:
        d = client.add_disk(vm, name, size, **_limits(iops, read_iops, write_iops, bps, read_bps, write_bps))
    out.print(f"{vm}: disk {d.name} added ({format_size(d.size)}, {d.file}); in the guest: "
              f"/dev/disk/by-id/virtio-{d.serial}", highlight=False)


@app.command("ls")
def ls(vm: str, json_: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """List a VM's extra disks."""
    with api() as client:
        disks = client.list_disks(vm)
    if json_:
        print_json(disks)
        return
    t = Table(box=None)
    for col in ("NAME", "SIZE", "ATTACHED", "LIMITS", "CREATED", "FILE"):
        t.add_column(col)
    for d in disks:
        t.add_row(d.name, format_size(d.size), "yes" if d.attached else "no", throttle.describe(d.limits),
                  datetime.fromtimestamp(d.created_at).strftime("%Y-%m-%d %H:%M"), d.file)
    out.print(t)


@app.command("rm")
def rm(vm: str, name: str,
       force: bool = typer.Option(False, "--force", "-f", help="also from a running VM (hot-unplugged first)")) -> None:
    """Delete a disk and its file (detach it from a running VM first, or --force)."""
    with api() as client, out.status(f"[bold]{vm}[/]: removing disk {name}...", spinner="dots"):
        client.remove_disk(vm, name, force=force)
    out.print(f"{vm}: disk {name} removed", highlight=False)


@app.command("detach")
def detach(vm: str, name: str) -> None:
    """Take a disk out of the VM, keeping its file (a running guest must release it)."""
    with api() as client, out.status(f"[bold]{vm}[/]: waiting for the guest to release disk {name}...",
                                     spinner="dots"):
        client.detach_disk(vm, name)
    out.print(f"{vm}: disk {name} detached", highlight=False)


@app.command("attach")
def attach(vm: str, name: str) -> None:
    """Put a detached disk back, with its data."""
    with api() as client:
        client.attach_disk(vm, name)
    out.print(f"{vm}: disk {name} attached", highlight=False)


@app.command("resize")
def resize(vm: str, name: str, size: str = typer.Argument(..., help="the new size, e.g. 20G (grow only)")) -> None:
    """Grow a disk (online if the VM runs: the guest sees the new size; grow its file system in the guest)."""
    with api() as client:
        d = client.resize_disk(vm, name, size)
    out.print(f"{vm}: disk {name} is now {format_size(d.size)}", highlight=False)


@app.command("throttle")
def throttle_cmd(vm: str, name: str, iops: int | None = IOPS, read_iops: int | None = READ_IOPS,
                 write_iops: int | None = WRITE_IOPS, bps: str | None = BPS, read_bps: str | None = READ_BPS,
                 write_bps: str | None = WRITE_BPS,
                 clear: bool = typer.Option(False, "--clear", help="remove every limit (then apply the ones given)")
                 ) -> None:
    """Set a disk's I/O limits, at once if the VM runs (0 removes one limit)."""
    limits = _limits(iops, read_iops, write_iops, bps, read_bps, write_bps)
    if not clear and all(v is None for v in limits.values()):
        fail("give at least one limit (--iops, --bps, --read-bps, --write-bps...) or --clear", EXIT_INVALID)
    with api() as client:
        d = client.throttle_disk(vm, name, clear=clear, **limits)
    out.print(f"{vm}: disk {name} limits: {throttle.describe(d.limits)}", highlight=False)


@app.command("repair")
def repair(vm: str, name: str | None = typer.Argument(None, help="one extra disk (default: every image of the VM)"),
           yes: bool = typer.Option(False, "--yes", "-y", help="do not ask for confirmation")) -> None:
    """Repair a stopped VM's images with `qemu-img check -r all` (may drop damaged data: copy them first)."""
    if not yes:
        err.print(f"[bold yellow]warning:[/] repairing rewrites the image metadata of '{vm}' and may drop data "
                  "that the damage made unreadable; copy the image files somewhere safe first.", highlight=False)
        if not typer.confirm("repair now?", default=False):
            raise typer.Exit(1)
    with api() as client, out.status(f"[bold]{vm}[/]: checking and repairing...", spinner="dots"):
        results = client.repair_disks(vm, name)
    bad = False
    for r in results:
        if r.error or r.corruptions:
            bad = True
            out.print(f"{r.file}: still damaged ({r.error or f'{r.corruptions} errors'})", highlight=False)
        else:
            fixed = f"{r.corruptions_fixed} errors and {r.leaks_fixed} leaks repaired" \
                if r.corruptions_fixed or r.leaks_fixed else "clean"
            out.print(f"{r.file}: {fixed}", highlight=False)
    if bad:
        fail(f"some images of '{vm}' could not be repaired: restore them from a backup")
