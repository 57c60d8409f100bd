"""A temporary data channel into a running guest: a virtio-serial port hot-plugged for one copy (``corral cp``).

Why a virtio-serial port: it moves bytes between a unix socket on the host and ``/dev/vportNpM`` in the guest with
no encryption, no network stack and no JSON, and needs nothing in the guest but a shell and ``dd``/``tar``. Under
TCG the guest's one emulated vCPU is the bottleneck of every other channel (the guest agent's JSON lexer, dropbear's
cipher); here it only copies pages. The port sits on the VM's existing virtio-serial bus (``vser0.0``, the guest
agent's), so no PCI slot is taken, the guest sees it at once (no PCIe hot-plug handshake) and it leaves at once.

The port is temporary: plugged for one copy and removed after it, and :func:`unplug_all` takes every one away
before a machine state is saved (suspend, memory snapshot, template capture: see
:func:`corral.engine.migration.save_state`), so a saved state never holds a device its VM's command line does not
create, and it loads as before.

End of stream: QEMU's socket chardev drops the connection (and what it has not yet read) when the peer *closes*
(``G_IO_HUP``), but reads to the end when the peer only *shuts down its writing side*: so the host end of an
upload (the client's, corral.client.port_upload: the daemon only plugs the port) shuts down its writing side and
closes only after the guest's reader exited. The guest's reader sees end-of-file when QEMU
tells it the host end disconnected; before the host end connects, a read in the guest also gives end-of-file, so
the host connects before the guest opens the port, and sends one byte (:data:`HELLO`) the guest waits for.

What holds after a failure: :func:`plug` removes whatever it had added; :func:`unplug` is idempotent (a retry, or
recovery after a daemon died mid-copy, finishes the job) and removes the socket file.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.engine.monitor import Monitor, MonitorError

#: The virtio-serial bus every Corral VM has (corral.engine.cmdline._guest_agent).
BUS = "vser0.0"
#: Device and chardev ids start with this; the guest sees the port as ``org.corral.data.<token>``.
ID_PREFIX = "cdata-"
PORT_NAME_PREFIX = "org.corral.data."
#: The byte the host sends first: the guest knows by it that the host end is connected.
HELLO = b"+"
#: Bytes per read from the socket, and the stream buffer's limit.
CHUNK = 1 << 20
#: How long device_del of a port and the release of its chardev may take (both are immediate in practice).
UNPLUG_TIMEOUT = 10.0


class DataChannelError(MonitorError):
    """The port could not be plugged, reached or removed."""


@dataclass(frozen=True)
class DataPort:
    """One hot-plugged port: its QEMU ids, the name the guest sees, the host socket."""

    token: str
    socket: Path

    @property
    def id(self) -> str:
        """The id of both the virtserialport device and its chardev."""
        return f"{ID_PREFIX}{self.token}"

    @property
    def name(self) -> str:
        return f"{PORT_NAME_PREFIX}{self.token}"

    def to_json(self) -> dict[str, str]:
        """For the operations journal (recovery unplugs it with :meth:`from_json`)."""
        return {"token": self.token, "socket": str(self.socket)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DataPort:
        return cls(str(data["token"]), Path(str(data["socket"])))

    @classmethod
    def new(cls, directory: Path) -> DataPort:
        """A port with a fresh token whose socket is in ``directory`` (the VM's private directory)."""
        token = secrets.token_hex(4)
        return cls(token, directory / f"data-{token}.sock")


async def _peripherals(monitor: Monitor) -> set[str]:
    return {str(c.get("name")) for c in await monitor.execute("qom-list", {"path": "/machine/peripheral"})}


async def _chardevs(monitor: Monitor) -> set[str]:
    return {str(c.get("label")) for c in await monitor.execute("query-chardev")}


async def has_bus(monitor: Monitor) -> bool:
    """Does this QEMU have the virtio-serial bus the ports go on?"""
    return BUS.partition(".")[0] in await _peripherals(monitor)


async def plug(monitor: Monitor, port: DataPort) -> None:
    """Add the socket chardev (a listening server) and the port on the guest agent's bus. All or nothing."""
    if port.socket.exists():
        port.socket.unlink()
    backend = {"type": "socket", "data": {"addr": {"type": "unix", "data": {"path": str(port.socket)}},
                                          "server": True, "wait": False}}
    await monitor.execute("chardev-add", {"id": port.id, "backend": backend})
    try:
        await monitor.execute("device_add", {"driver": "virtserialport", "bus": BUS, "chardev": port.id,
                                             "id": port.id, "name": port.name})
    except BaseException:
        with contextlib.suppress(MonitorError):
            await monitor.execute("chardev-remove", {"id": port.id})
        port.socket.unlink(missing_ok=True)
        raise


async def is_plugged(monitor: Monitor, port_id: str) -> bool:
    """Is the port's device, or its chardev, still in the QEMU?"""
    return port_id in await _peripherals(monitor) or port_id in await _chardevs(monitor)


async def plugged(monitor: Monitor) -> list[str]:
    """The ids of every data port device or chardev in this QEMU."""
    return sorted(i for i in (await _peripherals(monitor)) | (await _chardevs(monitor)) if i.startswith(ID_PREFIX))


async def _remove(monitor: Monitor, port_id: str, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    if port_id in await _peripherals(monitor):
        with contextlib.suppress(MonitorError):  # already going
            await monitor.execute("device_del", {"id": port_id})
        while port_id in await _peripherals(monitor):
            if loop.time() > deadline:
                raise DataChannelError(f"data port {port_id} was not removed within {timeout:g}s")
            await asyncio.sleep(0.02)
    # The device leaves the tree before it lets go of its chardev ("busy" for a moment after).
    while port_id in await _chardevs(monitor):
        try:
            await monitor.execute("chardev-remove", {"id": port_id})
        except MonitorError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.02)


async def unplug(monitor: Monitor | None, port: DataPort, timeout: float = UNPLUG_TIMEOUT) -> None:
    """Remove the port's device and chardev (whatever of them is left), then its socket file. Without a monitor
    (the VM's QEMU is gone) only the file."""
    try:
        if monitor is not None:
            await _remove(monitor, port.id, timeout)
    finally:
        port.socket.unlink(missing_ok=True)


async def unplug_all(monitor: Monitor, timeout: float = UNPLUG_TIMEOUT) -> list[str]:
    """Remove every data port (before a machine state is saved); the copies using them fail. Their ids."""
    ids = await plugged(monitor)
    for port_id in ids:
        await _remove(monitor, port_id, timeout)
    return ids


class Connection:
    """The host end of a plugged port: one unix-socket connection to its chardev."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: DataPort, timeout: float = 10.0) -> Connection:
        """Connect, and send :data:`HELLO` (QEMU holds it until the guest opens the port)."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(str(port.socket), limit=CHUNK), timeout)
        except (OSError, TimeoutError) as exc:
            raise DataChannelError(f"cannot connect to data port {port.id} at {port.socket}: {exc}") from exc
        conn = cls(reader, writer)
        await conn.write(HELLO)
        return conn

    async def write(self, data: bytes) -> None:
        try:
            self.writer.write(data)
            await self.writer.drain()
        except OSError as exc:
            raise DataChannelError(f"the data port broke: {exc}") from exc

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()
