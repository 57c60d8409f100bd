"""Reading a VM's disk for a backup: QEMU backup jobs with persistent dirty bitmaps, and qemu-img for stopped VMs.

A running VM's disk is copied by QEMU itself (``blockdev-backup``) to a temporary standalone qcow2 *target*: a
point-in-time copy (copy-before-write), the guest never paused. ``sync=full`` copies everything; ``sync=incremental``
copies only the clusters the persistent dirty bitmap ``corral-backup`` marked, so the target holds exactly what
changed. A stopped VM's disk chain is converted by ``qemu-img convert`` into such a target. Either way the caller
then reads the target through :func:`map_target` (which clusters are present, which hold data and where in the file)
without QEMU: the target is uncompressed and has no backing file.

The VM's disk is found through ``query-block`` (the device whose qdev id is ``root-disk``), never by a node name,
because snapshots change the chain of nodes above the base.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.engine import qemu_img
from corral.engine.monitor import Monitor, MonitorError
from corral.errors import EngineError

BITMAP = "corral-backup"
ROOT_QDEV = "root-disk"
#: Filter drivers to look through to reach the image node (a bitmap must sit on a qcow2 node to persist).
FILTERS = {"throttle", "copy-on-read", "preallocate", "compress", "blkdebug", "blklogwrites"}


@dataclass(frozen=True)
class BitmapInfo:
    name: str
    recording: bool
    busy: bool
    inconsistent: bool
    persistent: bool


@dataclass(frozen=True)
class DiskNode:
    """The top image node of a device: its node name, its file, its format, its virtual size and bitmaps."""

    node: str
    filename: str
    driver: str
    virtual_size: int
    bitmaps: dict[str, BitmapInfo] = field(default_factory=dict)


@dataclass(frozen=True)
class Extent:
    start: int
    length: int
    present: bool  # written in the target (data or zeroes); False: never written
    data: bool
    offset: int | None  # where the data lies in the target file (data only)


def _is_root(block: dict[str, Any]) -> bool:
    qdev = str(block.get("qdev", ""))
    return qdev == ROOT_QDEV or qdev.startswith(f"/machine/peripheral/{ROOT_QDEV}/")


async def root_node(monitor: Monitor) -> DiskNode:
    """The image node on top of the VM's root disk, through any filter nodes."""
    blocks = await monitor.execute("query-block")
    block = next((b for b in blocks if _is_root(b)), None)
    if block is None or "inserted" not in block:
        raise EngineError(f"the QEMU of '{monitor.name}' has no '{ROOT_QDEV}' device with a disk")
    ins = block["inserted"]
    name, driver = str(ins["node-name"]), str(ins["drv"])
    if driver in FILTERS:
        name = await _below_filters(monitor, name)
    nodes = await monitor.execute("query-named-block-nodes", {"flat": True})
    node = next((n for n in nodes if n.get("node-name") == name), None)
    if node is None:
        raise EngineError(f"block node '{name}' of '{monitor.name}' not found")
    bitmaps = {
        str(b["name"]): BitmapInfo(str(b["name"]), bool(b.get("recording")), bool(b.get("busy")),
                                   bool(b.get("inconsistent")), bool(b.get("persistent")))
        for b in node.get("dirty-bitmaps", [])
    }
    image = node.get("image", {})
    return DiskNode(node=name, filename=str(node.get("file", image.get("filename", ""))), driver=str(node["drv"]),
                    virtual_size=int(image.get("virtual-size", 0)), bitmaps=bitmaps)


async def _below_filters(monitor: Monitor, name: str) -> str:
    """Follow ``file``/``filtered`` edges down from a filter node to the first node that is not a filter."""
    drivers = {str(n.get("node-name")): str(n.get("drv")) for n in
               await monitor.execute("query-named-block-nodes", {"flat": True})}
    graph = await monitor.execute("x-debug-query-block-graph")
    by_id = {n["id"]: str(n.get("name", "")) for n in graph["nodes"]}
    by_name = {v: k for k, v in by_id.items() if v}
    current = name
    for _ in range(16):
        if drivers.get(current) not in FILTERS:
            return current
        edge = next((e for e in graph["edges"]
                     if e["parent"] == by_name.get(current) and e["name"] in ("file", "filtered")), None)
        if edge is None:
            break
        current = by_id.get(edge["child"], "")
    raise EngineError(f"cannot find the image node below filter '{name}' of '{monitor.name}'")


async def sweep(monitor: Monitor) -> int:
    """Remove what a backup interrupted by a daemon crash left in QEMU: its job and its target node. Returns how
    many things were removed. Only call it while no backup of this VM runs (the VM's lock)."""
    removed = 0
    for job in await monitor.execute("query-jobs"):
        if str(job.get("id", "")).startswith("corral-backup-"):
            await cancel_job(monitor, str(job["id"]))
            removed += 1
    for node in await monitor.execute("query-named-block-nodes", {"flat": True}):
        name = str(node.get("node-name", ""))
        if name.startswith("corral-bk-"):
            try:
                await monitor.execute("blockdev-del", {"node-name": name}, timeout=60.0)
                removed += 1
            except MonitorError:
                pass
    return removed


