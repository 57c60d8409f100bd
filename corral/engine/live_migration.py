"""Live migration between two hosts, QEMU's side: the disks mirrored over NBD, then the machine state over TCP.

The receiving QEMU is started with the VM's usual command line plus :data:`INCOMING_ARGS` (``-S``: it must not run
the guest when the state has arrived, only once the source has handed over; ``-incoming defer``), then
:func:`listen` (``migrate-incoming tcp:HOST:PORT``) and :func:`export_disks` (an NBD server on the same address, each
disk's node exported writable: QEMU activates a node it exports, though the machine waits for its state).

The sending QEMU (:func:`mirror_disks`) opens an NBD client node per disk onto the target's export and mirrors each
disk's top node into it, ``sync=full``: the whole chain (the image's base layer included) is copied, so the target's
disk is one standalone qcow2. Once every mirror is ``ready`` (in step, copying each new write at once),
:func:`migrate` sends the machine state; at its end QEMU stops the vCPUs and the mirrors drain. :func:`finish_mirrors`
then cancels them (``block-job-cancel`` of a ready mirror ends it with the target in sync and no pivot: the source
keeps its own disk) and the target is told to go on (:func:`hand_over`: ``nbd-server-stop``, then ``cont``; the
export goes first because the device takes its write permission back when the vCPUs start).

Both the stream and the NBD connections are TLS with a pre-shared key (``tls-creds-psk``): the target makes a key per
migration (:func:`new_key`), writes it where its QEMU reads it (:func:`write_key`, the creds object :data:`CREDS`) and
hands it to the source in the prepare answer, over the API's own TLS. Neither accepts a peer without the key. The
``tls-creds`` migration parameter is set back to none once the migration is over, on both sides: a later save to a
file (suspend) must not ask for TLS.

Every function builds its QMP arguments with a pure helper (``*_args``), tested on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.engine.monitor import Monitor, MonitorError
from corral.errors import EngineError

#: Appended to the VM's usual command line on the receiving host.
INCOMING_ARGS = ("-S", "-incoming", "defer")
#: The source's bandwidth: in effect unlimited (QEMU's default is 128 MiB/s); the hosts' link is the limit.
BANDWIDTH = 1 << 40
POLL = 0.05
#: Migration states in which the stream is still going.
ACTIVE = frozenset({"setup", "active", "pre-switchover", "device", "cancelling", "wait-unplug", "postcopy-active"})


#: The TLS credentials object (its id in QEMU) and the PSK identity.
CREDS = "mig-tls"
IDENTITY = "corral"


class LiveMigrationError(EngineError):
    """A step of a live migration failed (the caller rolls back)."""


@dataclass(frozen=True)
class Export:
    """One disk as the target exports it: the node of the target's QEMU and the NBD export's name."""

    node: str
    name: str


@dataclass(frozen=True)
class Mirror:
    """One disk as the source mirrors it: its top node, the NBD client node made for it, the job's id."""

    device: str
    target: str
    job: str


@dataclass(frozen=True)
class StreamResult:
    """What QEMU says of a completed migration stream (query-migrate)."""

    total_ms: int
    downtime_ms: int
    ram_bytes: int


# ------------------------------------------------------------------------------------------- QMP arguments --
def inet(host: str, port: int) -> dict[str, Any]:
    """A QMP SocketAddress of type inet (QEMU takes the port as a string)."""
    return {"type": "inet", "host": host, "port": str(port)}


def inet_legacy(host: str, port: int) -> dict[str, Any]:
    """The same as nbd-server-start takes it (SocketAddressLegacy: the address under ``data``)."""
    return {"type": "inet", "data": {"host": host, "port": str(port)}}


def tcp_uri(host: str, port: int) -> str:
    """A migration URI; an IPv6 address goes in brackets."""
    return f"tcp:[{host}]:{port}" if ":" in host else f"tcp:{host}:{port}"


def new_key() -> str:
    """A pre-shared key for one migration (hex, as QEMU's keys.psk holds it)."""
    return secrets.token_hex(32)


def write_key(directory: Path, key: str) -> Path:
    """``directory/keys.psk`` (made private, 0700 and 0600 from the first byte), the file QEMU's tls-creds-psk reads;
    the path."""
    directory.mkdir(mode=0o700, exist_ok=True)
    path = directory / "keys.psk"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{IDENTITY}:{key}\n")
    return path


def creds_args(directory: Path, endpoint: str) -> dict[str, Any]:
    """object-add of the TLS-PSK credentials (``endpoint``: server on the target, client on the source)."""
    args: dict[str, Any] = {"qom-type": "tls-creds-psk", "id": CREDS, "dir": str(directory), "endpoint": endpoint}
    if endpoint == "client":
        args["username"] = IDENTITY
    return args


