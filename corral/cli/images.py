"""`corral images ls|build|import|rm`."""

from __future__ import annotations

from datetime import datetime

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from corral.api.models import BuildEvent
from corral.cli.common import EXIT_INVALID, api, fail, out, print_json
from corral.client import Client
from corral.images.artifacts import Manifest
from corral.vm.arch import Arch
from corral.vm.sizes import format_size

app = typer.Typer(help="Guest images: built from Debian's archive, kept read-only in the store.", no_args_is_help=True)


ARCH_HELP = "guest architecture: x86_64, aarch64 or riscv64 (default: the host's)"


def parse_arch(value: str | None) -> Arch | None:
    """``--arch``'s value, or a one-line error naming the architectures there are."""
    if value is None:
        return None
    try:
        return Arch(value)
    except ValueError:
        fail(f"--arch {value!r} is not an architecture Corral runs: use one of "
             f"{', '.join(a.value for a in Arch)}", EXIT_INVALID)


def build_with_progress(client: Client, name: str, refresh: bool = False, arch: Arch | None = None) -> Manifest:
    """Build (or fetch from the cache) an image, showing the builder's stages and bytes."""
    with Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                  TimeElapsedColumn(), console=out, transient=True) as bar:
        task = bar.add_task(f"image {name}", total=None)

        def progress(ev: BuildEvent) -> None:
            bar.update(task, description=f"{name}: {ev.stage}", completed=ev.done, total=ev.total)

        return client.build_image(name, refresh=refresh, progress=progress, arch=arch)


OCI_HELP = ("an OCI image: an OCI layout DIR[:TAG], a `docker save`/`podman save` tarball, or a registry's "
            "docker://NAME[:TAG] (through skopeo)")


def absolute_oci_ref(ref: str) -> str:
    """An OCI reference with its local path made absolute (the daemon reads the path; it has another cwd)."""
    from pathlib import Path

    if ref.startswith("docker://"):
        return ref
    head, sep, tag = ref.rpartition(":")
    if not Path(ref).exists() and sep and "/" not in tag and Path(head).expanduser().is_dir():
        return f"{Path(head).expanduser().absolute()}:{tag}"
    p = Path(ref).expanduser()
    return str(p.absolute()) if p.exists() or ref.startswith((".", "/", "~")) else ref


def import_oci_with_progress(client: Client, ref: str, name: str | None) -> Manifest:
    """Import an OCI image (or find it imported already), showing skopeo's, umoci's and the disk's stages."""
    with Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                  TimeElapsedColumn(), console=out, transient=True) as bar:
        task = bar.add_task("OCI image", total=None)

        def progress(ev: BuildEvent) -> None:
            bar.update(task, description=ev.stage, completed=ev.done, total=ev.total)

        return client.import_oci(absolute_oci_ref(ref), name, progress)


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
          refresh: bool = typer.Option(False, help="rebuild even if a built copy is cached"),
          arch: str | None = typer.Option(None, "--arch", help=ARCH_HELP + "; tiny has all three")) -> None:
    """Build an image from Debian's package archive (verified) and put it in the store."""
    target = parse_arch(arch)
    with api() as client:
        m = build_with_progress(client, name, refresh, target)
    arch_note = f" ({m.arch})" if m.arch != Arch.X86_64 else ""
    out.print(f"image [bold]{m.name}[/]{arch_note} ready: {format_size(m.size)}, {len(m.packages)} packages, "
              f"disk sha256 {m.disk_sha256[:12]}")


@app.command("import")
def import_(
    source: str | None = typer.Argument(None, help="a qcow2 or raw image: FILE, http(s) URL, or a catalog name "
                                                  "(debian-12-cloud, debian-13-cloud, ubuntu-24.04-cloud)"),
    oci: str | None = typer.Option(None, "--oci", help=OCI_HELP + "; it runs as a VM under Corral's kernel, its "
                                   "entrypoint the main process (docs/explanation/oci.md)"),
    name: str | None = typer.Option(None, "--name", "-n", help="image name (default: the catalog name)"),
    sha256: str | None = typer.Option(None, "--sha256", help="expected SHA256 of the file or download"),
    format: str | None = typer.Option(None, "--format", help="qcow2 or raw (default: from the name and header)"),
    uefi: bool = typer.Option(False, "--uefi", help="boot with OVMF (UEFI) instead of SeaBIOS"),
) -> None:
    """Import a disk image from outside (checked, then converted to qcow2); it boots from its own disk.

    Imported images need not have a guest agent: launch them with `--no-wait`, and give them cloud-init data
    (`--cloud-init`, `--ssh-key`) if they have cloud-init.
    """
    from pathlib import Path

    from corral.cli.common import EXIT_INVALID, EXIT_NOT_FOUND, fail

    if (source is None) == (oci is None):
        fail("give a disk image SOURCE or --oci REF (one of them)", EXIT_INVALID)
    if oci is not None:
        if sha256 is not None or format is not None or uefi:
            fail("--sha256, --format and --uefi are for disk images, not --oci (its blobs are checked against their "
                 "digests)", EXIT_INVALID)
        with api() as client:
            m = import_oci_with_progress(client, oci, name)
        argv = " ".join(m.oci.argv()) if m.oci else ""
        out.print(f"image [bold]{m.name}[/] imported from OCI image sha256:{m.source_sha256[:12]}: "
                  f"{format_size(m.disk_virtual_size)} disk; runs {argv or '(nothing: give -- ARGS at launch)'}",
                  highlight=False, soft_wrap=True)
        return
    assert source is not None
    if source.startswith("json:") or Path(source).name.startswith("json:"):
        fail(f"image file name {source!r} starts with 'json:', which QEMU reads as options: refused", EXIT_INVALID)
    if not source.startswith(("http://", "https://")) and ("/" in source or Path(source).exists()):
        path = Path(source).expanduser().absolute()
        if not path.is_file():
            fail(f"no image file {source}", EXIT_NOT_FOUND)
        source = str(path)
    with api() as client, Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                                   DownloadColumn(), TimeElapsedColumn(), console=out, transient=True) as bar:
        task = bar.add_task("import", total=None)

        def progress(ev: BuildEvent) -> None:
            bar.update(task, description=ev.stage, completed=ev.done, total=ev.total)

        m = client.import_image(source, name, sha256, format, "uefi" if uefi else "bios", progress)
    out.print(f"image [bold]{m.name}[/] imported: {format_size(m.disk_virtual_size)} disk, "
              f"sha256 {m.source_sha256[:12]} (boots from its disk; no guest agent needed: launch --no-wait)")


@app.command("rm")
def rm(name: str, arch: str | None = typer.Option(None, "--arch", help=ARCH_HELP)) -> None:
    """Remove an image (refused while a VM uses it)."""
    target = parse_arch(arch)
    with api() as client:
        client.remove_image(name, target)
    out.print(f"image {name}{f' ({target})' if target else ''} removed")
