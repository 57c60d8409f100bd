"""The ``tiny`` image: Debian's cloud kernel, a busybox initrd and a busybox root disk with qemu-guest-agent.

Why so small: tests and demos boot many VMs under TCG, where every megabyte read and every process forked costs
real time. The guest does exactly what the daemon relies on (agent, SSH, hostname, DHCP, power button, reboot, panic
reporting, serial shell, online root growth) and nothing else; everything comes from Debian's signed archive.
"""

from __future__ import annotations

import gzip
import os
import shutil
import stat
import subprocess
from pathlib import Path

from corral.errors import ImageError
from corral.images import kmods
from corral.images.archive import DebianArchive, Package, Progress, parse_relation
from corral.images.artifacts import BuiltImage, SourcePackage
from corral.images.initrd import Cpio, copy_with_libs, module_depends, module_load_order
from corral.images.tiny_arch import (
    ARCH_BUILDER_VERSION,
    FOREIGN,
    TinyArch,
    applet_names,
    builtin_modules,
    decompress_needed,
    module_root,
)
from corral.vm.arch import Arch

BUILDER_VERSION = "12"
SUITE = "bookworm"
# The cloud kernel: it boots in about half the time of the generic one under TCG. It has no 9p (CONFIG_NET_9P is not
# set), so shared folders' modules are built from Debian's source for it (corral.images.kmods).
KERNEL_META = "linux-image-cloud-amd64"
# cryptomgr.notests: the kernel's crypto self-tests are a third of its own boot under TCG (measured: 4.55 s of QEMU
# CPU to the agent's answer with it, 5.39 s without); they check the kernel's cipher code, not this guest.
KERNEL_CMDLINE = ("root=/dev/vda rw console=ttyS0 quiet loglevel=3 tsc=reliable no_timer_check i8042.noaux "
                  "cryptomgr.notests")
DISK_VIRTUAL_SIZE = 1 << 30

# Loaded by the initrd, in dependency order (dependencies are added from each module's own modinfo).
# ext4 is built into Debian's cloud kernel, so it needs no module. 9pnet_virtio and 9p (built by corral.images.kmods,
# with the kernel's netfs) serve shared folders (`--mount`). pvpanic-mmio binds QEMU's ISA ``-device pvpanic``
# (ACPI id QEMU0001); button + evdev give busybox acpid the ACPI power button; virtio_balloon serves `--balloon`
# (free page reporting), and binds nothing without that device.
MODULES = [
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_console",
    "pvpanic-mmio",
    "button",
    "evdev",
    "virtio_balloon",
    "9pnet_virtio",
    "9p",
]

# Root disk: only these binaries are copied from the packages, with the shared libraries they need.
# dropbear is the SSH server of `corral shell`: a fraction of the size of OpenSSH, and quick to start under TCG.
AGENT_PACKAGES = ["qemu-guest-agent", "e2fsprogs", "dropbear-bin"]
BINARIES = ["usr/sbin/qemu-ga", "sbin/resize2fs", "usr/sbin/dropbear", "usr/bin/dropbearkey"]
# Library packages whose names do not start with "lib" (dropbear links zlib).
LIBRARY_PACKAGES = ["zlib1g"]


def _note(progress: Progress | None, what: str) -> None:
    if progress:
        progress(what, 0, None)


# -- ELF: which shared libraries a binary needs ---------------------------------------------------------------


INIT_SCRIPT = r"""#!/bin/busybox sh
# corral tiny initrd: load the few modules the guest needs, mount the root (/dev/vda), hand over to its /sbin/init.
# Under TCG every exec costs tens of milliseconds, so this script uses shell builtins wherever it can.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
read -r mods < /modules.list
modprobe -a $mods || for m in $mods; do insmod /lib/modules/*/$m.ko; done
# The root is /dev/vda (Corral's kernel boot), or the root=/dev/vd... of the command line: a disk that boots itself
# may be partitioned (root=/dev/vda2 beside an EFI system partition).
read -r cmdline < /proc/cmdline
root=/dev/vda
for w in $cmdline; do
    case "$w" in root=/dev/vd*) root="${w#root=}" ;; esac
done
i=0
while [ ! -b "$root" ] && [ $i -lt 500 ]; do usleep 10000; i=$((i+1)); done
if ! mount -t ext4 -o rw,noinit_itable,no_prefetch_block_bitmaps "$root" /newroot; then
    echo "initrd: cannot mount $root as the root filesystem; dropping to a shell"
    exec sh
fi
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /newroot/run
mount --move /dev /newroot/dev
mount --move /sys /newroot/sys
mount --move /proc /newroot/proc
exec switch_root /newroot /sbin/init
"""


