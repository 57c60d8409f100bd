"""The tar framing of downloads over a data port: where an archive ends, a single file's member, damage found."""

from __future__ import annotations

import asyncio
import io
import tarfile
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import pytest

from corral.guest import portcopy

T = TypeVar("T")


def _reader(data: bytes) -> asyncio.StreamReader:
    """A reader that holds ``data`` then ends (made inside the test's running loop)."""
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


def run(make: Callable[[], Awaitable[T]]) -> T:
    async def go() -> T:
        return await make()
    return asyncio.run(go())


def _tar(members: dict[str, bytes], fmt: int = tarfile.GNU_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o640, 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
        sub = tarfile.TarInfo("./dir")
        sub.type = tarfile.DIRTYPE
        tar.addfile(sub)
    return buf.getvalue()


async def _collect(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([c async for c in chunks])


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_archive_read_to_its_end_blocks_and_no_further(fmt: int) -> None:
    archive = _tar({"./a": b"x" * 1000, "./" + "long" * 40: b"y" * 513, "./empty": b""}, fmt)
    trailing = b"NOT PART OF IT"
    got = run(lambda: _collect(portcopy.tar_archive(_reader(archive + trailing), chunk=100)))
    assert archive.startswith(got) and got.endswith(bytes(1024))
    with tarfile.open(fileobj=io.BytesIO(got), mode="r|") as tar:
        assert [m.name for m in tar] == ["./a", "./" + "long" * 40, "./empty", "./dir"]


def test_cut_or_damaged_archive_is_an_error() -> None:
    archive = _tar({"./a": b"x" * 5000})
    with pytest.raises(portcopy.TarFramingError, match="ended inside"):
        run(lambda: _collect(portcopy.tar_archive(_reader(archive[:3000]))))
    damaged = bytearray(archive)
    damaged[10] ^= 0xFF  # inside the first header's name: its checksum no longer matches
    with pytest.raises(portcopy.TarFramingError, match="checksum"):
        run(lambda: _collect(portcopy.tar_archive(_reader(bytes(damaged)))))


@pytest.mark.parametrize("name", ["f.bin", "n" * 150])  # a long name comes after a GNU long-name member
def test_single_file_member(name: str) -> None:
    data = bytes(range(256)) * 40

    async def go() -> tuple[portcopy.Member, bytes]:
        reader = _reader(_tar({name: data}))
        member = await portcopy.file_member(reader)
        return member, await _collect(portcopy.member_data(reader, member, chunk=1000))

    member, got = run(go)
    assert (member.size, member.mode, member.mtime, got) == (len(data), 0o640, 1_700_000_000, data)


def test_numbers() -> None:
    assert portcopy.parse_number(b"0000644\0") == 0o644
    assert portcopy.parse_number(b"\0" * 8) == 0
    assert portcopy.parse_number(bytes([0x80]) + (70 << 30).to_bytes(11, "big")) == 70 << 30  # GNU base-256
    with pytest.raises(portcopy.TarFramingError):
        portcopy.parse_number(b"12x4\0")


def test_archive_without_a_file() -> None:
    with pytest.raises(portcopy.TarFramingError, match="no file"):
        run(lambda: portcopy.file_member(_reader(bytes(1024))))


def test_resolve_args_carry_cps_rule() -> None:
    from corral.errors import InvalidInput
    from corral.guest import portcopy

    dest, name, into, tmp = portcopy.resolve_args("notes/", "a.txt")
    assert (dest, name, into) == ("/root/notes", "a.txt", "/") and tmp.startswith(".corral-tmp-")
    assert portcopy.resolve_args("/etc/x", "y")[:3] == ["/etc/x", "y", ""]
    for bad in ("", "a/b", "..", "a\0"):
        with pytest.raises(InvalidInput):
            portcopy.resolve_args("/root", bad)
