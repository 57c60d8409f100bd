"""What Corral adds to an OCI image's root filesystem to run it as a VM, and the initrd that hands over to it.

An OCI image has no kernel, no init and (usually) no guest agent, and Corral must not depend on what it has. So:

- the kernel and initrd are the ``tiny`` image's (Debian's cloud kernel, busybox, the virtio modules); the initrd
  gets one more cpio archive appended, whose ``/init`` replaces tiny's with one that switches to ``/.corral/init``
  instead of ``/sbin/init`` (the kernel unpacks concatenated archives in order, later files over earlier ones);
- ``/.corral`` on the disk holds Corral's own static busybox (with its applets as links) and qemu-ga with the
  shared libraries it needs (run through its own ``ld.so --library-path``, so never the image's libc), the init
  script, and ``process``: the image's entrypoint, cmd, env, workdir and user as shell words;
- ``/.corral/init`` is PID 1: it mounts what the kernel does not, starts the agent (respawned) and DHCP beside the
  main process, runs the main process with the image's environment, directory and user, its output on the console
  (the VM's serial log), and when it exits, prints its exit code on the console in a line the daemon reads
  (:data:`EXITED_MARK`), then powers the VM off. The ACPI power button (``corral stop``) sends it SIGTERM, as
  ``docker stop`` does.
"""

from __future__ import annotations

import gzip
import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from corral.errors import ImageError
from corral.images import tiny
from corral.images.archive import DebianArchive, Package, Progress
from corral.images.artifacts import SourcePackage
from corral.images.initrd import Cpio, copy_with_libs
from corral.images.oci.layout import OciProcess
from corral.vm.logs import EXITED_MARK, STARTED_MARK

#: Version of what this module puts on an OCI image's disk and initrd: part of the cache key of every OCI image.
KIT_VERSION = "3"
PRIVATE = ".corral"  # the directory on the VM's disk; an image's own /.corral is replaced
QGA = "usr/sbin/qemu-ga"
RESIZE2FS = "sbin/resize2fs"  # grows the root to a VM's --disk, as in tiny
SYSTEM_DIRS = ("dev", "proc", "sys", "run", "tmp", "etc", "root")

INIT = r"""#!/.corral/bin/sh
# Corral's PID 1 for an OCI image (corral/images/oci/guest.py): the agent beside the image's main process; when
# the main process exits, its exit code goes to the console and the VM powers off.
PATH=/.corral/bin
export PATH
[ -e /proc/self ] || mount -t proc proc /proc
[ -d /sys/class ] || mount -t sysfs sysfs /sys
[ -c /dev/null ] || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /run/corral
mount -t devpts -o gid=5,mode=620 devpts /dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
# /tmp before the agent: Corral's exec makes its output files there (see the tiny image's rcS)
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
. /.corral/process
read -r cmdline < /proc/cmdline
name=
args=
root=/dev/vda
for w in $cmdline; do
    case "$w" in
        corral.hostname=*) name="${w#corral.hostname=}" ;;
        corral.cmd=*) args="${w#corral.cmd=}" ;;
        root=/dev/vd*) root="${w#root=}" ;;
    esac
done
# Corral's own dynamically linked programs run through their own ld.so and libraries, never the image's
run="/.corral/usr/lib64/ld-linux-x86-64.so.2 --library-path /.corral/usr/lib/x86_64-linux-gnu"
[ -n "$name" ] || name=oci
hostname "$name"
echo "$name" > /etc/hostname
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n' "$name" > /etc/hosts
(
    while :; do
        for p in /sys/class/virtio-ports/*; do
            read -r port < "$p/name" 2>/dev/null
            [ "$port" = org.qemu.guest_agent.0 ] && \
                env -i PATH="$CORRAL_AGENT_PATH" $run /.corral/usr/sbin/qemu-ga -m virtio-serial -p "/dev/${p##*/}" \
                    -t /run/corral
        done
        sleep 1
    done
) </dev/null >/dev/null 2>&1 &
ip link set lo up
ip link set eth0 up 2>/dev/null && \
    udhcpc -i eth0 -f -S -s /.corral/udhcpc.script -x "hostname:$name" </dev/null >/dev/null 2>&1 &
acpid -c /.corral/acpi -l /dev/null
# the root grows to the VM's disk size (--disk), at low priority beside the agent and the main process
sh -c 'renice -n 10 -p $$; exec "$@"' sh $run /.corral/usr/sbin/resize2fs "$root" </dev/null >/dev/null 2>&1 &
cmd="$CORRAL_CMD"
[ -n "$args" ] && cmd=$(echo "$args" | base64 -d)
eval "set -- $CORRAL_ENTRYPOINT $cmd"
code=127
if [ $# -eq 0 ]; then
    echo "corral-init: the image has no entrypoint or cmd, and none was given after --"
else
    prog="$1"
    shift
    case "$prog" in
        */*) ;;
        *) for d in $(echo "$CORRAL_PATH" | tr ':' ' '); do
               [ -f "$d/$prog" ] && [ -x "$d/$prog" ] && { prog="$d/$prog"; break; }
           done ;;
    esac
    mkdir -p "$CORRAL_WORKDIR"
    cd "$CORRAL_WORKDIR" || exit 1
    echo "@STARTED@"
    # exec: the background subshell becomes the main process, so $! is its pid (for the power button's SIGTERM)
    eval "exec env -i $CORRAL_ENV nsenter -F -S $CORRAL_UID -G $CORRAL_GID -- \"\$prog\" \"\$@\"" </dev/null &
    echo $! > /run/corral/main.pid
    wait $!
    code=$?
    cd /
fi
echo "@EXITED@$code"
kill -TERM -1 2>/dev/null
usleep 200000
kill -KILL -1 2>/dev/null
sync
umount -a -r 2>/dev/null
mount -o remount,ro / 2>/dev/null
poweroff -f
"""

