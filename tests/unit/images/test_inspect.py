"""Our header check refuses what would make qemu-img open other files, and accepts plain qcow2 and raw images.

Every malicious image is made here, with qemu-img or by hand; nothing is opened by qemu-img after the check fails."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

from corral.errors import ImageError, InvalidInput
from corral.images.catalog import digest_from_sums, lookup
from corral.images.inspect import guess_format, inspect


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def test_clean_qcow2_accepted(tmp_path: Path) -> None:
    img = tmp_path / "clean.qcow2"
    qemu_img("create", "-f", "qcow2", str(img), "64M")
    found = inspect(img, "qcow2")
    assert found.format == "qcow2" and found.virtual_size == 64 << 20
    assert guess_format(img) == "qcow2"


def test_clean_qcow2_v2_accepted(tmp_path: Path) -> None:
    img = tmp_path / "old.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "compat=0.10", str(img), "8M")
    assert inspect(img, "qcow2").virtual_size == 8 << 20


def test_clean_raw_accepted(tmp_path: Path) -> None:
    img = tmp_path / "disk.raw"
    img.write_bytes(b"\x00" * 510 + b"\x55\xaa" + b"\x00" * (1 << 20))  # an MBR signature is fine
    found = inspect(img, "raw")
    assert found.format == "raw" and found.virtual_size == img.stat().st_size
    assert guess_format(img) == "raw"


def test_backing_file_pointing_at_a_host_file_refused(tmp_path: Path) -> None:
    secret = tmp_path / "host-secret"
    secret.write_bytes(b"secret" * 1000)
    img = tmp_path / "evil.qcow2"
    qemu_img("create", "-f", "qcow2", "-F", "raw", "-b", str(secret), str(img), "1M")
    with pytest.raises(ImageError, match="backing file .*host-secret"):
        inspect(img, "qcow2")


def test_json_backing_file_refused(tmp_path: Path) -> None:
    img = tmp_path / "evil.qcow2"
    qemu_img("create", "-f", "qcow2", str(img), "1M")
    name = b'json:{"driver":"file","filename":"/etc/shadow"}'
    with open(img, "r+b") as f:  # point the header at a json: backing name written after the header extensions
        f.seek(8)
        f.write(struct.pack(">QI", 4096 - 256, len(name)))
        f.seek(4096 - 256)
        f.write(name)
    with pytest.raises(ImageError, match="json: backing file"):
        inspect(img, "qcow2")


def test_external_data_file_refused(tmp_path: Path) -> None:
    img = tmp_path / "evil.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", f"data_file={tmp_path / 'data.bin'}", str(img), "1M")
    with pytest.raises(ImageError, match="external data file"):
        inspect(img, "qcow2")


def test_data_file_name_extension_alone_refused(tmp_path: Path) -> None:
    img = tmp_path / "evil.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", f"data_file={tmp_path / 'data.bin'}", str(img), "1M")
    with open(img, "r+b") as f:  # clear the incompatible feature bit: the extension naming the file is still there
        f.seek(72)
        incompat = struct.unpack(">Q", f.read(8))[0]
        f.seek(72)
        f.write(struct.pack(">Q", incompat & ~4))
    with pytest.raises(ImageError, match="external data file .*data.bin"):
        inspect(img, "qcow2")


def test_raw_holding_a_qcow2_header_refused(tmp_path: Path) -> None:
    inner = tmp_path / "inner.qcow2"
    qemu_img("create", "-f", "qcow2", "-F", "raw", "-b", "/etc/passwd", str(inner), "1M")
    img = tmp_path / "evil.raw"
    img.write_bytes(inner.read_bytes())
    with pytest.raises(ImageError, match="stated raw, but its content is also a qcow2 image"):
        inspect(img, "raw")


@pytest.mark.parametrize("magic,offset,fmt", [
    (b"KDMV", 0, "vmdk"), (b"vhdxfile", 0, "vhdx"), (b"QED\x00", 0, "qed"), (b"LUKS\xba\xbe", 0, "luks"),
    (struct.pack("<I", 0xBEDA107F), 0x40, "vdi"), (b"\xfd7zXZ\x00", 0, "xz-compressed"),
])
def test_raw_with_another_formats_magic_refused(tmp_path: Path, magic: bytes, offset: int, fmt: str) -> None:
    data = bytearray(1 << 16)
    data[offset:offset + len(magic)] = magic
    img = tmp_path / "disk.img"
    img.write_bytes(bytes(data))
    with pytest.raises(ImageError, match=f"also a {fmt} image"):
        inspect(img, "raw")
    with pytest.raises(ImageError, match=f"it is a {fmt} image"):
        inspect(img, "qcow2")


def test_unknown_format_refused(tmp_path: Path) -> None:
    img = tmp_path / "disk.vmdk"
    qemu_img("create", "-f", "vmdk", str(img), "1M")
    with pytest.raises(InvalidInput, match="only qcow2 and raw"):
        inspect(img, "vmdk")  # type: ignore[arg-type]
    with pytest.raises(ImageError, match="vmdk"):
        inspect(img, "qcow2")


def test_json_file_name_refused(tmp_path: Path) -> None:
    img = tmp_path / 'json:{"driver":"file","filename":"x"}'
    img.write_bytes(b"\x00" * 4096)
    with pytest.raises(InvalidInput, match="json:"):
        inspect(img, "raw")


def test_encrypted_and_bad_version_refused(tmp_path: Path) -> None:
    # The header's crypt_method field (offset 32) says "LUKS": no need for qemu-img's (CPU-timed, flaky) PBKDF.
    img = tmp_path / "enc.qcow2"
    qemu_img("create", "-f", "qcow2", str(img), "1M")
    with open(img, "r+b") as f:
        f.seek(32)
        f.write(struct.pack(">I", 2))
    with pytest.raises(ImageError, match="encrypted"):
        inspect(img, "qcow2")
    v4 = tmp_path / "v4.qcow2"
    qemu_img("create", "-f", "qcow2", str(v4), "1M")
    with open(v4, "r+b") as f:
        f.seek(4)
        f.write(struct.pack(">I", 4))
    with pytest.raises(ImageError, match="version 4"):
        inspect(v4, "qcow2")


def test_catalog_sums_and_rebase() -> None:
    e = lookup("debian-13-cloud", base="http://127.0.0.1:8080")
    assert e is not None and e.url.startswith("http://127.0.0.1:8080/images/cloud/trixie/")
    assert e.file_name == "debian-13-genericcloud-amd64.qcow2" and e.sums_algo == "sha512"
    sums = f"{'a' * 128}  other.qcow2\n{'b' * 128}  {e.file_name}\n"
    assert digest_from_sums(sums, e.file_name, "sha512") == "b" * 128
    assert digest_from_sums(f"{'c' * 64} *x.img\n", "x.img", "sha256") == "c" * 64
    with pytest.raises(ImageError, match="no checksum"):
        digest_from_sums(sums, "missing.qcow2", "sha512")
    assert lookup("nope") is None
