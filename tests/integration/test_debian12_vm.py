"""A real Debian bookworm userland (systemd, apt) launched through Corral, with a shared folder (one boot for both:
a debian-12 boot under TCG costs a minute or more)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import CorralEnv, guest, ok
from tests.terminal import Pty

pytestmark = [pytest.mark.vm, pytest.mark.slow]


def test_debian12_boots_with_systemd_and_mounts_a_folder(corral: CorralEnv, tmp_path: Path) -> None:
    share, rw = tmp_path / "share", tmp_path / "rw"
    share.mkdir()
    rw.mkdir()
    (share / "hello.txt").write_text("hello from the host\n")
    corral.client.build_image("debian-12")
    r = corral.cli("launch", "deb", "--image", "debian-12", "--memory", "1G", "--cpus", "2", "--disk", "4G",
                   "--mount", f"{share}:/mnt/share")
    assert r.returncode == 0, r.stderr
    r = corral.cli("exec", "deb", "--", "apt", "--version")
    assert r.returncode == 0 and r.stdout.startswith("apt "), r.stderr
    r = corral.cli("exec", "deb", "--timeout", "240", "--", "systemctl", "is-system-running", "--wait")
    assert (r.returncode, r.stdout.strip()) == (0, "running"), r.stderr
    assert corral.cli("exec", "deb", "--", "hostname").stdout.strip() == "deb"

    # `corral shell` into OpenSSH (tiny has dropbear): a command's exit status, the host key pinned, a terminal.
    r = corral.cli("shell", "deb", "--", "sh", "-c", "id -un; hostname; exit 5")
    assert (r.returncode, r.stdout) == (5, "root\ndeb\n"), r.stderr
    known = (corral.settings.vms_dir / "deb" / "known_hosts").read_text()
    r = corral.cli("exec", "deb", "--", "cat", "/etc/ssh/ssh_host_ed25519_key.pub")
    assert known.split()[2] == r.stdout.split()[1]
    term = Pty(corral.env, ["shell", "deb"], rows=30, cols=90)
    try:
        term.expect(b"root@deb")
        term.send(b"stty size; echo DEB-$((6*7))\r")
        term.expect(b"DEB-42")
        assert b"30 90" in term.buf
        term.send(b"exit\r")
        assert term.wait() == 0
    finally:
        term.close()
    # The root file system was grown to the VM's disk.
    r = corral.cli("exec", "deb", "--", "sh", "-c", "df -B1 --output=size / | tail -1")
    assert int(r.stdout) > 3 << 30

    # Shared folders: debian-12's cloud kernel has no 9p, so the image carries modules built for it (in
    # /lib/modules/*/extra, depmod run), which the mount loads with modprobe; a folder added live is mounted too.
    assert guest(corral, "deb", "cat /mnt/share/hello.txt") == "hello from the host\n"
    assert "/extra/9p.ko" in guest(corral, "deb", "modinfo -n 9p")
    ok(corral, "mount", "add", "deb", f"{rw}:/mnt/rw:rw")
    guest(corral, "deb", "echo from debian > /mnt/rw/d.txt")
    assert (rw / "d.txt").read_text() == "from debian\n"
    ok(corral, "mount", "rm", "deb", "/mnt/rw")
    ok(corral, "mount", "rm", "deb", "/mnt/share")  # templates are made from VMs without shared folders
    assert "9p" not in guest(corral, "deb", "cut -d' ' -f3 /proc/mounts")

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