PWRF = "#!/.corral/bin/sh\n# corral stop: SIGTERM to the main process, as docker stop does; the init powers off.\n" \
       "read -r pid < /run/corral/main.pid && kill -TERM \"$pid\"\n"


def process_file(p: OciProcess) -> str:
    """``/.corral/process``: the main process as shell assignments, each value quoted for ``eval``."""
    def words(ws: list[str]) -> str:
        return shlex.quote(" ".join(shlex.quote(w) for w in ws))

    path = next((e.removeprefix("PATH=") for e in p.env if e.startswith("PATH=")), "")
    return "".join([
        f"CORRAL_ENTRYPOINT={words(p.entrypoint)}\n",
        f"CORRAL_CMD={words(p.cmd)}\n",
        f"CORRAL_ENV={words(p.env)}\n",
        f"CORRAL_PATH={shlex.quote(path)}\n",
        f"CORRAL_AGENT_PATH={shlex.quote(path or '/usr/sbin:/usr/bin:/sbin:/bin')}\n",
        f"CORRAL_WORKDIR={shlex.quote(p.workdir)}\n",
        f"CORRAL_UID={p.uid}\n",
        f"CORRAL_GID={p.gid}\n",
    ])


# -- the private tree ----------------------------------------------------------------------------------------------


def _kit_packages(archive: DebianArchive) -> list[Package]:
    return [archive.package("busybox-static"),
            *tiny._wanted_for_staging(archive.resolve(["qemu-guest-agent", "e2fsprogs"]))]


def ensure_kit(archive: DebianArchive, cache_dir: Path, progress: Progress | None) -> tuple[Path, list[SourcePackage]]:
    """The ``/.corral`` tree (busybox, qemu-ga and its libraries, the init), built once into the cache."""
    kit = cache_dir / "oci" / f"kit-{KIT_VERSION}"
    pkgs = _kit_packages(archive)
    sources = [SourcePackage(name=p.name, version=p.version, arch=p.arch, sha256=p.sha256) for p in pkgs]
    if (kit / "init").is_file():
        return kit, sources
    kit.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=kit.parent, prefix=".kit-"))
    try:
        staging = work / "staging"
        for i, pkg in enumerate(pkgs):
            if progress:
                progress(f"fetch {pkg.name} ({i + 1}/{len(pkgs)})", 0, None)
            archive.extract(archive.download(pkg, progress), staging)
        tree = work / "kit"
        (tree / "bin").mkdir(parents=True)
        shutil.copy2(staging / "bin/busybox", tree / "bin/busybox")
        applets = subprocess.run([str(tree / "bin/busybox"), "--list"], capture_output=True, text=True,
                                 check=True).stdout.split()
        for a in applets:
            if a != "busybox":
                (tree / "bin" / a).symlink_to("busybox")
        copy_with_libs(staging, [QGA, RESIZE2FS], tree)
        files = {"init": INIT.replace("@STARTED@", STARTED_MARK).replace("@EXITED@", EXITED_MARK),
                 "acpi/PWRF/00000080": PWRF,
                 "udhcpc.script": tiny.FILES["usr/share/udhcpc/default.script"][1].replace(
                     "#!/bin/sh", "#!/.corral/bin/sh\nPATH=/.corral/bin", 1)}
        for rel, text in files.items():
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            (tree / rel).write_text(text)
            (tree / rel).chmod(0o755)
        try:
            os.rename(tree, kit)
        except OSError:
            if not (kit / "init").is_file():  # another import made it meanwhile: theirs is as good
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return kit, sources


def install_private(rootfs: Path, kit: Path, process: OciProcess) -> None:
    """Put ``/.corral`` (a copy of the kit and the image's process) into an unpacked root filesystem."""
    own = rootfs / PRIVATE
    if own.is_symlink() or own.is_file():
        own.unlink()
    elif own.exists():
        shutil.rmtree(own)
    shutil.copytree(kit, own, symlinks=True)
    (own / "process").write_text(process_file(process))
    for d in SYSTEM_DIRS:
        p = rootfs / d
        if not p.exists() and not p.is_symlink():
            p.mkdir(mode=0o1777 if d == "tmp" else 0o755)


def make_initrd(tiny_initrd: Path, dest: Path) -> None:
    """tiny's initrd with an archive appended whose ``/init`` switches to ``/.corral/init``."""
    handover = "exec switch_root /newroot /sbin/init"
    if handover not in tiny.INIT_SCRIPT:
        raise ImageError("the tiny image's initrd no longer hands over with switch_root: update corral.images.oci")
    c = Cpio()
    c.file("init", tiny.INIT_SCRIPT.replace(handover, f"exec switch_root /newroot /{PRIVATE}/init").encode(), 0o755)
    base = tiny_initrd.read_bytes()
    with open(dest, "wb") as out:
        out.write(base + b"\0" * (-len(base) % 4))  # the kernel skips zeros between archives
        out.write(gzip.compress(c.finish(), mtime=0))