def make_initrd(busybox: Path, modules: list[Path], kver: str, dest: Path) -> None:
    """gzip'd newc cpio: busybox, /init, the modules flat in /lib/modules/<kver>/ with a modules.dep for modprobe."""
    c = Cpio()
    for d in ("bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules", f"lib/modules/{kver}"):
        c.dir(d)
    c.add("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
    c.add("dev/null", stat.S_IFCHR | 0o666, rdev=(1, 3))
    c.file("bin/busybox", busybox.read_bytes(), 0o755)
    c.file("init", INIT_SCRIPT.encode(), 0o755)
    names, dep_lines = [], []
    by_name = {ko.name[:-3].replace("-", "_"): ko for ko in modules}
    for ko in modules:
        c.file(f"lib/modules/{kver}/{ko.name}", ko.read_bytes())
        names.append(ko.name[:-3])
        deps = " ".join(by_name[d.replace("-", "_")].name for d in module_depends(ko))
        dep_lines.append(f"{ko.name}: {deps}".rstrip())
    c.file(f"lib/modules/{kver}/modules.dep", ("\n".join(dep_lines) + "\n").encode())
    c.file("modules.list", (" ".join(names) + "\n").encode())
    with open(dest, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=6) as gz:
        gz.write(c.finish())


# -- root filesystem ------------------------------------------------------------------------------------------

FILES: dict[str, tuple[int, str]] = {
    "etc/inittab": (
        0o644,
        """# corral tiny: busybox init
::sysinit:/etc/init.d/rcS
::once:/etc/init.d/rc.background
::respawn:/sbin/corral-qga
::respawn:/sbin/corral-sshd
ttyS0::respawn:/sbin/getty -n -l /sbin/corral-autologin -L 115200 ttyS0 vt100
::ctrlaltdel:/sbin/reboot
::shutdown:/etc/init.d/rcK
""",
    ),
    "etc/init.d/rcS": (
        0o755,
        r"""#!/bin/sh
# Boot, part 1 (init waits for it): only what the guest agent needs; builtins only where possible, since every
# exec is slow under TCG. The initrd already mounted /proc, /sys, /dev and /run.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
[ -e /proc/self ] || mount -t proc proc /proc
[ -d /sys/class ] || mount -t sysfs sysfs /sys
[ -c /dev/null ] || mount -t devtmpfs devtmpfs /dev
[ -d /run/lock ] || { mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run; mkdir /run/lock; }
# /tmp before the agent starts: Corral's exec creates its output files there through the agent, and a tmpfs mounted
# over /tmp after that hid them from the command, whose output went into new files the host never read.
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
read -r cmdline < /proc/cmdline
name=
for w in $cmdline; do
    case "$w" in corral.hostname=*) name="${w#corral.hostname=}" ;; esac
done
read -r old < /etc/hostname
if [ -n "$name" ] && [ "$name" != "$old" ]; then echo "$name" > /etc/hostname; else name="$old"; fi
hostname "$name"
# Here, before the agent starts, not in part 2: Corral adds its private networks' names to /etc/hosts once the agent
# answers, and a rewrite behind its back would drop them.
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n' "$name" > /etc/hosts
exit 0
""",
    ),
    "etc/init.d/rc.background": (
        0o755,
        r"""#!/bin/sh
# Boot, part 2 (runs alongside the guest agent): everything that may take time, at low priority so that on one
# TCG vCPU the agent starts first.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
renice -n 10 -p $$ >/dev/null
name=$(hostname)
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620 devpts /dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
ip link set lo up
ip link set eth0 up 2>/dev/null && \
    udhcpc -i eth0 -f -S -p /run/udhcpc.eth0.pid -s /usr/share/udhcpc/default.script -x "hostname:$name" \
        >/dev/null 2>&1 &
acpid -c /etc/acpi -l /dev/null
[ -s /etc/machine-id ] || tr -d '-' < /proc/sys/kernel/random/uuid > /etc/machine-id
read -r cmdline < /proc/cmdline
root=/dev/vda
for w in $cmdline; do
    case "$w" in root=/dev/vd*) root="${w#root=}" ;; esac
done
resize2fs "$root" >/dev/null 2>&1
exit 0
""",
    ),
    "etc/init.d/rcK": (
        0o755,
        r"""#!/bin/sh
# Shutdown: stop everything, then leave the root filesystem clean.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
kill -TERM -1 2>/dev/null
usleep 200000
sync
umount -a -r 2>/dev/null
mount -o remount,ro / 2>/dev/null
exit 0
""",
    ),
    "sbin/corral-qga": (
        0o755,
        r"""#!/bin/sh
# Started (and restarted) by init: qemu-ga on the virtio port QEMU named org.qemu.guest_agent.0.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
for p in /sys/class/virtio-ports/*; do
    read -r name < "$p/name" 2>/dev/null
    [ "$name" = org.qemu.guest_agent.0 ] && exec qemu-ga -m virtio-serial -p "/dev/${p##*/}" -t /run
done
sleep 1
""",
    ),
    "sbin/corral-sshd": (
        0o755,
        r"""#!/bin/sh
# Started (and restarted) by init beside the guest agent: dropbear on port 22, root by key only (-s: no passwords).
# The host key is made once per VM, before dropbear starts, and kept on the VM's own disk: Corral reads it through
# the guest agent and pins it, so no client ever trusts it on first use, and it stays the same across boots.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
key=/etc/dropbear/dropbear_ed25519_host_key
if [ ! -s "$key" ]; then
    mkdir -p /etc/dropbear
    rm -f "$key.new"
    if ! dropbearkey -t ed25519 -f "$key.new" >/dev/null 2>&1 || ! mv "$key.new" "$key"; then
        sleep 1
        exit 1
    fi
fi
echo $$ > /run/dropbear.pid  # the listener's pid (exec keeps it): Corral restarts it with a new key
exec dropbear -F -E -s -p 22 -r "$key" 2>>/run/dropbear.log
""",
    ),
    "sbin/corral-autologin": (0o755, "#!/bin/sh\nexec /bin/sh -l\n"),
    "etc/acpi/PWRF/00000080": (0o755, "#!/bin/sh\nexec /sbin/poweroff\n"),
    # qemu-ga's guest-shutdown runs `/sbin/shutdown -P|-H|-r +0 MSG`; busybox has no shutdown applet.
    "sbin/shutdown": (
        0o755,
        r"""#!/bin/sh
# Minimal shutdown(8) for qemu-ga, which runs `shutdown -h -r|-H|-P +0 MSG`: -r reboots, -H halts, else poweroff.
for arg in "$@"; do
    case "$arg" in
        -r) exec /sbin/reboot ;;
        -H) exec /sbin/halt ;;
    esac
done
exec /sbin/poweroff
""",
    ),
    "usr/share/udhcpc/default.script": (
        0o755,
        r"""#!/bin/sh
# udhcpc hook: apply the lease (address, default route, resolv.conf).
[ -n "$1" ] || exit 1
case "$1" in
    deconfig)
        ip -4 addr flush dev "$interface"
        ip link set "$interface" up
        ;;
    bound|renew)
        ip -4 addr flush dev "$interface"
        ip -4 addr add "$ip/${mask:-24}" ${broadcast:+broadcast $broadcast} dev "$interface"
        for r in $router; do ip -4 route replace default via "$r" dev "$interface"; break; done
        : > /etc/resolv.conf.new
        [ -n "$domain" ] && echo "search $domain" >> /etc/resolv.conf.new
        for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf.new; done
        mv /etc/resolv.conf.new /etc/resolv.conf
        ;;
esac
exit 0
""",
    ),
    "etc/passwd": (0o644, "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"),
    "etc/group": (0o644, "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n"),
    "etc/shadow": (0o600, "root::19000:0:99999:7:::\n"),
    "etc/hostname": (0o644, "tiny\n"),
    "etc/fstab": (0o644, "/dev/vda / ext4 rw 0 1\n"),
    "etc/profile": (
        0o644,
        "export PATH=/sbin:/bin:/usr/sbin:/usr/bin\nexport HOME=/root\n[ -n \"$TERM\" ] || export TERM=vt100\n"
        "PS1='\\h:\\w\\$ '\ncd /root\n",
    ),
    "etc/resolv.conf": (0o644, ""),
    "etc/nsswitch.conf": (0o644, "passwd: files\ngroup: files\nhosts: files dns\n"),
    "etc/shells": (0o644, "/bin/sh\n"),  # dropbear lets in only users whose shell is listed here
}


def make_tree(tree: Path, busybox: Path, staging: Path, arch: TinyArch | None = None) -> None:
    """Assemble the root filesystem (merged /usr, like Debian 12) in ``tree``; ``arch``: a foreign one's."""
    multiarch = arch.multiarch if arch else "x86_64-linux-gnu"
    for d in ("usr/bin", "usr/sbin", f"usr/lib/{multiarch}", "usr/lib64", "etc", "dev", "proc", "sys", "run",
              "tmp", "root", "var/log", "var/tmp", "mnt"):
        (tree / d).mkdir(parents=True, exist_ok=True)
    for link in ("bin", "sbin", "lib", "lib64"):
        (tree / link).symlink_to(f"usr/{link}")
    (tree / "var/run").symlink_to("../run")
    (tree / "tmp").chmod(0o1777)
    (tree / "var/tmp").chmod(0o1777)
    (tree / "root").chmod(0o700)
    shutil.copy2(busybox, tree / "usr/bin/busybox")
    if arch is None:
        applets = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True, check=True).stdout
        rels = applets.split()
    else:  # a foreign busybox does not run here: each applet in both bin directories (PATH has both)
        rels = [f"usr/{d}/{n}" for n in applet_names(busybox) for d in ("sbin", "bin")]
    for rel in rels:
        dest = tree / "usr" / rel.removeprefix("usr/")
        if dest.exists() or dest.is_symlink():
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.symlink_to(os.path.relpath(tree / "usr/bin/busybox", dest.parent))
    copy_with_libs(staging, BINARIES, tree, multiarch)
    for rel, (mode, text) in FILES.items():
        if arch is not None and rel == "etc/inittab":  # the serial console's name (ttyAMA0 on arm)
            text = text.replace("ttyS0", arch.console)
        dest = tree / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_symlink():
            dest.unlink()
        dest.write_text(text)
        dest.chmod(mode)


