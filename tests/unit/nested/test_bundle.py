"""The bundle's host side that needs no network: the guest image's packages, the images linked in, the script."""

import json
import subprocess
from pathlib import Path

import pytest

from corral.errors import ImageError
from corral.images.builders import get_builder
from corral.nested.bundle import INSTALL_SH, guest_packages, link_images


def test_the_guest_packages_come_from_the_built_images_manifest(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="no built debian-12 image in .*: build it first"):
        guest_packages(tmp_path)
    built = tmp_path / "built" / "debian-12" / get_builder("debian-12").version
    built.mkdir(parents=True)
    (built / "manifest.json").write_text(json.dumps({
        "mirror": "http://deb.example", "suite": "bookworm",
        "packages": [{"name": "python3", "version": "3.11.2-1"}, {"name": "libc6", "version": "2.36"}]}))
    assert guest_packages(tmp_path) == ("http://deb.example", "bookworm", {"python3", "libc6"})


def test_images_are_linked_not_copied(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="no built tiny image"):
        link_images(tmp_path, tmp_path / "out", ["tiny"])
    version = get_builder("tiny").version
    src = tmp_path / "built" / "tiny" / version
    src.mkdir(parents=True)
    for name in ("manifest.json", "vmlinuz", "initrd.img", "disk.qcow2"):
        (src / name).write_text(name)
    link_images(tmp_path, tmp_path / "out", ["tiny"])
    link_images(tmp_path, tmp_path / "out", ["tiny"])  # again: nothing changes
    for f in src.iterdir():
        assert (tmp_path / "out" / "tiny" / version / f.name).samefile(f)


def test_the_install_script_is_valid_shell() -> None:
    r = subprocess.run(["sh", "-n"], input=INSTALL_SH, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert "dpkg -i --force-unsafe-io" in INSTALL_SH and "systemctl restart corrald.service" in INSTALL_SH
