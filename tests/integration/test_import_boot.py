"""An imported image really boots from its own disk: SeaBIOS -> extlinux on the disk -> kernel -> the guest agent.

test_import.py shows only that QEMU runs for a disk-boot image (the tiny disk it imports has no boot loader). Here
the fixture makes a BIOS-bootable raw disk from the tiny image's own parts, in the test: its root ext4 made 32-bit
(extlinux cannot boot 64bit ext4), its kernel and initrd copied into /boot with an extlinux.conf, and extlinux
installed on the whole-disk file system (a "superfloppy": SeaBIOS loads sector 0, the ext4 boot block, where
extlinux puts its boot sector). The root stays /dev/vda, which the tiny initramfs mounts. That needs root (loop
mount) and extlinux (scripts/setup.sh installs it).

The UEFI disk needs no root: a GPT with an EFI system partition (FAT, written with mtools) holding systemd-boot as
\\EFI\\BOOT\\BOOTX64.EFI, a Type #1 loader entry, the kernel (its EFI stub) and the initrd, then the tiny root ext4 as
partition 2 (root=/dev/vda2, which the tiny initramfs honours). Imported with --uefi, OVMF boots it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.images.artifacts import sha256_file
from tests.conftest import CorralEnv

pytestmark = [pytest.mark.vm, pytest.mark.slow]

HOSTNAME = "bootvm"  # on the extlinux APPEND line only: Corral passes no command line to a disk-boot VM
UEFI_HOSTNAME = "uefivm"  # on the systemd-boot entry's options line only
SYSTEMD_BOOT = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE.fd")
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
MIB = 1 << 20


def run(*argv: str, ok: tuple[int, ...] = (0,)) -> str:
    r = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    assert r.returncode in ok, f"{' '.join(argv)}: exit {r.returncode}: {r.stderr.strip()[-500:]}"
    return r.stdout


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


@pytest.fixture
def uefi_disk(corral: CorralEnv, tmp_path: Path) -> Path:
    """A raw GPT disk OVMF boots: an EFI system partition with systemd-boot, the tiny kernel and initrd, then the
    tiny image's root ext4 as partition 2."""
    missing = [t for t in ("mkfs.vfat", "mcopy", "mmd", "sfdisk") if shutil.which(t) is None]
    missing += [str(f) for f in (SYSTEMD_BOOT, OVMF_CODE) if not f.is_file()]
    if missing:
        pytest.skip(f"missing {', '.join(missing)} (scripts/setup.sh installs dosfstools, mtools, fdisk, "
                    "systemd-boot-efi and ovmf as root)")
    tiny = corral.settings.images_dir / "tiny"
    cmdline = json.loads((tiny / "manifest.json").read_text())["kernel_cmdline"]
    assert "root=/dev/vda " in f"{cmdline} ", cmdline
    cmdline = f"{cmdline} ".replace("root=/dev/vda ", "root=/dev/vda2 ").strip()
    root = tmp_path / "root.raw"
    run("qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(tiny / "disk.qcow2"), str(root))
    esp = tmp_path / "esp.img"
    esp_size = 64 * MIB
    with open(esp, "wb") as f:
        f.truncate(esp_size)
    run("mkfs.vfat", "-F", "32", "-n", "ESP", str(esp))
    files = tmp_path / "esp"
    (files / "loader" / "entries").mkdir(parents=True)
    (files / "loader" / "loader.conf").write_text("default tiny.conf\ntimeout 0\n")
    (files / "loader" / "entries" / "tiny.conf").write_text(
        f"title tiny\nlinux /vmlinuz\ninitrd /initrd.img\noptions {cmdline} corral.hostname={UEFI_HOSTNAME}\n")
    mtools = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    for d in ("::/EFI", "::/EFI/BOOT", "::/loader", "::/loader/entries"):
        subprocess.run(["mmd", "-i", str(esp), d], check=True, env=mtools, capture_output=True)
    for src, dest in ((SYSTEMD_BOOT, "::/EFI/BOOT/BOOTX64.EFI"), (tiny / "vmlinuz", "::/vmlinuz"),
                      (tiny / "initrd.img", "::/initrd.img"), (files / "loader" / "loader.conf", "::/loader/"),
                      (files / "loader" / "entries" / "tiny.conf", "::/loader/entries/")):
        subprocess.run(["mcopy", "-i", str(esp), str(src), dest], check=True, env=mtools, capture_output=True)
    # GPT: 1 MiB of label, the ESP, the root, and room for the backup label at the end.
    disk = tmp_path / "tinyboot-uefi.raw"
    esp_start, root_start = MIB, MIB + esp_size
    size = root_start + root.stat().st_size + MIB
    with open(disk, "wb") as f:
        f.truncate(size)
    table = (f"label: gpt\n"
             f"start={esp_start // 512}, size={esp_size // 512}, type={ESP_TYPE}, name=esp\n"
             f"start={root_start // 512}, size={root.stat().st_size // 512}, type={LINUX_TYPE}, name=root\n")
    r = subprocess.run(["sfdisk", "--no-reread", "--no-tell-kernel", str(disk)], input=table, text=True,
                       capture_output=True, check=False)
    assert r.returncode == 0, r.stderr
    for part, start in ((esp, esp_start), (root, root_start)):
        run("dd", f"if={part}", f"of={disk}", "bs=1M", f"seek={start // MIB}", "conv=notrunc,sparse", "status=none")
        part.unlink()
    return disk


def launch_and_check(c: CorralEnv, image: str, vm: str, hostname: str, root: str) -> list[bytes]:
    """Launch ``vm`` waiting for its agent, check the guest booted its own kernel with ``root``; QEMU's argv."""
    r = c.cli("launch", vm, "--image", image, "--timeout", "240", timeout=300)
    assert r.returncode == 0, r.stderr + c.cli("logs", vm, "--tail", "40").stdout
    r = c.cli("exec", vm, "--", "uname", "-a")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"Linux {hostname} ") and "x86_64" in r.stdout, r.stdout
    r = c.cli("exec", vm, "--", "sh", "-c", "cat /proc/cmdline; grep ' / ' /proc/mounts")
    assert r.returncode == 0, r.stderr
    cmdline, mount = r.stdout.splitlines()[:2]
    assert f" root={root} " in f" {cmdline} " and f"corral.hostname={hostname}" in cmdline, cmdline
    assert mount.startswith(f"{root} / ext4 rw"), mount
    r = c.cli("show", vm, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["state"] == "running" and info["agent_ready"], info
    # QEMU was given no kernel: the firmware booted the disk (the imported image's own, under the VM's overlay).
    argv = Path(f"/proc/{info['pid']}/cmdline").read_bytes().split(b"\0")
    assert not {b"-kernel", b"-initrd", b"-append"} & set(argv), argv
    assert any(b"bootindex=0" in a for a in argv)
    assert any(str(c.settings.images_dir / image / "disk.qcow2").encode() in a for a in argv)
    return argv


def import_disk(c: CorralEnv, disk: Path, name: str, *extra: str) -> dict[str, object]:
    r = c.cli("images", "import", str(disk), "--name", name, "--sha256", sha256_file(disk), *extra)
    assert r.returncode == 0, r.stderr
    images = {x["name"]: x for x in json.loads(c.cli("images", "ls", "--json").stdout)}
    assert sorted(p.name for p in (c.settings.images_dir / name).iterdir()) == ["disk.qcow2", "manifest.json"]
    m: dict[str, object] = images[name]
    assert m["boot"] == "disk" and m["kernel_cmdline"] == "", m
    return m


def test_imported_bios_disk_boots_itself_to_the_agent(corral: CorralEnv, bios_disk: Path) -> None:
    c = corral
    assert import_disk(c, bios_disk, "tinyboot")["firmware"] == "bios"
    # Waits for the guest agent: only a kernel loaded by extlinux from the disk, with its root on it, gets there.
    launch_and_check(c, "tinyboot", "bootvm", HOSTNAME, "/dev/vda")
    # The guest's command line is extlinux's (BOOT_IMAGE= and initrd= are what it adds), its files are on the root.
    r = c.cli("exec", "bootvm", "--", "sh", "-c", "cat /proc/cmdline; ls /boot; test -d /sys/firmware/efi || echo bios")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split("\n", 1)
    assert lines[0].startswith("BOOT_IMAGE=/boot/vmlinuz ") and "initrd=/boot/initrd.img" in lines[0], lines[0]
    assert {"extlinux.conf", "ldlinux.sys", "vmlinuz", "initrd.img", "bios"} <= set(lines[1].split()), lines[1]
    assert c.cli("rm", "--force", "bootvm").returncode == 0


def test_imported_uefi_disk_boots_itself_to_the_agent(corral: CorralEnv, uefi_disk: Path) -> None:
    c = corral
    assert import_disk(c, uefi_disk, "tinyboot-uefi", "--uefi")["firmware"] == "uefi"
    argv = launch_and_check(c, "tinyboot-uefi", "uefivm", UEFI_HOSTNAME, "/dev/vda2")
    assert any(b"pflash0=ovmf-code" in a for a in argv) and any(str(OVMF_CODE).encode() in a for a in argv)
    # Booted by UEFI (OVMF -> systemd-boot -> the kernel's EFI stub): the kernel sees 64-bit EFI firmware.
    r = c.cli("exec", "uefivm", "--", "cat", "/sys/firmware/efi/fw_platform_size")
    assert r.returncode == 0 and r.stdout.strip() == "64", (r.stdout, r.stderr)
    assert c.cli("rm", "--force", "uefivm").returncode == 0