def make_disk(tree: Path, raw: Path, qcow2: Path, size: int = DISK_VIRTUAL_SIZE) -> None:
    """ext4 from a directory without mounting anything, every inode owned by root, then qcow2 (sparse, small).
    (Also the root disk of OCI images, corral.images.oci, whose trees are larger.)"""
    with open(raw, "wb") as f:
        f.truncate(size)
    run = subprocess.run
    # Initialise inode tables now (zeros cost nothing in qcow2) and mount with noinit_itable: no ext4lazyinit
    # thread competing with the guest agent for the one vCPU at boot.
    extended = "root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0"
    r = run(["mkfs.ext4", "-q", "-F", "-L", "corral-root", "-m", "0", "-E", extended, "-d", str(tree), str(raw)],
            capture_output=True, text=True)
    if r.returncode != 0:
        raise ImageError(f"mkfs.ext4 failed: {r.stderr.strip()[:300]}")
    if os.getuid() != 0:  # mkfs -d copies the builder's uid; the guest wants root-owned files
        script = "".join(
            f'sif "/{p.relative_to(tree)}" uid 0\nsif "/{p.relative_to(tree)}" gid 0\n' for p in tree.rglob("*")
        )
        run(["debugfs", "-w", "-f", "-", str(raw)], input=script, capture_output=True, text=True, check=True)
    r = run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-c", str(raw), str(qcow2)], capture_output=True,
            text=True)
    if r.returncode != 0:
        raise ImageError(f"qemu-img convert failed: {r.stderr.strip()[:300]}")
    raw.unlink()


