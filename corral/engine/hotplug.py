"""Extra disks on a running QEMU, through QMP: the same nodes and device as the command line builds
(:func:`corral.engine.cmdline._extra_disks`), added, removed, grown and throttled while the guest runs.

What holds after a failure:
- :func:`plug` removes whatever it had added (device, nodes, throttle group): the VM is as before.
- :func:`unplug` raises :class:`HotplugTimeout` when the guest did not release the device in time; the device is
  then still there (its removal may still complete later: :func:`unplug` again finishes the job).
"""

from __future__ import annotations

import asyncio
import contextlib

from corral.engine.cmdline import DiskAttachment, DiskNodes
from corral.engine.monitor import Monitor, MonitorError

#: How long the guest gets to release a hot-unplugged disk (PCIe hot-unplug waits 5 s for the guest by design).
UNPLUG_TIMEOUT = 45.0


class HotplugTimeout(MonitorError):
    """The guest did not release a disk in time."""


class NoHotplugPort(MonitorError):
    """The running QEMU has no such hot-plug port (it was started by a Corral without them)."""


async def _device_present(monitor: Monitor, device: str) -> bool:
    children = await monitor.execute("qom-list", {"path": "/machine/peripheral"})
    return any(c.get("name") == device for c in children)


async def _node_names(monitor: Monitor) -> set[str]:
    nodes = await monitor.execute("query-named-block-nodes", {"flat": True})
    return {str(n.get("node-name")) for n in nodes}


async def _objects(monitor: Monitor) -> set[str]:
    return {str(c.get("name")) for c in await monitor.execute("qom-list", {"path": "/objects"})}


async def plug(monitor: Monitor, disk: DiskAttachment) -> None:
    """Add ``disk`` to the running VM: throttle group, file -> qcow2 -> throttle nodes, then the virtio-blk
    device in its hot-plug port. All or nothing."""
    n = DiskNodes.of(disk.name)
    if not await _device_present(monitor, f"hp{disk.port}"):
        raise NoHotplugPort(f"this QEMU has no hot-plug port hp{disk.port}")
    steps: list[tuple[str, dict[str, object]]] = [
        ("object-add", {"qom-type": "throttle-group", "id": n.group, "limits": dict(disk.limits)}),
        ("blockdev-add", {"driver": "file", "node-name": n.file, "filename": str(disk.file)}),
        ("blockdev-add", {"driver": "qcow2", "node-name": n.fmt, "file": n.file}),
        ("blockdev-add", {"driver": "throttle", "node-name": n.top, "throttle-group": n.group, "file": n.fmt}),
        ("device_add", {"driver": "virtio-blk-pci", "drive": n.top, "id": n.device, "serial": disk.name,
                        "bus": f"hp{disk.port}", "werror": "enospc", "rerror": "report"}),
    ]
    done: list[tuple[str, dict[str, object]]] = []
    try:
        for cmd, args in steps:
            await monitor.execute(cmd, args)
            done.append((cmd, args))
    except BaseException:
        for cmd, args in reversed(done):
            with contextlib.suppress(MonitorError):
                if cmd == "object-add":
                    await monitor.execute("object-del", {"id": args["id"]})
                elif cmd == "blockdev-add":
                    await monitor.execute("blockdev-del", {"node-name": args["node-name"]})
                # a device_add that answered is the last step: nothing after it can fail
        raise


async def wait_driver(monitor: Monitor, disk: str, timeout: float = 20.0) -> bool:
    """Wait until the guest's virtio driver took the hot-plugged disk up (DRIVER_OK): the guest has the disk.
    False after ``timeout`` (a paused guest, or one without PCIe hot-plug): the disk is plugged all the same."""
    path = f"/machine/peripheral/{DiskNodes.of(disk).device}/virtio-backend"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        try:
            status = await monitor.execute("x-query-virtio-status", {"path": path})
        except MonitorError:
            return False  # this QEMU cannot tell
        # Each status is "NAME: description".
        if any(str(x).startswith("VIRTIO_CONFIG_S_DRIVER_OK") for x in status.get("status", {}).get("statuses", [])):
            return True
        await asyncio.sleep(0.2)
    return False


async def unplug(monitor: Monitor, disk: str, timeout: float = UNPLUG_TIMEOUT) -> None:
    """Remove the disk's device (the guest must release it: PCIe hot-unplug), then its nodes and throttle group.

    Idempotent: whatever is already gone is skipped, so a retry after :class:`HotplugTimeout` finishes the job.
    """
    n = DiskNodes.of(disk)
    if await _device_present(monitor, n.device):
        with contextlib.suppress(MonitorError):  # "already in progress" after an earlier timeout
            await monitor.execute("device_del", {"id": n.device})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while await _device_present(monitor, n.device):  # DEVICE_DELETED has come when it left the tree
            if loop.time() > deadline:
                raise HotplugTimeout(f"the guest did not release disk '{disk}' within {timeout:.0f}s")
            await asyncio.sleep(0.25)
    nodes = await _node_names(monitor)
    for node in (n.top, n.fmt, n.file):
        if node in nodes:
            await monitor.execute("blockdev-del", {"node-name": node})
    if n.group in await _objects(monitor):
        await monitor.execute("object-del", {"id": n.group})


async def resize(monitor: Monitor, disk: str, size: int) -> None:
    """Grow the disk under the running guest: the guest's virtio-blk sees the new capacity at once."""
    # The top (throttle) node: its BlockBackend tells the device, which tells the guest.
    await monitor.execute("block_resize", {"node-name": DiskNodes.of(disk).top, "size": size}, timeout=60.0)


async def set_limits(monitor: Monitor, disk: str, limits: dict[str, int]) -> None:
    """Change the disk's I/O limits at once: every field is set (0 = unlimited), so removed limits go away."""
    await monitor.execute("qom-set", {"path": DiskNodes.of(disk).group, "property": "limits", "value": limits})


async def is_plugged(monitor: Monitor, disk: str) -> bool:
    """Is the device of ``disk`` in the running VM (hot-plugged, or on its command line)?"""
    return await _device_present(monitor, DiskNodes.of(disk).device)


async def virtual_size(monitor: Monitor, disk: str) -> int:
    """The size the running QEMU sees for ``disk``, in bytes."""
    top = DiskNodes.of(disk).top
    for n in await monitor.execute("query-named-block-nodes", {"flat": True}):
        if n.get("node-name") == top:
            return int(n["image"]["virtual-size"])
    raise MonitorError(f"disk '{disk}' is not in the block graph of '{monitor.name}'")
