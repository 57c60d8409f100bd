"""What a sample changed on the guest's disk, read from the host after its VM stopped, so that the sample cannot lie
about it: the image's disk and the sandbox VM's disk are each converted to a raw file (qemu-img, in the engine) and
walked with e2fsprogs' ``debugfs`` (read-only, no mount, no root), then compared.

A file is *created* when its path is new, *deleted* when its path is gone, *modified* when its inode, type, mode,
owner, size or change time (ctime: set by the kernel on every write, which ``touch`` cannot set back) differ.
Directories are reported only when created or deleted (their ctime changes with every entry). What the guest kept in
memory only (tmpfs: the tiny image's /tmp and /run) is not on the disk and is not seen here: the report says so.

The parsers and the diff are pure and unit-tested (tests/unit/sandbox/test_diskdiff.py); so is the walk itself, on
small ext4 file systems made by ``mkfs.ext4 -d``.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field

MAX_ENTRIES = 200_000  # a file system with more inodes is walked up to this many (the report says it was cut)
MAX_DEPTH = 64
DEBUGFS_TIMEOUT = 300.0
S_IFMT, S_IFDIR, S_IFLNK = 0o170000, 0o040000, 0o120000
ROOT_INODE = 2  # ext2/3/4's root directory


class DiffError(Exception):
    """The disk could not be read (no ext2/3/4 file system found, debugfs missing or failing)."""


@dataclass(frozen=True)
class Entry:
    inode: int
    mode: int
    uid: int
    gid: int
    size: int
    ctime: str = ""

    @property
    def is_dir(self) -> bool:
        return self.mode & S_IFMT == S_IFDIR

    def kind(self) -> str:
        fmt = self.mode & S_IFMT
        return {S_IFDIR: "dir", S_IFLNK: "symlink", 0o100000: "file"}.get(fmt, "other")


class FileChange(BaseModel):
    path: str
    change: str = Field(description="created, modified or deleted")
    kind: str = Field(description="file, dir, symlink or other")
    size: int | None = Field(default=None, description="bytes, after the run (none if deleted)")
    mode: str = Field(default="", description="octal permission bits after the run")


# -- parsing debugfs' output --------------------------------------------------------------------------------------
_LS_P = re.compile(r"^/(\d+)/([0-7]+)/(\d+)/(\d+)/(.*)/(\d*)/$")
_CMD = re.compile(r"^debugfs: (\S+) (.*)$")
_CTIME = re.compile(r"^\s*ctime: (0x[0-9a-f]+(?::[0-9a-f]+)?)")


def parse_ls(output: str) -> dict[str, list[tuple[str, Entry]]]:
    """``debugfs -f`` output of ``ls -p DIR`` commands: each directory's entries (name, entry), without . and .."""
    out: dict[str, list[tuple[str, Entry]]] = {}
    current: list[tuple[str, Entry]] | None = None
    for line in output.splitlines():
        cmd = _CMD.match(line)
        if cmd:
            current = out.setdefault(cmd[2].removeprefix("-p ").strip(), []) if cmd[1] == "ls" else None
            continue
        m = _LS_P.match(line)
        if m is None or current is None:
            continue
        name = m[5]
        if name in (".", "..") or not name:
            continue
        current.append((name, Entry(int(m[1]), int(m[2], 8), int(m[3]), int(m[4]), int(m[6] or 0))))
    return out


def parse_ctimes(output: str) -> dict[int, str]:
    """``debugfs -f`` output of ``stat <INODE>`` commands: each inode's ctime (seconds:extra, as printed)."""
    out: dict[int, str] = {}
    inode: int | None = None
    for line in output.splitlines():
        cmd = _CMD.match(line)
        if cmd:
            inode = int(cmd[2].strip("<> ")) if cmd[1] == "stat" else None
            continue
        m = _CTIME.match(line)
        if m and inode is not None and inode not in out:
            out[inode] = m[1]
    return out


def diff(before: dict[str, Entry], after: dict[str, Entry]) -> list[FileChange]:
    """The changes from ``before`` to ``after`` (path -> entry), sorted by path."""
    changes: list[FileChange] = []
    for path in sorted(set(before) | set(after)):
        b, a = before.get(path), after.get(path)
        if a is not None and b is None:
            changes.append(_change(path, "created", a))
        elif b is not None and a is None:
            changes.append(FileChange(path=path, change="deleted", kind=b.kind()))
        elif a is not None and b is not None and not a.is_dir and _key(a) != _key(b):
            changes.append(_change(path, "modified", a))
    return changes


