"""`corral mount`: shared folders of a VM (virtio-9p), changed at once on a running VM and kept for its next start."""

from __future__ import annotations

import os

import typer
from pydantic import ValidationError
from rich.table import Table

from corral.cli.common import EXIT_INVALID, api, fail, out, print_json
from corral.vm.spec import Mount

app = typer.Typer(help="Shared folders of a VM: add, rm, ls (read-only unless :rw).", no_args_is_help=True)

MOUNT_HELP = ("share a host directory: HOST_DIR[:GUEST_DIR][:ro|rw], read-only by default; GUEST_DIR defaults to "
              "the host path (repeatable, at most 4)")


def parse_mount(text: str) -> Mount:
    """HOST[:GUEST][:ro|rw] with the host directory made absolute here (~ and relative to the current directory:
    the daemon does not know where the user is); InvalidInput-style exit on a bad one."""
    head, sep, rest = text.partition(":")
    host = os.path.abspath(os.path.expanduser(head)) if head else head
    try:
        return Mount.parse(host + sep + rest)
    except (ValueError, ValidationError) as exc:
        msg = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
        fail(f"--mount {text}: {str(msg).removeprefix('Value error, ')}", EXIT_INVALID)


@app.command("add")
def add(vm: str, mount: str = typer.Argument(..., metavar="HOST_DIR[:GUEST_DIR][:ro|rw]")) -> None:
    """Share a host directory with the VM: mounted in the guest at once if it runs, else at its next start."""
    m = parse_mount(mount)
    with api() as client, out.status(f"[bold]{vm}[/]: sharing {m.host}...", spinner="dots"):
        mounts = client.add_mount(vm, m)
    now = next((x for x in mounts if x.guest == m.guest), None)
    where = "mounted in the guest" if now and now.state == "mounted" else (
        "at its next start" if now and now.state == "stopped" else f"{now.state if now else 'added'}")
    out.print(f"{vm}: {now.host if now else m.host} shared at {m.guest} "
              f"({'read-only' if m.read_only else 'read-write'}), {where}", highlight=False)


@app.command("rm")
def rm(vm: str, guest_dir: str = typer.Argument(..., metavar="GUEST_DIR")) -> None:
    """Stop sharing the folder mounted at GUEST_DIR (unmounted in a running guest first)."""
    with api() as client, out.status(f"[bold]{vm}[/]: unmounting {guest_dir}...", spinner="dots"):
        client.remove_mount(vm, guest_dir)
    out.print(f"{vm}: {guest_dir} no longer shared", highlight=False)


@app.command("ls")
def ls(vm: str, json_: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """List a VM's shared folders and whether its guest has them mounted."""
    with api() as client:
        mounts = client.list_mounts(vm)
    if json_:
        print_json(mounts)
        return
    t = Table(box=None)
    for col in ("HOST", "GUEST", "MODE", "STATE"):
        t.add_column(col)
    for m in mounts:
        t.add_row(m.host, m.guest, "ro" if m.read_only else "rw", m.state)
    out.print(t)