async def add_creds(monitor: Monitor, directory: Path, endpoint: str) -> None:
    await monitor.execute("object-add", creds_args(directory, endpoint))


async def drop_creds(monitor: Monitor) -> None:
    """The migration is over: no TLS (nor auto-converge) for the next one (a suspend's), the credentials object
    removed; never raises."""
    with contextlib.suppress(MonitorError):
        await monitor.execute("migrate-set-parameters", {"tls-creds": ""})
    with contextlib.suppress(MonitorError):
        await monitor.execute("migrate-set-capabilities", {"capabilities": [{"capability": "auto-converge",
                                                                             "state": False}]})
    with contextlib.suppress(MonitorError):
        await monitor.execute("object-del", {"id": CREDS})


def export_args(export: Export) -> dict[str, Any]:
    return {"type": "nbd", "id": f"exp-{export.name}", "node-name": export.node, "name": export.name,
            "writable": True}


def nbd_client_args(node: str, host: str, port: int, export: str) -> dict[str, Any]:
    return {"driver": "nbd", "node-name": node, "server": inet(host, port), "export": export, "tls-creds": CREDS}


def mirror_args(m: Mirror) -> dict[str, Any]:
    return {"job-id": m.job, "device": m.device, "target": m.target, "sync": "full", "auto-finalize": True,
            "auto-dismiss": False}


def stream_result(info: dict[str, Any]) -> StreamResult:
    """The numbers of a completed query-migrate answer."""
    ram = info.get("ram") or {}
    return StreamResult(total_ms=int(info.get("total-time", 0)), downtime_ms=int(info.get("downtime", 0)),
                        ram_bytes=int(ram.get("transferred", 0)))


def mirrors_state(jobs: list[dict[str, Any]], wanted: list[str]) -> tuple[bool, str | None]:
    """From query-block-jobs: (all of ``wanted`` ready, the error that ended one, if any)."""
    by_id = {str(j.get("device")): j for j in jobs}
    ready = True
    for job in wanted:
        j = by_id.get(job)
        if j is None:
            return False, f"mirror {job} ended"
        if j.get("status") == "concluded" or j.get("error"):
            return False, f"mirror {job} failed: {j.get('error') or 'concluded'}"
        ready = ready and bool(j.get("ready"))
    return ready, None


# --------------------------------------------------------------------------------------------- target side --
async def listen(monitor: Monitor, host: str, port: int) -> str:
    """Wait for the machine state on ``host:port``; the URI the source is to migrate to."""
    uri = tcp_uri(host, port)
    await monitor.execute("migrate-set-parameters", {"tls-creds": CREDS})
    await monitor.execute("migrate-incoming", {"uri": uri})
    return uri


async def export_disks(monitor: Monitor, host: str, port: int, exports: list[Export]) -> None:
    """An NBD server on ``host:port`` exporting each disk node writable (the source's mirrors write into them)."""
    await monitor.execute("nbd-server-start", {"addr": inet_legacy(host, port), "tls-creds": CREDS})
    for e in exports:
        await monitor.execute("block-export-add", export_args(e))


async def incoming_status(monitor: Monitor) -> str:
    return str((await monitor.execute("query-migrate")).get("status", "none"))


async def hand_over(monitor: Monitor) -> None:
    """The state has arrived and the disks are whole: the NBD server goes, the vCPUs run."""
    status = await incoming_status(monitor)
    if status != "completed":
        raise LiveMigrationError(f"the machine state of '{monitor.name}' has not arrived (migration {status})")
    with contextlib.suppress(MonitorError):  # already stopped (a commit asked twice)
        await monitor.execute("nbd-server-stop")
    await monitor.execute("cont")
    await drop_creds(monitor)


# --------------------------------------------------------------------------------------------- source side --
async def mirror_disks(monitor: Monitor, host: str, port: int, disks: list[tuple[Mirror, str]],
                       noted: Callable[[Mirror], None]) -> None:
    """Open an NBD client node per disk (``(mirror, export name)``) and start its mirror; ``noted(m)`` is called
    before each node or job exists (the journal)."""
    for m, export in disks:
        noted(m)
        await monitor.execute("blockdev-add", nbd_client_args(m.target, host, port, export))
        await monitor.execute("blockdev-mirror", mirror_args(m))


