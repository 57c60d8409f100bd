"""The registry against a real etcd (Debian's etcd-server, started here on loopback): the secret is made once, a
lease keeps a host alive and its expiry shows it down, two placements racing for one host's revision cannot both
win, a name is placed once, a move is the commit point of a migration, and a dead etcd is one clear error."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.cluster import etcd_server
from corral.cluster.models import HostRecord, HostState, VMPlacement
from corral.cluster.registry import EtcdUnavailable, Registry
from corral.errors import Conflict


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def etcd() -> Iterator[str]:
    d = Path(tempfile.mkdtemp(prefix="etcd-", dir="/tmp"))
    cport, pport = _free_port(), _free_port()
    c, p = f"http://127.0.0.1:{cport}", f"http://127.0.0.1:{pport}"
    proc = subprocess.Popen([etcd_server.binary(), "--name", "t", "--data-dir", str(d / "data"),
                             "--listen-client-urls", c, "--advertise-client-urls", c, "--listen-peer-urls", p,
                             "--initial-advertise-peer-urls", p, "--initial-cluster", f"t={p}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not etcd_server.answers("127.0.0.1", cport) and time.monotonic() < deadline:
            time.sleep(0.05)
        yield c
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(d, ignore_errors=True)


def host(name: str) -> HostRecord:
    return HostRecord(name=name, address=f"https://10.0.0.1:{8443}", cpus=2, memory_mib=4096)


def test_registry_on_a_real_etcd(etcd: str) -> None:
    async def run() -> None:
        a, b = Registry(etcd), Registry(etcd)
        try:
            s1, s2 = await asyncio.gather(a.ensure_secret(), b.ensure_secret())
            assert s1 == s2 and len(s1) > 20, "two first hosts agree on one secret"
            await a.publish_host(host("h1"))
            lease = await a.lease(2)
            await a.mark_alive("h1", lease)
            snap = await b.snapshot()
            assert snap.host_state("h1") == HostState.READY and snap.secret == s1
            await b.set_draining("h1", True)
            assert (await a.snapshot()).host_state("h1") == HostState.DRAINING
            await b.set_draining("h1", False)

            # two placements on h1 from the same snapshot: one wins, the other must read again
            rev = (await a.snapshot()).hostrev.get("h1", 0)
            p1 = VMPlacement(name="x", host="h1", vcpus=1, memory_mib=256)
            p2 = VMPlacement(name="y", host="h1", vcpus=1, memory_mib=256)
            won = await asyncio.gather(a.reserve(p1, rev), b.reserve(p2, rev))
            assert sorted(won) == [False, True]
            w = p1 if won[0] else p2
            with pytest.raises(Conflict):
                await a.reserve(w, (await a.snapshot()).hostrev["h1"])  # a name is placed once
            # a move happens only from the host that holds it
            moved = w.model_copy(update={"host": "h2"})
            assert not await a.move(w.name, "h9", moved)
            assert await a.move(w.name, "h1", moved)
            await a.release(w.name, "h1")  # not h1's any more: left alone
            assert (await b.placement(w.name)) == moved
            await a.release(w.name, "h2")
            assert await b.placement(w.name) is None

            # the lease not renewed: the host is seen down, its record kept
            await asyncio.sleep(3.5)
            snap = await a.snapshot()
            assert snap.host_state("h1") == HostState.DOWN and "h1" in snap.hosts
        finally:
            await a.close()
            await b.close()

    asyncio.run(run())


def test_a_dead_etcd_is_one_clear_error() -> None:
    async def run() -> None:
        r = Registry(f"http://127.0.0.1:{_free_port()}", timeout=2)
        try:
            with pytest.raises(EtcdUnavailable, match="does not answer"):
                await r.snapshot()
        finally:
            await r.close()

    asyncio.run(run())


def test_a_bad_endpoint_is_refused() -> None:
    from corral.cluster.registry import parse_endpoint
    from corral.errors import InvalidInput

    assert parse_endpoint("10.0.0.1:2379") == ("10.0.0.1", 2379)
    assert parse_endpoint("http://h:1234") == ("h", 1234)
    for bad in ("ftp://x", "http://:12", "http://h:port"):
        with pytest.raises(InvalidInput):
            parse_endpoint(bad)


@pytest.fixture
def etcd3() -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    """A three-member etcd on loopback: the client URLs, comma-separated, and the members' processes."""
    d = Path(tempfile.mkdtemp(prefix="etcd3-", dir="/tmp"))
    ports = [(_free_port(), _free_port()) for _ in range(3)]
    initial = ",".join(f"m{i}=http://127.0.0.1:{p}" for i, (_, p) in enumerate(ports))
    procs = []
    try:
        for i, (cport, pport) in enumerate(ports):
            c, p = f"http://127.0.0.1:{cport}", f"http://127.0.0.1:{pport}"
            procs.append(subprocess.Popen(
                [etcd_server.binary(), "--name", f"m{i}", "--data-dir", str(d / f"m{i}"), "--listen-client-urls", c,
                 "--advertise-client-urls", c, "--listen-peer-urls", p, "--initial-advertise-peer-urls", p,
                 "--initial-cluster", initial, "--initial-cluster-state", "new"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 30
        while not all(etcd_server.answers("127.0.0.1", c) for c, _ in ports) and time.monotonic() < deadline:
            time.sleep(0.05)
        yield ",".join(f"http://127.0.0.1:{c}" for c, _ in ports), procs
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        shutil.rmtree(d, ignore_errors=True)


def test_a_three_member_etcd_keeps_serving_with_one_member_down(
        etcd3: tuple[str, list[subprocess.Popen[bytes]]]) -> None:
    urls, procs = etcd3

    async def run() -> None:
        r = Registry(urls, timeout=2)
        try:
            secret = await r.ensure_secret()
            await r.publish_host(host("h1"))
            procs[0].kill()  # the member the registry talks to
            procs[0].wait()
            for _ in range(100):  # the next member answers once the others elected a leader (when it was m0)
                try:
                    snap = await r.snapshot()
                    break
                except EtcdUnavailable:
                    await asyncio.sleep(0.2)
            assert snap.secret == secret and "h1" in snap.hosts
            await r.publish_host(host("h2"))  # two of three: still a quorum for writes
            assert "h2" in (await r.snapshot()).hosts
        finally:
            await r.close()

    asyncio.run(run())
