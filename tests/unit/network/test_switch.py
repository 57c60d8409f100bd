"""The switch's forwarding decisions (pure) and one real switch process on loopback unix sockets."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

from corral.engine import process
from corral.network import switch
from corral.network.switch import SwitchCore

A = bytes.fromhex("525400000001")
B = bytes.fromhex("525400000002")
C = bytes.fromhex("525400000003")
BCAST = b"\xff" * 6
MCAST = bytes.fromhex("01005e000001")


def frame(dst: bytes, src: bytes, payload: bytes = b"x" * 50) -> bytes:
    return dst + src + b"\x08\x00" + payload


def test_unknown_and_broadcast_flood_to_members_but_not_back() -> None:
    core = SwitchCore(static_members={"/a", "/b", "/c"})
    assert core.route(frame(BCAST, A), "/a") == ["/b", "/c"]
    assert core.route(frame(MCAST, A), "/a") == ["/b", "/c"]
    assert core.route(frame(B, A), "/a") == ["/b", "/c"]  # B not learned yet


def test_learned_unicast_goes_to_one_port() -> None:
    core = SwitchCore(static_members={"/a", "/b", "/c"})
    core.route(frame(BCAST, B), "/b")
    assert core.route(frame(B, A), "/a") == ["/b"]
    assert core.route(frame(A, B), "/b") == ["/a"]
    assert core.route(frame(A, A), "/a") == []  # never back to its sender


def test_senders_become_members_and_mac_moves() -> None:
    core = SwitchCore()
    core.route(frame(BCAST, A), "/a")
    assert core.route(frame(BCAST, B), "/b") == ["/a"]
    core.route(frame(BCAST, A), "/a2")  # A moved to another socket
    assert core.route(frame(A, B), "/b") == ["/a2"]


def test_members_file_change_forgets_removed_sockets() -> None:
    core = SwitchCore(static_members={"/a", "/b"})
    core.route(frame(BCAST, B), "/b")
    core.set_members({"/a"})
    core.forget({"/b"})
    assert core.route(frame(B, A), "/a") == []
    assert "/b" not in core.members


def test_runt_and_group_source_are_not_learned() -> None:
    core = SwitchCore(static_members={"/a", "/b"})
    assert core.route(b"short", "/a") == []
    core.route(frame(BCAST, MCAST), "/a")
    assert MCAST not in core.table


def test_real_switch_forwards_between_unix_sockets(tmp_path: Path) -> None:
    sock, members, pidfile = tmp_path / "s.sock", tmp_path / "members", tmp_path / "s.pid"
    ends = {}
    for n in ("a", "b", "c"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind(str(tmp_path / f"{n}.sock"))
        s.settimeout(5)
        ends[n] = s
    switch.write_members(members, [str(tmp_path / f"{n}.sock") for n in ends])
    pid = switch.start(sock, members, pidfile, tmp_path / "log")
    try:
        assert switch.running(sock, pidfile) is not None
        ends["a"].sendto(frame(BCAST, A), str(sock))
        assert ends["b"].recv(2000) == frame(BCAST, A)
        assert ends["c"].recv(2000) == frame(BCAST, A)
        ends["b"].sendto(frame(A, B), str(sock))  # A was learned: only a gets it
        assert ends["a"].recv(2000) == frame(A, B)
        ends["c"].settimeout(0.3)
        try:
            got = ends["c"].recv(2000)
        except TimeoutError:
            got = None
        assert got is None
        switch.stop(sock, pidfile)
        assert not process.is_alive(pid)
        assert not sock.exists()
    finally:
        if process.is_alive(pid):
            os.kill(pid, signal.SIGKILL)
        for s in ends.values():
            s.close()


def test_switch_exits_when_its_socket_is_removed(tmp_path: Path) -> None:
    sock, pidfile = tmp_path / "s.sock", tmp_path / "s.pid"
    pid = switch.start(sock, tmp_path / "members", pidfile, tmp_path / "log")
    try:
        sock.unlink()
        import time

        deadline = time.monotonic() + 5
        while process.is_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not process.is_alive(pid)
    finally:
        if process.is_alive(pid):
            os.kill(pid, signal.SIGKILL)
