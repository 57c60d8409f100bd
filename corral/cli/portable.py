"""`corral export` and `corral import`: a VM to one archive and back, thin over the API (corral.portable)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from corral.cli.common import api, out
from corral.vm.sizes import format_size


def _bar() -> Progress:
    return Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), TimeElapsedColumn(), console=out, transient=True)


def register(root: typer.Typer) -> None:
    @root.command("export")
    def export(vm: str, file: Path,
               state: bool = typer.Option(False, "--state", help="include the machine state (running, paused or "
                                          "suspended VM): the import resumes where it was")) -> None:
        """Write a VM to one archive: spec, disk layers, snapshot tree, its image, and with --state its memory."""
        with api() as client, _bar() as bar:
            task = bar.add_task(f"exporting {vm}", total=None)
            ev = client.export_vm(vm, str(file.absolute()), state=state,
                                  progress=lambda d, t: bar.update(task, completed=d, total=t))
        out.print(f"{vm}: exported to {file} ({format_size(ev.size or 0)}: {ev.message}) in {ev.seconds or 0:.1f}s",
                  highlight=False)

    @root.command("import")
    def import_(file: Path, name: str | None = typer.Option(None, "--name", help="the new VM's name")) -> None:
        """Recreate a VM from an export archive (checked whole before anything is created), snapshots and all."""
        with api() as client, _bar() as bar:
            task = bar.add_task(f"importing {file.name}", total=None)
            ev = client.import_vm(str(file.absolute()), name=name,
                                  progress=lambda d, t: bar.update(task, completed=d, total=t))
        assert ev.vm is not None
        out.print(f"{ev.vm.name}: imported from {file} ({ev.vm.state}) in {ev.seconds or 0:.1f}s", highlight=False)
