"""The 9p modules' sources: headers, -common, kbuild and source at exactly the kernel's version, or a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.errors import ImageError, NotFound
from corral.images import kmods
from corral.images.archive import DebianArchive, Package, packages_from_index

REL = "6.1.0-50-cloud-amd64"


def _stanza(name: str, version: str, depends: str = "") -> str:
    return (f"Package: {name}\nVersion: {version}\nArchitecture: amd64\n" + (f"Depends: {depends}\n" if depends else "")
            + f"Filename: pool/main/l/linux/{name}_{version}_amd64.deb\nSize: 1\nSHA256: 00\n")


def _archive(tmp_path: Path, text: str) -> DebianArchive:
    a = DebianArchive("http://mirror.invalid/debian", "bookworm", tmp_path)
    every: dict[str, list[Package]] = {}
    a._index = packages_from_index(text, every)
    a._every = every
    return a


HEADERS_DEPS = ("linux-headers-6.1.0-50-common (= {v}), linux-kbuild-6.1 (>= {v}), "
                "linux-compiler-gcc-12-x86 (>= {v})")


def test_sources_at_the_kernels_version_even_when_the_index_has_two_uploads(tmp_path: Path) -> None:
    text = "\n".join([
        _stanza(f"linux-headers-{REL}", "6.1.176-1", HEADERS_DEPS.format(v="6.1.176-1")),
        _stanza("linux-headers-6.1.0-50-common", "6.1.176-1"),
        _stanza("linux-kbuild-6.1", "6.1.176-1"),
        _stanza("linux-source-6.1", "6.1.176-1"),
        _stanza("linux-source-6.1", "6.1.170-3"),  # the last stanza of a name is what package() answers
    ])
    a = _archive(tmp_path, text)
    assert a.package("linux-source-6.1").version == "6.1.170-3"
    pkgs = kmods.source_packages(a, REL, "6.1.176-1")
    assert [(p.name, p.version) for p in pkgs] == [
        (f"linux-headers-{REL}", "6.1.176-1"), ("linux-headers-6.1.0-50-common", "6.1.176-1"),
        ("linux-kbuild-6.1", "6.1.176-1"), ("linux-source-6.1", "6.1.176-1")]


def test_a_missing_version_names_the_versions_there_are(tmp_path: Path) -> None:
    text = "\n".join([
        _stanza(f"linux-headers-{REL}", "6.1.176-1", HEADERS_DEPS.format(v="6.1.176-1")),
        _stanza("linux-headers-6.1.0-50-common", "6.1.176-1"),
        _stanza("linux-kbuild-6.1", "6.1.176-1"),
        _stanza("linux-source-6.1", "6.1.192-3"),
    ])
    with pytest.raises(NotFound, match=r"linux-source-6.1' 6.1.176-1 .*it has: 6.1.192-3"):
        kmods.source_packages(_archive(tmp_path, text), REL, "6.1.176-1")
    with pytest.raises(NotFound, match=r"linux-headers-6.1.0-51-cloud-amd64' 6.1.176-1 .*it has: none"):
        kmods.source_packages(_archive(tmp_path, text), "6.1.0-51-cloud-amd64", "6.1.176-1")


def test_headers_without_common_and_kbuild_are_refused(tmp_path: Path) -> None:
    a = _archive(tmp_path, _stanza(f"linux-headers-{REL}", "6.1.176-1", "linux-compiler-gcc-12-x86"))
    with pytest.raises(ImageError, match="packaging changed"):
        kmods.source_packages(a, REL, "6.1.176-1")


def test_vermagic_and_install(tmp_path: Path) -> None:
    ko = tmp_path / "9p.ko"
    ko.write_bytes(b"\x7fELF\0name=9p\0vermagic=6.1.0-50-cloud-amd64 SMP preempt mod_unload modversions \0x")
    assert kmods.vermagic(ko) == "6.1.0-50-cloud-amd64 SMP preempt mod_unload modversions"
    moddir = tmp_path / "lib/modules" / REL
    kmods.install([ko], moddir)
    assert (moddir / "extra/9p.ko").read_bytes() == ko.read_bytes()
