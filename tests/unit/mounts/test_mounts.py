"""Shared folders: the Mount model's form, the host checks, the slot layout (no QEMU)."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from corral.errors import InvalidInput, NotFound
from corral.fleet.file import loads
from corral.mounts import host
from corral.paths import VMPaths
from corral.vm.spec import MAX_MOUNTS, Mount, VMSpec


def test_parse_defaults_guest_to_host_and_read_only() -> None:
    assert Mount.parse("/srv/data") == Mount(host="/srv/data", guest="/srv/data", read_only=True)
    assert Mount.parse("/srv/data:/mnt/d:rw") == Mount(host="/srv/data", guest="/mnt/d", read_only=False)
    assert Mount.parse("/srv/data:rw").guest == "/srv/data"
    assert Mount.parse("/srv//a/../data/").host == "/srv/data"


@pytest.mark.parametrize("text", ["rel", "/a:rel", "/a:/b:/c", "/a:/etc", "/a:/", "/a:/proc/x", ":"])
def test_bad_mounts_are_refused(text: str) -> None:
    with pytest.raises((ValueError, ValidationError)):
        Mount.parse(text)


def test_spec_refuses_a_guest_dir_twice_and_too_many() -> None:
    with pytest.raises(ValidationError, match="mounted twice"):
        VMSpec(name="a", mounts=["/x:/m", "/y:/m"])  # type: ignore[list-item]
    with pytest.raises(ValidationError, match=f"at most {MAX_MOUNTS}"):
        VMSpec(name="a", mounts=[f"/x{i}" for i in range(MAX_MOUNTS + 1)])  # type: ignore[list-item]
    # A spec stored before mounts existed loads without them.
    assert VMSpec.model_validate({"name": "a"}).mounts == []


def test_host_dir_is_resolved_and_checked(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    home = tmp_path / "home"
    home.mkdir()
    assert host.check_host(Mount.parse(f"{tmp_path}/link:/mnt/x"), home).host == str(real)
    with pytest.raises(NotFound, match="does not exist"):
        host.check_host(Mount.parse(f"{tmp_path}/nope:/mnt/x"), home)
    (real / "f").write_text("x")
    with pytest.raises(InvalidInput, match="not a directory"):
        host.check_host(Mount.parse(f"{real}/f:/mnt/x"), home)
    for forbidden in ("/", "/proc", str(home), str(tmp_path)):  # the root, a kernel tree, the home, its parent
        with pytest.raises(InvalidInput, match="cannot be shared"):
            host.check_host(Mount.parse(f"{forbidden}:/mnt/x"), home)


def test_layout_points_slot_symlinks_and_round_trips(tmp_path: Path) -> None:
    paths = VMPaths(tmp_path / "vm")
    paths.root.mkdir()
    a, b = Mount.parse(f"{tmp_path}:/mnt/a"), Mount.parse("/srv:/mnt/b:rw")
    layout = {0: a, 2: b}
    host.write_layout(paths, layout)
    assert host.read_layout(paths) == layout
    assert paths.mount_slot(2).readlink() == Path("/srv") and not paths.mount_slot(1).exists()
    assert host.free_slot(layout, "vm") == 1 and host.slot_of(layout, "/mnt/b") == 2
    host.write_layout(paths, {2: b})
    assert not paths.mount_slot(0).is_symlink()
    with pytest.raises(InvalidInput, match="the most"):
        host.free_slot({i: a for i in range(MAX_MOUNTS)}, "vm")


def test_fleet_mounts_are_relative_to_the_file_and_resolved(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    fleet = loads("fleet: f\nvms:\n  a: {mounts: ['src:/mnt/src', {host: src, guest: /w, read_only: false}]}\n",
                  base=tmp_path)
    assert fleet.vms[0].mounts == [Mount(host=str(tmp_path / "src"), guest="/mnt/src"),
                                   Mount(host=str(tmp_path / "src"), guest="/w", read_only=False)]
