"""Shared folders on a running QEMU, through QMP: the virtio-9p device of a slot plugged into and taken out of its
root port, as :func:`corral.engine.cmdline._mount_slots` puts it on the command line.

The slot's fsdev (on the command line since QEMU started) opens its path when the device is realized, so the
caller points the slot's symlink at the folder first. After a failure: :func:`plug` added nothing; :func:`unplug`
raises :class:`ShareUnplugTimeout` if the guest did not release the device (it may still go later; call it again).
"""

from __future__ import annotations

import asyncio

from corral.engine.cmdline import MountAttachment
from corral.engine.monitor import Monitor, MonitorError

UNPLUG_TIMEOUT = 30.0


class ShareUnplugTimeout(MonitorError):
    """The guest did not release a shared folder's device in time."""


async def _present(monitor: Monitor, device: str) -> bool:
    children = await monitor.execute("qom-list", {"path": "/machine/peripheral"})
    return any(c.get("name") == device for c in children)


async def plug(monitor: Monitor, mount: MountAttachment) -> None:
    """Hot-plug the slot's virtio-9p device (QEMU opens the folder now: an error names it)."""
    if not await _present(monitor, f"mp{mount.slot}"):
        raise MonitorError(f"this QEMU has no shared-folder port mp{mount.slot} (started by an older Corral): "
                           "stop and start the VM once")
    await monitor.execute("device_add", {"driver": "virtio-9p-pci", "id": mount.device, "fsdev": mount.fsdev,
                                         "mount_tag": mount.tag, "bus": f"mp{mount.slot}"})


async def unplug(monitor: Monitor, slot: int, timeout: float = UNPLUG_TIMEOUT) -> None:
    """Remove the slot's device (PCIe hot-unplug: the guest releases it, after unmounting). Idempotent."""
    device = MountAttachment(slot=slot).device
    if not await _present(monitor, device):
        return
    try:
        await monitor.execute("device_del", {"id": device})
    except MonitorError:
        pass  # already being removed (an earlier call timed out)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while await _present(monitor, device):
        if loop.time() > deadline:
            raise ShareUnplugTimeout(f"the guest did not release shared folder slot {slot} within {timeout:.0f}s")
        await asyncio.sleep(0.25)


async def plugged(monitor: Monitor) -> set[int]:
    """The slots whose device the running QEMU has."""
    children = await monitor.execute("qom-list", {"path": "/machine/peripheral"})
    names = {str(c.get("name")) for c in children}
    return {n for n in range(16) if f"mnt{n}" in names}
