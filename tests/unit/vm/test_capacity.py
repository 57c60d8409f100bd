"""Capacity helpers and the CPU overcommit setting."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from corral.errors import InvalidInput
from corral.settings import load_settings
from corral.vm.capacity import bytes_on_disk, rss_mib


def test_rss_of_this_process_and_of_none() -> None:
    assert rss_mib(os.getpid()) > 0
    assert rss_mib(2**22 + 12345) == 0


def test_bytes_on_disk_counts_allocated_blocks(tmp_path: Path) -> None:
    sparse = tmp_path / "sparse"
    with sparse.open("wb") as f:
        f.truncate(100 << 20)
    full = tmp_path / "full"
    full.write_bytes(b"x" * (1 << 20))
    assert bytes_on_disk(sparse) < 1 << 20
    assert bytes_on_disk(full) >= 1 << 20
    assert bytes_on_disk(tmp_path / "gone") == 0


def test_cpu_overcommit_setting(tmp_path: Path) -> None:
    base = {"CORRAL_HOME": str(tmp_path)}
    assert load_settings(base).cpu_overcommit == 4.0
    assert load_settings(base | {"CORRAL_CPU_OVERCOMMIT": "1.5"}).cpu_overcommit == 1.5
    with pytest.raises(InvalidInput, match="CORRAL_CPU_OVERCOMMIT=0.0 is out of range"):
        load_settings(base | {"CORRAL_CPU_OVERCOMMIT": "0"})
    with pytest.raises(InvalidInput, match="bad number"):
        load_settings(base | {"CORRAL_CPU_OVERCOMMIT": "lots"})
