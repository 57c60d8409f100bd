"""An asyncio client for qemu-guest-agent (QGA) over the unix socket of a QEMU chardev.

The layers, bottom up (after QEMU's ``python/qemu/qmp``); the first two are in corral.engine.agent_protocol:

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
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from corral.engine.agent_protocol import FROZEN_ALLOWED, AgentConnection, GuestAgentCommandError
from corral.errors import GuestAgentError, GuestAgentTimeout, InvalidInput

__all__ = ["FROZEN_ALLOWED", "ExecExit", "ExecOutput", "GuestAgent", "GuestAgentCommandError", "start_captured",
           "wait_captured"]

log = logging.getLogger(__name__)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_HOME = "/root"
#: exec_stream polls the process status and its output files this long after the start (or after output came),
#: then 1.5 times longer each time, up to POLL_INTERVAL: a quick command is seen quickly, and a long quiet one (or
#: many of them on one VM) does not keep the VM's one agent channel busy.
POLL_FIRST = 0.01
POLL_INTERVAL = 0.2
#: Time budget of each of exec_stream's polls: longer than a plain request's, since a guest starved of CPU (many
#: TCG guests on few cores) may take seconds to answer, and a lost poll fails the whole exec.
POLL_CALL_TIMEOUT = 30.0
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



class GuestAgent(AgentConnection):
    """A shared client of one VM's guest agent: the connection and requests of :class:`AgentConnection`, and the
    guest's files and commands built on them."""

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
