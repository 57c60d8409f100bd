"""The export archive: a round trip, and every way an archive from elsewhere can be wrong."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from corral.portable import archive
from corral.portable.archive import ArchiveError, Member


def _files(tmp: Path) -> list[Member]:
    (tmp / "src").mkdir()
    a = tmp / "src" / "a.bin"
    a.write_bytes(b"A" * 3_000_000)
    b = tmp / "src" / "b.json"
    b.write_text('{"x": 1}')
    return [Member("layers/a.qcow2", a), Member("spec.json", b)]


def test_round_trip(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    manifest = archive.write(tmp_path / "x.tar.gz", _files(tmp_path), {"vm": "web"}, lambda d, t: seen.append((d, t)))
    assert set(manifest["files"]) == {"layers/a.qcow2", "spec.json"}
    assert seen[-1][0] == seen[-1][1] == 3_000_000 + 8
    assert not (tmp_path / "x.tar.gz.partial").exists()
    out = tmp_path / "out"
    out.mkdir()
    meta = archive.read(tmp_path / "x.tar.gz", out)
    assert meta == {"vm": "web"}
    assert (out / "layers/a.qcow2").read_bytes() == b"A" * 3_000_000
    assert (out / "spec.json").read_text() == '{"x": 1}'


def _tar(path: Path, entries: list[tuple[tarfile.TarInfo, bytes]]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in entries:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)


def _file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def _manifest(files: dict[str, bytes]) -> bytes:
    import hashlib
    return json.dumps({"format": archive.FORMAT, "meta": {},
                       "files": {n: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
                                 for n, d in files.items()}}).encode()


@pytest.mark.parametrize("case,expect", [
    ("tampered", "does not match its checksum"),
    ("missing", "listed in the manifest but missing"),
    ("extra", "not listed in the manifest"),
    ("no-manifest", "has no corral-export/1 manifest"),
    ("dotdot", "not a plain relative path"),
    ("absolute", "not a plain relative path"),
    ("symlink", "not a regular file"),
    ("after-manifest", "after the manifest"),
])
def test_bad_archives_are_refused(tmp_path: Path, case: str, expect: str) -> None:
    good = {"spec.json": b"{}", "disk": b"data"}
    entries: list[tuple[tarfile.TarInfo, bytes]] = []
    if case == "tampered":
        entries = [(_file("spec.json"), b"{}"), (_file("disk"), b"DATA"), (_file("manifest.json"), _manifest(good))]
    elif case == "missing":
        entries = [(_file("spec.json"), b"{}"), (_file("manifest.json"), _manifest(good))]
    elif case == "extra":
        entries = [(_file("spec.json"), b"{}"), (_file("disk"), b"data"), (_file("x"), b""),
                   (_file("manifest.json"), _manifest(good))]
    elif case == "no-manifest":
        entries = [(_file("spec.json"), b"{}")]
    elif case == "dotdot":
        entries = [(_file("../evil"), b"x")]
    elif case == "absolute":
        entries = [(_file("/tmp/evil"), b"x")]
    elif case == "symlink":
        link = tarfile.TarInfo("spec.json")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        entries = [(link, b"")]
    elif case == "after-manifest":
        entries = [(_file("manifest.json"), _manifest({})), (_file("late"), b"x")]
    _tar(tmp_path / "bad.tar.gz", entries)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ArchiveError, match=expect):
        archive.read(tmp_path / "bad.tar.gz", out)
    assert not (tmp_path / "evil").exists()


@pytest.mark.parametrize("where", [0.3, 0.5, 0.9])
def test_flipped_byte_in_the_archive_is_detected(tmp_path: Path, where: float) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "r").write_bytes(os.urandom(200_000))
    archive.write(tmp_path / "x.tar.gz", [Member("r", tmp_path / "src" / "r")], {})
    raw = bytearray((tmp_path / "x.tar.gz").read_bytes())
    raw[int(len(raw) * where) if where > 0 else int(where)] ^= 0x01
    (tmp_path / "x.tar.gz").write_bytes(bytes(raw))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ArchiveError):
        archive.read(tmp_path / "x.tar.gz", out)


def test_not_an_archive(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("hello")
    with pytest.raises(ArchiveError, match="not a Corral export archive"):
        archive.read(tmp_path / "x", tmp_path)


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    members = [Member("a", tmp_path / "missing")]
    with pytest.raises(OSError):
        archive.write(tmp_path / "x.tar.gz", members, {})
    assert list(tmp_path.iterdir()) == []
