"""`corral snapshot` (create, ls, revert, rm) and `corral clone`: thin over the API (corral.storage does the work)."""

from __future__ import annotations

import time
from datetime import datetime

import typer
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn

from corral.api.models import SnapshotInfo
from corral.cli.common import api, out, print_json
from corral.vm.sizes import format_size

app = typer.Typer(help="Snapshots of a VM: create, ls (a tree), revert, rm.", no_args_is_help=True)


def tree_lines(snaps: list[SnapshotInfo]) -> list[str]:
    """The snapshot tree, one line per snapshot, children indented under their parent in the order taken; the
    VM's present state shown as ``(now)`` under the current snapshot."""
    children: dict[str | None, list[SnapshotInfo]] = {}
    for s in sorted(snaps, key=lambda s: s.created_at):
        children.setdefault(s.parent, []).append(s)

    def label(s: SnapshotInfo) -> str:
        kind = "memory+disk" if s.memory else "disk"
        when = datetime.fromtimestamp(s.created_at).strftime("%Y-%m-%d %H:%M:%S")
        return f"{s.name}  [{kind}, {when}, {format_size(s.size)}]"

    lines: list[str] = []

    current = next((s for s in snaps if s.current), None)

    def walk(parent: str | None, prefix: str) -> None:
        items: list[SnapshotInfo | None] = list(children.get(parent, []))
        if (current.name if current is not None else None) == parent:
            items.append(None)  # where the VM is now
        for i, s in enumerate(items):
            last = i == len(items) - 1
            text = "(now)" if s is None else label(s)
            if parent is None:  # a root: no branch drawn
                lines.append(text)
                below = ""
            else:
                lines.append(prefix + ("└── " if last else "├── ") + text)
                below = prefix + ("    " if last else "│   ")
            if s is not None:
                walk(s.name, below)

    walk(None, "")
    return lines


@app.command("create")
def create(vm: str, name: str,
           memory: bool = typer.Option(False, "--memory", help="the whole machine: memory and devices too"),
           no_freeze: bool = typer.Option(False, "--no-freeze", help="do not freeze the guest's file systems")) -> None:
    """Snapshot a VM, running or stopped: its disk, or with --memory the whole running machine."""
    with api() as client, out.status(f"snapshotting {vm}..."):
        s = client.create_snapshot(vm, name, memory=memory, freeze=not no_freeze)
    out.print(f"{vm}: snapshot '{s.name}' taken ({s.note})", highlight=False)


@app.command("ls")
def ls(vm: str, json_: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """The VM's snapshots as a tree; (now) marks where its present state descends from."""
    with api() as client:
        snaps = client.list_snapshots(vm)
    if json_:
        print_json(snaps)
        return
    if not snaps:
        out.print(f"{vm} has no snapshots (`corral snapshot create {vm} NAME`)", highlight=False)
        return
    for line in tree_lines(snaps):
        out.print(line, highlight=False, markup=False)


@app.command("revert")
def revert(vm: str, name: str,
           force: bool = typer.Option(False, "--force", help="revert a running VM (its state now is lost)")) -> None:
    """Put the VM back to a snapshot: its disk, and for a whole-machine snapshot its running state."""
    with api() as client, out.status(f"reverting {vm} to {name}..."):
        info = client.revert_snapshot(vm, name, force=force)
    out.print(f"{vm}: reverted to '{name}' ({info.state})", highlight=False)


@app.command("rm")
def rm(vm: str, name: str) -> None:
    """Delete a snapshot; its data is merged into what depends on it, so nothing else changes."""
    with api() as client, out.status(f"deleting snapshot {name} of {vm}..."):
        client.delete_snapshot(vm, name)
    out.print(f"{vm}: snapshot '{name}' deleted", highlight=False)


def register(root: typer.Typer) -> None:
    @root.command("clone")
    def clone(source: str, name: str,
              full: bool = typer.Option(False, "--full", help="an independent copy (default: a linked clone)"),
              snapshot: str | None = typer.Option(None, "--snapshot", help="clone the source as it was then"),
              start: bool = typer.Option(False, "--start", help="start the clone and wait until it is ready")) -> None:
        """Clone a VM, running or stopped, into a new VM with its own identity (MAC, machine-id, hostname, keys)."""
        t0 = time.monotonic()
        with api() as client:
            with Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
                          TimeElapsedColumn(), console=out, transient=True) as bar:
                task = bar.add_task(f"cloning {source} -> {name}", total=100.0)
                ev = client.clone_vm(source, name, full=full, snapshot=snapshot,
                                     progress=lambda p: bar.update(task, completed=p))
            kind = "full" if full else "linked"
            out.print(f"{name}: {kind} clone of {source} made in {ev.seconds or time.monotonic() - t0:.2f}s",
                      highlight=False)
            if start:
                with out.status(f"starting {name}..."):
                    client.start_vm(name)
                    client.wait_ready(name, timeout=600.0)
                out.print(f"{name}: running", highlight=False)
