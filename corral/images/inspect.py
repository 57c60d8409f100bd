"""Our own check of an untrusted disk image, before any qemu-img opens it.

qemu-img follows what an image header asks for: a backing file (any host file, or a ``json:`` pseudo-file name
with arbitrary block-driver options), an external data file, an encryption layer. An image from outside is
therefore read here first, by a few hundred bytes of struct parsing, and refused when it:

- names a backing file (qcow2 ``backing_file_offset``/``backing_file_size``), ``json:`` ones included;
- uses an external data file (incompatible feature bit 2, or the header extension 0x44415441 naming it);
- is encrypted, corrupt, or has incompatible features this check does not know;
- is a qcow2 of a version other than 2 or 3, or with an impossible header;
- matches two formats at once: a "raw" image whose bytes start like a qcow2, vmdk, vdi, vhdx, qed, luks, vpc...
  image (QEMU would be told raw, but anything that probes it later would see the other format);
- is of any other format (vmdk, vdi, vhdx, compressed...): only qcow2 and raw are accepted.
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from corral.errors import ImageError, InvalidInput

Format = Literal["qcow2", "raw"]

QCOW2_MAGIC = b"QFI\xfb"
MAX_VIRTUAL_SIZE = 16 << 40  # the VM spec's largest disk

# Incompatible feature bits (qcow2 v3): the ones we accept. Bit 2 (external data file) and bit 1 (corrupt) are not.
_INCOMPAT_DIRTY = 1 << 0
_INCOMPAT_CORRUPT = 1 << 1
_INCOMPAT_DATA_FILE = 1 << 2
_INCOMPAT_COMPRESSION = 1 << 3
_INCOMPAT_EXTL2 = 1 << 4
_INCOMPAT_OK = _INCOMPAT_DIRTY | _INCOMPAT_COMPRESSION | _INCOMPAT_EXTL2

_EXT_END = 0
_EXT_BACKING_FORMAT = 0xE2792ACA
_EXT_FULL_DISK_ENCRYPTION = 0x0537BE77
_EXT_DATA_FILE = 0x44415441  # "DATA": the external data file's name

# Signatures of other formats, at the start of the file (offset, bytes, name).
_HEAD_MAGICS: tuple[tuple[int, bytes, str], ...] = (
    (0, QCOW2_MAGIC, "qcow2"),
    (0, b"QFI", "qcow"),
    (0, b"KDMV", "vmdk"),
    (0, b"COWD", "vmdk"),
    (0, b"# Disk DescriptorFile", "vmdk"),
    (0x40, struct.pack("<I", 0xBEDA107F), "vdi"),
    (0, b"vhdxfile", "vhdx"),
    (0, b"QED\x00", "qed"),
    (0, b"LUKS\xba\xbe", "luks"),
    (0, b"conectix", "vpc"),
    (0, b"WithoutFreeSpace", "parallels"),
    (0, b"WithouFreSpacExt", "parallels"),
    (0, b"Bochs Virtual HD Image", "bochs"),
    (0, b"#!/bin/sh\n#V2.0 Format", "cloop"),
    (0, b"\xfd7zXZ\x00", "xz-compressed"),
    (0, b"\x1f\x8b", "gzip-compressed"),
    (0, b"\x28\xb5\x2f\xfd", "zstd-compressed"),
    (0, b"BZh", "bzip2-compressed"),
)
# ... and at the end (offset from the end): vpc/vhd footers, dmg.
_TAIL_MAGICS: tuple[tuple[int, bytes, str], ...] = ((512, b"conectix", "vpc"), (512, b"koly", "dmg"))


@dataclass(frozen=True)
class Inspection:
    """What the header check found in an accepted image."""

    format: Format
    virtual_size: int
    file_size: int


def refuse(path: Path, why: str) -> ImageError:
    return ImageError(f"image {path.name} refused: {why}")


def detect(head: bytes, tail: bytes) -> list[str]:
    """Every format whose signature ``head``/``tail`` carry (qcow2 and qcow count once)."""
    found: list[str] = []
    for off, magic, name in _HEAD_MAGICS:
        if head[off:off + len(magic)] == magic and name not in found:
            found.append(name)
    for off, magic, name in _TAIL_MAGICS:
        if len(tail) >= off and tail[-off:-off + len(magic)] == magic and name not in found:
            found.append(name)
    if "qcow2" in found and "qcow" in found:
        found.remove("qcow")
    return found


def guess_format(path: Path) -> Format:
    """The format a file's name says (``.qcow2``, ``.raw``), else what its first bytes say (qcow2, or raw)."""
    suffix = path.suffix.lower()
    if suffix in (".qcow2", ".qcow"):
        return "qcow2"
    if suffix == ".raw":
        return "raw"
    with open(path, "rb") as f:
        return "qcow2" if f.read(4) == QCOW2_MAGIC else "raw"


