"""An imported image really boots from its own disk: SeaBIOS -> extlinux on the disk -> kernel -> the guest agent.

test_import.py shows only that QEMU runs for a disk-boot image (the tiny disk it imports has no boot loader). Here
the fixture makes a BIOS-bootable raw disk from the tiny image's own parts, in the test: its root ext4 made 32-bit
(extlinux cannot boot 64bit ext4), its kernel and initrd copied into /boot with an extlinux.conf, and extlinux
installed on the whole-disk file system (a "superfloppy": SeaBIOS loads sector 0, the ext4 boot block, where
extlinux puts its boot sector). The root stays /dev/vda, which the tiny initramfs mounts. That needs root (loop
mount) and extlinux (scripts/setup.sh installs it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CorralEnv

pytestmark = [pytest.mark.vm, pytest.mark.slow]

HOSTNAME = "bootvm"  # on the extlinux APPEND line only: Corral passes no command line to a disk-boot VM


def run(*argv: str, ok: tuple[int, ...] = (0,)) -> str:
    r = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    assert r.returncode in ok, f"{' '.join(argv)}: exit {r.returncode}: {r.stderr.strip()[-500:]}"
    return r.stdout


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def ext4_features(raw: Path) -> set[str]:
    for line in run("dumpe2fs", "-h", str(raw)).splitlines():
        if line.startswith("Filesystem features:"):
            return set(line.split(":", 1)[1].split())
    raise AssertionError(f"dumpe2fs printed no features for {raw}")


def extlinux_conf(cmdline: str) -> str:
    return (
        "DEFAULT tiny\nPROMPT 0\nTIMEOUT 0\n"
        "LABEL tiny\n"
        "  LINUX /boot/vmlinuz\n"
        "  INITRD /boot/initrd.img\n"
        f"  APPEND {cmdline} corral.hostname={HOSTNAME}\n"
    )


@pytest.fixture
def bios_disk(corral: CorralEnv, tmp_path: Path) -> Iterator[Path]:
    """A raw disk SeaBIOS boots: the tiny image's root ext4, its kernel and initrd in /boot, extlinux on sector 0."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the disk is loop-mounted to install extlinux")
    if shutil.which("extlinux") is None:
        pytest.skip("extlinux is not installed (scripts/setup.sh installs it as root: apt-get install extlinux)")
    tiny = corral.settings.images_dir / "tiny"
    manifest = json.loads((tiny / "manifest.json").read_text())
    cmdline = manifest["kernel_cmdline"]
    assert "root=/dev/vda " in f"{cmdline} ", cmdline  # the whole disk is the root file system: no partition
    raw = tmp_path / "tinyboot.raw"
    run("qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(tiny / "disk.qcow2"), str(raw))
    # extlinux reads ext2/3/4 but not 64bit block numbers: make the file system 32-bit (it is 1 GiB).
    run("e2fsck", "-f", "-y", str(raw), ok=(0, 1))
    if "64bit" in ext4_features(raw):
        run("resize2fs", "-s", str(raw))
    assert "64bit" not in ext4_features(raw)
    mnt = Path(tempfile.mkdtemp(prefix="bootdisk-", dir=tmp_path))
    run("mount", "-t", "ext4", "-o", "loop", str(raw), str(mnt))  # loop device freed at umount (autoclear)
    try:
        boot = mnt / "boot"
        boot.mkdir()
        shutil.copyfile(tiny / "vmlinuz", boot / "vmlinuz")
        shutil.copyfile(tiny / "initrd.img", boot / "initrd.img")
        (boot / "extlinux.conf").write_text(extlinux_conf(cmdline))
        run("extlinux", "--install", str(boot))
    finally:
        run("umount", str(mnt))
    run("e2fsck", "-f", "-n", str(raw))  # still clean
    with open(raw, "rb") as f:
        sector0 = f.read(512)
    assert sector0[3:11] == b"SYSLINUX" and sector0[510:] == b"\x55\xaa", sector0[:16]
    yield raw


def test_imported_disk_boots_itself_to_the_agent(corral: CorralEnv, bios_disk: Path) -> None:
    c = corral
    r = c.cli("images", "import", str(bios_disk), "--name", "tinyboot", "--sha256", sha256_file(bios_disk))
    assert r.returncode == 0, r.stderr
    images = {x["name"]: x for x in json.loads(c.cli("images", "ls", "--json").stdout)}
    m = images["tinyboot"]
    assert m["boot"] == "disk" and m["firmware"] == "bios" and m["kernel_cmdline"] == ""
    assert sorted(p.name for p in (c.settings.images_dir / "tinyboot").iterdir()) == ["disk.qcow2", "manifest.json"]

    # Waits for the guest agent: only a kernel loaded by extlinux from the disk, with its root on it, gets there.
    r = c.cli("launch", "bootvm", "--image", "tinyboot", "--timeout", "240", timeout=300)
    assert r.returncode == 0, r.stderr + c.cli("logs", "bootvm", "--tail", "40").stdout

    r = c.cli("exec", "bootvm", "--", "uname", "-a")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"Linux {HOSTNAME} ") and "x86_64" in r.stdout, r.stdout
    # The guest's command line is extlinux's: BOOT_IMAGE= and initrd= are what the boot loader adds.
    r = c.cli("exec", "bootvm", "--", "cat", "/proc/cmdline")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("BOOT_IMAGE=/boot/vmlinuz root=/dev/vda ") and "initrd=/boot/initrd.img" in r.stdout
    r = c.cli("exec", "bootvm", "--", "sh", "-c", "grep ' / ' /proc/mounts; ls /boot")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("/dev/root / ext4 rw") or r.stdout.startswith("/dev/vda / ext4 rw"), r.stdout
    assert {"extlinux.conf", "ldlinux.sys", "vmlinuz", "initrd.img"} <= set(r.stdout.split()), r.stdout

    # QEMU was given no kernel: the firmware booted the disk.
    r = c.cli("show", "bootvm", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["state"] == "running" and info["agent_ready"], info
    argv = Path(f"/proc/{info['pid']}/cmdline").read_bytes().split(b"\0")
    assert not {b"-kernel", b"-initrd", b"-append"} & set(argv), argv
    assert any(b"bootindex=0" in a for a in argv)
    assert any(str(c.settings.images_dir / "tinyboot" / "disk.qcow2").encode() in a for a in argv)
    assert c.cli("rm", "--force", "bootvm").returncode == 0
