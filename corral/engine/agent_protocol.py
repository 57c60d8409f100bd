"""The guest agent's protocol over the unix socket of a QEMU chardev: one connection, the ``guest-sync-delimited``
handshake, one request at a time under a lock, deadlines that wait out a stopped VM (the layers of
corral.engine.guest_agent, whose docstring tells the protocol facts this relies on)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from corral.errors import GuestAgentError, GuestAgentTimeout

log = logging.getLogger(__name__)

SYNC_DELIMITER = b"\xff"

#: How long one sync attempt waits for its answer before sending a fresh one.
SYNC_RETRY_INTERVAL = 0.5
#: How often wait_ready retries while the socket is missing or refused.
CONNECT_RETRY_INTERVAL = 0.05
#: A request's deadline moves out by the time the VM's vCPUs are stopped meanwhile (a paused guest answers nothing,
#: which says nothing of its agent), by this much at most.
MAX_STOPPED_WAIT = 60.0
#: What qemu-ga answers while the guest's file systems are frozen (its ``ga_freeze_allowlist``); it refuses every
#: other command (CommandNotFound: "has been disabled") until the thaw.
FROZEN_ALLOWED = frozenset({"guest-ping", "guest-info", "guest-sync", "guest-sync-delimited",
                            "guest-fsfreeze-status", "guest-fsfreeze-thaw"})


class GuestAgentCommandError(GuestAgentError):
    """The agent answered a command with ``{"error": ...}``. The connection is still good.

    Carries what was sent (``command``, ``arguments``) and what came back (``error_class``, ``desc``).
    """

    def __init__(self, command: str, arguments: dict[str, Any] | None, error_class: str, desc: str) -> None:
        super().__init__(f"guest agent command {command} failed: {error_class}: {desc}")
        self.command = command
        self.arguments = arguments
        self.error_class = error_class
        self.desc = desc


class _ChannelClosed(Exception):
    """The peer closed the socket (internal; surfaces as GuestAgentError)."""


class _Channel:
    """One connected socket to the chardev. Knows bytes and lines, nothing about commands.

    It keeps its own buffer instead of StreamReader.readuntil so that an arbitrarily long stale line never trips a
    limit.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._buf = bytearray()

    async def send(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    async def _fill(self) -> None:
        chunk = await self._reader.read(256 * 1024)
        if not chunk:
            raise _ChannelClosed("guest agent socket closed by QEMU")
        self._buf += chunk

    async def read_until(self, separator: bytes) -> bytes:
        """Return everything up to and including ``separator`` (raises _ChannelClosed on EOF)."""
        start = 0
        while True:
            index = self._buf.find(separator, start)
            if index >= 0:
                end = index + len(separator)
                data = bytes(self._buf[:end])
                del self._buf[:end]
                return data
            start = max(0, len(self._buf) - len(separator) + 1)
            await self._fill()

    async def discard_until(self, separator: bytes) -> int:
        """Throw away input up to and including ``separator``; return how many bytes were dropped."""
        dropped = 0
        while True:
            index = self._buf.find(separator)
            if index >= 0:
                del self._buf[: index + len(separator)]
                return dropped + index
            dropped += len(self._buf)
            self._buf.clear()
            await self._fill()

    def close(self) -> None:
        self._writer.close()


class AgentConnection:
    """A shared client of one VM's guest agent.

    Requests are serialized by a lock: one request is on the wire at a time, so answers come back in order. After a
    timeout, a cancellation or a broken answer the connection is dropped, and the next call reconnects and re-syncs;
    an ``{"error": ...}`` answer keeps the connection.

    A freeze (``guest-fsfreeze-freeze``, a snapshot's) is one of these requests: from the moment it is asked until
    a thaw is answered, a command qemu-ga would refuse while frozen (not in :data:`FROZEN_ALLOWED`) waits (within
    its own timeout) instead of being sent. So an exec, or a running exec's polls, that meet a snapshot carry on
    after the thaw rather than fail with "the agent is in frozen state". Requests already queued when the freeze
    is asked go before it (the lock is FIFO).
    """

    def __init__(
        self,
        socket_path: Path,
        *,
        tmp_dir: str = "/tmp",
        shell: Sequence[str] = ("/bin/sh",),
    ) -> None:
        """``tmp_dir`` is the guest directory for exec_stream's output files; ``shell`` the guest's POSIX shell
        (program and leading arguments, e.g. ``("/bin/busybox", "sh")``)."""
        self.socket_path = Path(socket_path)
        self.tmp_dir = tmp_dir.rstrip("/") or "/"
        self.shell = tuple(shell)
        self._lock = asyncio.Lock()
        self._channel: _Channel | None = None
        self._synced = False  # the open connection answered a sync (connect_early leaves it unsynced)
        self._thawed = asyncio.Event()  # cleared from a freeze request until a thaw is answered
        self._thawed.set()
        self._stopped_at: float | None = None  # loop time the VM's vCPUs stopped, while they are stopped
        self._stopped_total = 0.0  # seconds they were stopped before that
        self._held = False  # stopped until someone acts (stopped_until_acted_on): no waiting for it
        self._timeouts: dict[asyncio.Timeout, tuple[float, float]] = {}  # live ones: (deadline, stopped clock then)

    # -- the VM's vCPUs -----------------------------------------------------------------------------------------

    def vcpus_stopped(self) -> None:
        """The VM's vCPUs stopped (QMP STOP: a pause, a snapshot's or a save's): requests under way wait for them
        to run again rather than time out, up to MAX_STOPPED_WAIT. Not after :meth:`stopped_until_acted_on`."""
        if self._stopped_at is not None or self._held:
            return
        self._stopped_at = asyncio.get_running_loop().time()
        for t, (deadline, _) in self._timeouts.items():
            if not t.expired():
                t.reschedule(max(deadline, self._stopped_at + MAX_STOPPED_WAIT))

    def stopped_until_acted_on(self) -> None:
        """The VM stops for a reason that lasts until someone acts (a disk I/O error, a full disk: QEMU's
        ``werror=stop``/``enospc``): waiting would hang whoever must act, so requests time out as usual again, until
        the vCPUs run again."""
        self._held = True
        self._end_stop()

    def vcpus_resumed(self) -> None:
        """The VM's vCPUs run again (QMP RESUME): requests under way get back the time they were stopped."""
        self._held = False
        self._end_stop()

    def _end_stop(self) -> None:
        """The stop no longer counts: its time is added to the total and every live deadline is moved by the time
        stopped since its request began (no longer held open)."""
        if self._stopped_at is None:
            return
        self._stopped_total += asyncio.get_running_loop().time() - self._stopped_at
        self._stopped_at = None
        for t, (deadline, mark) in self._timeouts.items():
            if not t.expired():
                t.reschedule(self._moved(deadline, mark))

    def _stopped_clock(self) -> float:
        """Seconds the vCPUs have been stopped, in all, since this object was made."""
        now = asyncio.get_running_loop().time()
        return self._stopped_total + (now - self._stopped_at if self._stopped_at is not None else 0.0)

    def _moved(self, deadline: float, mark: float) -> float:
        return deadline + min(self._stopped_clock() - mark, MAX_STOPPED_WAIT)

    @contextlib.asynccontextmanager
    async def _timeout_at(self, deadline: float) -> AsyncIterator[None]:
        """``asyncio.timeout_at(deadline)``, the deadline moved out by the time the vCPUs are stopped within."""
        mark = self._stopped_clock()
        when = deadline if self._stopped_at is None else max(deadline, self._stopped_at + MAX_STOPPED_WAIT)
        async with asyncio.timeout_at(when) as t:
            self._timeouts[t] = (deadline, mark)
            try:
                yield
            finally:
                del self._timeouts[t]

    # -- connection ---------------------------------------------------------------------------------------------

    async def _connect(self) -> None:
        reader, writer = await asyncio.open_unix_connection(str(self.socket_path))
        self._channel = _Channel(reader, writer)
        self._synced = False

    async def connect_early(self) -> None:
        """Connect to the agent's socket without a sync (nothing in the guest answers yet): for a QEMU about to load
        a saved state whose agent had a host connected when it was saved. Connected before the load, the guest's
        port stays open through it; connected after, the load first tells the guest its host went away, and
        qemu-ga, reading end-of-file on its virtio port, sleeps 100 ms before it looks again (qga/main.c). The
        first request then syncs as usual. Raises GuestAgentError if the socket cannot be reached."""
        if self._channel is not None:
            return
        try:
            await self._connect()
        except OSError as exc:
            raise GuestAgentError(f"cannot connect to the guest agent at {self.socket_path}: {exc}") from exc

    def _reset(self) -> None:
        """Drop the connection; the next request reconnects and re-syncs."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        self._synced = False

    async def _sync_once(self, channel: _Channel) -> None:
        """Send 0xFF + guest-sync-delimited and wait (without a deadline: the caller bounds it) for our id.

        Answers with another id are stale answers to earlier sync attempts and are skipped.
        """
        sync_id = secrets.randbelow(2**31)
        request = {"execute": "guest-sync-delimited", "arguments": {"id": sync_id}}
        await channel.send(SYNC_DELIMITER + json.dumps(request).encode() + b"\n")
        while True:
            dropped = await channel.discard_until(SYNC_DELIMITER)
            if dropped:
                log.debug("guest agent %s: discarded %d stale bytes", self.socket_path, dropped)
            line = await channel.read_until(b"\n")
            try:
                answer = json.loads(line)
            except ValueError:
                continue
            if isinstance(answer, dict) and answer.get("return") == sync_id:
                return

    async def _sync(self, deadline: float) -> None:
        """Sync the current connection, resending every SYNC_RETRY_INTERVAL until ``deadline``.

        Raises TimeoutError at the deadline and _ChannelClosed/OSError if the socket breaks; the connection is kept
        either way (the caller decides).
        """
        loop = asyncio.get_running_loop()
        while True:
            assert self._channel is not None
            attempt_end = min(deadline, loop.time() + SYNC_RETRY_INTERVAL)
            try:
                async with asyncio.timeout_at(attempt_end):
                    await self._sync_once(self._channel)
                self._synced = True
                return
            except TimeoutError:
                if loop.time() >= deadline:
                    raise

    async def _ensure_connected(self, deadline: float, command: str) -> None:
        """Connect once (no retry) and sync; after a failure there is no connection."""
        if self._channel is not None and self._synced:
            return
        if self._channel is None:
            try:
                await self._connect()
            except OSError as exc:
                raise GuestAgentError(f"cannot connect to the guest agent at {self.socket_path}: {exc}") from exc
        try:
            await self._sync(deadline)
        except TimeoutError:
            self._reset()
            raise GuestAgentTimeout(
                f"guest agent at {self.socket_path} did not answer the sync before {command}"
            ) from None
        except (_ChannelClosed, OSError) as exc:
            self._reset()
            raise GuestAgentError(f"guest agent channel broke during sync: {exc}") from exc
        except BaseException:
            self._reset()
            raise

    async def _acquire(self, deadline: float, what: str) -> None:
        try:
            async with self._timeout_at(deadline):
                await self._lock.acquire()
        except TimeoutError:
            raise GuestAgentTimeout(f"guest agent busy: {what} could not be sent in time") from None

    async def wait_ready(self, timeout: float, *, set_time: bool = False) -> str | None:
        """Connect (retrying while the socket is missing or refused), sync, and ``guest-ping``.

        With ``set_time`` the question after the sync is ``guest-set-time`` with the host's clock at the moment it is
        sent instead of ``guest-ping``: its answer proves the agent answers just as well, and a guest whose clock
        must be set (loaded from a saved state) saves a round trip under TCG. The agent's refusal to set the clock
        (no hwclock in the guest) still means it answers: the refusal is returned (None when the clock was set).

        Raises GuestAgentTimeout if the agent is not answering within ``timeout`` seconds; the connection is then
        kept if it exists (a later call continues from there).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last = "no attempt"
        await self._acquire(deadline, "wait_ready")
        try:
            while True:
                if self._channel is None:
                    try:
                        await self._connect()
                    except (FileNotFoundError, ConnectionRefusedError, ConnectionResetError) as exc:
                        last = f"socket not accepting: {exc}"
                        if loop.time() + CONNECT_RETRY_INTERVAL >= deadline:
                            break
                        await asyncio.sleep(CONNECT_RETRY_INTERVAL)
                        continue
                    except OSError as exc:
                        raise GuestAgentError(
                            f"cannot connect to the guest agent at {self.socket_path}: {exc}"
                        ) from exc
                if not self._synced:
                    try:
                        await self._sync(deadline)
                    except TimeoutError:
                        last = "connected, but the agent did not answer guest-sync-delimited"
                        break
                    except (_ChannelClosed, OSError) as exc:
                        last = f"connection broke during sync: {exc}"
                        self._reset()
                        await asyncio.sleep(min(CONNECT_RETRY_INTERVAL, max(0.0, deadline - loop.time())))
                        if loop.time() >= deadline:
                            break
                        continue
                    except BaseException:
                        self._reset()
                        raise
                try:
                    if set_time:
                        await self._request("guest-set-time", {"time": time.time_ns()}, deadline)
                    else:
                        await self._request("guest-ping", None, deadline)
                    return None
                except GuestAgentTimeout:
                    last = f"synced, but {'guest-set-time' if set_time else 'guest-ping'} got no answer"
                    break
                except GuestAgentError as exc:
                    if isinstance(exc, GuestAgentCommandError):
                        if set_time:
                            return exc.message
                        raise
                    last = str(exc)
                    if loop.time() >= deadline:
                        break
        finally:
            self._lock.release()
        raise GuestAgentTimeout(f"guest agent at {self.socket_path} not ready within {timeout:g} s ({last})")

    async def close(self) -> None:
        """Drop the connection. The object stays usable: the next call reconnects."""
        self._reset()

    # -- requests -----------------------------------------------------------------------------------------------

    async def execute(
        self, command: str, arguments: dict[str, Any] | None = None, timeout: float = 10.0
    ) -> Any:
        """Send one command and return its ``"return"`` value.

        Raises GuestAgentCommandError (a GuestAgentError) on an ``{"error": ...}`` answer, GuestAgentTimeout if
        nothing answered within ``timeout`` seconds (the connection is then reset and the next call re-syncs), and
        GuestAgentError if the socket is missing or broke.
        """
        deadline = asyncio.get_running_loop().time() + timeout
        if command.startswith("guest-fsfreeze-freeze"):
            self._thawed.clear()  # before queueing: whatever is queued already goes first, nothing after it
        elif command not in FROZEN_ALLOWED and not self._thawed.is_set():
            try:
                async with asyncio.timeout_at(deadline):
                    await self._thawed.wait()
            except TimeoutError:
                raise GuestAgentTimeout(f"{command} not sent: the guest's file systems stayed frozen") from None
        mark = self._stopped_clock()
        await self._acquire(deadline, command)
        try:
            result = await self._request(command, arguments, self._moved(deadline, mark))
        except GuestAgentCommandError:
            if command == "guest-fsfreeze-thaw":
                self._thawed.set()  # it answered the thaw: whatever it froze before is undone
            raise
        finally:
            self._lock.release()
        if command == "guest-fsfreeze-thaw" or (command == "guest-fsfreeze-status" and result == "thawed"):
            self._thawed.set()
        return result

    async def _request(self, command: str, arguments: dict[str, Any] | None, deadline: float) -> Any:
        """One request/answer with the lock held."""
        await self._ensure_connected(deadline, command)
        channel = self._channel
        assert channel is not None
        message: dict[str, Any] = {"execute": command}
        if arguments is not None:
            message["arguments"] = arguments
        try:
            async with self._timeout_at(deadline):
                await channel.send(json.dumps(message).encode() + b"\n")
                line = await channel.read_until(b"\n")
        except TimeoutError:
            self._reset()
            raise GuestAgentTimeout(f"guest agent did not answer {command} in time") from None
        except (_ChannelClosed, OSError) as exc:
            self._reset()
            raise GuestAgentError(f"guest agent channel broke during {command}: {exc}") from exc
        except BaseException:
            # Cancelled mid-request: an answer may still be on its way, so the connection cannot be trusted.
            self._reset()
            raise
        try:
            answer = json.loads(line)
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or ("return" not in answer and "error" not in answer):
            self._reset()
            raise GuestAgentError(f"guest agent sent a malformed answer to {command}: {line[:200]!r}")
        if "error" in answer:
            error = answer["error"] if isinstance(answer["error"], dict) else {}
            raise GuestAgentCommandError(
                command,
                arguments,
                str(error.get("class", "GenericError")),
                str(error.get("desc", answer["error"])),
            )
        return answer["return"]
