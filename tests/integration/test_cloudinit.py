"""cloud-init through a NoCloud seed: debian-12 applies user-data (a user with a key, write_files, runcmd).

cloud-init needs an image that has it (debian-12, imported cloud images); on tiny the seed is a harmless extra disk.
Under TCG cloud-init takes 30-60 s more than a plain boot, hence the generous timeouts."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import CorralEnv

pytestmark = [pytest.mark.vm, pytest.mark.slow]

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKjdQ0L8pNnXQ7pWm3jGm3yLh0Fz0sM3M0kE6TqTqTqT alice@test"

USER_DATA = f"""#cloud-config
users:
  - name: alice
    shell: /bin/bash
    ssh_authorized_keys:
      - {KEY}
write_files:
  - path: /etc/corral-test.txt
    content: written by cloud-init
    permissions: '0644'
runcmd:
  - [sh, -c, "echo runcmd-ran > /run/corral-runcmd-marker"]
"""


def test_debian12_applies_user_data(corral: CorralEnv, tmp_path: Path) -> None:
    corral.client.build_image("debian-12")
    ud = tmp_path / "user-data.yaml"
    ud.write_text(USER_DATA)
    key_file = tmp_path / "extra.pub"
    key_file.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB bob@test\n")
    r = corral.cli("launch", "ci", "--image", "debian-12", "--memory", "1G", "--cpus", "2", "--disk", "4G",
                   "--cloud-init", str(ud), "--ssh-key", str(key_file), "--hostname", "ci-host", timeout=600)
    assert r.returncode == 0, r.stderr
    r = corral.cli("exec", "ci", "--timeout", "400", "--", "cloud-init", "status", "--wait", timeout=450)
    assert "done" in r.stdout, (r.returncode, r.stdout, r.stderr)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # runcmd is the last stage: wait for its marker
        r = corral.cli("exec", "ci", "--", "cat", "/run/corral-runcmd-marker")
        if r.returncode == 0:
            break
        time.sleep(2)
    assert r.stdout.strip() == "runcmd-ran", r.stderr
    assert corral.cli("exec", "ci", "--", "cat", "/etc/corral-test.txt").stdout.strip() == "written by cloud-init"
    r = corral.cli("exec", "ci", "--", "cat", "/home/alice/.ssh/authorized_keys")
    assert r.returncode == 0 and KEY in r.stdout, r.stderr
    assert corral.cli("exec", "ci", "--", "id", "-u", "alice").returncode == 0
    assert corral.cli("exec", "ci", "--", "hostname").stdout.strip() == "ci-host"
    r = corral.cli("exec", "ci", "--", "cloud-init", "query", "instance_id")
    assert r.stdout.strip() == corral.client.get_vm("ci").id


def test_seed_is_harmless_on_tiny_and_missing_files_are_clear(corral: CorralEnv, tmp_path: Path) -> None:
    r = corral.cli("launch", "t1", "--cloud-init", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "cannot read cloud-init user-data" in r.stderr
    r = corral.cli("launch", "t1", "--ssh-key", str(tmp_path / "missing.pub"))
    assert r.returncode == 2 and "--ssh-key" in r.stderr
    assert corral.client.list_vms() == []
    r = corral.cli("launch", "t1", "--ssh-key", KEY, "--hostname", "tiny-host")
    assert r.returncode == 0, r.stderr
    assert (corral.settings.vms_dir / "t1" / "seed.iso").is_file()
    r = corral.cli("exec", "t1", "--", "sh", "-c", "cat /sys/block/vdb/ro; hostname")
    assert r.stdout.split() == ["1", "tiny-host"], r.stdout
