"""The foreign-architecture parts of the tiny builder that need no download: applets, built-in modules, the store's
errors for an architecture without an image."""

from pathlib import Path

import pytest

from corral.errors import ImageError, InvalidInput, NotFound
from corral.images.store import ImageStore
from corral.images.tiny_arch import applet_names, builtin_modules
from corral.store.records import TemplateRecord
from corral.vm.arch import Arch


def test_applets_are_read_from_the_binarys_name_table(tmp_path: Path) -> None:
    bb = tmp_path / "busybox"
    bb.write_bytes(b"\x7fELF junk\0[\0[[\0acpid\0busybox\0init\0ls\0sh\0\0\x01\x02 more")
    assert applet_names(bb) == ["[", "[[", "acpid", "init", "ls", "sh"]
    bb.write_bytes(b"no table here")
    with pytest.raises(ImageError, match="no applet table"):
        applet_names(bb)


def test_builtin_modules_are_skipped_by_name(tmp_path: Path) -> None:
    (tmp_path / "modules.builtin").write_text("kernel/drivers/virtio/virtio_pci.ko\nkernel/drivers/char/virtio-x.ko\n")
    assert builtin_modules(tmp_path) == {"virtio_pci", "virtio_x"}
    assert builtin_modules(tmp_path / "none") == set()


def test_a_missing_foreign_image_says_how_to_build_it(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images", tmp_path / "cache")
    with pytest.raises(NotFound, match=r"image 'tiny' is not installed for aarch64 \(installed: none\); build it "
                                       r"with: corral images build tiny --arch aarch64"):
        store.get("tiny@aarch64")
    with pytest.raises(InvalidInput, match="image 'debian-12' is built for x86_64 only, not riscv64"):
        store.get("debian-12@riscv64")
    with pytest.raises(InvalidInput, match="built for x86_64 only"):
        store.ensure("debian-12", "http://mirror.invalid", arch=Arch.AARCH64)
    assert not (tmp_path / "cache").exists()  # nothing was started


def test_a_template_keeps_its_architecture_in_its_image_key() -> None:
    tpl = TemplateRecord(name="t", source="a1", image="tiny@aarch64", vcpus=1, memory=256, disk=1 << 30,
                         created_at=0.0)
    assert tpl.machine_fields() == {"image": "tiny", "arch": Arch.AARCH64, "vcpus": 1, "memory": 256,
                                    "disk": 1 << 30}
