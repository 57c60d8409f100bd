"""`corral cp SRC DEST`: copy files and directories between the host and a guest, with a progress bar.

Exactly one side is ``VM:PATH`` (relative guest paths start at /root). The rules are cp's: a destination that is
an existing directory, or ends with ``/``, receives the source under its own name; otherwise the destination is
the new name. Directories are always copied recursively (``-r`` is accepted for habit's sake, not required); a
directory is never merged into an existing one. Permission bits and modification times are kept.

Nothing half-written appears under the destination name, on either side: the host writes ``DEST.corral-tmp-XXXX``
(a file, or a directory the tar is unpacked into) and renames it when complete; the guest does the same (see
``corral.guest.files``). Interrupted, the copy removes its temporaries.

The bytes go over a virtio-serial port the daemon hot-plugs for the copy when the VM runs and its guest agent
answers (``--via auto``, the default: tens of times faster than the guest agent's base64-in-JSON, no encryption
to pay for under TCG), else over SSH when the VM's SSH server is ready, else through the guest agent;
``--via virtio|ssh|agent`` insists on one. The channels are
in :mod:`corral.cli.copy_channels`; the rules here are the same for both.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import stat
import tarfile
import threading
import time
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from corral.cli.common import EXIT_CONFLICT, EXIT_ERROR, EXIT_INVALID, EXIT_NOT_FOUND, api, err, fail, out
from corral.cli.copy_channels import (
    AgentChannel,
    Channel,
    SSHChannel,
    SSHUnavailable,
    VirtioChannel,
    VirtioUnavailable,
    describe,
    tree_marker,
)
from corral.client import APIError, Client
from corral.errors import Conflict, CorralError, InvalidInput, NotFound
from corral.guest.files import TMP_MARK, Location, guest_path, parse_copy, tar_size_estimate

#: Bytes read from a host file per request chunk (the daemon regroups them for the guest agent).
READ_CHUNK = 1 << 20
#: With --via auto: how long to wait for the VM's SSH server before copying through the guest agent instead.
AUTO_SSH_TIMEOUT = 10.0
#: The progress bar appears only for a copy that takes longer than this (seconds).
PROGRESS_DELAY = 1.0
_CODES: list[tuple[type[CorralError], int]] = [
    (InvalidInput, EXIT_INVALID), (NotFound, EXIT_NOT_FOUND), (Conflict, EXIT_CONFLICT),
]


def _tmp(path: Path) -> Path:
    return path.with_name(path.name + TMP_MARK + os.urandom(4).hex())


# -- host → guest ---------------------------------------------------------------------------------------------


def _read_file(path: Path, progress: Progress, task: int) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(READ_CHUNK):
            progress.advance(task, len(chunk))  # type: ignore[arg-type]
            yield chunk


def _owned_by_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Files copied into a guest belong to the guest's root, not to whatever uid they had here."""
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _tree_sizes(root: Path) -> list[int]:
    sizes = [0]  # the root entry
    for dirpath, dirnames, filenames in os.walk(root):
        sizes += [0] * len(dirnames)
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            sizes.append(st.st_size if stat.S_ISREG(st.st_mode) else 0)
    return sizes


def _read_tree(root: Path, progress: Progress, task: int, marker: str | None) -> Iterator[bytes]:
    """A tar of ``root``'s content (members ``./...``), built by a thread into a pipe: bounded memory. With a
    ``marker``, its last member is the empty file ``./MARKER``: the guest end of an SSH copy knows by it that the
    stream is whole."""
    rfd, wfd = os.pipe()
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            with os.fdopen(wfd, "wb") as sink, tarfile.open(fileobj=sink, mode="w|", format=tarfile.GNU_FORMAT) as tar:
                tar.add(str(root), arcname=".", filter=_owned_by_root)
                if marker:
                    tar.addfile(_owned_by_root(tarfile.TarInfo(f"./{marker}")))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the reading thread
            failure.append(exc)

    thread = threading.Thread(target=produce, name="corral-cp-tar", daemon=True)
    thread.start()
    try:
        with os.fdopen(rfd, "rb") as source:
            while chunk := source.read(READ_CHUNK):
                progress.advance(task, len(chunk))  # type: ignore[arg-type]
                yield chunk
    finally:
        thread.join()
    if failure and not isinstance(failure[0], BrokenPipeError):
        raise CorralError(f"cannot read {root}: {failure[0]}")


