"""The guest side of `corral cp` over SSH (POSIX sh scripts fed on stdin), run here with the host's sh and tar:
a whole stream is installed under its name with its mode; a stream cut short, whatever the cut, leaves nothing."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from corral.cli.copy_channels import tree_marker
from corral.guest import files


def run(script: str, stdin: bytes, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["sh", "-c", script, "sh", *args], input=stdin, capture_output=True, check=False,
                          timeout=30)


def put_file(dest: Path, data: bytes, size: int, mode: str = "640") -> subprocess.CompletedProcess[bytes]:
    return run(files.SSH_PUT_FILE_SCRIPT, data, str(dest), files.temp_name(str(dest)), mode, "1000000000",
               str(size))


def test_whole_file_is_installed_with_mode_and_mtime(tmp_path: Path) -> None:
    dest = tmp_path / "f.bin"
    r = put_file(dest, b"x" * 5000, 5000)
    assert r.returncode == 0, r.stderr
    assert dest.read_bytes() == b"x" * 5000
    assert dest.stat().st_mode & 0o7777 == 0o640 and int(dest.stat().st_mtime) == 1_000_000_000
    assert os.listdir(tmp_path) == ["f.bin"]


@pytest.mark.parametrize("sent", [0, 1, 4999])
def test_short_file_leaves_nothing(tmp_path: Path, sent: int) -> None:
    dest = tmp_path / "f.bin"
    dest.write_bytes(b"old")
    r = put_file(dest, b"x" * sent, 5000)
    assert r.returncode == 1 and b"ended early" in r.stderr
    assert os.listdir(tmp_path) == ["f.bin"] and dest.read_bytes() == b"old"


def test_file_onto_a_directory_is_a_conflict(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    r = put_file(tmp_path / "d", b"abc", 3)
    assert r.returncode == 17 and b"is an existing directory" in r.stderr
    assert os.listdir(tmp_path) == ["d"] and os.listdir(tmp_path / "d") == []


def tree_tar(marker: str | None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w|", format=tarfile.GNU_FORMAT) as tar:
        for name, data in (("./a.txt", b"alpha\n"), ("./sub/b.bin", os.urandom(20000))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if marker:
            tar.addfile(tarfile.TarInfo(f"./{marker}"))
    return buf.getvalue()


def put_tree(dest: Path, stream: bytes, marker: str) -> subprocess.CompletedProcess[bytes]:
    return run(files.SSH_PUT_TREE_SCRIPT, stream, str(dest), files.temp_name(str(dest)), "705", marker)


def test_whole_tree_is_installed_without_its_marker(tmp_path: Path) -> None:
    marker = tree_marker()
    r = put_tree(tmp_path / "t", tree_tar(marker), marker)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "t").rglob("*")) == ["a.txt", "b.bin", "sub"]
    assert (tmp_path / "t").stat().st_mode & 0o7777 == 0o705
    assert os.listdir(tmp_path) == ["t"]


def test_cut_tree_leaves_nothing(tmp_path: Path) -> None:
    marker = tree_marker()
    whole = tree_tar(marker)
    # cut anywhere, on a block boundary too, or a whole archive of the wrong copy (no marker)
    for stream in (whole[:700], whole[:1024], whole[:len(whole) - 10240], tree_tar(None), b""):
        r = put_tree(tmp_path / "t", stream, marker)
        assert r.returncode != 0 and r.returncode != 17
        assert os.listdir(tmp_path) == []


def test_tree_onto_an_existing_path_is_a_conflict(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    marker = tree_marker()
    r = put_tree(tmp_path / "t", tree_tar(marker), marker)
    assert r.returncode == 17 and b"already exists" in r.stderr
    assert os.listdir(tmp_path) == ["t"] and os.listdir(tmp_path / "t") == []
