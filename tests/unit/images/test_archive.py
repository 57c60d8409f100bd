"""The archive client: parsing, dependency closure, and refusing anything that does not verify."""

from __future__ import annotations

import hashlib
import lzma
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from corral.errors import NotFound, VerificationError
from corral.images import archive as archive_mod
from corral.images.archive import DebianArchive, Package, packages_from_index, parse_relation, parse_stanzas

INDEX = """\
Package: app
Version: 1.0
Architecture: amd64
Pre-Depends: libc6 (>= 2.36)
Depends: libfoo | libfoo-alt, mail-transport-agent, libc6:any [amd64]
Filename: pool/main/a/app/app_1.0_amd64.deb
Size: 10
SHA256: {app_sha}
Description: an app
 with a long description
 .
 over lines

Package: libc6
Version: 2.36
Architecture: amd64
Filename: pool/main/g/glibc/libc6_2.36_amd64.deb
Size: 3
SHA256: 00

Package: libfoo-alt
Version: 1
Architecture: amd64
Depends: libc6
Filename: pool/main/l/libfoo-alt/libfoo-alt_1_amd64.deb
Size: 3
SHA256: 00

Package: postfix
Version: 3
Architecture: amd64
Provides: mail-transport-agent, default-mta (= 3)
Depends: libc6
Filename: pool/main/p/postfix/postfix_3_amd64.deb
Size: 3
SHA256: 00

Package: unsigned-thing
Version: 1
Filename: pool/x.deb
Size: 1
"""

APP_BYTES = b"0123456789"


def index_text() -> str:
    return INDEX.format(app_sha=hashlib.sha256(APP_BYTES).hexdigest())


def test_parse_stanzas_keeps_continuations() -> None:
    st = parse_stanzas(index_text())
    assert [s["Package"] for s in st] == ["app", "libc6", "libfoo-alt", "postfix", "unsigned-thing"]
    assert st[0]["Description"] == "an app\nwith a long description\n.\nover lines"


def test_parse_relation_drops_versions_and_qualifiers() -> None:
    assert parse_relation("a (>= 1) | b:any, c [amd64], , d <!nocheck>") == [["a", "b"], ["c"], ["d"]]


def test_index_skips_stanzas_without_checksum() -> None:
    idx = packages_from_index(index_text())
    assert "unsigned-thing" not in idx
    assert idx["postfix"].provides == ("mail-transport-agent", "default-mta")
    assert "libc6" in idx["app"].depends


def test_resolve_closure_alternatives_and_virtuals() -> None:
    idx = packages_from_index(index_text())
    got = [p.name for p in archive_mod.resolve_closure(idx, ["app"])]
    assert got[0] == "app"
    assert sorted(got) == ["app", "libc6", "libfoo-alt", "postfix"]  # libfoo missing -> libfoo-alt; MTA -> postfix
    assert len(got) == len(set(got))


def test_resolve_closure_onto_an_installed_system() -> None:
    """What to add to an image: what it has is not returned, and satisfies dependencies (an installed provider of
    a virtual name too)."""
    idx = packages_from_index(index_text())
    got = [p.name for p in archive_mod.resolve_closure(idx, ["app"], installed=["libc6", "postfix", "not-here"])]
    assert sorted(got) == ["app", "libfoo-alt"]


def test_resolve_unknown_name_is_not_found() -> None:
    with pytest.raises(NotFound, match="nope"):
        archive_mod.resolve_closure(packages_from_index(index_text()), ["nope"])


# -- a fake mirror signed by a throwaway key -------------------------------------------------------------------