def _guest_target(channel: Channel, dest: str, name: str) -> str:
    """cp's rule: into an existing directory (or one written with a trailing /) under the source's name."""
    path = guest_path(dest)
    st = channel.stat(path)
    if st.kind == "dir":
        return posixpath.join(path, name)
    if dest.endswith("/"):
        raise NotFound(f"guest directory {path} does not exist")
    parent = channel.stat(posixpath.dirname(path) or "/")
    if parent.kind != "dir":
        raise NotFound(f"guest directory {parent.path} does not exist")
    return path


def upload(channel: Channel, src: Path, vm: str, dest: str, progress: Progress) -> tuple[str, int]:
    """Copy host ``src`` to the guest; returns the guest path written and the bytes sent."""
    try:
        st = src.stat()
    except FileNotFoundError:
        raise NotFound(f"no such file or directory: {src}") from None
    except OSError as exc:
        raise InvalidInput(f"cannot read {src}: {exc.strerror}") from None
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        raise InvalidInput(f"{src} is neither a file nor a directory")
    name = src.resolve().name or "root"
    if channel.resolves_target:  # cp's rule applied in the guest, by the script that writes
        target, source = dest, name
    else:
        target, source = _guest_target(channel, dest, name), None
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISDIR(st.st_mode):
        task = progress.add_task(f"{src} → {vm}:{target}", total=tar_size_estimate(_tree_sizes(src)))
        marker = tree_marker() if channel.needs_tree_marker else None
        target = channel.put_tree(target, _read_tree(src, progress, task, marker), mode=mode, marker=marker,
                                  source=source)
    elif stat.S_ISREG(st.st_mode):
        task = progress.add_task(f"{src} → {vm}:{target}", total=st.st_size)
        target = channel.put_file(target, _read_file(src, progress, task), size=st.st_size, mode=mode,
                                  mtime=int(st.st_mtime), source=source)
    else:
        raise InvalidInput(f"{src} is neither a file nor a directory")
    return target, int(progress.tasks[-1].completed)


# -- guest → host ---------------------------------------------------------------------------------------------


class _ChunkReader:
    """A read-only file object over an iterator of chunks, for tarfile's stream mode."""

    def __init__(self, chunks: Iterator[bytes], progress: Progress, task: int) -> None:
        self._chunks, self._buf = chunks, b""
        self._progress, self._task = progress, task

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buf) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._progress.advance(self._task, len(chunk))  # type: ignore[arg-type]
            self._buf += chunk
        if size < 0:
            data, self._buf = self._buf, b""
        else:
            data, self._buf = self._buf[:size], self._buf[size:]
        return data