def check_name(name: str) -> None:
    """A file name QEMU would read as options (``json:{...}``) or as a protocol is refused before anything."""
    base = os.path.basename(name)
    if name.startswith("json:") or base.startswith("json:"):
        raise InvalidInput(f"image file name {name!r} starts with 'json:', which QEMU reads as options: refused")


def _read_at(f: object, off: int, n: int) -> bytes:
    f.seek(off)  # type: ignore[attr-defined]
    return f.read(n)  # type: ignore[attr-defined,no-any-return]


def _qcow2(path: Path, f: object, size: int, allow_backing: bool = False) -> int:
    hdr = _read_at(f, 0, 112)
    if len(hdr) < 72:
        raise refuse(path, "qcow2 header is truncated")
    (magic, version, backing_off, backing_size, cluster_bits, vsize, crypt, _l1_size, _l1_off, _rc_off, _rc_clusters,
     _nb_snap, _snap_off) = struct.unpack(">4sIQIIQIIQQIIQ", hdr[:72])
    if magic != QCOW2_MAGIC:
        raise refuse(path, "stated qcow2 but it has no qcow2 header")
    if version not in (2, 3):
        raise refuse(path, f"qcow2 version {version} is not supported (only 2 and 3)")
    if not 9 <= cluster_bits <= 21:
        raise refuse(path, f"qcow2 cluster_bits {cluster_bits} is out of range")
    if (backing_off or backing_size) and not allow_backing:
        name = ""
        if backing_off and 0 < backing_size <= 1023:
            name = _read_at(f, backing_off, backing_size).decode(errors="replace")
        kind = "a json: backing file" if name.startswith("json:") else "a backing file"
        raise refuse(path, f"it names {kind} ({name!r}): images from outside must be self-contained")
    if crypt:
        raise refuse(path, "it is encrypted")
    if vsize > MAX_VIRTUAL_SIZE:
        raise refuse(path, f"virtual size {vsize} bytes is larger than 16 TiB")
    header_length, incompat = 72, 0
    if version == 3:
        if len(hdr) < 104:
            raise refuse(path, "qcow2 v3 header is truncated")
        incompat, _compat, _autoclear, _refcount_order, header_length = struct.unpack(">QQQII", hdr[72:104])
        if header_length < 104 or header_length > (1 << cluster_bits) or header_length % 8:
            raise refuse(path, f"qcow2 header_length {header_length} is invalid")
    if incompat & _INCOMPAT_DATA_FILE:
        raise refuse(path, "it uses an external data file (incompatible feature bit 2)")
    if incompat & _INCOMPAT_CORRUPT:
        raise refuse(path, "it is marked corrupt")
    if incompat & ~_INCOMPAT_OK:
        raise refuse(path, f"it has unknown incompatible qcow2 features (0x{incompat:x})")
    # Header extensions, up to the end of the first cluster.
    off, end = header_length, min(1 << cluster_bits, size)
    for _ in range(1024):
        if off + 8 > end:
            break
        ext_type, ext_len = struct.unpack(">II", _read_at(f, off, 8))
        if ext_type == _EXT_END:
            break
        if ext_type == _EXT_DATA_FILE:
            name = _read_at(f, off + 8, min(ext_len, 1023)).decode(errors="replace")
            raise refuse(path, f"it names an external data file ({name!r})")
        if ext_type == _EXT_FULL_DISK_ENCRYPTION:
            raise refuse(path, "it is encrypted (LUKS header extension)")
        off += 8 + ((ext_len + 7) & ~7)
    return int(vsize)


def inspect(path: Path, fmt: Format, *, allow_backing: bool = False) -> Inspection:
    """Check the image at ``path`` stated to be ``fmt``; raise :class:`ImageError` with the reason if refused.

    ``allow_backing``: a qcow2 may name a backing file, because the caller replaces it before QEMU opens the image
    (the layers of an exported VM, rebased onto this host's files); every other check still applies.
    """
    check_name(str(path))
    if fmt not in ("qcow2", "raw"):
        raise InvalidInput(f"image format {fmt!r} is not supported: only qcow2 and raw images can be imported")
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise refuse(path, "it is not a regular file")
        size = st.st_size
        if size == 0:
            raise refuse(path, "it is empty")
        head = _read_at(f, 0, 4096)
        tail = _read_at(f, max(0, size - 512), 512)
        found = detect(head, tail)
        if fmt == "raw":
            if found:
                raise refuse(path, f"stated raw, but its content is also a {found[0]} image (two formats at once)")
            if size > MAX_VIRTUAL_SIZE:
                raise refuse(path, "it is larger than 16 TiB")
            return Inspection("raw", size, size)
        others = [x for x in found if x != "qcow2"]
        if "qcow2" not in found:
            what = f"a {others[0]} image" if others else "not a qcow2 image"
            raise refuse(path, f"stated qcow2, but it is {what}")
        if others:
            raise refuse(path, f"it is qcow2 and also a {others[0]} image (two formats at once)")
        return Inspection("qcow2", _qcow2(path, f, size, allow_backing), size)
