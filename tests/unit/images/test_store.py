"""The image store: installs are all-or-nothing, files are read-only, images in use cannot be removed."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from corral import paths
from corral.errors import Conflict, ImageError, InvalidInput, NotFound
from corral.images import builders
from corral.images.artifacts import BuiltImage, SourcePackage
from corral.images.store import ImageStore


def fake_built(work: Path, name: str = "tiny") -> BuiltImage:
    work.mkdir(parents=True, exist_ok=True)
    (work / "k").write_bytes(b"kernel")
    (work / "i").write_bytes(b"initrd")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(work / "d.qcow2"), "64M"], check=True)
    return BuiltImage(
        name=name, kernel=work / "k", initrd=work / "i", disk=work / "d.qcow2", kernel_cmdline="root=/dev/vda",
        builder="tiny test", mirror="http://mirror.invalid/debian", suite="bookworm",
        packages=[SourcePackage(name="busybox-static", version="1", arch="amd64", sha256="00")],
    )


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "home/images", tmp_path / "cache")


def test_install_list_get_remove(store: ImageStore, tmp_path: Path) -> None:
    m = store.install(fake_built(tmp_path / "w"))
    assert m.name == "tiny" and m.disk_virtual_size == 64 << 20 and len(m.disk_sha256) == 64
    d = store.dir("tiny")
    for f in (paths.IMAGE_KERNEL, paths.IMAGE_INITRD, paths.IMAGE_DISK, paths.IMAGE_MANIFEST):
        assert stat.S_IMODE((d / f).stat().st_mode) == 0o444
    assert m.size == (d / paths.IMAGE_KERNEL).stat().st_size + 6 + (d / paths.IMAGE_DISK).stat().st_size
    assert [x.name for x in store.list()] == ["tiny"]
    assert store.get("tiny") == m
    assert sorted(p.name for p in store.images_dir.iterdir()) == ["tiny"]  # no temp dirs left
    store.remove("tiny", users=[])
    assert store.list() == [] and not d.exists()


def test_get_missing_names_the_build_command(store: ImageStore) -> None:
    with pytest.raises(NotFound, match="corral images build debian-12"):
        store.get("debian-12")


def test_bad_names(store: ImageStore) -> None:
    with pytest.raises(InvalidInput):
        store.dir("../etc")
    with pytest.raises(NotFound, match="known images are debian-12, tiny"):
        store.ensure("windows", "http://mirror.invalid")


def test_remove_refuses_when_in_use(store: ImageStore, tmp_path: Path) -> None:
    store.install(fake_built(tmp_path / "w"))
    with pytest.raises(Conflict, match="vm-a, vm-b"):
        store.remove("tiny", users=["vm-b", "vm-a"])
    assert store.get("tiny").name == "tiny"
    with pytest.raises(NotFound):
        store.remove("debian-12", users=[])


def test_failed_install_leaves_nothing(store: ImageStore, tmp_path: Path) -> None:
    built = fake_built(tmp_path / "w")
    built.disk.unlink()
    with pytest.raises(ImageError, match="no d.qcow2"):
        store.install(built)
    assert not store.images_dir.exists() or list(store.images_dir.iterdir()) == []


def _fake_builder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fail: bool = False) -> list[int]:
    calls: list[int] = []

    def build(self: builders.BuilderInfo, workdir: Path, mirror: str, cache_dir: Path, progress: object = None,
              arch: object = None):
        calls.append(1)
        if fail:
            (workdir / "half").mkdir(parents=True)
            raise ImageError("mirror exploded")
        return fake_built(workdir)

    monkeypatch.setattr(builders.BuilderInfo, "build", build)
    monkeypatch.setattr(builders.BuilderInfo, "version", property(lambda self: "t1"))
    return calls


def test_ensure_builds_once_then_reuses_cache(store: ImageStore, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_builder(monkeypatch, tmp_path)
    m = store.ensure("tiny", "http://mirror.invalid/debian")
    assert calls == [1] and (store.cache_dir / "built/tiny/t1" / paths.IMAGE_DISK).is_file()
    cached = store.cache_dir / "built/tiny/t1" / paths.IMAGE_DISK
    assert (store.dir("tiny") / paths.IMAGE_DISK).stat().st_ino == cached.stat().st_ino  # hard link, same fs
    assert store.ensure("tiny", "http://mirror.invalid/debian") == m  # installed: nothing to do
    other = ImageStore(tmp_path / "home2/images", store.cache_dir)  # another home shares the build cache
    assert other.ensure("tiny", "http://mirror.invalid/debian").disk_sha256 == m.disk_sha256
    assert calls == [1]
    assert list((store.cache_dir / "tmp").iterdir()) == []


def test_failed_build_leaves_nothing(store: ImageStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_builder(monkeypatch, tmp_path, fail=True)
    with pytest.raises(ImageError, match="exploded"):
        store.ensure("tiny", "http://mirror.invalid/debian")
    assert not store.images_dir.exists() or list(store.images_dir.iterdir()) == []
    assert not (store.cache_dir / "built/tiny/t1").exists()
    assert list((store.cache_dir / "tmp").iterdir()) == []


def test_missing_builder_module_is_an_image_error(monkeypatch: pytest.MonkeyPatch) -> None:
    info = builders.BuilderInfo("x", "x", "corral.images.no_such_module")
    with pytest.raises(ImageError, match="not available"):
        _ = info.version
    assert builders.BUILDERS["tiny"].version  # tiny does not depend on debian12 being importable
