import pytest

from corral.errors import InvalidInput
from corral.storage import throttle


def test_merge_sets_keeps_and_removes() -> None:
    limits = throttle.merge({}, {"write_bps": 1 << 20, "iops": 100})
    assert limits == {"bps-write": 1 << 20, "iops-total": 100}
    assert throttle.merge(limits, {"iops": 0, "read_bps": None}) == {"bps-write": 1 << 20}
    assert throttle.describe(limits) == "write_bps=1M iops=100"
    assert throttle.describe({}) == "-"


def test_qemu_gets_every_field_so_removed_limits_clear() -> None:
    assert throttle.for_qemu({"bps-write": 5}) == {"iops-total": 0, "iops-read": 0, "iops-write": 0,
                                                   "bps-total": 0, "bps-read": 0, "bps-write": 5}


def test_values_and_combinations() -> None:
    assert throttle.parse_value("write_bps", "2M") == 2 << 20
    assert throttle.parse_value("iops", "300") == 300
    with pytest.raises(InvalidInput, match="--iops"):
        throttle.parse_value("iops", "1M")
    with pytest.raises(InvalidInput, match="between 0"):
        throttle.parse_value("bps", -1)
    with pytest.raises(InvalidInput, match="cannot be combined"):
        throttle.merge({"bps-total": 5}, {"write_bps": 1})
