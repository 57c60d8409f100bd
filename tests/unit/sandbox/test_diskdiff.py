"""The report's file diff: debugfs' output parsed, the diff itself, and the whole walk on two small ext4 file
systems made with mkfs.ext4 -d (no VM, no mount, no root)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from corral.sandbox import diskdiff as dd

LS = """debugfs 1.47.0 (5-Feb-2023)
debugfs: ls -p <2>
/2/040755/0/0/.//
/2/040755/0/0/..//
/12/040755/0/0/etc//
/13/100644/0/0/motd/12/
debugfs: ls -p <12>
/12/040755/0/0/.//
/14/100600/0/0/shadow/25/
/15/120777/0/0/weird name/7/
"""

STAT = """debugfs: stat <13>
Inode: 13   Type: regular    Mode:  0644   Flags: 0x80000
 ctime: 0x6b118dbd:00000000 -- Thu Dec  3 15:41:49 2026
 atime: 0x6b118dbd:00000000 -- Thu Dec  3 15:41:49 2026
debugfs: stat <14>
 ctime: 0x6b118dff -- Thu Dec  3 15:42:55 2026
"""


def test_parse_ls_and_ctimes() -> None:
    listing = dd.parse_ls(LS)
    assert [n for n, _ in listing["<2>"]] == ["etc", "motd"]
    name, e = listing["<12>"][1]
    assert name == "weird name" and e.kind() == "symlink" and e.size == 7
    assert listing["<2>"][0][1].is_dir and listing["<2>"][1][1].mode & 0o777 == 0o644
    assert dd.parse_ctimes(STAT) == {13: "0x6b118dbd:00000000", 14: "0x6b118dff"}


def test_diff() -> None:
    f = dd.Entry(10, 0o100644, 0, 0, 5, "0x1")
    d = dd.Entry(11, 0o040755, 0, 0, 0, "0x1")
    before = {"/a": f, "/gone": f, "/dir": d, "/same": f}
    after = {"/a": dd.Entry(10, 0o100644, 0, 0, 5, "0x2"), "/dir": dd.Entry(11, 0o040755, 0, 0, 0, "0x9"),
             "/same": f, "/new": dd.Entry(12, 0o100755, 0, 0, 3, "0x2"), "/newdir": d}
    changes = {(c.path, c.change, c.kind) for c in dd.diff(before, after)}
    assert changes == {("/a", "modified", "file"), ("/gone", "deleted", "file"), ("/new", "created", "file"),
                       ("/newdir", "created", "dir")}  # a directory's ctime alone is not a change
    new = next(c for c in dd.diff(before, after) if c.path == "/new")
    assert new.mode == "0755" and new.size == 3


def mkfs(tree: Path, image: Path) -> None:
    subprocess.run(["truncate", "-s", "16M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(image)], check=True, capture_output=True)


@pytest.mark.skipif(shutil.which("mkfs.ext4") is None or shutil.which("debugfs") is None,
                    reason="needs e2fsprogs (scripts/setup.sh installs it)")
def test_walk_two_file_systems(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "profile").write_text("export PATH=/bin\n")
    (tree / "etc" / "shells").write_text("/bin/sh\n")
    (tree / "etc" / "same").write_text("x\n")
    (tree / 'quote "dir"').mkdir()
    (tree / 'quote "dir"' / "f").write_text("1")
    mkfs(tree, tmp_path / "before.raw")
    time.sleep(1.1)  # a second later: the ctimes of what is written again differ
    (tree / "etc" / "profile").write_text("export PATH=/tmp\n")  # same size, new content
    (tree / "etc" / "shells").unlink()
    (tree / "loot").mkdir()
    (tree / "loot" / "stolen.txt").write_text("secret\n")
    os.symlink("/etc/same", tree / "link")
    mkfs(tree, tmp_path / "after.raw")
    # mkfs -d writes every file anew: compare against the same "before" walked twice for the unchanged ones.
    before, cut = dd.walk(dd.ext_device(tmp_path / "before.raw"), tmp_path)
    assert not cut and {"/etc", "/etc/profile", "/etc/shells", '/quote "dir"/f'} <= set(before)
    assert dd.diff(before, dd.walk(str(tmp_path / "before.raw"), tmp_path)[0]) == []
    after, _ = dd.walk(str(tmp_path / "after.raw"), tmp_path)
    changes = {(c.path, c.change) for c in dd.diff(before, after)}
    assert {("/etc/profile", "modified"), ("/etc/shells", "deleted"), ("/loot", "created"),
            ("/loot/stolen.txt", "created"), ("/link", "created")} <= changes


def test_no_file_system(tmp_path: Path) -> None:
    raw = tmp_path / "blank.raw"
    raw.write_bytes(b"\0" * (1 << 20))
    if shutil.which("debugfs") is None:
        pytest.skip("needs e2fsprogs")
    with pytest.raises(dd.DiffError, match="no ext2/3/4 file system"):
        dd.ext_device(raw)
