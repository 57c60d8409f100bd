"""A real Debian bookworm userland (systemd, apt) launched through Corral."""

from __future__ import annotations

import pytest

from tests.conftest import CorralEnv

pytestmark = [pytest.mark.vm, pytest.mark.slow]


def test_debian12_boots_with_systemd(corral: CorralEnv) -> None:
    corral.client.build_image("debian-12")
    r = corral.cli("launch", "deb", "--image", "debian-12", "--memory", "1G", "--cpus", "2", "--disk", "4G")
    assert r.returncode == 0, r.stderr
    r = corral.cli("exec", "deb", "--", "apt", "--version")
    assert r.returncode == 0 and r.stdout.startswith("apt "), r.stderr
    r = corral.cli("exec", "deb", "--timeout", "240", "--", "systemctl", "is-system-running", "--wait")
    assert (r.returncode, r.stdout.strip()) == (0, "running"), r.stderr
    assert corral.cli("exec", "deb", "--", "hostname").stdout.strip() == "deb"
    # The root file system was grown to the VM's disk.
    r = corral.cli("exec", "deb", "--", "sh", "-c", "df -B1 --output=size / | tail -1")
    assert int(r.stdout) > 3 << 30

    # A template of it: systemd-networkd asks for a new lease when the identity change gives the NIC its new MAC,
    # and QEMU's NAT (its state from the template) gives another address: SSH follows it.
    r = corral.cli("template", "create", "debt", "--from", "deb")
    assert r.returncode == 0, r.stderr
    r = corral.cli("launch", "deb2", "--template", "debt")
    assert r.returncode == 0, r.stderr
    assert corral.cli("exec", "deb2", "--", "hostname").stdout.strip() == "deb2"
    r = corral.cli("shell", "deb2", "--", "cat", "/etc/hostname")
    assert (r.returncode, r.stdout.strip()) == (0, "deb2"), r.stderr
    ids = [corral.cli("exec", vm, "--", "cat", "/etc/machine-id").stdout for vm in ("deb", "deb2")]
    assert ids[0] != ids[1]
    assert corral.cli("rm", "--force", "deb2").returncode == 0

    r = corral.cli("stop", "deb")
    assert r.returncode == 0
    assert corral.client.get_vm("deb").last_exit_reason == "stop requested by user"
