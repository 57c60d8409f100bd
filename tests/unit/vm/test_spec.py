import pytest
from pydantic import ValidationError

from corral.vm.sizes import format_size, parse_size
from corral.vm.spec import RestartPolicy, VMSpec


def test_defaults() -> None:
    s = VMSpec(name="web")
    assert (s.image, s.vcpus, s.memory, s.disk, s.restart) == ("tiny", 1, 256, None, RestartPolicy.NEVER)


@pytest.mark.parametrize("memory,mib", [("512M", 512), ("1G", 1024), ("1.5G", 1536), (300, 300), ("2GiB", 2048)])
def test_memory_sizes(memory: object, mib: int) -> None:
    assert VMSpec(name="a", memory=memory).memory == mib


def test_disk_size_in_gib_by_default() -> None:
    assert VMSpec(name="a", disk="10G").disk == 10 << 30
    assert VMSpec(name="a", disk="3").disk == 3 << 30


@pytest.mark.parametrize("name", ["Web", "-a", "a-", "a_b", "a" * 64, "", "1abc", "a b", "a/b", "../x"])
def test_bad_names(name: str) -> None:
    with pytest.raises(ValidationError, match="name"):
        VMSpec(name=name)


@pytest.mark.parametrize("name", ["a", "web-1", "x" * 63, "db2"])
def test_good_names(name: str) -> None:
    assert VMSpec(name=name).name == name


@pytest.mark.parametrize("field,value", [("vcpus", 0), ("vcpus", 256), ("memory", 32), ("memory", "2T"),
                                         ("disk", "17T"), ("memory", "lots"), ("restart", "sometimes"),
                                         ("image", "../etc")])
def test_out_of_range(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        VMSpec.model_validate({"name": "a", field: value})


def test_unknown_field_refused() -> None:
    with pytest.raises(ValidationError, match="cpus"):
        VMSpec.model_validate({"name": "a", "cpus": 2})


def test_spec_round_trips_through_json() -> None:
    s = VMSpec(name="a", memory="1G", disk="5G", restart="on-failure")
    assert VMSpec.model_validate_json(s.model_dump_json()) == s


def test_sizes() -> None:
    assert parse_size("4K") == 4096
    assert format_size(256 << 20) == "256M"
    assert format_size(1536 << 20) == "1.5G"
    with pytest.raises(ValueError, match="not a size"):
        parse_size("12 apples")
