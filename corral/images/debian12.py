"""The ``debian-12`` image: a real Debian bookworm userland with systemd, apt, sshd, cloud-init and the guest agent.

Why mmdebstrap (as root, ``--mode=root``): it is Debian's own bootstrapper, verifies every download against the
archive keyring with apt, runs maintainer scripts properly (so the kernel's initramfs is built by initramfs-tools in
the tree) and needs no VM. The disk is then made *without mounting* anything: ``mkfs.ext4 -d <tree>`` copies the tree
into a sparse raw file, and ``qemu-img convert`` turns it into qcow2. The kernel and initrd are taken out of
``/boot`` because Corral boots guests with ``-kernel``/``-initrd`` (no bootloader in the image).

Downloaded ``.deb`` files are kept in ``cache_dir/apt-archives`` (mmdebstrap's ``sync-in``/``sync-out`` hooks), so
a rebuild only fetches what changed in the archive; they also give each package's sha256 for the manifest.

The cloud kernel has no 9p, which shared folders need: the 9p modules are built for it from Debian's source
(:mod:`corral.images.kmods`) and put in ``/lib/modules/<release>/extra`` with ``depmod`` run, so ``modprobe 9p``
works in the guest.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import textwrap
from pathlib import Path
from urllib.parse import quote

from corral import paths
from corral.errors import ImageError
from corral.images import kmods
from corral.images.artifacts import BuiltImage, SourcePackage, sha256_file

BUILDER_VERSION = "3"

NAME = "debian-12"
SUITE = "bookworm"
ARCH = "amd64"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")

# systemd.hostname is applied by PID 1 itself, before anything else reads the hostname. net.ifnames=0 gives eth0, a
# stable name the networkd match below also covers. The daemon appends corral.hostname=/systemd.hostname= itself.
KERNEL_CMDLINE = "root=/dev/vda rw rootfstype=ext4 console=ttyS0,115200 net.ifnames=0 panic=-1"

PACKAGES = [
    "systemd-sysv",
    "dbus",
    "apt",
    "openssh-server",
    "qemu-guest-agent",
    "cloud-init",
    "linux-image-cloud-amd64",
    "initramfs-tools",
    "iproute2",
    "e2fsprogs",  # fsck and resize2fs for the ext4 root (not essential in bookworm, so not in the apt variant)
    "systemd-resolved",
    "ca-certificates",
    "netbase",
    "less",
]

# Virtual size of the root disk. The file is sparse and qcow2 stores only used clusters, so headroom is free on the
# host; a VM's overlay may be made larger, never smaller.
DISK_VIRTUAL_SIZE = 2 * 1024**3
_MIN_HEADROOM = 512 * 1024**2

from corral.images.artifacts import Progress  # noqa: E402

_STAGES = 5  # bootstrap, kernel, filesystem, convert, packages

# Files written into the tree after bootstrap. Each entry says why it is there.
_FILES: dict[str, str] = {
    # Root on the virtio disk; errors make it read-only instead of corrupting it further.
    "etc/fstab": "/dev/vda / ext4 rw,errors=remount-ro 0 1\n",
    # Overridden at boot by systemd.hostname= on the kernel command line.
    "etc/hostname": "debian\n",
    "etc/hosts": "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n",
    # DHCP on whatever NIC QEMU gives (eth* with net.ifnames=0, en* without it).
    "etc/systemd/network/50-corral-dhcp.network": textwrap.dedent(
        """\
        [Match]
        Name=en* eth*

        [Network]
        DHCP=yes

        [DHCPv4]
        UseHostname=no
        """
    ),
    # Debugging aid: the serial console (a 0700 socket in the VM directory) logs straight in as root. Root has no
    # password (locked), so nothing else can log in as root without a key.
    "etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf": textwrap.dedent(
        """\
        [Service]
        ExecStart=
        ExecStart=-/sbin/agetty --autologin root --keep-baud 115200,57600,38400,9600 %I $TERM
        """
    ),
    # Seed datasources only: with a seed (a "cidata" disk or ds=nocloud on the cmdline) cloud-init runs; without
    # one, ds-identify finds nothing and disables cloud-init for that boot (the None fallback would run every module,
    # ~35 s under TCG). ConfigDrive is listed because ds-identify skips its search, and enables cloud-init blindly,
    # when the list holds a single datasource. Networking is ours (networkd above), not cloud-init's.
    # C.UTF-8 is built into libc: cc_locale's default (en_US.UTF-8) needs the locales package and fails without it.
    "etc/cloud/cloud.cfg.d/90-corral.cfg": textwrap.dedent(
        """\
        datasource_list: [NoCloud, ConfigDrive]
        network:
          config: disabled
        locale: C.UTF-8
        """
    ),
    "etc/default/locale": "LANG=C.UTF-8\n",
    # A VM is a boot away from use: don't stall boot waiting for every link to be configured.
    "etc/systemd/system/systemd-networkd-wait-online.service.d/corral.conf": textwrap.dedent(
        """\
        [Service]
        ExecStart=
        ExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=20
        """
    ),
}

# Units enabled in the tree (systemctl enable works offline in a chroot). qemu-guest-agent is not listed: Debian's
# udev rule starts it (SYSTEMD_WANTS) when the virtio port org.qemu.guest_agent.0 appears, and its unit has no
# [Install] section. systemd-resolved enables itself when installed.
_ENABLE = ["systemd-networkd.service", "systemd-resolved.service"]


def _run(cmd: list[str], what: str, log: Path | None = None) -> str:
    """Run ``cmd``; on failure raise ImageError naming ``what`` and the end of its output."""
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    except FileNotFoundError as exc:
        raise ImageError(f"{what}: {cmd[0]} is not installed; install it (apt-get install {cmd[0]})") from exc
    if log is not None:
        with log.open("a") as fh:
            fh.write(f"$ {' '.join(cmd)}\n{proc.stdout}\n")
    if proc.returncode != 0:
        tail = " | ".join(line for line in proc.stdout.strip().splitlines()[-3:])
        hint = f"; full log in {log}" if log is not None else ""
        raise ImageError(f"{what} failed (exit {proc.returncode}): {tail}{hint}")
    return proc.stdout


def _mounts_under(tree: Path) -> list[str]:
    """Mount points inside ``tree`` (deepest first): mmdebstrap's root mode mounts /proc, /sys, /dev there."""
    prefix = str(tree.resolve()) + "/"
    found = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            mnt = line.split()[4].replace("\\040", " ")
            if mnt.startswith(prefix) or mnt == prefix[:-1]:
                found.append(mnt)
    return sorted(found, key=len, reverse=True)


