"""The guest side of a copy over a temporary virtio-serial port (corral.engine.data_channel), and the framing of
what comes back: POSIX sh scripts run through the guest agent, and a tar reader that finds where a stream ends.

Each script starts with :data:`OPEN_PORT`: it finds the port by its name in ``/sys/class/virtio-ports/*/name``,
opens it, and waits for the host's first byte (until then a read gives end-of-file: the host end may not be
connected yet). Then:

* upload: the destination is resolved first by cp's rule (:data:`RESOLVE`: one script, no stat round trips), then
  the port becomes stdin of the same scripts the SSH channel runs (corral.guest.files): a file's exact size is
  checked, a tree's tar must end with the marker member, before anything is renamed into place. The client writes
  into the port's socket itself (corral.client.port_upload); the daemon only plugs, starts and waits;
* download: ``tar`` writes into the port, a file as a one-member archive (``-h``: the file a symlink names, as
  ``stat -L`` saw it). The guest closing the port tells the host nothing (QEMU keeps the socket connected), so the
  host reads the tar's own framing: headers with sizes, and the two zero blocks at its end (:func:`tar_members`).
"""

from __future__ import annotations

import asyncio
import posixpath
from collections.abc import AsyncIterator
from dataclasses import dataclass

from corral.errors import InvalidInput
from corral.guest import files

BLOCK = 512
_ZERO = bytes(BLOCK)
#: Header types whose data follow them: regular files, GNU long names and links, pax headers, contiguous files.
_HAS_DATA = frozenset(b"0\x007LKxgS")

# $1: the port's name; the caller's own arguments follow (the script shifts it away). Leaves the port on fd 3.
# The host end is usually connected by the time the port is open; if not, the first 100 tries do not sleep (a
# sleep under TCG takes 80 ms or more, most of a small copy's time), the next 200 do (about 10 s in all).
OPEN_PORT = r"""
port=$1; shift; dev=; i=0
while :; do
  for p in /sys/class/virtio-ports/*; do
    read -r n < "$p/name" 2>/dev/null || continue
    [ "$n" = "$port" ] && dev=/dev/${p##*/}
  done
  [ -n "$dev" ] && [ -c "$dev" ] && break
  dev=; i=$((i + 1))
  if [ $i -ge 200 ]; then echo "no virtio port named $port in the guest" >&2; exit 3; fi
  sleep 0.05
done
exec 3<>"$dev" || exit 3
i=0
until [ "$(dd bs=1 count=1 <&3 2>/dev/null)" = + ]; do
  i=$((i + 1))
  if [ $i -ge 300 ]; then echo "the host end of $port never connected" >&2; exit 3; fi
  if [ $i -ge 100 ]; then sleep 0.05; fi
done
"""

#: Exit code of an upload's guest side whose destination's directory does not exist (NotFound).
NO_DIRECTORY = 20

# An upload's destination, by cp's rule (into an existing directory, or one written with a trailing /, under the
# source's name), resolved in the guest in the same script: no separate stat round trips through the agent.
# $1 the destination (normalized), $2 the source's name, $3 "/" if it was written with a trailing /, $4 a token
# for the temporary's name; the port's name follows. Sets $t (printed first: the copy's result names it), $tmp.
RESOLVE = r"""
t=$1; n=$2; into=$3; tmp=$4; shift 4
if [ -d "$t" ]; then t="${t%/}/$n"
elif [ -n "$into" ]; then echo "guest directory $t does not exist" >&2; exit 20
else
  p=$(dirname "$t")
  if [ ! -d "$p" ]; then echo "guest directory $p does not exist" >&2; exit 20; fi
fi
printf '%s\n' "$t"
tmp=$t$tmp
"""

_TAKE_PORT = 'set -- "$t" "$tmp" "$@"\nexec <&3 3<&-\n'
#: Upload of one file (after RESOLVE's and the port's arguments): mode, mtime, exact size (files.SSH_PUT_FILE_SCRIPT).
PUT_FILE_SCRIPT = RESOLVE + OPEN_PORT + _TAKE_PORT + files.SSH_PUT_FILE_SCRIPT
#: Upload of a tree (after RESOLVE's and the port's arguments): mode, end marker (files.SSH_PUT_TREE_SCRIPT).
PUT_TREE_SCRIPT = RESOLVE + OPEN_PORT + _TAKE_PORT + files.SSH_PUT_TREE_SCRIPT
#: Download: $1 the guest path, $2 "dir" or "file".
GET_SCRIPT = OPEN_PORT + r"""
exec >&3 3>&-
if [ "$2" = dir ]; then exec tar -cf - -C "$1" .; fi
exec tar -chf - -C "$(dirname "$1")" "$(basename "$1")"
"""


