"""What the tiny image's initrd and root are made of: the shared libraries an ELF binary needs (read from its
dynamic section, found in the unpacked packages), kernel modules in the order their dependencies need, and the cpio
newc archive the kernel unpacks. Pure file work, no QEMU; used by corral.images.tiny."""

from __future__ import annotations

import re
import shutil
import stat
import struct
from pathlib import Path

from corral.errors import ImageError

LIB_DIRS = ["lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64", "usr/lib64", "lib", "usr/lib"]


def lib_dirs(multiarch: str) -> list[str]:
    """Where a library of ``multiarch`` (``aarch64-linux-gnu``) may lie in unpacked packages."""
    return [f"lib/{multiarch}", f"usr/lib/{multiarch}", "lib64", "usr/lib64", "lib", "usr/lib"]


def elf_needed(path: Path) -> tuple[list[str], str | None]:
    """DT_NEEDED names and PT_INTERP of an ELF64 little-endian file (no binutils needed on the build host)."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return [], None
    (phoff, shoff) = struct.unpack_from("<QQ", data, 0x20)
    (phentsize, phnum, shentsize, shnum) = struct.unpack_from("<HHHH", data, 0x36)
    interp = None
    for i in range(phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
        if p_type == 3:  # PT_INTERP
            interp = data[p_offset : p_offset + p_filesz].rstrip(b"\0").decode()
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    needed: list[str] = []
    for sh in sections:
        if sh[1] != 6:  # SHT_DYNAMIC
            continue
        strtab = sections[sh[6]]
        str_off = strtab[4]
        for off in range(sh[4], sh[4] + sh[5], 16):
            tag, val = struct.unpack_from("<qQ", data, off)
            if tag == 0:
                break
            if tag == 1:  # DT_NEEDED
                end = data.index(b"\0", str_off + val)
                needed.append(data[str_off + val : end].decode())
    return needed, interp


def copy_with_libs(staging: Path, rel_binaries: list[str], tree: Path, multiarch: str = "x86_64-linux-gnu") -> None:
    """Copy binaries from staging into tree/usr/..., plus every library they need, transitively."""
    search = lib_dirs(multiarch)
    lib_out = tree / "usr/lib" / multiarch
    lib_out.mkdir(parents=True, exist_ok=True)
    todo: list[Path] = []
    for rel in rel_binaries:
        src = staging / rel
        if not src.exists() and not rel.startswith("usr/"):  # merged /usr (trixie): the file is only under usr/
            src = staging / "usr" / rel
        if not src.exists():
            raise ImageError(f"{rel} is missing from the extracted packages: the Debian package layout changed")
        dest = tree / "usr" / rel.removeprefix("usr/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)
        todo.append(dest)
    seen: set[str] = set()
    while todo:
        needed, interp = elf_needed(todo.pop())
        if interp and interp not in seen:
            seen.add(interp)
            src = staging / interp.lstrip("/")
            if not src.exists():  # merged /usr (trixie): /lib/ld-linux-*.so.1 is only under usr/lib
                src = staging / "usr" / interp.lstrip("/").removeprefix("usr/")
            dest = tree / "usr" / interp.lstrip("/").removeprefix("usr/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src.resolve(), dest)
            dest.chmod(0o755)
        for name in needed:
            if name in seen:
                continue
            seen.add(name)
            lib = next((staging / d / name for d in search if (staging / d / name).exists()), None)
            if lib is None:
                raise ImageError(f"shared library {name} is in no extracted package: add its package to the tiny image")
            dest = lib_out / name
            shutil.copyfile(lib.resolve(), dest)
            dest.chmod(0o755)
            todo.append(dest)


# -- initrd ---------------------------------------------------------------------------------------------------


class Cpio:
    """A newc cpio archive written in Python, so device nodes need no root and the output is reproducible."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.ino = 1

    def add(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0]
        self.ino += 1
        self.buf += b"070701" + b"".join(b"%08X" % f for f in fields) + name.encode() + b"\0"
        self.buf += b"\0" * (-len(self.buf) % 4)
        self.buf += data
        self.buf += b"\0" * (-len(self.buf) % 4)

    def dir(self, name: str) -> None:
        self.add(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self.add(name, stat.S_IFREG | perm, data)

    def finish(self) -> bytes:
        self.add("TRAILER!!!", 0)
        return bytes(self.buf)


def _module_index(modroot: Path) -> dict[str, Path]:
    """Module name (with - and _ both accepted) -> .ko path."""
    index: dict[str, Path] = {}
    for ko in modroot.rglob("*.ko"):
        index[ko.name[:-3]] = ko
        index[ko.name[:-3].replace("-", "_")] = ko
    return index


def module_depends(ko: Path) -> list[str]:
    m = re.search(rb"(?:^|\0)depends=([^\0]*)\0", ko.read_bytes())
    return [d for d in (m.group(1).decode().split(",") if m else []) if d]


def module_load_order(modroot: Path, wanted: list[str]) -> list[Path]:
    """The .ko files for ``wanted`` and their dependencies, dependencies first."""
    index = _module_index(modroot)
    order: list[Path] = []

    def visit(name: str) -> None:
        ko = index.get(name) or index.get(name.replace("-", "_"))
        if ko is None:
            raise ImageError(f"kernel module {name} is not in the kernel package: it may be built in now")
        if ko in order:
            return
        for dep in module_depends(ko):
            visit(dep)
        order.append(ko)

    for name in wanted:
        visit(name)
    return order