def _safe_member(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    """tarfile's data filter (no absolute paths, no escaping links or devices) but with the guest's modes kept:
    the data filter would drop group/other write bits and directory modes. Ownership is not restored."""
    checked = tarfile.data_filter(member, dest)
    return checked.replace(mode=member.mode & 0o1777, deep=False)


def _host_target(dest: Path, name: str, raw: str) -> Path:
    if dest.is_dir():
        return dest / name
    if raw.endswith("/"):
        raise NotFound(f"host directory {dest} does not exist")
    if not dest.parent.is_dir():
        raise NotFound(f"host directory {dest.parent} does not exist")
    return dest


def download(channel: Channel, vm: str, src: str, dest_arg: str, progress: Progress) -> tuple[Path, int]:
    """Copy guest ``src`` to the host; returns the host path written and the bytes received."""
    path = guest_path(src)
    name = posixpath.basename(path) or "root"
    target = _host_target(Path(dest_arg), name, dest_arg)
    tmp = _tmp(target)
    with channel.open(path) as dl:
        if target.is_dir() or (dl.kind == "tar" and target.exists()):
            raise Conflict(f"{target} already exists{' as a directory' if target.is_dir() else ''}: "
                           "remove it or choose another name")
        task = progress.add_task(f"{vm}:{path} → {target}", total=dl.size)
        try:
            if dl.kind == "tar":
                tmp.mkdir(mode=0o700)
                with tarfile.open(fileobj=_ChunkReader(dl.chunks, progress, task), mode="r|") as tar:  # type: ignore[call-overload]
                    tar.extractall(tmp, filter=_safe_member)
                tmp.chmod(dl.mode & 0o1777)
            else:
                with tmp.open("xb") as f:
                    for chunk in dl.chunks:
                        f.write(chunk)
                        progress.advance(task, len(chunk))  # type: ignore[arg-type]
                os.chmod(tmp, dl.mode & 0o7777)
                os.utime(tmp, (dl.mtime, dl.mtime))
            received = int(progress.tasks[-1].completed)
            if received != dl.size and (dl.kind == "file" or channel.exact_tree_size):
                raise CorralError(f"the copy from '{vm}' ended early: {received} of {dl.size} bytes")
            os.replace(tmp, target) if dl.kind == "file" else tmp.rename(target)
        except BaseException:
            with contextlib.suppress(OSError):
                shutil.rmtree(tmp) if tmp.is_dir() and not tmp.is_symlink() else tmp.unlink()
            raise
    return target, received


# -- the command ----------------------------------------------------------------------------------------------


class Via(StrEnum):
    auto = "auto"
    virtio = "virtio"
    ssh = "ssh"
    agent = "agent"


def choose_channel(client: Client, vm: str, via: Via, *, upload: bool = False,
                   no_virtio: str | None = None) -> tuple[Channel, str]:
    """The channel for a copy with VM ``vm``, and why (for --verbose). ``auto``: a virtio-serial port when the
    daemon can plug one (the VM runs, its agent answers), else SSH when the VM's server answers (the API's /ssh, as
    `corral shell` asks it), else the guest agent; a VM that does not exist is an error here. An ``upload`` asks
    the daemon for its port directly (one round trip less; it raises VirtioUnavailable when it cannot have one);
    ``no_virtio``: why the port is out of the question (it was refused), to choose among the others."""
    if via == Via.agent:
        return AgentChannel(client, vm), "--via agent"
    if via in (Via.auto, Via.virtio) and no_virtio is None:
        if upload:
            return VirtioChannel(client, vm), "--via virtio" if via == Via.virtio else "the VM runs, its agent answers"
        status = client.virtio_status(vm)  # NotFound for a VM that does not exist; wakes an idle-suspended one
        if status.available:
            return VirtioChannel(client, vm), "--via virtio" if via == Via.virtio else "the VM runs, its agent answers"
        if via == Via.virtio:
            raise Conflict(f"cannot copy over a virtio-serial port: {status.reason}")
    if shutil.which("ssh") is None:
        if via == Via.ssh:
            raise CorralError("ssh not found: install it with `apt-get install openssh-client`")
        return AgentChannel(client, vm), "no ssh client on this host"
    try:
        info = client.ssh_info(vm, timeout=AUTO_SSH_TIMEOUT if via == Via.auto else 120.0, purpose="cp")
    except APIError as exc:
        if via == Via.ssh or exc.status == 404:
            raise
        return AgentChannel(client, vm), f"SSH not available: {exc.message}"
    return SSHChannel(vm, info), "its SSH server answered"


def _transfer(channel: Channel, src: Location, dst: Location, progress: Progress) -> tuple[str, int]:
    if dst.vm:
        target, size = upload(channel, Path(src.path), dst.vm, dst.path, progress)
        return f"{dst.vm}:{target}", size
    assert src.vm
    host, size = download(channel, src.vm, src.path, dst.path, progress)
    return str(host), size


@contextlib.contextmanager
def _delayed(progress: Progress, delay: float) -> Iterator[None]:
    """Show ``progress`` only once the copy has taken ``delay`` seconds (a quick copy prints just its summary)."""
    timer = threading.Timer(delay, progress.start)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        timer.join()
        progress.stop()


def cp(
    source: str = typer.Argument(..., help="host path, or VM:PATH"),
    destination: str = typer.Argument(..., help="host path, or VM:PATH (exactly one side is in a VM)"),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="accepted; directories are always recursive"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar and no summary"),
    via: Via = typer.Option(Via.auto, "--via", help="virtio (fastest: a virtio-serial port plugged for the copy), "
                            "ssh, agent (the guest agent: slow, needs no SSH), or auto: the first that is there"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="say which channel the copy takes, and why"),
) -> None:
    """Copy a file or a directory between the host and a VM (help text: HELP)."""
    del recursive
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
        TransferSpeedColumn(), TimeRemainingColumn(), console=err, transient=True,
        disable=quiet or not err.is_terminal,
    )
    started = time.monotonic()
    with api() as client:
        try:
            src, dst = parse_copy(source, destination)
            vm = dst.vm or src.vm
            assert vm
            channel, why = choose_channel(client, vm, via, upload=dst.vm is not None)
            try:
                try:
                    with _delayed(progress, PROGRESS_DELAY):
                        where, size = _transfer(channel, src, dst, progress)
                except VirtioUnavailable as exc:  # the daemon would not plug a port: nothing was copied yet
                    if via != Via.auto:
                        raise Conflict(f"cannot copy over a virtio-serial port: {exc.message}") from None
                    channel, why = choose_channel(client, vm, via, no_virtio=exc.message)
                    with _delayed(progress, PROGRESS_DELAY):
                        where, size = _transfer(channel, src, dst, progress)
            except SSHUnavailable as exc:  # ssh could not connect: nothing was copied yet
                if via != Via.auto:
                    raise CorralError(exc.message) from None
                channel, why = AgentChannel(client, vm), f"SSH not available: {exc.message}"
                with _delayed(progress, PROGRESS_DELAY):
                    where, size = _transfer(channel, src, dst, progress)
            if verbose:
                err.print(f"copied via {describe(channel)} ({why})", highlight=False, soft_wrap=True)
        except (InvalidInput, NotFound, Conflict) as exc:
            fail(exc.message, next(code for cls, code in _CODES if isinstance(exc, cls)))
        except OSError as exc:
            fail(f"{exc.filename or 'host'}: {exc.strerror or exc}", EXIT_ERROR)
    if not quiet:
        elapsed = max(time.monotonic() - started, 1e-6)
        out.print(f"copied {size / 2**20:.1f} MiB to {where} in {elapsed:.1f}s ({size / 2**20 / elapsed:.1f} MiB/s) "
                  f"via {channel.name}", highlight=False, soft_wrap=True)


HELP = (
    "Copy a file or a directory between the host and a VM: `corral cp ./app.tar demo:/root/`, "
    "`corral cp demo:/etc ./etc-copy`.\n\n"
    "Exactly one side is VM:PATH; relative guest paths start at /root. A destination that is an existing directory, "
    "or ends with /, receives the source under its own name. Directories are always copied recursively and never "
    "merged into an existing directory. Permission bits and modification times are kept; files in the guest belong "
    "to root. Nothing half-written is ever left under the destination name.\n\n"
    "The copy goes over a virtio-serial port the daemon plugs into the running VM for the copy (fastest), else over "
    "SSH (the VM's forward, Corral's key, the pinned host key: as `corral shell`) when the VM's SSH server answers, "
    "else through the guest agent (slowest); --via virtio, --via ssh or --via agent insists on one."
)


def register(app: typer.Typer) -> None:
    app.command("cp", help=HELP)(cp)

