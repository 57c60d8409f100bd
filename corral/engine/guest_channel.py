"""Corral's command channel into a guest: a shell already running in the guest, reading commands from a virtio-serial
port (``org.corral.channel.0``) whose host side is the unix socket ``channel.sock`` of the VM's QEMU.

Why, beside the guest agent: a VM started from a template must take its own identity before it is shown to anyone,
and under TCG every process the guest starts costs 50-100 ms in a QEMU that has not translated the guest's code
yet. Through the agent that is a fork and an exec (``guest-exec`` spawns ``/bin/sh``) plus two round trips before
(sync, ping) and polls after. Through the channel, the shell is already there: it was started in the template's
source just before its capture, blocked reading the port, so it is part of the template's memory. The host writes
the script into the socket the moment the new VM continues, and reads the output and exit status back from the same
socket. Nothing is spawned, nothing is polled.

The channel is one-shot by default: the script ends the shell (``exit``). With ``keep=True`` the shell prints the
status and goes on reading the next script (what a pool member waiting to be handed out needs).

Protocol: the host sends ``set --`` with the script's positional parameters (single-quoted), an EXIT trap, and the
script in a ``{ ...; } </dev/null`` group (the whole group is parsed before it runs, and nothing it runs can read
the rest of the input); the guest answers with whatever the script writes (stdout and stderr together) and a last
line ``corral-channel-exit N``. QEMU's chardev socket server takes one client at a time; the daemon holds it only
for the one exchange.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from pathlib import Path

from corral.errors import GuestAgentError, GuestAgentTimeout

#: The virtio-serial port's name (the guest finds its device through /sys/class/virtio-ports/*/name).
PORT_NAME = "org.corral.channel.0"
#: The QEMU chardev id of the port's host side (``query-chardev`` reports whether the guest has the port open).
CHARDEV_ID = "chan0"

#: Run in the guest (through the agent's guest-exec, which returns once it is running): find the port, then become a
#: shell that reads commands from it and writes everything back to it.
LISTEN_SCRIPT = r"""
for p in /sys/class/virtio-ports/*; do
    read -r n < "$p/name" 2>/dev/null || continue
    if [ "$n" = org.corral.channel.0 ]; then
        cd /
        exec sh -s <>"/dev/${p##*/}" >&0 2>&0
    fi
done
echo "no virtio port named org.corral.channel.0" >&2
exit 3
"""

_EXIT_RE = re.compile(rb"(?:^|\n)corral-channel-exit (\d+)\n")
#: The marker's line, printed by the EXIT trap (or after the script, with keep).
_MARKER = r'printf "\ncorral-channel-exit %s\n" "$st"'


def quote(arg: str) -> str:
    """A POSIX shell single-quoted word."""
    return "'" + arg.replace("'", "'\\''") + "'"


def payload(script: str, args: list[str], *, keep: bool = False) -> bytes:
    """What the host writes into the channel to run ``script`` with ``args`` as its positional parameters."""
    set_args = "set -- " + " ".join(quote(a) for a in args) if args else "set --"
    if keep:  # the shell goes on reading: an `exit` in the script still ends it (and reports its status)
        return (f"{set_args}\ntrap 'st=$?; {_MARKER}' EXIT\n{{\n{script}\n}} </dev/null\nst=$?\ntrap - EXIT\n"
                f"{_MARKER}\n").encode()
    return f"{set_args}\ntrap 'st=$?; {_MARKER}' EXIT\n{{\n{script}\n}} </dev/null\nexit\n".encode()


def parse_output(data: bytes) -> tuple[int, bytes] | None:
    """(exit status, output before the marker) once ``data`` holds the marker line, else None."""
    m = _EXIT_RE.search(data)
    if m is None:
        return None
    return int(m.group(1)), data[: m.start()]


class GuestChannel:
    """One connection to a VM's channel socket.

    A guest reading the port sees end-of-file whenever no host client is connected (virtio_console), and a QEMU
    loading a saved state tells the guest "host disconnected" if nobody is connected at that moment: so the
    connection is made before the listener starts (in the source), and before the state is loaded (in the builder
    and in every VM from the template), and held until the script ran.
    """

    def __init__(self, socket_path: Path, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.socket_path = socket_path
        self._reader = reader
        self._writer = writer

    @classmethod
    async def connect(cls, socket_path: Path, timeout: float = 10.0) -> GuestChannel:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(socket_path)), timeout)
        except (OSError, TimeoutError) as exc:
            raise GuestAgentError(f"cannot connect to the guest channel at {socket_path}: {exc}") from exc
        return cls(socket_path, reader, writer)

    async def run(self, script: str, args: list[str], *, keep: bool = False,
                  timeout: float = 60.0) -> tuple[int, bytes]:
        """Run ``script`` in the listening shell: (exit status, output: stdout and stderr together).

        Raises GuestAgentTimeout if no status came back within ``timeout`` seconds (no shell is listening in the
        guest, or the script hangs), GuestAgentError if the socket closes or breaks.
        """
        data = b""
        try:
            self._writer.write(payload(script, args, keep=keep))
            await self._writer.drain()
            async with asyncio.timeout(timeout):
                while (result := parse_output(data)) is None:
                    chunk = await self._reader.read(65536)
                    if not chunk:
                        raise GuestAgentError(f"the guest channel at {self.socket_path} closed before the script "
                                              "ended")
                    data += chunk
            return result
        except TimeoutError as exc:
            raise GuestAgentTimeout(f"no answer on the guest channel within {timeout:g}s (is a shell listening in "
                                    f"the guest?); it said: {data[-200:].decode(errors='replace')!r}") from exc
        except OSError as exc:
            raise GuestAgentError(f"the guest channel at {self.socket_path} broke: {exc}") from exc

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()

    async def end_listener(self, timeout: float = 10.0) -> None:
        """End the listening shell (its `exit` reports status 0), then the connection."""
        try:
            await self.run("exit 0", [], timeout=timeout)
        finally:
            await self.close()