def _remove_tree(tree: Path) -> None:
    """Delete a bootstrap tree, unmounting anything left mounted in it first, so rmtree never walks into /proc."""
    if not tree.exists():
        return
    for mnt in _mounts_under(tree):
        subprocess.run(["umount", "--lazy", mnt], check=False, capture_output=True)
    if _mounts_under(tree):
        raise ImageError(f"cannot clean up {tree}: file systems are still mounted in it; unmount them by hand")
    shutil.rmtree(tree, ignore_errors=True)


def _bootstrap(tree: Path, mirror: str, archives: Path, log: Path) -> None:
    """Run mmdebstrap into ``tree``, syncing .debs in from and out to ``archives`` so they are downloaded once."""
    mirror = mirror.rstrip("/")
    if not KEYRING.exists():
        raise ImageError(f"{KEYRING} is missing; install debian-archive-keyring")
    if os.geteuid() != 0:
        raise ImageError("building debian-12 needs root (mmdebstrap --mode=root); run the build as root")
    archives.mkdir(parents=True, exist_ok=True)
    cmd = [
        "mmdebstrap",
        "--mode=root",
        "--variant=apt",
        f"--arch={ARCH}",
        f"--keyring={KEYRING}",
        f"--include={','.join(PACKAGES)}",
        "--aptopt=Acquire::Retries \"3\"",
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-include=/usr/share/doc/*/copyright",
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        "--dpkgopt=path-include=/usr/share/locale/locale.alias",
        # Keep downloaded .debs (skip emptying the archive dir), sync them in before and out after the install.
        "--skip=download/empty",
        "--skip=essential/unlink",
        '--setup-hook=mkdir -p "$1"/var/cache/apt/archives/partial',
        f"--setup-hook=sync-in {archives} /var/cache/apt/archives/",
        f"--customize-hook=sync-out /var/cache/apt/archives {archives}",
        '--customize-hook=rm -f "$1"/var/cache/apt/archives/*.deb',
        SUITE,
        str(tree),
        f"deb {mirror} {SUITE} main",
        f"deb {mirror} {SUITE}-updates main",
    ]
    _run(cmd, "mmdebstrap", log)


def _configure(tree: Path, log: Path) -> None:
    """Write Corral's config into the tree and enable the units a VM needs; see _FILES for the reasons."""
    for rel, text in _FILES.items():
        dest = tree / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)
    _run(["chroot", str(tree), "systemctl", "enable", *_ENABLE], "systemctl enable", log)
    # resolved's stub owns resolv.conf (the systemd-resolved package makes it a symlink); make sure of it.
    resolv = tree / "etc/resolv.conf"
    if not resolv.is_symlink():
        resolv.unlink(missing_ok=True)
        resolv.symlink_to("../run/systemd/resolve/stub-resolv.conf")
    # Root login only by key or on the serial console (autologin); '*' locks the password.
    _run(["chroot", str(tree), "usermod", "--password", "*", "root"], "lock root password", log)
    # Each VM must get its own machine-id: an empty file makes systemd generate and write one on first boot (and,
    # unlike "uninitialized", does not trigger systemd-firstboot prompts on the console).
    (tree / "etc/machine-id").write_text("")
    dbus_id = tree / "var/lib/dbus/machine-id"
    if dbus_id.exists() or dbus_id.is_symlink():
        dbus_id.unlink()
        dbus_id.symlink_to("/etc/machine-id")
    # Host keys must differ per VM too: they are generated at boot by a oneshot below instead of shipped.
    for key in (tree / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    # ed25519 and ecdsa only: an RSA-3072 key takes ~10 s to generate under TCG, on the path to sshd.
    (tree / "etc/ssh/sshd_config.d/corral.conf").write_text(
        "HostKey /etc/ssh/ssh_host_ed25519_key\nHostKey /etc/ssh/ssh_host_ecdsa_key\n"
    )
    _install_unit(
        tree,
        "corral-ssh-hostkeys.service",
        """\
        [Unit]
        Description=Generate SSH host keys (each VM gets its own)
        Before=ssh.service
        ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

        [Service]
        Type=oneshot
        ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key
        ExecStart=/usr/bin/ssh-keygen -q -t ecdsa -N "" -f /etc/ssh/ssh_host_ecdsa_key

        [Install]
        WantedBy=multi-user.target
        """,
    )
    # The root file system fills the disk the VM was given (an overlay may be larger than the image); ext4 grows
    # online in well under a second, so this does not wait for cloud-init, which only runs when a seed is attached.
    _install_unit(
        tree,
        "corral-growroot.service",
        """\
        [Unit]
        Description=Grow the root file system to the size of its disk
        DefaultDependencies=no
        After=systemd-remount-fs.service
        Before=local-fs.target

        [Service]
        Type=oneshot
        ExecStart=/sbin/resize2fs /dev/vda

        [Install]
        WantedBy=local-fs.target
        """,
    )
    _run(["chroot", str(tree), "systemctl", "enable", "corral-ssh-hostkeys.service", "corral-growroot.service"],
         "systemctl enable", log)
    # e2scrub_reap only cleans up LVM snapshots left by e2scrub; there is no LVM here, and it costs seconds of TCG.
    _run(["chroot", str(tree), "systemctl", "disable", "e2scrub_reap.service"], "systemctl disable", log)
    for rel in ("var/log/apt", "var/lib/apt/lists"):
        for f in (tree / rel).glob("*"):
            if f.is_file():
                f.unlink()


def _install_unit(tree: Path, name: str, text: str) -> None:
    dest = tree / "etc/systemd/system" / name
    dest.write_text(textwrap.dedent(text))


def _extract_kernel(tree: Path, out: Path) -> tuple[Path, Path]:
    """Copy the newest vmlinuz and initrd.img out of the tree's /boot."""
    kernels = sorted((tree / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise ImageError("no kernel in the bootstrapped tree's /boot; check that linux-image-cloud-amd64 installed")
    vmlinuz = kernels[-1]
    initrd = tree / "boot" / ("initrd.img-" + vmlinuz.name.removeprefix("vmlinuz-"))
    if not initrd.exists():
        raise ImageError(f"{initrd.name} is missing from /boot; initramfs-tools did not run in the tree")
    kernel, initrd_out = out / paths.IMAGE_KERNEL, out / paths.IMAGE_INITRD
    shutil.copyfile(vmlinuz, kernel)
    shutil.copyfile(initrd, initrd_out)
    return kernel, initrd_out


def _add_9p(tree: Path, mirror: str, cache_dir: Path, log: Path, progress: Progress | None) -> list[SourcePackage]:
    """Build (or take from the cache) the 9p modules for the tree's kernel, install them, run depmod in the tree.

    The kernel's Debian version is read from the tree's dpkg database; headers and source are taken from the
    archive's bookworm index at that version (ImageError naming the versions there are if it lacks them).
    """
    from corral.images.archive import DebianArchive  # httpx and the index parser: only when building

    moddirs = sorted((tree / "lib/modules").glob("*"))
    if len(moddirs) != 1:
        raise ImageError(f"the tree has {len(moddirs)} kernels in /lib/modules, not one: cannot tell which to "
                         "build the 9p modules for")
    release = moddirs[0].name
    version = _run(["dpkg-query", f"--admindir={tree / 'var/lib/dpkg'}", "-W", "-f", "${Version}",
                    f"linux-image-{release}"], "dpkg-query", log).strip()
    archive = DebianArchive(mirror, SUITE, cache_dir)
    kos, sources = kmods.build_9p(archive, release, version, progress)
    kmods.install(kos, moddirs[0])
    _run(["chroot", str(tree), "depmod", release], "depmod", log)
    return [SourcePackage(name=p.name, version=p.version, arch=p.arch, sha256=p.sha256) for p in sources]


def _tree_size(tree: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(tree):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def _make_disk(tree: Path, raw: Path, qcow2: Path, log: Path, progress: Progress | None) -> None:
    """Make an ext4 file system from ``tree`` in a sparse raw file (no mount needed), then convert it to qcow2."""
    size = max(DISK_VIRTUAL_SIZE, _tree_size(tree) + _MIN_HEADROOM)
    size = (size + 1024**2 - 1) // 1024**2 * 1024**2
    with raw.open("wb") as fh:
        fh.truncate(size)
    _run(
        ["mkfs.ext4", "-q", "-F", "-L", "root", "-E", "root_owner=0:0", "-d", str(tree), str(raw)],
        "mkfs.ext4 -d",
        log,
    )
    _step(progress, "convert", 3)
    _run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)], "qemu-img convert", log)
    raw.unlink()


def _deb_sha256(archives: Path, name: str, version: str, arch: str) -> str:
    """sha256 of the cached .deb apt downloaded for this package ("" if it is not there)."""
    deb = archives / f"{name}_{quote(version, safe='+~.-')}_{arch}.deb"
    if not deb.exists():
        return ""
    return sha256_file(deb)


def _packages(tree: Path, archives: Path, log: Path) -> list[SourcePackage]:
    out = _run(
        ["dpkg-query", f"--admindir={tree / 'var/lib/dpkg'}", "-W", "-f", "${Package}\t${Version}\t${Architecture}\n"],
        "dpkg-query",
        log,
    )
    pkgs = []
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) == 3:
            name, version, arch = parts
            pkgs.append(SourcePackage(name=name, version=version, arch=arch,
                                      sha256=_deb_sha256(archives, name, version, arch)))
    return pkgs


def _step(progress: Progress | None, stage: str, n: int) -> None:
    if progress is not None:
        progress(stage, n, _STAGES)


def build_debian12(
    workdir: Path, mirror: str, cache_dir: Path, progress: Progress | None = None
) -> BuiltImage:
    """Build ``debian-12`` into ``workdir`` (vmlinuz, initrd.img, disk.qcow2); needs root, mmdebstrap, qemu-img.

    ``cache_dir`` keeps downloaded .debs between builds. The bootstrap tree lives in a temporary directory next to
    the outputs and is removed whatever happens.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    archives = Path(cache_dir) / "apt-archives" / f"{SUITE}-{ARCH}"
    log = workdir / "build.log"
    log.write_text("")
    tmp = Path(tempfile.mkdtemp(prefix=".debian12-", dir=workdir))
    tree = tmp / "tree"
    try:
        _step(progress, "bootstrap", 0)
        _bootstrap(tree, mirror, archives, log)
        _configure(tree, log)
        _step(progress, "kernel", 1)
        ninep_sources = _add_9p(tree, mirror, cache_dir, log, progress)
        kernel, initrd = _extract_kernel(tree, workdir)
        # The 9p modules' sources are listed too: the root file system holds what was built from them.
        pkgs = _packages(tree, archives, log) + ninep_sources
        _step(progress, "filesystem", 2)
        disk = workdir / paths.IMAGE_DISK
        _make_disk(tree, tmp / "disk.raw", disk, log, progress)
        _step(progress, "done", _STAGES)
    finally:
        _remove_tree(tree)
        shutil.rmtree(tmp, ignore_errors=True)
    return BuiltImage(
        name=NAME,
        kernel=kernel,
        initrd=initrd,
        disk=disk,
        kernel_cmdline=KERNEL_CMDLINE,
        builder=f"debian12 {BUILDER_VERSION}",
        mirror=mirror,
        suite=SUITE,
        packages=pkgs,
    )
