"""Live operations on a running VM's block graph, through QMP: freeze the disk onto a new overlay, stream a layer
away, copy the disk to a new image while the guest runs. Nodes are found by the file they hold (device and inode),
so the names QEMU was started with do not matter.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from corral.engine.monitor import Monitor, MonitorError
from corral.errors import EngineError

ROOT_DEVICE = "root-disk"
POLL = 0.1


class BlockJobError(EngineError):
    """A block job (stream, backup) failed or was cancelled."""


def inode(path: str | Path) -> tuple[int, int] | None:
    """(device, inode) of a file, None if it is gone: how a QEMU node is matched to a layer file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


async def top_node(monitor: Monitor) -> str:
    """The node the root disk device writes to."""
    for dev in await monitor.execute("query-block"):
        if ROOT_DEVICE in str(dev.get("qdev", "")) and "inserted" in dev:
            return str(dev["inserted"]["node-name"])
    raise EngineError(f"the root disk of '{monitor.name}' is not in QEMU's block graph")


async def format_nodes(monitor: Monitor) -> dict[tuple[int, int], str]:
    """(device, inode) of each image file -> the name of the format node (qcow2, raw) that opened it.

    Found through the protocol node under it, named ``NODE-file`` (as corral.engine.cmdline and :func:`add_overlay`
    name them): a format node's own filename may be a ``json:`` description. A file opened by a name that is now a
    symbolic link (a VM's disk.qcow2, once its layers are managed) is left out."""
    nodes = await monitor.execute("query-named-block-nodes", {"flat": True})
    names = {str(n["node-name"]) for n in nodes}
    found: dict[tuple[int, int], str] = {}
    for node in nodes:
        name, filename = str(node["node-name"]), str(node.get("file", ""))
        owner = name.removesuffix("-file")
        if node.get("drv") != "file" or owner == name or owner not in names or os.path.islink(filename):
            continue
        if (key := inode(filename)) is not None:
            found.setdefault(key, owner)
    return found


async def make_writable(monitor: Monitor, node: str, path: Path, backing: str | None) -> None:
    """Reopen a read-only layer (an intermediate node QEMU was started with) read-write, its file and backing kept,
    so a block job can write into it. Nodes are named as corral.engine.cmdline names them (``NODE-file``)."""
    infos = {n["node-name"]: n for n in await monitor.execute("query-named-block-nodes", {"flat": True})}
    if not infos.get(node, {}).get("ro", False):
        return
    await monitor.execute("blockdev-reopen", {"options": [
        {"driver": "file", "node-name": f"{node}-file", "filename": str(path), "read-only": False},
        {"driver": "qcow2", "node-name": node, "file": f"{node}-file", "backing": backing, "read-only": False},
    ]})


async def node_of(monitor: Monitor, path: Path) -> str | None:
    key = inode(path)
    return (await format_nodes(monitor)).get(key) if key else None


async def add_overlay(monitor: Monitor, node: str, path: Path) -> None:
    """Open the (empty, just created) qcow2 ``path`` as node ``node``, with no backing yet."""
    await monitor.execute("blockdev-add", {
        "driver": "qcow2", "node-name": node, "backing": None,
        "file": {"driver": "file", "filename": str(path), "node-name": f"{node}-file"},
    })


async def add_target(monitor: Monitor, node: str, path: Path) -> None:
    """Open the standalone qcow2 ``path`` as a writable node (the target of a backup)."""
    await add_overlay(monitor, node, path)


async def remove_node(monitor: Monitor, node: str) -> None:
    """Close a node the monitor opened (and its file node, when that was opened on its own); never raises."""
    for name in (node, f"{node}-file"):
        with contextlib.suppress(MonitorError):
            await monitor.execute("blockdev-del", {"node-name": name})


async def freeze_onto(monitor: Monitor, top: str, overlay: str) -> None:
    """Make ``overlay`` the disk's new top, ``top`` its backing: from now on ``top`` is never written again."""
    await monitor.execute("transaction", {"actions": [
        {"type": "blockdev-snapshot", "data": {"node": top, "overlay": overlay}}]})


async def _run_job(monitor: Monitor, job_id: str, progress: Callable[[int, int], None] | None,
                   timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while True:
            jobs = {j["id"]: j for j in await monitor.execute("query-jobs")}
            job = jobs.get(job_id)
            if job is None:
                raise BlockJobError(f"block job {job_id} of '{monitor.name}' disappeared")
            if progress is not None:
                progress(int(job.get("current-progress", 0)), int(job.get("total-progress", 0)))
            if job["status"] == "concluded":
                if job.get("error"):
                    raise BlockJobError(f"block job {job_id} of '{monitor.name}' failed: {job['error']}")
                return
            if loop.time() > deadline:
                raise BlockJobError(f"block job {job_id} of '{monitor.name}' did not finish within {timeout:.0f}s")
            await asyncio.sleep(POLL)
    except BaseException:
        with contextlib.suppress(MonitorError):
            await monitor.execute("job-cancel", {"id": job_id})
        raise
    finally:
        with contextlib.suppress(MonitorError):
            await monitor.execute("job-dismiss", {"id": job_id})


async def stream(monitor: Monitor, job_id: str, node: str, base_node: str | None, backing_file: str | None,
                 timeout: float = 3600.0) -> None:
    """Copy into ``node`` everything its backing chain holds above ``base_node`` (all of it when None); ``node``
    then backs onto ``base_node`` directly (its header saying ``backing_file``)."""
    args: dict[str, Any] = {"job-id": job_id, "device": node, "auto-finalize": True, "auto-dismiss": False}
    if base_node is not None:
        args["base-node"] = base_node
        if backing_file is not None:
            args["backing-file"] = backing_file
    await monitor.execute("block-stream", args)
    await _run_job(monitor, job_id, None, timeout)
    await flush(monitor, node)


async def flush(monitor: Monitor, node: str) -> None:
    """Write a node's cached metadata to its file: a block job's copies are otherwise only in QEMU's qcow2 cache
    (nothing the guest flushes, for a layer under its top), and lost if QEMU is killed."""
    said = await monitor.execute("human-monitor-command", {"command-line": f'qemu-io {node} "flush"'})
    if str(said).strip():
        raise BlockJobError(f"flushing node {node} of '{monitor.name}' failed: {str(said).strip()}")


async def start_backup(monitor: Monitor, job_id: str, node: str, target: str) -> None:
    """Start copying the whole disk as it is now (point in time) from ``node`` into ``target``; :func:`wait_job`."""
    await monitor.execute("blockdev-backup", {"job-id": job_id, "device": node, "target": target, "sync": "full",
                                              "auto-finalize": True, "auto-dismiss": False})


async def wait_job(monitor: Monitor, job_id: str, progress: Callable[[int, int], None] | None = None,
                   timeout: float = 3600.0) -> None:
    """Wait for a block job started with auto-dismiss off; progress(done, total) as it goes; raises if it failed."""
    await _run_job(monitor, job_id, progress, timeout)