def _gpg(home: Path, *args: str, **kw: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["gpg", "--homedir", str(home), "--batch", "--quiet", *args], check=True,
                          capture_output=True, **kw)  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A GNUPGHOME with a fresh signing key and a keyring file holding its public key."""
    if not shutil.which("gpg"):
        pytest.skip("gpg is not installed")
    d = tmp_path_factory.mktemp("gpg")
    home = d / "home"
    home.mkdir(mode=0o700)
    _gpg(home, "--passphrase", "", "--quick-gen-key", "Corral Test <test@example.invalid>", "ed25519", "sign", "never")
    keyring = d / "keyring.gpg"
    keyring.write_bytes(_gpg(home, "--export").stdout)
    yield home, keyring
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True, check=False)


def make_mirror(root: Path, home: Path, packages_xz: bytes) -> None:
    dists = root / "dists/bookworm"
    (dists / "main/binary-amd64").mkdir(parents=True)
    (dists / "main/binary-amd64/Packages.xz").write_bytes(packages_xz)
    release = (
        "Origin: Test\nSuite: bookworm\nSHA256:\n"
        f" {hashlib.sha256(packages_xz).hexdigest()} {len(packages_xz)} main/binary-amd64/Packages.xz\n"
    )
    (dists / "Release").write_text(release)
    _gpg(home, "--clearsign", "--output", str(dists / "InRelease"), str(dists / "Release"))
    (root / "pool/main/a/app").mkdir(parents=True)
    (root / "pool/main/a/app/app_1.0_amd64.deb").write_bytes(APP_BYTES)


@pytest.fixture
def mirror(tmp_path: Path, signer: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> Path:
    """A local mirror; ``_fetch`` copies from it instead of using HTTP."""
    root = tmp_path / "mirror"
    make_mirror(root, signer[0], lzma.compress(index_text().encode()))

    def fetch(self: DebianArchive, url_path: str, dest: Path, progress: object, total: int | None = None) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / url_path, dest)

    monkeypatch.setattr(DebianArchive, "_fetch", fetch)
    return root


def test_load_index_and_download_verify(mirror: Path, signer: tuple[Path, Path], tmp_path: Path) -> None:
    a = DebianArchive("http://mirror.invalid/debian", "bookworm", tmp_path / "cache", keyring=signer[1])
    assert "app" in a.load_index()
    deb = a.download(a.package("app"))
    assert deb == tmp_path / "cache/debs/app_1.0_amd64.deb" and deb.read_bytes() == APP_BYTES
    assert a.download(a.package("app")) == deb  # cached and still verified


def test_download_checksum_mismatch_removes_file(mirror: Path, signer: tuple[Path, Path], tmp_path: Path) -> None:
    a = DebianArchive("http://mirror.invalid/debian", "bookworm", tmp_path / "cache", keyring=signer[1])
    a.load_index()
    (mirror / "pool/main/a/app/app_1.0_amd64.deb").write_bytes(b"9876543210")  # same size, other bytes
    with pytest.raises(VerificationError, match="does not match"):
        a.download(a.package("app"))
    assert not (tmp_path / "cache/debs/app_1.0_amd64.deb").exists()
    assert not list((tmp_path / "cache/debs").iterdir())


def test_tampered_packages_index_refused(mirror: Path, signer: tuple[Path, Path], tmp_path: Path) -> None:
    xz = mirror / "dists/bookworm/main/binary-amd64/Packages.xz"
    xz.write_bytes(lzma.compress(index_text().replace("2.36", "6.66").encode()))
    a = DebianArchive("http://mirror.invalid/debian", "bookworm", tmp_path / "cache", keyring=signer[1])
    with pytest.raises(VerificationError):
        a.load_index()


def test_tampered_inrelease_refused(mirror: Path, signer: tuple[Path, Path], tmp_path: Path) -> None:
    inrelease = mirror / "dists/bookworm/InRelease"
    inrelease.write_text(inrelease.read_text().replace("Origin: Test", "Origin: Evil"))
    a = DebianArchive("http://mirror.invalid/debian", "bookworm", tmp_path / "cache", keyring=signer[1])
    with pytest.raises(VerificationError, match="signature"):
        a.load_index()
    assert not (a._dists_dir / "InRelease").exists()


def test_inrelease_from_unknown_key_refused(mirror: Path, tmp_path: Path) -> None:
    """The real Debian keyring does not know the test key."""
    keyring = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
    if not keyring.exists():
        pytest.skip("no Debian keyring on this host")
    a = DebianArchive("http://mirror.invalid/debian", "bookworm", tmp_path / "cache", keyring=keyring)
    with pytest.raises(VerificationError):
        a.load_index()


def test_package_dataclass_is_hashable() -> None:
    p = Package("a", "1", "amd64", "pool/a.deb", 1, "00")
    assert {p: 1}[p] == 1
    assert os.sep not in p.name
