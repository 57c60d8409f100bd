"""Copying files and directory trees into and out of a guest, through its guest agent.

Why the guest agent: it is there on every image, before and without any network, and the daemon already holds
its only connection (QEMU's chardev takes one client), so a copy shares it with exec; the agent client serializes
requests, and a copy is many short requests, so an exec beside a copy still gets its turn.

Data moves with QGA's guest-file-open/read/write/close in :data:`WRITE_CHUNK` / :data:`READ_CHUNK` pieces (base64
in JSON), never a whole file in memory. Directories travel as a tar of the directory's content (members ``./...``)
in both directions: the guest's tar (busybox or GNU) packs or unpacks it in a temporary file on the guest's disk.

Nothing half-written is ever visible under the destination name: a file is written to ``DEST.corral-tmp-XXXX``,
chmod'ed and then renamed with ``mv -f``; a tree is unpacked into ``DEST.corral-tmp-XXXX`` and renamed. On any
failure or cancellation the temporaries are removed (best effort, shielded from the cancellation).

The pure helpers at the top (``parse_location``, ``parse_copy``...) are shared with the CLI.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import posixpath
import secrets
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Literal

from corral.engine.guest_agent import GuestAgent, GuestAgentCommandError
from corral.errors import Conflict, GuestAgentError, InvalidInput, NotFound
from corral.guest import commands
from corral.vm.spec import NAME_RE

log = logging.getLogger(__name__)

#: Bytes per guest-file-write / guest-file-read. Measured under TCG (tiny guest, 1 vCPU, busy 2-core host), raw
#: agent throughput by chunk size, write / read MiB/s: 64 KiB 1.5 / 4.1, 256 KiB 1.0 / 3.6, 1 MiB 0.9 / 4.8,
#: 4 MiB 1.0 / 5.6. Writes are bound by the agent's JSON lexer (one character at a time, emulated), so bigger
#: chunks buy nothing there; 1 MiB keeps the agent's transient memory small (a 1.4 MB JSON token) and holds the
#: shared agent (the lock) for about a second, so an exec beside a copy still answers. Reads gain from 4 MiB
#: (QGA allows 48 MiB per read and 64 MiB per JSON token).
WRITE_CHUNK = 1024 * 1024
READ_CHUNK = 4 * 1024 * 1024
#: Marks every temporary a copy creates, in the guest and on the host (tests look for it).
TMP_MARK = ".corral-tmp-"
#: Where a tree being copied out of the guest is packed: on disk (the tiny guest's /tmp is a small tmpfs).
GUEST_PACK_DIR = "/var/tmp"
#: The guest's home, the base of relative guest paths (``vm:notes.txt`` is ``/root/notes.txt``, as with scp).
GUEST_HOME = "/root"
#: How long one helper command in the guest (stat, chmod+mv, tar) may take; tar of a large tree takes a while.
HELPER_TIMEOUT = 120.0
PACK_TIMEOUT = 3600.0
#: Per guest-file call (a chunk takes about a second under TCG; far more when the host is very busy).
CALL_TIMEOUT = 60.0

Kind = Literal["file", "dir", "other", "missing"]


# -- pure helpers -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Location:
    """One side of a copy: a host path (``vm`` is None) or a path in the guest of VM ``vm``."""

    vm: str | None
    path: str

    def __str__(self) -> str:
        return f"{self.vm}:{self.path}" if self.vm else self.path


def parse_location(arg: str) -> Location:
    """``VM:PATH`` is a guest path when VM is a valid VM name; anything else is a host path.

    A host path that contains a colon can be written ``./a:b`` (or absolute): it then is not ``VM:PATH``.
    """
    name, sep, path = arg.partition(":")
    if sep and NAME_RE.match(name):
        return Location(name, path)
    return Location(None, arg)


def parse_copy(source: str, destination: str) -> tuple[Location, Location]:
    """Both sides of ``corral cp``; exactly one of them must be ``VM:PATH``."""
    src, dst = parse_location(source), parse_location(destination)
    if src.vm and dst.vm:
        raise InvalidInput(f"both {source!r} and {destination!r} are in a VM: one side must be a host path")
    if not src.vm and not dst.vm:
        raise InvalidInput(f"neither {source!r} nor {destination!r} names a VM: write one side as VM:PATH "
                           "(e.g. `corral cp ./file demo:/root/file`)")
    for loc in (src, dst):
        if not loc.path:
            raise InvalidInput(f"{loc.vm or ''}: has no path: write VM:PATH (e.g. {loc.vm or 'demo'}:/root/)")
    return src, dst


def guest_path(path: str) -> str:
    """An absolute, normalized guest path; relative paths are taken from the guest's home (/root)."""
    if not path or "\0" in path:
        raise InvalidInput(f"{path!r} is not a usable guest path")
    full = posixpath.normpath(posixpath.join(GUEST_HOME, path))
    return "/" + full.lstrip("/")  # normpath keeps a leading '//'