async def wait_ready(monitor: Monitor, jobs: list[str], timeout: float) -> None:
    """Until every mirror is ready (in step with its disk); raises if one fails or ``timeout`` passes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        ready, error = mirrors_state(list(await monitor.execute("query-block-jobs")), jobs)
        if error:
            raise LiveMigrationError(f"copying the disks of '{monitor.name}': {error}")
        if ready:
            return
        if loop.time() > deadline:
            raise LiveMigrationError(f"the disks of '{monitor.name}' were not copied within {timeout:.0f}s")
        await asyncio.sleep(POLL)


async def migrate(monitor: Monitor, uri: str, timeout: float, jobs: list[str]) -> StreamResult:
    """Send the machine state to ``uri`` and wait until it is complete (QEMU then leaves the vCPUs stopped:
    ``postmigrate``). Raises on failure, cancellation, a mirror that fails meanwhile or ``timeout`` (the migration is
    cancelled then); the vCPUs run again after a failed migration (QEMU's own doing)."""
    await monitor.execute("migrate-set-parameters", {"max-bandwidth": BANDWIDTH, "tls-creds": CREDS})
    # A guest dirtying memory faster than the link carries it is slowed down until the stream converges.
    await monitor.execute("migrate-set-capabilities", {"capabilities": [{"capability": "auto-converge",
                                                                         "state": True}]})
    await monitor.execute("migrate", {"uri": uri})
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        info = dict(await monitor.execute("query-migrate", timeout=10.0))
        status = str(info.get("status", "none"))
        if status == "completed":
            return stream_result(info)
        if status in ("failed", "cancelled"):
            raise LiveMigrationError(f"migrating '{monitor.name}' {status}: {info.get('error-desc') or status}")
        _, error = mirrors_state(list(await monitor.execute("query-block-jobs")), jobs)
        if error or loop.time() > deadline:
            await cancel(monitor)
            raise LiveMigrationError(f"migrating '{monitor.name}': "
                                     f"{error or f'not converged within {timeout:.0f}s (status {status})'}")
        await asyncio.sleep(POLL)


async def cancel(monitor: Monitor, timeout: float = 10.0) -> None:
    """Cancel a migration under way and wait until QEMU says it is over; nothing if none runs."""
    if (await monitor.execute("query-migrate")).get("status") not in ACTIVE:
        return
    with contextlib.suppress(MonitorError):
        await monitor.execute("migrate_cancel")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (await monitor.execute("query-migrate")).get("status") in ACTIVE:
        if loop.time() > deadline:
            raise LiveMigrationError(f"the migration of '{monitor.name}' did not stop within {timeout:g}s")
        await asyncio.sleep(POLL)


async def finish_mirrors(monitor: Monitor, jobs: list[str], timeout: float = 60.0) -> int:
    """End each mirror without pivot (``block-job-cancel``: a ready mirror first copies what is still dirty) and
    dismiss it; the bytes the mirrors copied. Raises if one did not end cleanly."""
    copied = 0
    for j in list(await monitor.execute("query-block-jobs")):
        if str(j.get("device")) in jobs:
            copied += int(j.get("offset", 0))
    for job in jobs:
        await monitor.execute("block-job-cancel", {"device": job})
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pending = set(jobs)
    while pending:
        for j in list(await monitor.execute("query-jobs")):
            if j["id"] in pending and j["status"] == "concluded":
                pending.discard(j["id"])
                with contextlib.suppress(MonitorError):
                    await monitor.execute("job-dismiss", {"id": j["id"]})
                if j.get("error"):
                    raise LiveMigrationError(f"mirror {j['id']} of '{monitor.name}' failed: {j['error']}")
        if pending and loop.time() > deadline:
            raise LiveMigrationError(f"mirrors {sorted(pending)} of '{monitor.name}' did not end in {timeout:.0f}s")
        if pending:
            await asyncio.sleep(POLL)
    return copied


async def drop_mirrors(monitor: Monitor, mirrors: list[Mirror]) -> None:
    """Undo :func:`mirror_disks` (a failed migration): jobs cancelled (forced) and dismissed, NBD nodes closed;
    never raises."""
    for m in mirrors:
        with contextlib.suppress(MonitorError):
            await monitor.execute("block-job-cancel", {"device": m.job, "force": True})  # no last sync
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15.0
    while loop.time() < deadline:
        try:
            left = {j["id"]: j for j in await monitor.execute("query-jobs") if j["id"] in {m.job for m in mirrors}}
        except MonitorError:
            break
        for id_, j in left.items():
            if j["status"] == "concluded":
                with contextlib.suppress(MonitorError):
                    await monitor.execute("job-dismiss", {"id": id_})
        if all(j["status"] == "concluded" for j in left.values()):
            break
        await asyncio.sleep(POLL)
    for m in mirrors:
        with contextlib.suppress(MonitorError):
            await monitor.execute("blockdev-del", {"node-name": m.target})
