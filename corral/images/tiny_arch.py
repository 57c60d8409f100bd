"""What the ``tiny`` image is made of on each guest architecture: suite, kernel, modules, console, library paths.

Why a table: :func:`corral.images.tiny.build_tiny` is one builder for every architecture, and what differs is data.
x86_64 keeps Debian 12's cloud kernel with 9p modules Corral builds for it (corral.images.kmods). aarch64 and
riscv64 use Debian's generic kernel of their suite: its own 9p modules serve shared folders (building modules for a
foreign kernel would need a cross compiler), its ``gpio_keys`` gives arm's ``virt`` machine a power button.
riscv64 comes from Debian 13 (trixie), the first release with riscv64, whose kernel modules are xz-compressed and
whose files live under /usr only.

A foreign busybox cannot run on the build host, so its applet list is read from the binary (:func:`applet_names`)
rather than asked of ``busybox --list-full``.
"""

from __future__ import annotations

import lzma
import re
from dataclasses import dataclass
from pathlib import Path

from corral.errors import ImageError
from corral.images.initrd import module_depends
from corral.vm.arch import Arch

#: Part of the build-cache key of every architecture but x86_64 (whose key stays tiny.BUILDER_VERSION).
ARCH_BUILDER_VERSION = "2"


@dataclass(frozen=True)
class TinyArch:
    """One architecture's ``tiny``: ``kernel_meta`` is the Debian metapackage naming the kernel, ``modules`` what
    the initrd loads (those the kernel has built in are skipped), ``build_9p`` whether Corral builds the 9p modules
    (the kernel has none) or the kernel ships them, ``multiarch`` the library directory (lib/<triplet>)."""

    suite: str
    kernel_meta: str
    cmdline: str
    modules: tuple[str, ...]
    build_9p: bool
    multiarch: str
    console: str


# Loaded by the foreign initrds: ext4 is a module there (with crc32c, which ext4 asks for by name at mount time);
# gpio_keys + evdev give busybox acpid the power key of arm's virt machine (riscv's virt has none, and skips it).
# cryptomgr.notests, as on x86_64 (tiny.KERNEL_CMDLINE): the crypto self-tests check the kernel, not this guest.
_GENERIC_MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "virtio_console", "crc32c_generic", "ext4", "evdev",
                    "virtio_balloon", "9pnet_virtio", "9p")

FOREIGN: dict[Arch, TinyArch] = {
    Arch.AARCH64: TinyArch(
        suite="bookworm", kernel_meta="linux-image-arm64",
        cmdline="root=/dev/vda rw console=ttyAMA0 quiet loglevel=3 cryptomgr.notests",
        modules=(*_GENERIC_MODULES, "gpio_keys"), build_9p=False, multiarch="aarch64-linux-gnu", console="ttyAMA0"),
    Arch.RISCV64: TinyArch(
        suite="trixie", kernel_meta="linux-image-riscv64",
        cmdline="root=/dev/vda rw console=ttyS0 quiet loglevel=3 cryptomgr.notests",
        modules=_GENERIC_MODULES, build_9p=False, multiarch="riscv64-linux-gnu", console="ttyS0"),
}


def applet_names(busybox: Path) -> list[str]:
    """The applets a busybox binary has, read from its name table (NUL-separated, sorted, starting ``[``, ``[[``)."""
    data = busybox.read_bytes()
    start = data.find(b"[\0[[\0")
    if start < 0:
        raise ImageError(f"{busybox.name} has no applet table: the busybox-static package changed")
    names: list[str] = []
    for raw in data[start:start + (1 << 16)].split(b"\0"):
        if not raw or not re.fullmatch(rb"[a-z0-9_.\[\]-]+", raw):
            break
        names.append(raw.decode())
    if "sh" not in names or "init" not in names:
        raise ImageError(f"{busybox.name}'s applet table lacks sh or init: the busybox-static package changed")
    return [n for n in names if n != "busybox"]


def module_root(kroot: Path) -> Path:
    """``lib/modules/<release>`` of an unpacked kernel package (under usr/ in trixie)."""
    dirs = sorted((kroot / "lib/modules").glob("*")) or sorted((kroot / "usr/lib/modules").glob("*"))
    if not dirs:
        raise ImageError("the kernel package holds no modules: the Debian package layout changed")
    return dirs[0]


def decompress_needed(moddir: Path, wanted: list[str]) -> None:
    """Unpack the xz-compressed modules (trixie's) that ``wanted`` and their dependencies need, in place, so that
    the initrd's module lookup finds plain ``.ko`` files; only those: unpacking all 3,000 took most of a minute."""
    xz = {p.name.removesuffix(".ko.xz").replace("-", "_"): p for p in moddir.rglob("*.ko.xz")}
    todo, seen = [w.replace("-", "_") for w in wanted], set()
    while todo:
        name = todo.pop()
        if name in seen or name not in xz:
            continue  # done, built in, or already plain (module_load_order names what is missing)
        seen.add(name)
        ko = xz[name].with_suffix("")
        ko.write_bytes(lzma.decompress(xz[name].read_bytes()))
        todo += [d.replace("-", "_") for d in module_depends(ko)]


def builtin_modules(moddir: Path) -> set[str]:
    """Names (``_`` for ``-``) of the modules the kernel has built in, from its ``modules.builtin``."""
    f = moddir / "modules.builtin"
    if not f.is_file():
        return set()
    return {Path(line.strip()).name.removesuffix(".ko").replace("-", "_") for line in f.read_text().splitlines()}