async def backup_to_target(
    monitor: Monitor, disk: DiskNode, target: Path, *, incremental: bool,
    progress: Callable[[int, int], None] | None = None, timeout: float = 3600.0,
) -> int:
    """Copy the disk (all of it, or what the bitmap marked) into a new qcow2 ``target``; the bitmap is (re)started
    at the same instant for a full copy. Returns the bytes QEMU copied. ``target`` exists only on success.

    If this fails the bitmap is left as QEMU left it: the caller must not trust it for the next backup.
    """
    await qemu_img.run("create", "-q", "-f", "qcow2", str(target), str(disk.virtual_size))
    tag = secrets.token_hex(3)
    tnode, job = f"corral-bk-{tag}", f"corral-backup-{tag}"
    added = False
    try:
        await monitor.execute("blockdev-add", {
            "driver": "qcow2", "node-name": tnode, "discard": "unmap",
            "file": {"driver": "file", "filename": str(target)},
        })  # fmt: skip
        added = True
        backup: dict[str, Any] = {"job-id": job, "device": disk.node, "target": tnode, "auto-dismiss": False}
        if incremental:
            backup |= {"sync": "incremental", "bitmap": BITMAP, "bitmap-mode": "on-success"}
            await monitor.execute("blockdev-backup", backup)
        else:
            bm = disk.bitmaps.get(BITMAP)
            if bm is not None and (bm.inconsistent or not bm.persistent):
                await monitor.execute("block-dirty-bitmap-remove", {"node": disk.node, "name": BITMAP})
                bm = None
            start_bitmap = (
                {"type": "block-dirty-bitmap-clear", "data": {"node": disk.node, "name": BITMAP}} if bm is not None
                else {"type": "block-dirty-bitmap-add",
                      "data": {"node": disk.node, "name": BITMAP, "persistent": True}}
            )
            await monitor.execute("transaction", {"actions": [
                start_bitmap, {"type": "blockdev-backup", "data": backup | {"sync": "full"}},
            ]})  # fmt: skip
        copied = await _wait_job(monitor, job, progress, timeout)
    except BaseException:
        if added:
            await cancel_job(monitor, job)
        raise
    finally:
        if added:
            try:
                await monitor.execute("blockdev-del", {"node-name": tnode}, timeout=60.0)
            except MonitorError:
                target.unlink(missing_ok=True)
                raise
    return copied


async def _wait_job(monitor: Monitor, job: str, progress: Callable[[int, int], None] | None, timeout: float) -> int:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        jobs = await monitor.execute("query-jobs")
        info = next((j for j in jobs if j.get("id") == job), None)
        if info is None:
            raise EngineError(f"backup job {job} of '{monitor.name}' disappeared")
        if progress is not None:
            progress(int(info.get("current-progress", 0)), int(info.get("total-progress", 0)))
        if info.get("status") == "concluded":
            await monitor.execute("job-dismiss", {"id": job})
            if info.get("error"):
                raise EngineError(f"QEMU's backup of '{monitor.name}' failed: {info['error']}")
            return int(info.get("current-progress", 0))
        if loop.time() > deadline:
            raise EngineError(f"QEMU's backup of '{monitor.name}' did not finish within {timeout:.0f}s")
        await asyncio.sleep(0.2)


async def cancel_job(monitor: Monitor, job: str) -> None:
    try:
        jobs = await monitor.execute("query-jobs")
        info = next((j for j in jobs if j.get("id") == job), None)
        if info is None:
            return
        if info.get("status") != "concluded":
            await monitor.execute("job-cancel", {"id": job})
            for _ in range(150):
                jobs = await monitor.execute("query-jobs")
                info = next((j for j in jobs if j.get("id") == job), None)
                if info is None or info.get("status") == "concluded":
                    break
                await asyncio.sleep(0.2)
        await monitor.execute("job-dismiss", {"id": job})
    except MonitorError:
        pass


async def convert_to_target(chain_top: Path, target: Path) -> int:
    """A stopped VM's disk (its qcow2 chain, formats from the headers Corral wrote) as a standalone qcow2."""
    await qemu_img.run("convert", "-q", "-f", "qcow2", "-O", "qcow2", str(chain_top), str(target))
    return int(json.loads(await qemu_img.run("info", "-f", "qcow2", "--output=json", str(target)))["virtual-size"])


async def map_target(target: Path) -> list[Extent]:
    """Which parts of a standalone qcow2 target were written, with data or zeroes, and where its data lies."""
    raw = json.loads(await qemu_img.run("map", "--output=json", "-f", "qcow2", str(target)))
    return [Extent(int(e["start"]), int(e["length"]), bool(e.get("present", e.get("data") or e.get("zero"))),
                   bool(e["data"]), int(e["offset"]) if e.get("data") and "offset" in e else None) for e in raw]


async def set_bitmap_offline(disk: Path) -> None:
    """(Re)start the persistent bitmap in a stopped VM's qcow2: removed if there (even if inconsistent), added."""
    info = json.loads(await qemu_img.run("info", "-f", "qcow2", "--output=json", str(disk)))
    names = [b.get("name") for b in info.get("format-specific", {}).get("data", {}).get("bitmaps", [])]
    if BITMAP in names:
        await qemu_img.run("bitmap", "--remove", "-f", "qcow2", str(disk), BITMAP)
    await qemu_img.run("bitmap", "--add", "-f", "qcow2", str(disk), BITMAP)


async def remove_bitmap_offline(disk: Path) -> None:
    info = json.loads(await qemu_img.run("info", "-f", "qcow2", "--output=json", str(disk)))
    names = [b.get("name") for b in info.get("format-specific", {}).get("data", {}).get("bitmaps", [])]
    if BITMAP in names:
        await qemu_img.run("bitmap", "--remove", "-f", "qcow2", str(disk), BITMAP)


async def raw_to_qcow2(raw: Path, qcow2: Path) -> None:
    """A standalone qcow2 (no backing file) of a raw file. Metadata is preallocated so that every cluster is
    allocated or explicitly zero: nothing ever reads through to a backing node, whatever the command line."""
    await qemu_img.run("convert", "-q", "-f", "raw", "-O", "qcow2", "-o", "preallocation=metadata", str(raw),
                       str(qcow2))