# -- the builder ----------------------------------------------------------------------------------------------


def _wanted_for_staging(pkgs: list[Package]) -> list[Package]:
    """Only libraries and the two tools: perl, dpkg and friends come in through Depends but add nothing we run."""
    keep = set(AGENT_PACKAGES) | set(LIBRARY_PACKAGES)
    return [p for p in pkgs if p.name in keep or (p.name.startswith("lib") and "perl" not in p.name)]


def build_tiny(workdir: Path, archive: DebianArchive, progress: Progress | None = None,
               arch: Arch = Arch.X86_64) -> BuiltImage:
    """Build the tiny image for ``arch`` in ``workdir`` (which the caller owns and removes); ``archive`` is that
    architecture's (corral.images.tiny_arch: the suite, kernel and modules of each)."""
    foreign = FOREIGN.get(arch)
    workdir.mkdir(parents=True, exist_ok=True)
    _note(progress, f"load the {archive.suite} package index")
    archive.load_index(progress)
    kernel_meta = foreign.kernel_meta if foreign else KERNEL_META
    meta = archive.package(kernel_meta)
    kernel_pkg_name = next(
        (alt for group in parse_relation(meta.depends) for alt in group if alt.startswith("linux-image-")), None
    )
    if kernel_pkg_name is None:
        raise ImageError(f"{kernel_meta} depends on no linux-image package: the archive layout changed")
    kernel_pkg = archive.package(kernel_pkg_name)
    busybox_pkg = archive.package("busybox-static")
    agent_pkgs = _wanted_for_staging(archive.resolve(AGENT_PACKAGES))
    used = [meta, kernel_pkg, busybox_pkg, *agent_pkgs]

    staging = workdir / "staging"
    kroot = workdir / "kernel"
    for i, pkg in enumerate(used):
        _note(progress, f"fetch {pkg.name} ({i + 1}/{len(used)})")
        deb = archive.download(pkg, progress)
        if pkg is kernel_pkg:
            archive.extract(deb, kroot)
        elif pkg is not meta:
            archive.extract(deb, staging)

    _note(progress, "make the initrd")
    # vmlinuz (x86, arm: compressed), vmlinux (riscv64: an uncompressed Image, which QEMU's -kernel boots)
    vmlinuz = next(iter(sorted((kroot / "boot").glob("vmlinu[xz]-*"))), None)
    moddir = module_root(kroot) if foreign else next(iter(sorted((kroot / "lib/modules").glob("*"))), None)
    if vmlinuz is None or moddir is None:
        raise ImageError(f"{kernel_pkg.name} holds no vmlinuz or modules: the Debian package layout changed")
    kernel = workdir / "vmlinuz"
    shutil.copyfile(vmlinuz, kernel)
    busybox = next((p for p in (staging / "bin/busybox", staging / "usr/bin/busybox") if p.is_file()), None)
    if busybox is None:
        raise ImageError("busybox-static holds no busybox: the Debian package layout changed")
    initrd = workdir / "initrd.img"
    release = moddir.name
    ninep_sources: list[Package] = []
    if foreign is None:
        ninep, ninep_sources = kmods.build_9p(archive, release, kernel_pkg.version, progress)
        kmods.install(ninep, moddir)
        modules = MODULES
    else:
        builtin = builtin_modules(moddir)
        modules = [m for m in foreign.modules if m.replace("-", "_") not in builtin]
        decompress_needed(moddir, modules)
    make_initrd(busybox, module_load_order(moddir, modules), release, initrd)

    _note(progress, "assemble the root filesystem")
    tree = workdir / "tree"
    make_tree(tree, busybox, staging, foreign)
    _note(progress, "make the root disk")
    disk = workdir / "disk.qcow2"
    make_disk(tree, workdir / "disk.raw", disk)
    shutil.rmtree(staging)
    shutil.rmtree(kroot)
    shutil.rmtree(tree)
    return BuiltImage(
        name="tiny",
        arch=arch,
        kernel=kernel,
        initrd=initrd,
        disk=disk,
        kernel_cmdline=foreign.cmdline if foreign else KERNEL_CMDLINE,
        builder=f"tiny {arch} {ARCH_BUILDER_VERSION}" if foreign else f"tiny {BUILDER_VERSION}",
        mirror=archive.mirror,
        suite=archive.suite,
        # The 9p modules' sources are listed too: the initrd holds what was built from them.
        packages=[SourcePackage(name=p.name, version=p.version, arch=p.arch, sha256=p.sha256)
                  for p in [*used, *ninep_sources]],
    )
