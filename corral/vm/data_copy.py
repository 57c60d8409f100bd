"""`corral cp` over a temporary virtio-serial port: the fast channel, many times the guest agent's throughput.

One copy, one port (corral.engine.data_channel): plugged on the VM's virtio-serial bus, its host end connected,
the guest side started through the guest agent (corral.guest.portcopy), the bytes streamed, the guest side's exit
awaited, the port removed. The guest agent carries only control (one guest-exec, a few status polls), never data.

Journalled as an operation of kind ``cp`` (corral.operations.journal): the port under ``port`` and its socket under
``files``, written before the port is plugged; a daemon killed mid-copy leaves both to recovery, which removes the
port from the VM's QEMU (:meth:`DataCopyService._recover`) and the socket file. The guest side cleans up by itself:
its stream ends early (the daemon's connection closed with its process), so it removes its temporary.

What holds after a failure, or a cancellation (the client went away): the port is removed, no temporary stays in
the guest (the guest script removes it when its stream ends short), nothing is renamed into place. A suspend,
memory snapshot or template capture during a copy removes the port first (corral.engine.migration): the copy fails.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from corral.engine import data_channel
from corral.engine.data_channel import Connection, DataPort
from corral.engine.guest_agent import GuestAgent, start_captured
from corral.engine.monitor import Monitor, MonitorError
from corral.errors import Conflict, CorralError, EngineError, GuestAgentError, InvalidInput, StateError
from corral.guest import files, portcopy
from corral.operations.journal import Operation
from corral.operations.recovery import Outcome, Recovery
from corral.store.db import OperationRecord
from corral.vm.states import VMState

if TYPE_CHECKING:
    from corral.vm.service import VMService

log = logging.getLogger(__name__)

OPERATION = "copy files to or from"
#: How long the guest side may take to finish once its stream ended (rename, chmod; a tree's last writes).
FINISH_TIMEOUT = 600.0
#: How often the guest side is asked whether it still runs while bytes flow (each question interrupts the guest).
WATCH_INTERVAL = 0.5
#: Tries (0.5 s apart) to remove a copy's port through a monitor that fails.
UNPLUG_TRIES = 20
#: How long a failed copy's guest side is watched after its port went (to reap it).
ABANDON_WAIT = 30.0


@dataclass
class Opened:
    """A download under way: what the guest source is, and its bytes (a file's own, or a tree's tar)."""

    kind: Literal["file", "tar"]
    size: int  # a file's exact size; a tree's estimate (du)
    mode: int
    mtime: int
    chunks: AsyncIterator[bytes]


class _GuestSide:
    """Watches the guest side of a copy (guest-exec-status, slowly while bytes flow, quickly once the host's side
    is done) and, when it ends before the stream does, unblocks the host: an upload's writer is cut off (the guest
    stopped reading), a download's reader gets the guest's error (nothing more will come). Never cancelled (a
    cancelled agent request resets the shared agent connection): it ends when the guest side exits (which reaps it:
    QGA forgets it), or at its deadline."""

    def __init__(self, agent: GuestAgent, pid: int, conn: Connection, what: str, *, upload: bool) -> None:
        self.agent, self.pid, self.conn, self.what, self.upload = agent, pid, conn, what, upload
        self.host_done = asyncio.Event()  # the host sent (or read) all it will
        self.result: tuple[int, bytes] | None = None
        self.deadline = asyncio.get_running_loop().time() + FINISH_TIMEOUT
        self.task = files.background(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = WATCH_INTERVAL
        while loop.time() < self.deadline:
            try:
                status = await self.agent.execute("guest-exec-status", {"pid": self.pid}, timeout=30.0)
            except GuestAgentError as exc:
                log.warning("watching the guest side of a copy failed: %s", exc)
                return
            if status.get("exited"):
                code = status.get("exitcode")
                self.result = (int(code) if code is not None else 128 + int(status.get("signal", 0)),
                               base64.b64decode(status.get("err-data", "")))
                self._exited()
                return
            if self.host_done.is_set():  # the guest side is finishing: ask often, then less and less
                interval = 0.02 if interval >= WATCH_INTERVAL else min(interval * 1.5, 0.2)
                await asyncio.sleep(interval)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.host_done.wait(), interval)

    def _exited(self) -> None:
        assert self.result is not None
        if self.host_done.is_set():
            return
        if self.upload:  # it stopped reading: the writer would wait for ever
            self.conn.writer.transport.abort()
        elif self.result[0] != 0:  # its tar failed: what it wrote is all there is
            self.conn.reader.set_exception(_error(*self.result, self.what))
        # (a download whose tar succeeded wrote a whole archive: the rest of it is still arriving)

    async def wait(self) -> None:
        """Wait for the guest side's exit (the host's side being done); raise its error."""
        self.host_done.set()
        await asyncio.shield(self.task)
        if self.result is None:
            raise GuestAgentError(f"{self.what}: the guest side did not finish within {FINISH_TIMEOUT:g}s")
        if self.result[0] != 0:
            raise _error(*self.result, self.what)

    def abandon(self) -> None:
        """The copy failed on the host's side: the port's removal ends the guest side soon; reap it if it does."""
        self.deadline = min(self.deadline, asyncio.get_running_loop().time() + ABANDON_WAIT)
        self.host_done.set()


class DataCopyService:
    """Copies over a hot-plugged port, composed over the :class:`VMService` (its machines, journal, events)."""

    def __init__(self, vms: VMService) -> None:
        self.vms = vms

    # ------------------------------------------------------------------------------------------------ helpers --
    def _running(self, name: str) -> tuple[Monitor, GuestAgent]:
        rec = self.vms.get(name)
        m = self.vms.machine(name)
        if rec.state != VMState.RUNNING or m is None or m.monitor is None:
            raise StateError(name, OPERATION, rec.state, [VMState.RUNNING.value])
        return m.monitor, m.agent

    async def status(self, name: str) -> tuple[bool, str]:
        """Can a copy with ``name`` go over a port now: (yes or no, why not)."""
        try:
            monitor, _ = self._running(name)
            await self.vms.readiness.wait_ready(name, timeout=60.0)
            if not await data_channel.has_bus(monitor):
                return False, f"VM '{name}' has no virtio-serial bus"
        except (Conflict, EngineError) as exc:
            return False, exc.message
        return True, ""

    @contextlib.asynccontextmanager
    async def _port(self, name: str, monitor: Monitor, agent: GuestAgent, script: str, args: list[str],
                    what: str, *, upload: bool) -> AsyncIterator[tuple[Connection, _GuestSide]]:
        """Plug a port, connect its host end, start ``script`` in the guest; yield the connection and the guest
        side's watcher. On the way out, whatever happened: the connection closed, the port removed (which ends a
        guest side still running), the guest side reaped."""
        port = DataPort.new(self.vms.paths(name).root)
        side: _GuestSide | None = None
        op = self.vms.journal.begin("cp", name, port=port.to_json(), files=[str(port.socket)])
        try:
            await data_channel.plug(monitor, port)
            conn = await Connection.open(port)
            try:
                pid = await start_captured(agent, ["sh", "-c", script, "sh", port.name, *args])
                side = _GuestSide(agent, pid, conn, what, upload=upload)
                yield conn, side
            finally:
                await conn.close()
        except BaseException:
            if side is not None:
                side.abandon()
            raise
        finally:  # shielded, and to its end: a response whose client went away is cancelled here
            await asyncio.shield(files.background(self._unplug(name, monitor, port, op)))

    async def _unplug(self, name: str, monitor: Monitor, port: DataPort, op: Operation) -> None:
        """Remove the port and end the operation. A monitor that fails is asked again for a while (a stop or
        suspend under way ends that QEMU, and the port with it); if it still fails while its QEMU is the VM's, the
        port may still be there: the row stays, and recovery (or the next state save) removes it."""
        for _ in range(UNPLUG_TRIES):
            try:
                await data_channel.unplug(monitor, port)
                break
            except MonitorError as exc:
                m = self.vms.machine(name)
                if m is None or m.monitor is not monitor:
                    break  # that QEMU is gone, and the port with it
                error = exc
            await asyncio.sleep(0.5)
        else:
            log.warning("could not remove data port %s: %s", port.id, error)
            return
        self.vms.journal.end(op)

    # --------------------------------------------------------------------------------------------- host → guest --
    async def put(self, name: str, path: str, chunks: AsyncIterator[bytes], *, kind: Literal["file", "tar"],
                  mode: int, mtime: int | None, size: int | None, marker: str | None) -> files.GuestStat:
        """Write the stream as guest file ``path`` (``size`` bytes exactly) or unpack it (a tar ending with the
        member ``marker``) as the new guest directory ``path``. Conflict if the destination is in the way."""
        monitor, agent = self._running(name)
        await self.vms.readiness.wait_ready(name, timeout=60.0)
        dest = files.guest_path(path)
        tmp = files.temp_name(dest)
        bits = f"{mode & 0o7777:o}"
        if kind == "file":
            if size is None:
                raise InvalidInput("a file upload over a data port needs its size (size=BYTES)")
            script, args = portcopy.PUT_FILE_SCRIPT, [dest, tmp, bits, "" if mtime is None else str(mtime), str(size)]
        else:
            if not marker:
                raise InvalidInput("a tree upload over a data port needs its end marker (marker=NAME)")
            script, args = portcopy.PUT_TREE_SCRIPT, [dest, tmp, bits, marker]
        what = f"cannot {'write' if kind == 'file' else 'unpack into'} {dest} in the guest"
        sent = 0
        async with self._port(name, monitor, agent, script, args, what, upload=True) as (conn, side):
            try:
                async for chunk in chunks:
                    await conn.write(chunk)
                    sent += len(chunk)
            except data_channel.DataChannelError:
                await side.wait()  # the guest side stopped reading: its error says why
                raise
            await conn.finish_writing()
            await side.wait()
        return files.GuestStat(dest, "file" if kind == "file" else "dir", sent if kind == "file" else 0,
                               mode & 0o7777, mtime or 0)

    # --------------------------------------------------------------------------------------------- guest → host --
    @contextlib.asynccontextmanager
    async def open(self, name: str, path: str) -> AsyncIterator[Opened]:
        """A guest file's bytes, or a directory's tar, streamed out of a port. Errors about the source (missing,
        not a file or directory) come before the port is plugged; a file's size, mode and mtime before the first
        byte."""
        monitor, agent = self._running(name)
        await self.vms.readiness.wait_ready(name, timeout=60.0)
        st = await files.source(agent, files.guest_path(path))
        estimate = await _du(agent, st.path) if st.kind == "dir" else st.size
        what = f"cannot read {st.path} in the guest"
        async with self._port(name, monitor, agent, portcopy.GET_SCRIPT,
                              [st.path, portcopy.download_kind(st.kind)], what, upload=False) as (conn, side):
            if st.kind == "dir":
                async def tree() -> AsyncIterator[bytes]:
                    async for chunk in _framed(portcopy.tar_archive(conn.reader), what):
                        yield chunk
                    await side.wait()

                yield Opened("tar", estimate, st.mode, st.mtime, tree())
            else:
                try:
                    member = await portcopy.file_member(conn.reader)
                except portcopy.TarFramingError as exc:
                    raise GuestAgentError(f"{what}: {exc}") from exc

                async def data() -> AsyncIterator[bytes]:
                    async for chunk in _framed(portcopy.member_data(conn.reader, member), what):
                        yield chunk
                    await side.wait()

                yield Opened("file", member.size, st.mode, st.mtime, data())

    # --------------------------------------------------------------------------------------------- recovery --
    def register_recovery(self, recovery: Recovery) -> None:
        recovery.kinds["cp"] = self._recover

    async def _recover(self, op: OperationRecord) -> Outcome:
        """A copy a dead daemon left: its port is removed from the VM's QEMU (its socket file goes with the
        journal's ``files``). The guest side removed its temporary when its stream ended."""
        port = DataPort.from_json(op.data["port"])
        m = self.vms.machine(str(op.vm)) if op.vm else None
        if m is not None and m.monitor is not None and await data_channel.is_plugged(m.monitor, port.id):
            await data_channel.unplug(m.monitor, port)
            return Outcome(False, f"data port {port.id} removed")
        return Outcome(False, "")


def _error(code: int, err: bytes, what: str) -> CorralError:
    lines = err.decode(errors="replace").strip().splitlines()
    last = lines[-1].removeprefix("sh: ") if lines else ""
    if code == 17:
        return Conflict(last)
    return GuestAgentError(f"{what}: {last or f'exit {code}'}")


async def _framed(chunks: AsyncIterator[bytes], what: str) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            yield chunk
    except portcopy.TarFramingError as exc:
        raise GuestAgentError(f"{what}: {exc}") from exc


async def _du(agent: GuestAgent, path: str) -> int:
    """A tree's size in bytes, for a progress bar (0 if du fails)."""
    try:
        code, out, _ = await agent.exec_captured(["du", "-sk", path], timeout=files.HELPER_TIMEOUT)
    except GuestAgentError:
        return 0
    fields = out.split()
    return int(fields[0]) * 1024 if code == 0 and fields and fields[0].isdigit() else 0