def _key(e: Entry) -> tuple[int, int, int, int, int, str]:
    return (e.inode, e.mode, e.uid, e.gid, e.size, e.ctime)


def _change(path: str, change: str, e: Entry) -> FileChange:
    return FileChange(path=path, change=change, kind=e.kind(), size=None if e.is_dir else e.size,
                      mode=f"{e.mode & 0o7777:04o}")


# -- reading a raw disk -------------------------------------------------------------------------------------------
def _debugfs(device: str, commands: Iterable[str], workdir: Path) -> str:
    cmdfile = workdir / "debugfs.cmds"
    cmdfile.write_text("".join(f"{c}\n" for c in commands))
    try:
        r = subprocess.run(["debugfs", "-f", str(cmdfile), device], capture_output=True, text=True,
                           errors="replace", timeout=DEBUGFS_TIMEOUT, check=False)
    except FileNotFoundError as exc:
        raise DiffError("debugfs not found: install e2fsprogs (scripts/setup.sh)") from exc
    finally:
        cmdfile.unlink(missing_ok=True)
    if r.returncode != 0 or "Bad magic number" in r.stderr or "Filesystem not open" in r.stdout:
        raise DiffError(f"debugfs cannot read {device}: {r.stderr.strip().splitlines()[-1:] or r.returncode}")
    return r.stdout


def walk(device: str, workdir: Path) -> tuple[dict[str, Entry], bool]:
    """Every path of the ext file system on ``device`` (a raw file, optionally ``FILE?offset=N``) with its entry,
    breadth first, one debugfs run per level and one for the ctimes; and whether it was cut at MAX_ENTRIES.
    Directories are listed by inode number (``ls -p <N>``), never by name: a name the guest chose (quotes, spaces)
    cannot change what is listed."""
    entries: dict[str, Entry] = {}
    level, cut = [("/", ROOT_INODE)], False
    for _ in range(MAX_DEPTH):
        if not level:
            break
        listing = parse_ls(_debugfs(device, (f"ls -p <{ino}>" for _, ino in level), workdir))
        nxt: list[tuple[str, int]] = []
        for d, ino in level:
            for name, e in listing.get(f"<{ino}>", []):
                path = ("" if d == "/" else d) + "/" + name
                if len(entries) >= MAX_ENTRIES:
                    cut = True
                    break
                entries[path] = e
                if e.is_dir and not (d == "/" and name == "lost+found"):
                    nxt.append((path, e.inode))
        level = nxt
    inodes = sorted({e.inode for e in entries.values() if not e.is_dir})
    ctimes = parse_ctimes(_debugfs(device, (f"stat <{i}>" for i in inodes), workdir)) if inodes else {}
    return {p: Entry(e.inode, e.mode, e.uid, e.gid, e.size, ctimes.get(e.inode, "")) for p, e in entries.items()}, cut


def ext_device(raw: Path) -> str:
    """The ext file system on the raw disk ``raw``: the whole disk (tiny), else the largest Linux partition that
    holds one (``FILE?offset=BYTES``, an option of e2fsprogs' unix I/O manager)."""
    if _has_ext(str(raw)):
        return str(raw)
    try:
        r = subprocess.run(["sfdisk", "--json", str(raw)], capture_output=True, text=True, timeout=30, check=False)
        parts = json.loads(r.stdout)["partitiontable"]["partitions"] if r.returncode == 0 else []
    except (FileNotFoundError, ValueError, KeyError):
        parts = []
    sector = 512
    for p in sorted(parts, key=lambda p: -int(p.get("size", 0))):
        dev = f"{raw}?offset={int(p['start']) * sector}"
        if _has_ext(dev):
            return dev
    raise DiffError(f"no ext2/3/4 file system on the disk ({raw.name}): the file diff reads ext file systems only")


def _has_ext(device: str) -> bool:
    try:
        r = subprocess.run(["debugfs", "-R", "stats", device], capture_output=True, text=True, timeout=60,
                           check=False)
    except FileNotFoundError as exc:
        raise DiffError("debugfs not found: install e2fsprogs (scripts/setup.sh)") from exc
    return r.returncode == 0 and "Filesystem volume name" in r.stdout
