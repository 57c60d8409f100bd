"""`corral images import`: clean images in (file and URL, --sha256), malicious ones refused with nothing left behind,
and the catalog's download-and-verify path against a local HTTP server (no internet here)."""

from __future__ import annotations

import hashlib
import http.server
import json
import struct
import subprocess
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from tests.conftest import CorralEnv

pytestmark = pytest.mark.vm


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def image_names(c: CorralEnv) -> set[str]:
    r = c.cli("images", "ls", "--json")
    assert r.returncode == 0, r.stderr
    return {m["name"] for m in json.loads(r.stdout)}


def nothing_left(c: CorralEnv, name: str) -> None:
    assert name not in image_names(c)
    leftovers = sorted(p.name for p in c.settings.images_dir.iterdir() if p.name != "tiny")
    assert leftovers == [], leftovers


@pytest.fixture
def tiny_raw(corral: CorralEnv, tmp_path: Path) -> Path:
    """The tiny image's disk as a raw file: a real, clean disk image made in the test."""
    raw = tmp_path / "tiny-disk.raw"
    qemu_img("convert", "-f", "qcow2", "-O", "raw", str(corral.settings.images_dir / "tiny" / "disk.qcow2"), str(raw))
    return raw


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(root)))
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_import_raw_and_qcow2_with_sha256_then_launch(corral: CorralEnv, tiny_raw: Path, tmp_path: Path) -> None:
    r = corral.cli("images", "import", str(tiny_raw), "--name", "imported-raw", "--sha256", sha256(tiny_raw))
    assert r.returncode == 0, r.stderr
    assert "imported" in r.stdout
    qcow = tmp_path / "small.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", str(tiny_raw), str(qcow))
    r = corral.cli("images", "import", str(qcow), "--name", "imported-qcow", "--sha256", sha256(qcow))
    assert r.returncode == 0, r.stderr
    images = {m["name"]: m for m in json.loads(corral.cli("images", "ls", "--json").stdout)}
    for name in ("imported-raw", "imported-qcow"):
        m = images[name]
        assert m["boot"] == "disk" and m["builder"] == "import" and m["disk_format"] == "qcow2"
        assert sorted(p.name for p in (corral.settings.images_dir / name).iterdir()) == ["disk.qcow2",
                                                                                        "manifest.json"]
        info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", "-f", "qcow2",
                                          str(corral.settings.images_dir / name / "disk.qcow2")],
                                         capture_output=True, text=True, check=True).stdout)
        assert "backing-filename" not in info and "data-file" not in info.get("format-specific", {}).get("data", {})
    assert images["imported-raw"]["source_sha256"] == sha256(tiny_raw)
    # A disk-boot image starts (SeaBIOS, no -kernel); it has no agent to wait for, so --no-wait.
    r = corral.cli("launch", "boots-disk", "--image", "imported-qcow", "--no-wait")
    assert r.returncode == 0, r.stderr
    v = corral.client.get_vm("boots-disk")
    assert v.state == "running"
    cmdline = Path(f"/proc/{v.pid}/cmdline").read_bytes().split(b"\0")
    assert b"-kernel" not in cmdline and any(b"bootindex=0" in a for a in cmdline)
    # Import refuses to overwrite, and in use it cannot be removed.
    r = corral.cli("images", "import", str(qcow), "--name", "imported-qcow")
    assert r.returncode != 0 and "already installed" in r.stderr
    assert corral.cli("rm", "--force", "boots-disk").returncode == 0


def test_wrong_sha256_refused(corral: CorralEnv, tiny_raw: Path) -> None:
    r = corral.cli("images", "import", str(tiny_raw), "--name", "bad-sum", "--sha256", "0" * 64)
    assert r.returncode != 0 and "SHA256" in r.stderr and "refused" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    nothing_left(corral, "bad-sum")


def test_missing_file_refused(corral: CorralEnv, tmp_path: Path) -> None:
    r = corral.cli("images", "import", str(tmp_path / "nope.qcow2"), "--name", "nope")
    assert r.returncode == 3 and "no image file" in r.stderr
    nothing_left(corral, "nope")


