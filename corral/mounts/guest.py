"""Mounting shared folders in the guest, through its agent: ``mount -t 9p`` of the slot's tag, ``mkdir -p`` first.

Idempotent both ways (what is already mounted, or already gone, is left alone), so each readiness of a guest can
simply ask for every mount: a first boot, a reboot, a resume, a re-attach after a daemon restart.
"""

from __future__ import annotations

from corral.engine.cmdline import mount_tag
from corral.engine.guest_agent import GuestAgent
from corral.errors import GuestAgentError
from corral.guest import commands
from corral.vm.spec import Mount

#: 9p message size: QEMU 7.2's virtio-9p allows up to 512 KiB; 256 KiB reads and writes move big files quickly.
MSIZE = 262144

MOUNT_SCRIPT = r"""
dir=$1 tag=$2 opts=$3
while read -r src mnt fstype rest; do
    [ "$src" = "$tag" ] && [ "$fstype" = 9p ] && exit 0
done < /proc/mounts
grep -qw 9p /proc/filesystems || modprobe -a 9pnet_virtio 9p 2>/dev/null || true
grep -qw 9p /proc/filesystems || { echo "this guest's kernel has no 9p file system" >&2; exit 3; }
mkdir -p "$dir" && mount -t 9p -o "$opts" "$tag" "$dir"
"""

UMOUNT_SCRIPT = r"""
tag=$1
while read -r src mnt fstype rest; do
    if [ "$src" = "$tag" ] && [ "$fstype" = 9p ]; then
        umount "$mnt" || { echo "$mnt is busy in the guest (a process uses it): $(fuser -m "$mnt" 2>&1)" >&2; exit 4; }
    fi
done < /proc/mounts
exit 0
"""


def options(mount: Mount) -> str:
    return f"trans=virtio,version=9p2000.L,msize={MSIZE},cache=none{',ro' if mount.read_only else ''}"


async def mount(agent: GuestAgent, slot: int, m: Mount) -> None:
    """Mount slot ``slot`` at ``m.guest`` in the guest; GuestAgentError with the guest's reason if it cannot."""
    try:
        await commands.run(agent, ["/bin/sh", "-c", MOUNT_SCRIPT, "sh", m.guest, mount_tag(slot), options(m)],
                           timeout=30.0)
    except GuestAgentError as exc:
        raise GuestAgentError(f"cannot mount {m.host} at {m.guest} in the guest: "
                              f"{exc.message.rpartition('): ')[2] or exc.message}") from exc


async def umount(agent: GuestAgent, slot: int, m: Mount) -> None:
    """Unmount slot ``slot`` wherever it is mounted in the guest; GuestAgentError if it is busy."""
    try:
        await commands.run(agent, ["/bin/sh", "-c", UMOUNT_SCRIPT, "sh", mount_tag(slot)], timeout=30.0)
    except GuestAgentError as exc:
        raise GuestAgentError(f"cannot unmount {m.guest} in the guest: "
                              f"{exc.message.rpartition('): ')[2] or exc.message}") from exc


async def mounted(agent: GuestAgent) -> dict[str, str]:
    """What the guest has mounted over 9p: tag -> guest directory."""
    data = await agent.read_file("/proc/mounts")
    out: dict[str, str] = {}
    for line in data.decode(errors="replace").splitlines():
        f = line.split()
        if len(f) >= 3 and f[2] == "9p":
            out[f[0]] = f[1].replace("\\040", " ")
    return out