def temp_name(path: str) -> str:
    """A temporary beside ``path`` (same directory, so same file system: the final rename is atomic)."""
    return f"{path}{TMP_MARK}{secrets.token_hex(4)}"


def parent_of(path: str) -> str:
    return posixpath.dirname(path.rstrip("/")) or "/"


def tar_size_estimate(sizes: list[int]) -> int:
    """The size of a ustar archive of entries of these sizes (one 512-byte header each, data padded to 512, two
    end blocks, then padded to the 10 KiB record), for a progress bar. Long names (extra headers) add to it."""
    body = sum(512 + (size + 511) // 512 * 512 for size in sizes) + 1024
    return (body + 10239) // 10240 * 10240


# -- guest side -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GuestStat:
    path: str
    kind: Kind
    size: int = 0
    mode: int = 0
    mtime: int = 0


# One line per path: "missing", or "KIND SIZE MODE(octal) MTIME" (symlinks followed, as cp does).
STAT_SCRIPT = """\
for p in "$@"; do
  if [ -d "$p" ]; then k=dir; elif [ -f "$p" ]; then k=file; elif [ -e "$p" ]; then k=other
  else echo missing; continue; fi
  printf '%s ' "$k"; stat -L -c '%s %a %Y' "$p" || echo
done
"""

# $1 temporary, $2 destination, $3 mode (octal), $4 mtime ("" to keep now).
INSTALL_FILE_SCRIPT = """\
chmod "$3" "$1" || exit 1
if [ -n "$4" ]; then touch -d "@$4" "$1" 2>/dev/null; fi
if [ -d "$2" ]; then echo "$2 is a directory" >&2; exit 17; fi
mv -f "$1" "$2"
"""

# $1 tar file, $2 staging directory, $3 destination, $4 mode (octal). The staging directory is renamed only when
# the destination does not exist (mv into an existing directory would nest it).
UNPACK_SCRIPT = """\
if [ -e "$3" ]; then echo "$3 already exists" >&2; exit 17; fi
mkdir "$2" && tar -xof "$1" -C "$2" || exit 1
chmod "$4" "$2" || exit 1
if [ -e "$3" ]; then echo "$3 already exists" >&2; exit 17; fi
mv "$2" "$3"
"""

PACK_SCRIPT = 'tar -cf "$1" -C "$2" .'

# -- the same, over SSH (`corral cp` streams through the VM's SSH forward; see corral/cli/sshcopy.py) -----------
#
# The data comes on stdin, so the guest cannot tell a whole stream from one cut short by a dead client by its end
# alone: a file's exact size is given ($5) and checked before the rename; a tree's tar ends with an empty marker
# member ($4, random) that only a complete stream contains. Either way an incomplete copy removes its temporary.
# Exit 17: the destination is (or became) a directory / already exists (Conflict); anything else: stderr's last line.

# The receiver is dd with 4 MiB blocks written with O_DIRECT where the file system takes it (ext4 does, tmpfs
# refuses the open: then through the page cache): under TCG the guest's one emulated vCPU copying every page into
# its page cache was half of a port upload's time (64 MiB: `cat >` 2-4.5 s, dd direct 0.9-1.2 s, the same as
# reading the port into /dev/null; bench/ cp_throughput). busybox dd writes a last partial block without O_DIRECT.
# $1 destination, $2 temporary, $3 mode (octal), $4 mtime ("" to keep now), $5 exact size.
SSH_PUT_FILE_SCRIPT = """\
trap 'rm -f "$2"; exit 1' HUP INT TERM PIPE
if [ -d "$1" ]; then echo "guest path $1 is an existing directory: copy into it as $1/NAME" >&2; exit 17; fi
direct=oflag=direct
dd if=/dev/null of="$2" $direct status=none 2>/dev/null || direct=
dd bs=4M iflag=fullblock $direct of="$2" status=none || { rm -f "$2"; exit 1; }
got=$(stat -c %s "$2")
if [ "$got" != "$5" ]; then rm -f "$2"; echo "the copy ended early: $got of $5 bytes arrived" >&2; exit 1; fi
chmod "$3" "$2" || { rm -f "$2"; exit 1; }
if [ -n "$4" ]; then touch -d "@$4" "$2" 2>/dev/null; fi
if [ -d "$1" ]; then rm -f "$2"; echo "guest path $1 is an existing directory" >&2; exit 17; fi
mv -f "$2" "$1" || { rm -f "$2"; exit 1; }
"""

# $1 destination, $2 staging directory, $3 mode (octal), $4 the end marker's name.
SSH_PUT_TREE_SCRIPT = """\
trap 'rm -rf "$2"; exit 1' HUP INT TERM PIPE
if [ -e "$1" ]; then echo "guest path $1 already exists: remove it or choose another name" >&2; exit 17; fi
mkdir "$2" || exit 1
if ! tar -xof - -C "$2" || [ ! -f "$2/$4" ]; then rm -rf "$2"; echo "the copy ended early" >&2; exit 1; fi
rm -f "$2/$4"
chmod "$3" "$2" || { rm -rf "$2"; exit 1; }
if [ -e "$1" ]; then rm -rf "$2"; echo "guest path $1 already exists: remove it or choose another name" >&2; exit 17; fi
mv "$2" "$1" || { rm -rf "$2"; exit 1; }
"""

# $1 a guest directory: a tar of its content on stdout; its size in KiB (for a progress bar) first on stderr.
SSH_GET_TREE_SCRIPT = 'du -sk "$1" >&2; exec tar -cf - -C "$1" .'
REMOVE_SCRIPT = 'rm -rf -- "$@"'


async def _sh(agent: GuestAgent, script: str, *args: str, timeout: float = HELPER_TIMEOUT) -> tuple[int | None, str]:
    """Run a POSIX sh script in the guest: (exit code, stderr's last line)."""
    code, _, err = await commands.run(agent, ["sh", "-c", script, "sh", *args], timeout=timeout, check=False)
    lines = err.decode(errors="replace").strip().splitlines()
    return code, lines[-1] if lines else ""


async def stat(agent: GuestAgent, *paths: str) -> list[GuestStat]:
    """What each guest path is (following symlinks)."""
    code, out, err = await commands.run(agent, ["sh", "-c", STAT_SCRIPT, "sh", *paths], timeout=HELPER_TIMEOUT,
                                        check=False)
    lines = out.decode(errors="replace").splitlines()
    if code != 0 or len(lines) != len(paths):
        raise GuestAgentError(f"cannot stat {' '.join(paths)} in the guest: {err.decode(errors='replace').strip()}")
    return parse_stat(paths, lines)


def parse_stat(paths: tuple[str, ...] | list[str], lines: list[str]) -> list[GuestStat]:
    """:data:`STAT_SCRIPT`'s output, one line per path (whichever channel ran it: the agent or SSH)."""
    result = []
    for path, line in zip(paths, lines, strict=True):
        fields = line.split()
        if len(fields) != 4:
            result.append(GuestStat(path, "missing"))
            continue
        kind, size, mode, mtime = fields
        result.append(GuestStat(path, kind, int(size), int(mode, 8), int(mtime)))  # type: ignore[arg-type]
    return result


_pending: set[asyncio.Future[None]] = set()


def background(coro: Awaitable[None]) -> asyncio.Future[None]:
    """Run a cleanup to its end even when its caller is cancelled or gone (an aborted download's generator)."""
    task = asyncio.ensure_future(coro)
    _pending.add(task)
    task.add_done_callback(_pending.discard)
    return task


async def _finish(coro: Awaitable[None]) -> None:
    """Await a cleanup shielded: a cancellation still propagates to the caller, the cleanup runs on."""
    await asyncio.shield(background(coro))


async def _remove(agent: GuestAgent, *paths: str) -> None:
    try:
        await _sh(agent, REMOVE_SCRIPT, *paths, timeout=30.0)
    except GuestAgentError as exc:
        log.warning("could not remove %s in the guest: %s", " ".join(paths), exc)


async def _cleanup(agent: GuestAgent, *paths: str) -> None:
    """Remove temporaries in the guest, even when the copy is being cancelled."""
    await _finish(_remove(agent, *paths))


async def _close(agent: GuestAgent, handle: int) -> None:
    with contextlib.suppress(GuestAgentError):
        await agent.execute("guest-file-close", {"handle": handle}, timeout=5.0)


async def _close_quietly(agent: GuestAgent, handle: int) -> None:
    await _finish(_close(agent, handle))


async def _open(agent: GuestAgent, path: str, mode: str) -> int:
    try:
        return int(await agent.execute("guest-file-open", {"path": path, "mode": mode}))
    except GuestAgentCommandError as exc:
        if "No such file" in exc.desc and mode == "w":
            raise NotFound(f"guest directory {parent_of(path)} does not exist") from None
        raise GuestAgentError(f"cannot open {path} in the guest: {exc.desc}") from None


async def open_read(agent: GuestAgent, path: str) -> int:
    """Open a guest file for :func:`read_chunks` (separately, so that a failure comes before any byte is sent)."""
    return await _open(agent, path, "r")


async def read_chunks(agent: GuestAgent, handle: int) -> AsyncIterator[bytes]:
    """Stream an open guest file in READ_CHUNK pieces; the handle is closed at the end, on error or cancellation."""
    try:
        while True:
            result = await agent.execute("guest-file-read", {"handle": handle, "count": READ_CHUNK},
                                         timeout=CALL_TIMEOUT)
            if int(result.get("count", 0)):
                yield await asyncio.to_thread(base64.b64decode, result.get("buf-b64", ""))
            if not int(result.get("count", 0)) or result.get("eof"):
                return
    finally:
        await _close_quietly(agent, handle)


async def _rechunk(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Regroup whatever sizes arrive (HTTP gives ~64 KiB) into WRITE_CHUNK pieces: fewer, fuller agent requests."""
    buf = bytearray()
    async for piece in chunks:
        buf += piece
        while len(buf) >= WRITE_CHUNK:
            yield bytes(buf[:WRITE_CHUNK])
            del buf[:WRITE_CHUNK]
    if buf:
        yield bytes(buf)


async def _write_all(agent: GuestAgent, path: str, chunks: AsyncIterator[bytes]) -> int:
    """Create ``path`` and write the stream to it; returns the byte count. The caller removes it on failure."""
    handle = await _open(agent, path, "w")
    total = 0
    try:
        async for chunk in _rechunk(chunks):
            data = await asyncio.to_thread(base64.b64encode, chunk)
            result = await agent.execute("guest-file-write", {"handle": handle, "buf-b64": data.decode()},
                                         timeout=CALL_TIMEOUT)
            if int(result.get("count", -1)) != len(chunk):
                raise GuestAgentError(f"short write to {path} in the guest: {result.get('count')} of {len(chunk)}")
            total += len(chunk)
    except BaseException:
        await _close_quietly(agent, handle)
        raise
    await agent.execute("guest-file-close", {"handle": handle})  # not quiet: a failing close may lose data
    return total


async def check_destination(agent: GuestAgent, path: str, kind: Literal["file", "tar"]) -> None:
    """Refuse before any byte moves: the parent must be a directory; a file may replace a file, a tree nothing."""
    parent, target = await stat(agent, parent_of(path), path)
    if parent.kind == "missing":
        raise NotFound(f"guest directory {parent.path} does not exist")
    if parent.kind != "dir":
        raise InvalidInput(f"guest path {parent.path} is not a directory")
    if kind == "tar" and target.kind != "missing":
        raise Conflict(f"guest path {path} already exists: remove it or choose another name")
    if target.kind == "dir":
        raise Conflict(f"guest path {path} is an existing directory: copy into it as {path.rstrip('/')}/NAME")


async def write_file(agent: GuestAgent, path: str, chunks: AsyncIterator[bytes], *, mode: int,
                     mtime: int | None = None) -> GuestStat:
    """Write a stream to guest file ``path`` (replaced atomically), with permission bits ``mode``."""
    await check_destination(agent, path, "file")
    tmp = temp_name(path)
    try:
        await _write_all(agent, tmp, chunks)
        code, err = await _sh(agent, INSTALL_FILE_SCRIPT, tmp, path, f"{mode & 0o7777:o}",
                              "" if mtime is None else str(mtime))
        if code == 17:
            raise Conflict(f"guest path {path} is an existing directory")
        if code != 0:
            raise GuestAgentError(f"cannot install {path} in the guest: {err}")
    except BaseException:
        await _cleanup(agent, tmp)
        raise
    return (await stat(agent, path))[0]


async def write_tree(agent: GuestAgent, path: str, tar_chunks: AsyncIterator[bytes], *, mode: int) -> GuestStat:
    """Unpack a tar of a directory's content (members ``./...``) as the new guest directory ``path``."""
    await check_destination(agent, path, "tar")
    staging = temp_name(path)
    archive = staging + ".tar"
    try:
        await _write_all(agent, archive, tar_chunks)
        code, err = await _sh(agent, UNPACK_SCRIPT, archive, staging, path, f"{mode & 0o7777:o}",
                              timeout=PACK_TIMEOUT)
        if code == 17:
            raise Conflict(f"guest path {path} already exists: remove it or choose another name")
        if code != 0:
            raise GuestAgentError(f"cannot unpack into {path} in the guest: {err}")
    except BaseException:
        await _cleanup(agent, archive, staging)
        raise
    await _cleanup(agent, archive)
    return (await stat(agent, path))[0]


async def source(agent: GuestAgent, path: str) -> GuestStat:
    """The stat of a copy's guest source, which must exist and be a file or a directory."""
    st = (await stat(agent, path))[0]
    if st.kind == "missing":
        raise NotFound(f"no such file or directory in the guest: {path}")
    if st.kind == "other":
        raise InvalidInput(f"guest path {path} is neither a file nor a directory")
    return st


@dataclass
class Packed:
    """A guest directory packed into a tar in the guest: read it with :func:`read_chunks`, then :func:`discard`."""

    archive: str
    size: int


async def pack_tree(agent: GuestAgent, path: str) -> Packed:
    """Tar a guest directory's content into a temporary file on the guest's disk."""
    archive = f"{GUEST_PACK_DIR}/corral-cp{TMP_MARK}{secrets.token_hex(4)}.tar"
    try:
        code, err = await _sh(agent, PACK_SCRIPT, archive, path, timeout=PACK_TIMEOUT)
        if code != 0:
            raise GuestAgentError(f"cannot pack {path} in the guest: {err}")
        st = (await stat(agent, archive))[0]
    except BaseException:
        await _cleanup(agent, archive)
        raise
    return Packed(archive, st.size)


async def discard(agent: GuestAgent, packed: Packed) -> None:
    await _remove(agent, packed.archive)
