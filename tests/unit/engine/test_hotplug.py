"""Hot-plug through a fake monitor: the QMP sequence, the roll-back of a failed plug, an idempotent unplug."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from corral.engine import hotplug
from corral.engine.cmdline import DiskAttachment
from corral.engine.monitor import MonitorError


class FakeMonitor:
    def __init__(self, fail: str | None = None, devices: tuple[str, ...] = ("hp0", "hp1")) -> None:
        self.fail = fail
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.devices = set(devices)
        self.nodes: set[str] = set()
        self.objects: set[str] = set()

    async def execute(self, cmd: str, args: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
        args = args or {}
        if cmd == "qom-list":
            names = self.devices if args["path"] == "/machine/peripheral" else self.objects
            return [{"name": n} for n in names]
        if cmd == "query-named-block-nodes":
            return [{"node-name": n} for n in self.nodes]
        self.sent.append((cmd, args))
        if cmd == self.fail:
            raise MonitorError(f"QMP {cmd} failed")
        if cmd == "object-add":
            self.objects.add(args["id"])
        elif cmd == "object-del":
            self.objects.discard(args["id"])
        elif cmd == "blockdev-add":
            self.nodes.add(args["node-name"])
        elif cmd == "blockdev-del":
            self.nodes.discard(args["node-name"])
        elif cmd == "device_add":
            self.devices.add(args["id"])
        elif cmd == "device_del":
            self.devices.discard(args["id"])  # the guest released it at once
        return {}


DISK = DiskAttachment("data", Path("/v/disks/data.qcow2"), 1, (("bps-write", 1 << 20),))


def test_plug_builds_the_command_line_nodes() -> None:
    m = FakeMonitor()
    asyncio.run(hotplug.plug(m, DISK))  # type: ignore[arg-type]
    assert m.sent == [
        ("object-add", {"qom-type": "throttle-group", "id": "tg-data", "limits": {"bps-write": 1 << 20}}),
        ("blockdev-add", {"driver": "file", "node-name": "xd-data-file", "filename": "/v/disks/data.qcow2"}),
        ("blockdev-add", {"driver": "qcow2", "node-name": "xd-data-fmt", "file": "xd-data-file"}),
        ("blockdev-add", {"driver": "throttle", "node-name": "xd-data", "throttle-group": "tg-data",
                          "file": "xd-data-fmt"}),
        ("device_add", {"driver": "virtio-blk-pci", "drive": "xd-data", "id": "xd-data-dev", "serial": "data",
                        "bus": "hp1", "werror": "enospc", "rerror": "report"}),
    ]


def test_failed_plug_removes_what_it_added() -> None:
    m = FakeMonitor(fail="device_add")
    with pytest.raises(MonitorError):
        asyncio.run(hotplug.plug(m, DISK))  # type: ignore[arg-type]
    assert m.nodes == set() and m.objects == set() and "xd-data-dev" not in m.devices


def test_no_port_no_plug() -> None:
    m = FakeMonitor(devices=())
    with pytest.raises(hotplug.NoHotplugPort):
        asyncio.run(hotplug.plug(m, DISK))  # type: ignore[arg-type]
    assert m.sent == []


def test_unplug_removes_everything_and_again_is_harmless() -> None:
    m = FakeMonitor()
    asyncio.run(hotplug.plug(m, DISK))  # type: ignore[arg-type]
    asyncio.run(hotplug.unplug(m, "data"))  # type: ignore[arg-type]
    assert m.nodes == set() and m.objects == set() and "xd-data-dev" not in m.devices
    before = len(m.sent)
    asyncio.run(hotplug.unplug(m, "data"))  # type: ignore[arg-type]
    assert len(m.sent) == before


class StubbornGuest(FakeMonitor):
    """A guest that never releases the device."""

    async def execute(self, cmd: str, args: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
        if cmd == "device_del":
            self.sent.append((cmd, args or {}))
            return {}
        return await super().execute(cmd, args, timeout)


def test_unplug_timeout_leaves_the_disk_whole() -> None:
    m = StubbornGuest()
    asyncio.run(hotplug.plug(m, DISK))  # type: ignore[arg-type]
    with pytest.raises(hotplug.HotplugTimeout, match="did not release disk 'data' within 0s"):
        asyncio.run(hotplug.unplug(m, "data", timeout=0.3))  # type: ignore[arg-type]
    assert "xd-data-dev" in m.devices and "xd-data" in m.nodes and "tg-data" in m.objects