def _malicious(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    secret = tmp_path / "host-secret"
    secret.write_bytes(b"secret" * 100)
    backing = tmp_path / "backing.qcow2"
    qemu_img("create", "-f", "qcow2", "-F", "raw", "-b", str(secret), str(backing), "1M")
    datafile = tmp_path / "datafile.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", f"data_file={tmp_path / 'data.bin'}", str(datafile), "1M")
    raw_qcow = tmp_path / "disguised.raw"
    raw_qcow.write_bytes(backing.read_bytes())
    json_backing = tmp_path / "jsonback.qcow2"
    qemu_img("create", "-f", "qcow2", str(json_backing), "1M")
    name = b'json:{"driver":"file","filename":"/etc/shadow"}'
    with open(json_backing, "r+b") as f:
        f.seek(8)
        f.write(struct.pack(">QI", 4096 - 256, len(name)))
        f.seek(4096 - 256)
        f.write(name)
    vmdk = tmp_path / "disk.vmdk"
    qemu_img("create", "-f", "vmdk", str(vmdk), "1M")
    return {
        "backing": (backing, "backing file"),
        "datafile": (datafile, "external data file"),
        "disguised": (raw_qcow, "also a qcow2 image"),
        "jsonback": (json_backing, "json: backing file"),
        "vmdk": (vmdk, "vmdk"),
    }


def test_malicious_images_refused_nothing_left(corral: CorralEnv, tmp_path: Path) -> None:
    for label, (path, reason) in _malicious(tmp_path).items():
        r = corral.cli("images", "import", str(path), "--name", f"evil-{label}")
        assert r.returncode != 0, (label, r.stdout)
        assert reason in r.stderr, (label, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        nothing_left(corral, f"evil-{label}")
    weird = tmp_path / 'json:{"driver":"file","filename":"x"}'
    weird.write_bytes(b"\0" * 4096)
    r = corral.cli("images", "import", str(weird), "--name", "evil-json")
    assert r.returncode == 2 and "json:" in r.stderr
    nothing_left(corral, "evil-json")


def test_url_import_and_catalog_download(corral_home: CorralEnv, http_root: tuple[Path, str], tmp_path: Path) -> None:
    root, base = http_root
    corral_home.env["CORRAL_IMAGE_CATALOG_URL"] = base  # the daemon fetches the catalog from our server
    corral_home.start_daemon()
    corral_home.client.build_image("tiny")
    c = corral_home
    d = root / "images" / "cloud" / "trixie" / "latest"
    d.mkdir(parents=True)
    img = d / "debian-13-genericcloud-amd64.qcow2"
    qemu_img("convert", "-f", "qcow2", "-O", "qcow2", str(c.settings.images_dir / "tiny" / "disk.qcow2"), str(img))
    # A plain URL with --sha256.
    r = c.cli("images", "import", f"{base}/images/cloud/trixie/latest/{img.name}", "--name", "from-url",
              "--sha256", sha256(img))
    assert r.returncode == 0, r.stderr
    # The catalog: the image and its SHA512SUMS, checked.
    sums = d / "SHA512SUMS"
    sums.write_text(f"{'0' * 128}  debian-13-genericcloud-amd64.raw\n"
                    f"{hashlib.sha512(img.read_bytes()).hexdigest()}  {img.name}\n")
    r = c.cli("images", "import", "debian-13-cloud")
    assert r.returncode == 0, r.stderr
    m = c.client.list_images()
    assert {"from-url", "debian-13-cloud"} <= {x.name for x in m}
    # A wrong checksum in the sums file: refused, nothing left.
    assert c.cli("images", "rm", "debian-13-cloud").returncode == 0
    sums.write_text(f"{'1' * 128}  {img.name}\n")
    r = c.cli("images", "import", "debian-13-cloud")
    assert r.returncode != 0 and "does not match its SHA512" in r.stderr, r.stderr
    nothing_left_except(c, {"from-url"})
    # No entry for the file: refused too; a 404 is a clear error.
    sums.write_text(f"{'1' * 128}  something-else.qcow2\n")
    r = c.cli("images", "import", "debian-13-cloud")
    assert r.returncode != 0 and "lists no checksum" in r.stderr
    r = c.cli("images", "import", f"{base}/missing.qcow2", "--name", "missing")
    assert r.returncode != 0 and "HTTP 404" in r.stderr
    nothing_left_except(c, {"from-url"})


def nothing_left_except(c: CorralEnv, keep: set[str]) -> None:
    assert image_names(c) == {"tiny", *keep}
    assert sorted(p.name for p in c.settings.images_dir.iterdir()) == sorted({"tiny", *keep})
