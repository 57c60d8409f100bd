"""`corral images ls|build|rm`: the store lists what it holds, refuses to remove an image in use."""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import CorralEnv

pytestmark = pytest.mark.vm


def test_images_ls_rm(corral: CorralEnv) -> None:
    images = json.loads(corral.cli("images", "ls", "--json").stdout)
    tiny = next(i for i in images if i["name"] == "tiny")
    assert tiny["arch"] == "x86_64" and len(tiny["disk_sha256"]) == 64
    names = {p["name"] for p in tiny["packages"]}
    assert {"busybox-static", "qemu-guest-agent"} <= names
    assert any(p["name"].startswith("linux-image-") for p in tiny["packages"])
    image_dir = corral.settings.images_dir / "tiny"
    for f in ("vmlinuz", "initrd.img", "disk.qcow2", "manifest.json"):
        assert not os.access(image_dir / f, os.W_OK) or os.stat(image_dir / f).st_mode & 0o222 == 0, f
    assert "tiny" in corral.cli("images", "ls").stdout

    assert corral.cli("launch", "user1", "--no-wait").returncode == 0
    r = corral.cli("images", "rm", "tiny")
    assert r.returncode == 4 and "user1" in r.stderr
    assert corral.cli("rm", "--force", "user1").returncode == 0
    r = corral.cli("images", "rm", "tiny")
    assert r.returncode == 0, r.stderr
    assert not image_dir.exists()
    # Built again from the shared cache, without the network.
    r = corral.cli("images", "build", "tiny")
    assert r.returncode == 0 and "image tiny ready" in r.stdout
