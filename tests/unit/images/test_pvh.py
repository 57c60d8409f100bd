"""The kernel made ready for PVH boot: the payload found by the setup header, undone, kept only with the entry note."""

from __future__ import annotations

import gzip
import lzma
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from corral.images import pvh


def elf_with_notes(*notes: tuple[bytes, int]) -> bytes:
    """A minimal 64-bit little-endian ELF: a header, one PT_NOTE program header, the notes."""
    body = b""
    for name, ntype in notes:
        n = name + b"\0"
        desc = b"\0" * 8
        body += struct.pack("<III", len(n), len(desc), ntype) + n.ljust((len(n) + 3) // 4 * 4, b"\0") + desc
    phoff, phentsize = 64, 56
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x20, phoff)
    struct.pack_into("<HH", header, 0x36, phentsize, 1)
    ph = struct.pack("<IIQQQQQQ", 4, 0, phoff + phentsize, 0, 0, len(body), len(body), 4)
    return bytes(header) + ph + body


def bzimage(payload: bytes, setup_sects: int = 2) -> bytes:
    """A bzImage-shaped file: setup sectors with a header saying where ``payload`` starts, then the payload."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<II", setup, 0x248, 16, len(payload))
    return bytes(setup) + b"\0" * 16 + payload + b"trailer"


PVH_ELF = elf_with_notes((b"Xen", 6), (b"GNU", 3), (b"Xen", 18))


def test_the_payload_is_where_the_setup_header_says() -> None:
    assert pvh.payload(bzimage(b"PAYLOAD")) == b"PAYLOAD"
    assert pvh.payload(b"\0" * 4096) is None  # no "HdrS": not a bzImage
    assert pvh.payload(PVH_ELF) is None


def test_the_entry_note_is_found_among_others() -> None:
    assert pvh.has_pvh_entry(PVH_ELF)
    assert not pvh.has_pvh_entry(elf_with_notes((b"Xen", 6), (b"GNU", 18)))  # type 18 of another owner
    assert not pvh.has_pvh_entry(b"MZ" + PVH_ELF[2:])


@pytest.mark.parametrize("compress", [gzip.compress, lzma.compress])
def test_a_pvh_kernel_replaces_its_bzimage(tmp_path: Path, compress) -> None:  # type: ignore[no-untyped-def]
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(bzimage(compress(PVH_ELF)))
    assert pvh.to_pvh(kernel)
    assert kernel.read_bytes() == PVH_ELF


@pytest.mark.skipif(not shutil.which("lz4"), reason="lz4 is installed by scripts/setup.sh")
def test_lz4_legacy_payloads_are_undone(tmp_path: Path) -> None:
    # Debian's cloud kernels are compressed with lz4 -l (the legacy frame the kernel's decompressor reads).
    packed = subprocess.run(["lz4", "-l", "-c"], input=PVH_ELF, capture_output=True, check=True).stdout
    assert packed.startswith(b"\x02\x21\x4c\x18")
    assert pvh.decompress(packed + struct.pack("<I", len(PVH_ELF))) == PVH_ELF


def test_a_kernel_without_the_entry_stays_as_it_is(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinuz"
    original = bzimage(gzip.compress(elf_with_notes((b"Xen", 6))))
    kernel.write_bytes(original)
    assert not pvh.to_pvh(kernel)
    assert kernel.read_bytes() == original
    kernel.write_bytes(bzimage(b"BZh91AY&SY unknown compression"))
    assert not pvh.to_pvh(kernel)
