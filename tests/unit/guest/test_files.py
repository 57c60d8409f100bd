"""The pure helpers of `corral cp`: which side is in a VM, guest path normalization, temporaries, tar sizes."""

from __future__ import annotations

import asyncio
import io
import tarfile
from collections.abc import AsyncIterator

import pytest

from corral.errors import InvalidInput
from corral.guest import files
from corral.guest.files import Location, guest_path, parse_copy, parse_location, tar_size_estimate


@pytest.mark.parametrize("arg,expected", [
    ("demo:/root/x.bin", Location("demo", "/root/x.bin")),
    ("demo:", Location("demo", "")),
    ("web-1:rel/path", Location("web-1", "rel/path")),
    ("./local.bin", Location(None, "./local.bin")),
    ("./a:b", Location(None, "./a:b")),          # a host path with a colon, written as such
    ("/abs/a:b", Location(None, "/abs/a:b")),
    ("Bad_Name:/x", Location(None, "Bad_Name:/x")),  # not a VM name: a host path
    ("C:/x", Location(None, "C:/x")),
])
def test_parse_location(arg: str, expected: Location) -> None:
    assert parse_location(arg) == expected


def test_parse_copy_one_side_in_a_vm() -> None:
    assert parse_copy("./f", "vm:/root/") == (Location(None, "./f"), Location("vm", "/root/"))
    assert parse_copy("vm:/etc", "./etc-copy") == (Location("vm", "/etc"), Location(None, "./etc-copy"))


@pytest.mark.parametrize("src,dst,words", [
    ("a:/x", "b:/y", "one side must be a host path"),
    ("./x", "./y", "write one side as VM:PATH"),
    ("vm:", "./y", "has no path"),
])
def test_parse_copy_errors(src: str, dst: str, words: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_copy(src, dst)
    assert words in info.value.message and "\n" not in info.value.message


@pytest.mark.parametrize("path,expected", [
    ("/root/x", "/root/x"), ("x.bin", "/root/x.bin"), ("../etc/", "/etc"), ("//a//b/./c", "/a/b/c"), ("/", "/"),
])
def test_guest_path(path: str, expected: str) -> None:
    assert guest_path(path) == expected


@pytest.mark.parametrize("bad", ["", "a\0b"])
def test_guest_path_refuses(bad: str) -> None:
    with pytest.raises(InvalidInput):
        guest_path(bad)


def test_temp_names_sit_beside_the_destination_and_differ() -> None:
    a, b = files.temp_name("/root/x.bin"), files.temp_name("/root/x.bin")
    assert a != b and a.startswith("/root/x.bin" + files.TMP_MARK) and b.startswith("/root/x.bin.corral-tmp-")
    assert files.parent_of("/root/x.bin") == "/root" and files.parent_of("/x") == "/" and files.parent_of("/") == "/"


def test_tar_size_estimate_matches_tarfile() -> None:
    sizes = [0, 1, 511, 512, 513, 70000]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w|", format=tarfile.GNU_FORMAT) as tar:
        for i, size in enumerate(sizes):
            info = tarfile.TarInfo(f"f{i}")
            info.size = size
            tar.addfile(info, io.BytesIO(b"x" * size))
    assert tar_size_estimate(sizes) == len(buf.getvalue())


def test_rechunk_regroups_into_write_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files, "WRITE_CHUNK", 10)

    async def pieces() -> AsyncIterator[bytes]:
        for p in (b"abc", b"defghijklmn", b"", b"opqrstuvwxyz0123"):
            yield p

    async def collect() -> list[bytes]:
        return [c async for c in files._rechunk(pieces())]

    out = asyncio.run(collect())
    assert b"".join(out) == b"abcdefghijklmnopqrstuvwxyz0123"
    assert [len(c) for c in out] == [10, 10, 10]
