"""Holding a suspended VM's forwarded TCP ports: a connection that arrives while it sleeps wakes it.

While a VM suspended by idle control has no QEMU, nothing listens on its forwarded host ports. The daemon binds
each TCP forward's host address and port itself (an asyncio server). For each connection it accepts:

1. it asks the service to wake the VM (one resume, however many connections arrive). The service closes these
   listeners just before it starts QEMU, which needs the ports back; connections already accepted stay open
   (their sockets are separate from the listener, and carry SO_REUSEADDR as QEMU's listener does);
2. meanwhile it keeps what the client sends (up to 1 MiB; then the client waits, as on a slow server);
3. it connects to the forward (now QEMU's) and replays those bytes, retrying until the guest's service answers:
   QEMU's user-mode network accepts on the host at once and closes the connection when the guest refuses it, so
   a connection closed before any answer is tried again; one that answers, or stays open for ``SETTLE`` seconds,
   is the one;
4. then it relays bytes both ways until both sides are done.

UDP forwards are not held: a datagram that arrives while the VM sleeps is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable

from corral.vm.spec import PortForward

log = logging.getLogger(__name__)

PENDING_LIMIT = 1 << 20  # bytes of a client's kept while the VM wakes
SETTLE = 2.0  # seconds a new upstream connection must stay open (without answering) to count as accepted
CONNECT_DEADLINE = 180.0  # seconds from waking to giving up on the guest's service
CHUNK = 65536

Waker = Callable[[], Awaitable[None]]


def target(f: PortForward) -> tuple[str, int]:
    """Where to reach a forward on the host: its address (loopback for a wildcard one) and port."""
    return ("127.0.0.1" if f.host_addr in ("0.0.0.0", "") else f.host_addr), f.host_port


class PortHolder:
    """Listeners on the TCP forwards of one suspended VM. ``wake`` resumes the VM; it must close these listeners
    (:meth:`release`) before QEMU starts, and raise if the VM cannot be woken."""

    def __init__(self, vm: str, forwards: list[PortForward], wake: Waker) -> None:
        self.vm = vm
        self.forwards = [f for f in forwards if f.proto == "tcp"]
        self.wake = wake
        self._servers: list[asyncio.Server] = []
        self._conns: set[asyncio.Task[None]] = set()
        self.problems: list[str] = []

    @property
    def listening(self) -> bool:
        return bool(self._servers)

    @property
    def busy(self) -> bool:
        """Connections accepted and still waiting or relayed."""
        return bool(self._conns)

    async def hold(self) -> list[str]:
        """Bind every TCP forward; the ones that could not be bound are returned (and in ``problems``)."""
        self.problems = []
        for f in self.forwards:
            try:
                server = await asyncio.start_server(functools.partial(self._accepted, forward=f), f.host_addr,
                                                    f.host_port, reuse_address=True)
            except OSError as exc:
                self.problems.append(f"{f.host_addr}:{f.host_port}: {exc.strerror or exc}")
                continue
            self._servers.append(server)
        return self.problems

    def release(self) -> None:
        """Stop listening (QEMU is about to bind these ports); accepted connections carry on."""
        for s in self._servers:
            s.close()
        self._servers.clear()

    async def close(self) -> None:
        """Stop listening and drop every connection, relayed or waiting (the VM was deleted, or the daemon ends)."""
        self.release()
        for t in list(self._conns):
            t.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)

    def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, forward: PortForward) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer, forward),
                                                       name=f"hold-{self.vm}-{forward.host_port}")
        self._conns.add(task)
        task.add_done_callback(self._conns.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, f: PortForward) -> None:
        pending = bytearray()
        client_eof = asyncio.Event()

        async def collect() -> None:  # cancelling StreamReader.read loses nothing: unread data stays buffered
            while len(pending) < PENDING_LIMIT:
                data = await reader.read(CHUNK)
                if not data:
                    client_eof.set()
                    return
                pending.extend(data)

        collector = asyncio.create_task(collect())
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            await self.wake()
            ureader, uwriter, sent, answer = await self._connect(f, pending)
            upstream = (ureader, uwriter)
            collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await collector
            if len(pending) > sent:  # what the client sent after the replay
                uwriter.write(bytes(pending[sent:]))
            writer.write(answer)
            await _relay(reader, writer, ureader, uwriter, client_eof.is_set())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - one connection's failure is logged, never raised
            log.warning("%s: a connection held on port %s could not be relayed: %s", self.vm, f.host_port, exc)
        finally:
            collector.cancel()
            writer.close()
            if upstream is not None:
                upstream[1].close()

    async def _connect(self, f: PortForward, pending: bytearray
                       ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int, bytes]:
        """A connection to the forward that the guest's service accepted, with ``pending`` replayed on it; how
        many bytes of ``pending`` were sent; and the service's first answer (b"" if it did not speak yet)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CONNECT_DEADLINE
        host, port = target(f)
        delay = 0.2
        last = "no attempt"
        while loop.time() < deadline:
            try:
                ureader, uwriter = await asyncio.open_connection(host, port)
            except OSError as exc:
                last = str(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            sent = len(pending)
            uwriter.write(bytes(pending[:sent]))
            try:
                answer = await asyncio.wait_for(ureader.read(CHUNK), SETTLE)
            except TimeoutError:
                return ureader, uwriter, sent, b""  # open and quiet: the service took it and waits for more
            except OSError as exc:
                answer, last = b"", str(exc)
            if answer:
                return ureader, uwriter, sent, answer
            uwriter.close()  # closed before answering: the guest refused it (not listening yet)
            last = "closed by the guest before any answer"
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        raise TimeoutError(f"the guest's service on port {f.guest_port} did not answer within "
                           f"{CONNECT_DEADLINE:.0f}s ({last})")


async def _relay(creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter, ureader: asyncio.StreamReader,
                 uwriter: asyncio.StreamWriter, client_done: bool) -> None:
    """Copy bytes both ways; each direction half-closes the other side when its source ends."""

    async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(CHUNK):
                dst.write(data)
                await dst.drain()
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                if dst.can_write_eof():
                    dst.write_eof()

    tasks = [asyncio.create_task(copy(ureader, cwriter))]
    if client_done:
        with contextlib.suppress(OSError):
            uwriter.write_eof()
    else:
        tasks.append(asyncio.create_task(copy(creader, uwriter)))
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
