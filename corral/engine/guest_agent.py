"""An asyncio client for qemu-guest-agent (QGA) over the unix socket of a QEMU chardev.

The layers, bottom up (after QEMU's ``python/qemu/qmp``):

* :class:`_Channel` — one connected socket: write a message, read one line, discard up to the 0xFF delimiter.
* :class:`GuestAgent` — connection management (connect, ``guest-sync-delimited`` handshake, reset after a
  timeout), one request at a time under a lock, and :meth:`GuestAgent.execute` returning ``"return"``.
* Helpers built on ``execute``: :meth:`GuestAgent.exec_stream` (streamed command output through files in the
  guest), :meth:`GuestAgent.read_file` and :meth:`GuestAgent.write_file`.

Protocol facts this relies on: QGA speaks JSON objects, one response per request, each response ending in a
newline; there is no greeting and no capabilities negotiation. QEMU's chardev socket server accepts one client at a
time, so the daemon holds the only connection and all users share it. Before the agent runs in the guest, writes are
buffered or lost and nothing answers; after a reconnection, stale answers from a previous session may still arrive.
Every (re)connection therefore starts with a ``guest-sync-delimited`` handshake: the agent answers it with a 0xFF
byte (which never occurs in JSON) followed by the id we chose, so everything before it can be thrown away.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from corral.errors import GuestAgentError, GuestAgentTimeout, InvalidInput

log = logging.getLogger(__name__)

SYNC_DELIMITER = b"\xff"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_HOME = "/root"

#: How long one sync attempt waits for its answer before sending a fresh one.
SYNC_RETRY_INTERVAL = 0.5
#: How often wait_ready retries while the socket is missing or refused.
CONNECT_RETRY_INTERVAL = 0.05
#: exec_stream polls the process status and its output files this long after the start (or after output came),
#: then 1.5 times longer each time, up to POLL_INTERVAL: a quick command is seen quickly, and a long quiet one (or
#: many of them on one VM) does not keep the VM's one agent channel busy.
POLL_FIRST = 0.01
POLL_INTERVAL = 0.2
#: Time budget of each of exec_stream's polls: longer than a plain request's, since a guest starved of CPU (many
#: TCG guests on few cores) may take seconds to answer, and a lost poll fails the whole exec.
POLL_CALL_TIMEOUT = 30.0
#: A request's deadline moves out by the time the VM's vCPUs are stopped meanwhile (a paused guest answers nothing,
#: which says nothing of its agent), by this much at most.
MAX_STOPPED_WAIT = 300.0
#: The most exec_stream asks for in one guest-file-read (per stream, per tick).
EXEC_READ_CHUNK = 64 * 1024
#: Chunk size of read_file / write_file (base64 makes the JSON a third bigger; QGA's parser allows 64 MiB).
FILE_CHUNK = 1024 * 1024
#: exec_captured asks for the status after this long first, then 1.5 times longer each time, up to the maximum.
CAPTURED_FIRST_POLL = 0.01
CAPTURED_MAX_POLL = 0.2
#: Time budget of the cleanup after exec_stream (kill, close, rm), per guest call.
CLEANUP_CALL_TIMEOUT = 3.0
#: How long to wait for a killed process to be reported as exited.
KILL_WAIT = 5.0

#: What qemu-ga answers while the guest's file systems are frozen (its ``ga_freeze_allowlist``); it refuses every
#: other command (CommandNotFound: "has been disabled") until the thaw.
FROZEN_ALLOWED = frozenset({"guest-ping", "guest-info", "guest-sync", "guest-sync-delimited",
                            "guest-fsfreeze-status", "guest-fsfreeze-thaw"})

# The wrapper run by ``/bin/sh -c`` in the guest. Positional parameters: stdout file, stderr file, directory ("" for
# none), "1" when stdin data is given, then the user's argv. It redirects its own stdout/stderr into the files (so
# the shell's own messages, "not found" included, land in the stderr file), changes directory, and ``exec``s the
# command so that guest-exec-status reports the command's own exit code or signal. With ``setsid`` the command
# becomes the leader of a new process group (a guest-exec child is not a group leader, so setsid does not fork), and
# a timeout kills the whole group. Only POSIX sh and busybox applets are used.
EXEC_WRAPPER = """\
o=$1 e=$2 d=$3 i=$4
shift 4
exec >>"$o" 2>>"$e"
[ "$i" = 1 ] || exec </dev/null
if [ -n "$d" ]; then cd "$d" || exit 1; fi
if command -v setsid >/dev/null 2>&1 && command -v "$1" >/dev/null 2>&1; then exec setsid "$@"; fi
exec "$@"
"""

# Kill the process group led by $1 (see EXEC_WRAPPER), then the process itself in case it leads no group.
KILL_SCRIPT = 'kill -9 "-$1" 2>/dev/null; kill -9 "$1" 2>/dev/null; exit 0'

Stream = Literal["stdout", "stderr"]
STREAMS: tuple[Stream, Stream] = ("stdout", "stderr")


@dataclass
class ExecOutput:
    """A chunk of a command's output, in the order it was read (the two streams are not interleaved exactly)."""

    stream: Stream
    data: bytes


