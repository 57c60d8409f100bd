"""The image check before a start, on real qcow2 files made and damaged here (real qemu-img)."""

from __future__ import annotations

import asyncio
import os
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from corral.storage.check import CorruptImage, _flagged, before_start, repair
from corral.store.db import VMRecord
from corral.vm.spec import VMSpec
from corral.vm.states import VMState

CLUSTER = 65536


def make(path: Path) -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0xab 0 2M", str(path)], check=True, capture_output=True)
    return path


def refcount_block(path: Path) -> int:
    with path.open("rb") as f:
        header = f.read(104)
        f.seek(struct.unpack(">Q", header[48:56])[0])  # refcount_table_offset
        return int(struct.unpack(">Q", f.read(8))[0])


def leak(path: Path) -> None:
    """A cluster past the end that the refcounts say is used, but nothing references: a leak, no data at risk."""
    size = path.stat().st_size
    os.truncate(path, size + CLUSTER)
    with path.open("r+b") as f:
        f.seek(refcount_block(path) + 2 * (size // CLUSTER))
        f.write(b"\0\1")


def corrupt(path: Path) -> None:
    """Zero the refcounts of clusters holding data: qemu-img check reports errors."""
    with path.open("r+b") as f:
        f.seek(refcount_block(path) + 2 * 8)
        f.write(b"\0" * 2 * 16)


def rec(state: VMState) -> VMRecord:
    return VMRecord(spec=VMSpec(name="v"), id="id", state=state, state_reason="", mac="m", created_at=0,
                    last_exit_reason="QEMU exited unexpectedly (killed by SIGKILL)", restart_count=0)


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, Any]]] = []

    def __call__(self, vm: str, type_: str, message: str, **data: Any) -> None:
        self.seen.append((type_, message, data))


def test_clean_stop_no_check(tmp_path: Path) -> None:
    img = make(tmp_path / "a.qcow2")
    leak(img)
    ev = Events()
    assert asyncio.run(before_start(rec(VMState.STOPPED), [img], ev)) == []
    assert ev.seen == []


def test_after_a_crash_leaks_are_repaired_and_reported(tmp_path: Path) -> None:
    a, b = make(tmp_path / "a.qcow2"), make(tmp_path / "b.qcow2")
    leak(b)
    ev = Events()
    results = asyncio.run(before_start(rec(VMState.CRASHED), [a, b], ev))
    assert [r.leaks_fixed for r in results] == [0, 1] and not any(r.corrupt for r in results)
    (type_, message, data), = ev.seen
    assert type_ == "image-check" and data["result"] == "ok"
    assert "killed by SIGKILL" in message and "b.qcow2: 1 leaked clusters repaired" in message
    assert subprocess.run(["qemu-img", "check", "-q", "-f", "qcow2", str(b)]).returncode == 0


def test_corrupt_image_refuses_the_start_until_repaired(tmp_path: Path) -> None:
    img = make(tmp_path / "a.qcow2")
    corrupt(img)
    before = img.read_bytes()
    ev = Events()
    with pytest.raises(CorruptImage) as info:
        asyncio.run(before_start(rec(VMState.CRASHED), [img], ev))
    msg = info.value.message
    assert f"disk image {img} of VM 'v' is corrupt" in msg and "`corral disk repair v`" in msg and "\n" not in msg
    assert img.read_bytes() == before, "a corrupt image is left as it is"
    assert ev.seen[0][2]["result"] == "error"
    (r,) = asyncio.run(repair([img]))
    assert r.corruptions_fixed > 0 and not r.corrupt
    assert asyncio.run(before_start(rec(VMState.CRASHED), [img], Events()))[0].corruptions == 0


def test_a_left_marker_means_an_unclean_exit(tmp_path: Path) -> None:
    """`corral kill` stops the VM (not crashed) but QEMU never closed its images: the marker says so."""
    img = make(tmp_path / "a.qcow2")
    leak(img)
    marker = tmp_path / "images-open"
    assert asyncio.run(before_start(rec(VMState.STOPPED), [img], Events(), marker)) == []
    marker.touch()
    (r,) = asyncio.run(before_start(rec(VMState.STOPPED), [img], Events(), marker))
    assert r.leaks_fixed == 1


def _set_incompat(path: Path, bits: int) -> None:
    with open(path, "r+b") as f:
        f.seek(72)
        f.write(struct.pack(">Q", bits))


@pytest.mark.parametrize(("bits", "says"), [(0, ""), (1, "was not closed cleanly"), (2, "is marked corrupt")])
def test_flags_read_from_the_header_agree_with_qemu_img_info(tmp_path: Path, bits: int, says: str) -> None:
    """The header's dirty and corrupt bits are read without qemu-img; qemu-img info sees the same."""
    img = make(tmp_path / "a.qcow2")
    _set_incompat(img, bits)
    assert (asyncio.run(_flagged(img)) or "").endswith(says)
    info = subprocess.run(["qemu-img", "info", "-f", "qcow2", "--output=json", str(img)], capture_output=True,
                          text=True, check=True).stdout
    assert ('"corrupt": true' in info) == (bits == 2) and ('"dirty-flag": true' in info) == (bits == 1)


def test_a_file_that_is_no_qcow2_is_left_to_qemu_img(tmp_path: Path) -> None:
    img = tmp_path / "a.qcow2"
    img.write_bytes(b"not a qcow2 image at all" * 10)
    assert "cannot be opened" in asyncio.run(_flagged(img))
    assert "cannot be opened" in asyncio.run(_flagged(tmp_path / "missing.qcow2"))
