"""The port holder on real loopback sockets: a connection that arrives while the "VM" sleeps wakes it once, is
held while the port changes hands, and is relayed to the service once it answers (replaying what the client sent,
through connections the guest closed before answering)."""

from __future__ import annotations

import asyncio

import pytest

from corral.idle import holder as holder_mod
from corral.idle.holder import PortHolder
from corral.network.ports import free_port
from corral.vm.spec import PortForward


async def _scenario(server_first: bool) -> tuple[list[bytes], int, int]:
    port = free_port()
    forward = PortForward(host_port=port, guest_port=80)
    wakes = 0
    refused = 0
    upstream: list[asyncio.Server] = []

    async def service(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal refused
        if refused < 2:  # as QEMU's NAT does while the guest refuses: accept, then close at once
            refused += 1
            writer.close()
            return
        if server_first:
            writer.write(b"banner\n")
            await writer.drain()
        data = await reader.read(100)
        writer.write(b"reply:" + data)
        await writer.drain()
        writer.close()

    async def resume() -> None:
        nonlocal wakes
        wakes += 1
        await asyncio.sleep(0.3)
        h.release()  # what before_start does; the accepted connections stay open
        upstream.append(await asyncio.start_server(service, "127.0.0.1", port, reuse_address=True))

    resuming: list[asyncio.Task[None]] = []

    async def wake() -> None:  # as IdleService.wake: one resume, however many connections wait for it
        if not resuming:
            resuming.append(asyncio.create_task(resume()))
        await asyncio.shield(resuming[0])

    h = PortHolder("vm", [forward, PortForward(host_port=port, guest_port=53, proto="udp")], wake)
    assert [f.proto for f in h.forwards] == ["tcp"]
    assert await h.hold() == [] and h.listening

    async def client(msg: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if server_first:
            got = await reader.readline()
            writer.write(msg)
            got += await reader.read()
        else:
            writer.write(msg)
            got = await reader.read()
        writer.close()
        return got

    try:
        answers = await asyncio.wait_for(asyncio.gather(client(b"one"), client(b"two")), 30)
    finally:
        await h.close()
        for s in upstream:
            s.close()
    return list(answers), wakes, refused


def test_held_connections_wake_once_and_get_their_answers() -> None:
    answers, wakes, refused = asyncio.run(_scenario(server_first=False))
    assert answers == [b"reply:one", b"reply:two"]
    assert wakes == 1 and refused == 2


def test_a_service_that_speaks_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(holder_mod, "SETTLE", 0.5)
    answers, _, _ = asyncio.run(_scenario(server_first=True))
    assert answers == [b"banner\nreply:one", b"banner\nreply:two"]


def test_a_port_taken_is_reported() -> None:
    async def main() -> list[str]:
        port = free_port()
        taken = await asyncio.start_server(lambda r, w: None, "127.0.0.1", port, reuse_address=False)
        try:
            h = PortHolder("vm", [PortForward(host_port=port, guest_port=80)], lambda: asyncio.sleep(0))
            problems = await h.hold()
            assert not h.listening
            return problems
        finally:
            taken.close()

    (problem,) = asyncio.run(main())
    assert problem.startswith("127.0.0.1:") and "in use" in problem
