"""The balloon's pure parts: QEMU's guest-stats reply, target sizes, the wire model of a VM without a balloon."""

from __future__ import annotations

import pytest

from corral.api.models import VMInfo
from corral.engine.balloon import parse_stats
from corral.errors import InvalidInput
from corral.memory.balloon import MIN_TARGET, BalloonService
from corral.vm.spec import VMSpec

UNSET = (1 << 64) - 1


def test_guest_stats_never_sent_are_none() -> None:
    s = parse_stats({"stats": {"stat-total-memory": UNSET, "stat-free-memory": UNSET}, "last-update": 0})
    assert (s.total, s.free, s.available, s.disk_caches, s.last_update) == (None, None, None, None, 0)


def test_guest_stats_in_bytes() -> None:
    s = parse_stats({"stats": {"stat-total-memory": 227954688, "stat-free-memory": 18087936,
                               "stat-available-memory": 29687808, "stat-disk-caches": 4096},
                     "last-update": 1795782954})
    assert (s.total, s.free, s.available, s.disk_caches) == (227954688, 18087936, 29687808, 4096)
    assert s.last_update == 1795782954


def test_target_sizes() -> None:
    assert BalloonService.parse_target("96M") == 96 << 20
    assert BalloonService.parse_target("1G") == 1 << 30
    assert BalloonService.parse_target("128") == 128 << 20  # a bare number: MiB, as --memory
    assert BalloonService.parse_target(100 << 20) == 100 << 20  # an integer: bytes
    assert MIN_TARGET == 64 << 20
    with pytest.raises(InvalidInput, match="'lots' is not a size"):
        BalloonService.parse_target("lots")


def test_spec_balloon_is_opt_in_and_a_bool() -> None:
    assert VMSpec(name="a").balloon is False
    assert VMSpec(name="a", balloon=True).balloon is True
    with pytest.raises(ValueError, match="balloon"):
        VMSpec.model_validate({"name": "a", "balloon": "maybe"})


def test_vm_info_without_a_balloon() -> None:
    info = VMInfo(name="a", id="x", spec=VMSpec(name="a"), state="stopped", mac="52:54:00:00:00:01", created_at=0)
    assert info.balloon is None
