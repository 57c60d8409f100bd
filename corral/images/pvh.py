"""The x86 kernel an image boots, made ready for QEMU's PVH entry: the uncompressed ELF ``vmlinux`` out of a bzImage.

Why: QEMU boots an ELF kernel that carries a Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY, Debian's kernels have
CONFIG_PVH) straight into 32-bit protected mode at that entry. The bzImage path instead runs the kernel's real-mode
setup and then its decompressor, which under TCG (every instruction emulated) costs a few tenths of a second of CPU at
every cold boot. Measured on the tiny image: about 8 % less QEMU CPU from start to a guest-agent answer
(docs/explanation/images.md). The price is disk: the ELF is about 53 MB where the bzImage is 8 MB.

A kernel without the note, or compressed in a way we cannot undo, stays a bzImage: QEMU boots that as before.
"""

from __future__ import annotations

import gzip
import lzma
import shutil
import struct
import subprocess
from pathlib import Path

#: The bzImage setup header (Documentation/arch/x86/boot.rst): setup_sects at 0x1f1, "HdrS" at 0x202,
#: payload_offset and payload_length (protocol 2.08+) at 0x248 and 0x24c.
_SETUP_SECTS, _HDRS, _PAYLOAD_OFFSET = 0x1F1, 0x202, 0x248
_XEN_ELFNOTE_PHYS32_ENTRY = 18
_PT_NOTE = 4

#: Payload compressions by magic, and the command that undoes each (zstd and lz4 from their Debian packages, which
#: scripts/setup.sh installs; gzip and xz through the standard library).
_LZ4_LEGACY, _ZSTD = b"\x02\x21\x4c\x18", b"\x28\xb5\x2f\xfd"


def payload(bzimage: bytes) -> bytes | None:
    """The compressed kernel inside a bzImage, or None when ``bzimage`` is not one (or too old to say where)."""
    if len(bzimage) < 0x250 or bzimage[_HDRS:_HDRS + 4] != b"HdrS":
        return None
    setup_sects = bzimage[_SETUP_SECTS] or 4
    offset, length = struct.unpack_from("<II", bzimage, _PAYLOAD_OFFSET)
    start = (setup_sects + 1) * 512 + offset
    if not offset or start + length > len(bzimage):
        return None
    return bzimage[start:start + length]


def decompress(data: bytes) -> bytes | None:
    """``data`` decompressed by its magic (gzip, xz, zstd, lz4 legacy), or None for a compression we do not undo."""
    if data.startswith(b"\x1f\x8b"):
        return gzip.decompress(data)
    if data.startswith(b"\xfd7zXZ\x00"):
        return lzma.decompress(data)
    for magic, tool in ((_ZSTD, "zstd"), (_LZ4_LEGACY, "lz4")):
        if data.startswith(magic) and shutil.which(tool):
            # The payload ends with the decompressed size (4 bytes) after the stream: the tools stop at the stream's
            # end and may complain about what follows, so their output, not their exit status, is what counts.
            out = subprocess.run([tool, "-d", "-c"], input=data, capture_output=True, check=False).stdout
            return out or None
    return None


def has_pvh_entry(elf: bytes) -> bool:
    """Whether ``elf`` is a 64-bit little-endian ELF with a Xen PVH entry note (what QEMU's PVH boot looks for)."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        return False
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        p_type, _flags, p_offset, _va, _pa, p_filesz = struct.unpack_from("<IIQQQQ", elf, phoff + i * phentsize)
        if p_type != _PT_NOTE:
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12:pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and ntype == _XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def to_pvh(kernel: Path) -> bool:
    """Replace the bzImage ``kernel`` by its ELF vmlinux when that boots through PVH; True if it was replaced."""
    elf = decompress(payload(kernel.read_bytes()) or b"")
    if not elf or not has_pvh_entry(elf):
        return False
    tmp = kernel.with_name(kernel.name + ".pvh")
    tmp.write_bytes(elf)
    tmp.replace(kernel)
    return True