@dataclass
class ExecExit:
    """How a command ended: ``exit_code`` for a normal exit, ``signal`` if a signal killed it.

    On a timeout, ``timed_out`` is true and both ``exit_code`` and ``signal`` are None (Corral killed it).
    """

    exit_code: int | None
    signal: int | None
    timed_out: bool


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


class GuestAgent:
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
        self._timeouts: dict[asyncio.Timeout, tuple[float, float]] = {}  # live ones: (deadline, stopped clock then)

    # -- the VM's vCPUs -----------------------------------------------------------------------------------------

    def vcpus_stopped(self) -> None:
        """The VM's vCPUs stopped (QMP STOP: a pause, a snapshot's or a save's): requests under way wait for them
        to run again rather than time out, up to MAX_STOPPED_WAIT."""
        if self._stopped_at is not None:
            return
        self._stopped_at = asyncio.get_running_loop().time()
        for t, (deadline, _) in self._timeouts.items():
            if not t.expired():
                t.reschedule(max(deadline, self._stopped_at + MAX_STOPPED_WAIT))

    def vcpus_resumed(self) -> None:
        """The VM's vCPUs run again (QMP RESUME): requests under way get back the time they were stopped."""
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

    # -- files --------------------------------------------------------------------------------------------------

    async def _file_close(self, handle: int) -> None:
        await self.execute("guest-file-close", {"handle": handle})

    async def read_file(self, path: str) -> bytes:
        """Return the whole content of a guest file (read in FILE_CHUNK pieces)."""
        handle = await self.execute("guest-file-open", {"path": path, "mode": "r"})
        data = bytearray()
        try:
            while True:
                result = await self.execute("guest-file-read", {"handle": handle, "count": FILE_CHUNK})
                count = int(result.get("count", 0))
                if count:
                    data += base64.b64decode(result.get("buf-b64", ""))
                if count == 0 or result.get("eof"):
                    return bytes(data)
        finally:
            await self._close_quietly(handle)

    async def write_file(self, path: str, data: bytes) -> None:
        """Create or truncate a guest file and write ``data`` to it (in FILE_CHUNK pieces)."""
        handle = await self.execute("guest-file-open", {"path": path, "mode": "w"})
        try:
            for offset in range(0, len(data), FILE_CHUNK):
                chunk = data[offset : offset + FILE_CHUNK]
                result = await self.execute(
                    "guest-file-write", {"handle": handle, "buf-b64": base64.b64encode(chunk).decode()}
                )
                if int(result.get("count", -1)) != len(chunk):
                    raise GuestAgentError(
                        f"short write to guest file {path}: {result.get('count')} of {len(chunk)} bytes"
                    )
        except BaseException:
            await self._close_quietly(handle)
            raise
        # A failing close may mean lost data (fclose flushes), so this one is not quiet.
        await self._file_close(handle)

    async def _close_quietly(self, handle: int) -> None:
        with contextlib.suppress(GuestAgentError):
            await self.execute("guest-file-close", {"handle": handle}, timeout=CLEANUP_CALL_TIMEOUT)

    # -- exec ---------------------------------------------------------------------------------------------------

    async def _read_chunk(self, handle: int, count: int = EXEC_READ_CHUNK) -> bytes:
        result = await self.execute("guest-file-read", {"handle": handle, "count": count}, timeout=POLL_CALL_TIMEOUT)
        if not int(result.get("count", 0)):
            return b""
        return base64.b64decode(result.get("buf-b64", ""))

    async def _wait_exited(self, pid: int, timeout: float) -> dict[str, Any] | None:
        """Poll guest-exec-status until the process exited (QGA then forgets it); None if it did not in time."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            status = await self.execute("guest-exec-status", {"pid": pid}, timeout=CLEANUP_CALL_TIMEOUT)
            if status.get("exited"):
                return dict(status)
            if loop.time() >= end:
                return None
            await asyncio.sleep(POLL_INTERVAL)

    async def _run_helper(self, script: str, *args: str) -> None:
        """Run a short shell script in the guest and wait for it, so that QGA reaps it."""
        result = await self.execute(
            "guest-exec",
            {
                "path": self.shell[0],
                "arg": [*self.shell[1:], "-c", script, "sh", *args],
                "capture-output": False,
            },
            timeout=CLEANUP_CALL_TIMEOUT,
        )
        await self._wait_exited(int(result["pid"]), KILL_WAIT)

    async def exec_captured(self, argv: list[str], *, stdin: bytes | None = None,
                            timeout: float = 60.0) -> tuple[int | None, bytes, bytes]:
        """Run ``argv`` to completion with its output captured by the agent: (exit code, stdout, stderr); a
        signal gives 128 + its number. For short commands with small output (Corral's own provisioning): one
        guest-exec, then guest-exec-status asked often at first and less often later (every question interrupts the
        guest), no files. On ``timeout`` the process is killed (not what it started: these are short scripts) and
        GuestAgentTimeout raised."""
        pid = await start_captured(self, argv, stdin=stdin)
        try:
            return await wait_captured(self, pid, timeout)
        except GuestAgentTimeout:
            with contextlib.suppress(GuestAgentError):
                await self._run_helper(KILL_SCRIPT, str(pid))
            raise GuestAgentTimeout(f"guest command {argv[0]!r} did not finish within {timeout:g}s (killed)") from None

    async def exec_stream(
        self,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        stdin: bytes | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[ExecOutput | ExecExit]:
        """Run ``argv`` in the guest, yielding its output while it runs and an :class:`ExecExit` last.

        QGA's guest-exec-status returns output only after the exit, so the command writes into two files in
        ``tmp_dir`` (see EXEC_WRAPPER) which are polled with guest-file-read. ``env`` is added to a default of
        PATH=DEFAULT_PATH and HOME=/root. A missing command gives exit code 127 and the shell's message on stderr.
        On ``timeout`` the process group is killed with SIGKILL and ExecExit(None, None, timed_out=True) ends it.

        If the caller stops iterating, is cancelled or a guest call fails, the process is killed and the files are
        deleted on a best-effort basis before the error propagates.
        """
        if not argv:
            raise InvalidInput("exec needs a command")
        loop = asyncio.get_running_loop()
        token = secrets.token_hex(8)
        paths = {
            "stdout": f"{self.tmp_dir}/corral-exec-{token}.out",
            "stderr": f"{self.tmp_dir}/corral-exec-{token}.err",
        }
        environment = {"PATH": DEFAULT_PATH, "HOME": DEFAULT_HOME, **(env or {})}
        handles: dict[Stream, int] = {}
        pid: int | None = None
        running = False
        try:
            # Creating the files first ("w+": create, truncate, readable) leaves no race with the wrapper's ">>".
            handles["stdout"] = await self.execute("guest-file-open", {"path": paths["stdout"], "mode": "w+"})
            handles["stderr"] = await self.execute("guest-file-open", {"path": paths["stderr"], "mode": "w+"})
            arguments: dict[str, Any] = {
                "path": self.shell[0],
                "arg": [
                    *self.shell[1:],
                    "-c",
                    EXEC_WRAPPER,
                    "sh",
                    paths["stdout"],
                    paths["stderr"],
                    cwd or "",
                    "1" if stdin is not None else "0",
                    *argv,
                ],
                "env": [f"{key}={value}" for key, value in environment.items()],
                "capture-output": False,
            }
            if stdin is not None:
                arguments["input-data"] = base64.b64encode(stdin).decode()
            pid = int((await self.execute("guest-exec", arguments))["pid"])
            running = True
            deadline = None if timeout is None else loop.time() + timeout

            status: dict[str, Any] | None = None
            timed_out = False
            pause = POLL_FIRST
            while True:
                status = await self.execute("guest-exec-status", {"pid": pid}, timeout=POLL_CALL_TIMEOUT)
                if status.get("exited"):
                    running = False
                pause = min(pause * 1.5, POLL_INTERVAL)
                for stream in STREAMS:
                    chunk = await self._read_chunk(handles[stream])
                    if chunk:
                        pause = POLL_FIRST  # output comes in bursts: look again soon
                        yield ExecOutput(stream, chunk)
                if not running:
                    break
                if deadline is not None and loop.time() >= deadline:
                    timed_out = True
                    await self._run_helper(KILL_SCRIPT, str(pid))
                    status = await self._wait_exited(pid, KILL_WAIT)
                    running = status is None
                    break
                await asyncio.sleep(pause)

            # Drain what was written before the exit (or the kill).
            for stream in STREAMS:
                while chunk := await self._read_chunk(handles[stream]):
                    yield ExecOutput(stream, chunk)

            if timed_out:
                yield ExecExit(exit_code=None, signal=None, timed_out=True)
            else:
                assert status is not None
                yield ExecExit(exit_code=status.get("exitcode"), signal=status.get("signal"), timed_out=False)
        finally:
            await self._exec_cleanup(pid if running else None, handles, list(paths.values()))

    async def _exec_cleanup(self, pid: int | None, handles: dict[Stream, int], paths: list[str]) -> None:
        """Best effort: kill a still running process, close the handles, delete the files.

        Guest agent failures are logged, not raised (the original error, if any, is what matters); cancellation is
        never swallowed.
        """
        try:
            if pid is not None:
                await self._run_helper(KILL_SCRIPT, str(pid))
                await self._wait_exited(pid, KILL_WAIT)
        except GuestAgentError as exc:
            log.warning("guest agent: could not kill guest process %s: %s", pid, exc)
        for handle in handles.values():
            await self._close_quietly(handle)
        if handles:
            try:
                await self._run_helper('rm -f "$@"', *paths)
            except GuestAgentError as exc:
                log.warning("guest agent: could not delete %s: %s", " ".join(paths), exc)


async def start_captured(agent: GuestAgent, argv: list[str], *, stdin: bytes | None = None) -> int:
    """Start ``argv`` in the guest with its output captured by the agent (one guest-exec, PATH and HOME set); its
    pid, for :func:`wait_captured`. Uses only ``agent.execute``."""
    if not argv:
        raise InvalidInput("exec needs a command")
    arguments: dict[str, Any] = {"path": argv[0], "arg": argv[1:], "capture-output": True,
                                 "env": [f"PATH={DEFAULT_PATH}", f"HOME={DEFAULT_HOME}"]}
    if stdin:
        arguments["input-data"] = base64.b64encode(stdin).decode()
    return int((await agent.execute("guest-exec", arguments))["pid"])


async def wait_captured(agent: GuestAgent, pid: int, timeout: float, *, first_poll: float = CAPTURED_FIRST_POLL,
                        growth: float = 1.5, max_poll: float = CAPTURED_MAX_POLL) -> tuple[int, bytes, bytes]:
    """Wait for a command :func:`start_captured` started: (exit code, or 128 + the signal; stdout; stderr). The
    status is asked after ``first_poll``, then at intervals growing by ``growth`` up to ``max_poll`` (every question
    interrupts the guest); GuestAgentTimeout after ``timeout`` seconds (the command is left running)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    interval = first_poll
    while True:
        await asyncio.sleep(min(interval, max(0.0, deadline - loop.time())))
        status = await agent.execute("guest-exec-status", {"pid": pid})
        if status.get("exited"):
            code = status.get("exitcode")
            return ((code if code is not None else 128 + int(status.get("signal", 0))),
                    base64.b64decode(status.get("out-data", "")), base64.b64decode(status.get("err-data", "")))
        if loop.time() >= deadline:
            raise GuestAgentTimeout(f"a guest command did not finish within {timeout:.0f}s")
        interval = min(interval * growth, max_poll)
