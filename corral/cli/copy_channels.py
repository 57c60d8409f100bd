"""The three ways `corral cp` moves bytes to and from a guest, behind one small interface (:class:`Channel`).

* :class:`VirtioChannel` — the fastest, used by default: a virtio-serial port the daemon hot-plugs for the copy
  (``/v1/vms/NAME/files/virtio``, corral.vm.data_copy): no encryption, no network, no JSON; the guest agent only
  starts the guest side. An upload's bytes go straight from this process into the port's socket
  (corral.client.port_upload), and its destination is resolved in the guest by the same script (no stat round trips);
  a download's come through the daemon. Needs a running VM whose agent answers.
* :class:`SSHChannel` — where the port is not available, or ``--via ssh``: ``ssh ... 'dd ... of=TMP'`` / ``tar`` over
  the VM's SSH forward, with the same per-VM key and pinned host key as `corral shell` (the API's
  ``GET /v1/vms/NAME/ssh`` answer, and :func:`corral.cli.shell.ssh_argv` for the command line: one source of
  truth). The guest side is a POSIX sh script from :mod:`corral.guest.files` that writes a temporary and renames
  it only when the stream is whole (a file's size is checked, a tree's tar ends with a marker member).
* :class:`AgentChannel` — through the daemon and the guest agent (``/v1/vms/NAME/files``): slow (base64 in JSON)
  but there on every guest, before and without any SSH server. The fallback, or ``--via agent``.

All give the same errors for the same mistakes (the cp rules themselves are in :mod:`corral.cli.cp`).
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from typing import IO, Any, Protocol

from corral.api.models import FileInfo, SSHInfo
from corral.cli.shell import ssh_argv
from corral.client import Client, Download
from corral.client import port_upload as client_files
from corral.errors import Conflict, CorralError, InvalidInput, NotFound
from corral.guest import files

#: Bytes per read from ssh's stdout (a download), and the pipe's share of a progress bar's step.
PIPE_CHUNK = 1 << 20
#: How long the stat of a copy's guest path may take over SSH (the connection included).
SSH_CALL_TIMEOUT = 120.0


class SSHUnavailable(CorralError):
    """ssh could not reach the guest at all (exit 255 before anything was copied): the agent can take over."""


class VirtioUnavailable(CorralError):
    """The daemon would not plug a port for the copy (the VM is not running, its agent does not answer...):
    nothing was copied, SSH or the agent can take over."""


class Channel(Protocol):
    name: str  # "virtio", "ssh" or "agent", for the summary and --verbose
    #: Whether a tree download's ``size`` is exact (the agent packs it first) or an estimate (SSH streams it).
    exact_tree_size: bool
    #: Whether an uploaded tree's tar must end with a :func:`tree_marker` member (SSH: the guest sees only a
    #: stream end, not whether the sender finished).
    needs_tree_marker: bool
    #: Whether uploads take the destination as written and apply cp's rule in the guest (``source`` given, the
    #: target returned); else the caller resolves it first with :meth:`stat`.
    resolves_target: bool

    def stat(self, path: str) -> FileInfo: ...

    def put_file(self, path: str, chunks: Iterable[bytes], *, size: int, mode: int, mtime: int,
                 source: str | None = None) -> str: ...

    def put_tree(self, path: str, tar_chunks: Iterable[bytes], *, mode: int, marker: str | None,
                 source: str | None = None) -> str: ...

    def open(self, path: str) -> contextlib.AbstractContextManager[Download]: ...


class AgentChannel:
    """Through the API and the guest agent."""

    name = "agent"
    exact_tree_size = True
    needs_tree_marker = False  # the daemon sees the HTTP body end early by itself
    resolves_target = False

    def __init__(self, client: Client, vm: str) -> None:
        self.client, self.vm = client, vm

    def stat(self, path: str) -> FileInfo:
        return self.client.file_stat(self.vm, path)

    def put_file(self, path: str, chunks: Iterable[bytes], *, size: int, mode: int, mtime: int,
                 source: str | None = None) -> str:
        del size, source  # the daemon counts what it writes
        return self.client.upload(self.vm, path, chunks, kind="file", mode=mode, mtime=mtime).path

    def put_tree(self, path: str, tar_chunks: Iterable[bytes], *, mode: int, marker: str | None,
                 source: str | None = None) -> str:
        del marker, source
        return self.client.upload(self.vm, path, tar_chunks, kind="tar", mode=mode).path

    def open(self, path: str) -> contextlib.AbstractContextManager[Download]:
        return self.client.download(self.vm, path)


class VirtioChannel(AgentChannel):
    """A hot-plugged virtio-serial port: uploads written into its socket by this process, downloads through the
    API (a download's paths resolved through the guest agent, as :class:`AgentChannel` does)."""

    name = "virtio"
    exact_tree_size = False  # the daemon streams the guest's tar as it comes (its size is du's estimate)
    needs_tree_marker = True  # the guest sees only the port's end, not whether the sender finished
    resolves_target = True

    def _put(self, path: str, chunks: Iterable[bytes], source: str | None, **kw: Any) -> str:
        assert source, "an upload over a data port resolves its target in the guest"
        try:
            return client_files.upload(self.client, self.vm, path, source, chunks, **kw).path
        except client_files.PortRefused as exc:
            if exc.status in (404, 422):  # no such VM, bad input: the same for every channel
                raise
            raise VirtioUnavailable(exc.message) from None

    def put_file(self, path: str, chunks: Iterable[bytes], *, size: int, mode: int, mtime: int,
                 source: str | None = None) -> str:
        return self._put(path, chunks, source, kind="file", mode=mode, mtime=mtime, size=size)

    def put_tree(self, path: str, tar_chunks: Iterable[bytes], *, mode: int, marker: str | None,
                 source: str | None = None) -> str:
        assert marker, "a tree over a data port ends with its marker"
        return self._put(path, tar_chunks, source, kind="tar", mode=mode, marker=marker)

    def open(self, path: str) -> contextlib.AbstractContextManager[Download]:
        return self.client.download(self.vm, path, virtio=True)


def _last_line(stream: IO[bytes]) -> str:
    stream.seek(0)
    lines = stream.read().decode(errors="replace").strip().splitlines()
    return lines[-1].removeprefix("sh: ") if lines else ""


class SSHChannel:
    """ssh to the guest's forwarded port, one ssh process per step (stat, then the data)."""

    name = "ssh"
    exact_tree_size = False
    needs_tree_marker = True
    resolves_target = False

    def __init__(self, vm: str, info: SSHInfo) -> None:
        self.vm, self.info = vm, info

    def argv(self, *command: str) -> list[str]:
        return ssh_argv(self.info, list(command), tty=False)

    def _sh(self, script: str, *args: str) -> list[str]:
        return self.argv("sh", "-c", script, "sh", *args)

    def _failed(self, code: int, err: str, what: str) -> CorralError:
        if code == 17:
            return Conflict(err)
        if code == 255:
            return CorralError(f"ssh to VM '{self.vm}' failed: {err or 'connection lost'}")
        return CorralError(f"{what}: {err or f'exit {code}'}")

    def stat(self, path: str) -> FileInfo:
        try:
            r = subprocess.run(self._sh(files.STAT_SCRIPT, path), capture_output=True, timeout=SSH_CALL_TIMEOUT,
                               check=False, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise SSHUnavailable(f"ssh to VM '{self.vm}' did not answer within {SSH_CALL_TIMEOUT:.0f}s") from None
        err = r.stderr.decode(errors="replace").strip().splitlines()
        lines = r.stdout.decode(errors="replace").splitlines()
        if r.returncode == 255:
            raise SSHUnavailable(f"ssh to VM '{self.vm}' failed: {err[-1] if err else 'exit 255'}")
        if r.returncode != 0 or len(lines) != 1:
            raise CorralError(f"cannot stat {path} in the guest: {err[-1] if err else f'exit {r.returncode}'}")
        st = files.parse_stat([path], lines)[0]
        return FileInfo(path=st.path, kind=st.kind, size=st.size, mode=st.mode, mtime=st.mtime)

    def _feed(self, argv: list[str], chunks: Iterable[bytes], what: str) -> None:
        """Run ``argv`` with ``chunks`` on its stdin; a failure of the guest side is raised with its message."""
        with tempfile.TemporaryFile() as errf:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errf)
            assert proc.stdin is not None
            try:
                try:
                    for chunk in chunks:
                        proc.stdin.write(chunk)
                except BrokenPipeError:
                    pass  # the guest side stopped reading: its exit code and message say why
                finally:
                    with contextlib.suppress(BrokenPipeError):
                        proc.stdin.close()
                code = proc.wait()
            except BaseException:
                proc.kill()  # the guest side sees its stdin end early and removes its temporary
                proc.wait()
                raise
            if code != 0:
                raise self._failed(code, _last_line(errf), what)

    def put_file(self, path: str, chunks: Iterable[bytes], *, size: int, mode: int, mtime: int,
                 source: str | None = None) -> str:
        del source
        tmp = files.temp_name(path)
        self._feed(self._sh(files.SSH_PUT_FILE_SCRIPT, path, tmp, f"{mode & 0o7777:o}", str(mtime), str(size)),
                   chunks, f"cannot write {path} in the guest")
        return path

    def put_tree(self, path: str, tar_chunks: Iterable[bytes], *, mode: int, marker: str | None,
                 source: str | None = None) -> str:
        del source
        assert marker, "a tree over SSH ends with its marker"
        self._feed(self._sh(files.SSH_PUT_TREE_SCRIPT, path, files.temp_name(path), f"{mode & 0o7777:o}", marker),
                   tar_chunks, f"cannot unpack into {path} in the guest")
        return path

    def _source(self, path: str) -> FileInfo:
        st = self.stat(path)
        if st.kind == "missing":
            raise NotFound(f"no such file or directory in the guest: {path}")
        if st.kind == "other":
            raise InvalidInput(f"guest path {path} is neither a file nor a directory")
        return st

    def _tree_estimate(self, path: str) -> int:
        r = subprocess.run(self.argv("du", "-sk", path), capture_output=True, timeout=SSH_CALL_TIMEOUT,
                           check=False, stdin=subprocess.DEVNULL)
        fields = r.stdout.split()
        return int(fields[0]) * 1024 if r.returncode == 0 and fields and fields[0].isdigit() else 0

    @contextlib.contextmanager
    def open(self, path: str) -> Iterator[Download]:
        st = self._source(path)
        tree = st.kind == "dir"
        argv = self.argv("tar", "-cf", "-", "-C", path, ".") if tree else self.argv("cat", "--", path)
        with tempfile.TemporaryFile() as errf:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errf)
            assert proc.stdout is not None
            out = proc.stdout

            def chunks() -> Iterator[bytes]:
                while chunk := out.read1(PIPE_CHUNK):  # type: ignore[attr-defined]
                    yield chunk
                code = proc.wait()
                if code != 0:
                    raise self._failed(code, _last_line(errf), f"cannot read {path} in the guest")

            try:
                yield Download(kind="tar" if tree else "file", size=self._tree_estimate(path) if tree else st.size,
                               mode=st.mode, mtime=st.mtime, chunks=chunks())
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                out.close()


def tree_marker() -> str:
    """The name of the empty member that ends a tree's tar over SSH: only a whole stream has it."""
    return f".corral-end-{secrets.token_hex(8)}"


def describe(channel: Channel) -> str:
    if isinstance(channel, SSHChannel):
        return f"ssh to {channel.info.user}@{channel.info.host}:{channel.info.port}"
    if isinstance(channel, VirtioChannel):
        return "a virtio-serial port plugged for the copy"
    return "the guest agent"