def resolve_args(dest: str, name: str) -> list[str]:
    """RESOLVE's arguments for the destination ``dest`` as the user wrote it and the source's ``name``."""
    if not name or "/" in name or "\0" in name or name in (".", ".."):
        raise InvalidInput(f"{name!r} is not a file name")
    return [files.guest_path(dest), name, "/" if dest.endswith("/") else "", files.temp_name("")]


class TarFramingError(Exception):
    """What came out of the port is not a well-formed tar (the guest's tar failed, or the stream was cut)."""


def parse_number(field: bytes) -> int:
    """A tar header's numeric field: octal digits (NUL or space terminated), or GNU's base-256 (high bit set)."""
    if field and field[0] & 0x80:
        value = int.from_bytes(field[1:], "big")
        return value if not field[0] & 0x40 else -value
    digits = field.split(b"\0", 1)[0].strip()
    try:
        return int(digits, 8) if digits else 0
    except ValueError:
        raise TarFramingError(f"bad number {field!r} in a tar header") from None


def check_header(block: bytes) -> tuple[int, int]:
    """(type byte, data size) of a header block whose checksum is right."""
    stored = parse_number(block[148:156])
    actual = sum(block[:148]) + 8 * 32 + sum(block[156:])
    if stored != actual:
        raise TarFramingError("a tar header's checksum is wrong: the stream is damaged")
    typeflag = block[156]
    return typeflag, parse_number(block[124:136]) if typeflag in _HAS_DATA else 0


def padded(size: int) -> int:
    return (size + BLOCK - 1) // BLOCK * BLOCK


async def _exactly(reader: asyncio.StreamReader, n: int) -> bytes:
    try:
        return await reader.readexactly(n)
    except asyncio.IncompleteReadError:
        raise TarFramingError("the stream from the guest ended inside a tar archive") from None


async def _data(reader: asyncio.StreamReader, size: int, chunk: int) -> AsyncIterator[bytes]:
    while size > 0:
        data = await reader.read(min(size, chunk))
        if not data:
            raise TarFramingError("the stream from the guest ended inside a tar member")
        size -= len(data)
        yield data


async def tar_archive(reader: asyncio.StreamReader, chunk: int = 1 << 20) -> AsyncIterator[bytes]:
    """The bytes of one tar archive read from ``reader``, up to and including its two end blocks: nothing after
    them is read. Raises TarFramingError on a damaged header or a cut stream."""
    zeros = 0
    while zeros < 2:
        block = await _exactly(reader, BLOCK)
        yield block
        if block == _ZERO:
            zeros += 1
            continue
        zeros = 0
        _, size = check_header(block)
        async for data in _data(reader, padded(size), chunk):
            yield data


@dataclass
class Member:
    """The one regular file of a single-file archive, its data still to be read."""

    size: int
    mode: int
    mtime: int


async def file_member(reader: asyncio.StreamReader) -> Member:
    """Read up to the data of the archive's first regular file (long-name and pax headers before it skipped)."""
    while True:
        block = await _exactly(reader, BLOCK)
        if block == _ZERO:
            raise TarFramingError("the guest's tar archive holds no file")
        typeflag, size = check_header(block)
        if typeflag in b"0\x007":
            return Member(size, parse_number(block[100:108]) & 0o7777, parse_number(block[136:148]))
        if typeflag in _HAS_DATA:
            await _exactly(reader, padded(size))
        else:
            raise TarFramingError(f"the guest's tar archive holds a {chr(typeflag)!r} member, not a file")


async def member_data(reader: asyncio.StreamReader, member: Member, chunk: int = 1 << 20) -> AsyncIterator[bytes]:
    """The file's bytes, exactly ``member.size`` of them (its padding and the end blocks are left unread)."""
    async for data in _data(reader, member.size, chunk):
        yield data


def download_kind(kind: str) -> str:
    """GET_SCRIPT's second argument for a guest source of this kind."""
    return "dir" if kind == "dir" else "file"


def tmp_for(path: str) -> str:
    """Where an upload is written before its rename (beside it: same file system)."""
    return files.temp_name(posixpath.normpath(path))
