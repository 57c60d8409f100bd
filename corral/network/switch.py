"""The L2 switch of one private network: a small detached process, one unix datagram socket, no root.

Each VM NIC on the network is a QEMU ``-netdev dgram`` between the VM's own unix datagram socket and the switch's
(``$CORRAL_HOME/networks/<name>/switch.sock``): one Ethernet frame per datagram. The switch learns which socket
each source MAC sends from, forwards unicast frames to the socket of their destination, and floods broadcast,
multicast and unknown destinations to every member. Members are every sender seen, plus the sockets listed in the
members file the daemon writes (one path a line), so that frames reach a VM before it has sent anything.

It runs like QEMU does: its own session, no descriptor of the daemon's, its pid and start time in ``switch.pid``
(checked with the command line before it is ever signalled), and it outlives the daemon. It exits on SIGTERM, and
by itself when its socket file is removed or replaced (its network, or the whole Corral home, was deleted).

The forwarding decisions (:class:`SwitchCore`) are pure and unit-tested; the loop around them is a select loop.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from corral.detach import DatagramService, start_and_wait
from corral.engine import process

MAX_FRAME = 65536
LEARN_MAX = 4096  # learned MACs kept at most (a flood of spoofed sources cannot grow memory without bound)


def _is_group(mac: bytes) -> bool:
    """Broadcast and multicast destinations have the group bit (lowest bit of the first octet) set."""
    return bool(mac[0] & 1)


@dataclass
class SwitchCore:
    """MAC learning and forwarding: which member sockets a frame from ``sender`` goes to."""

    static_members: set[str] = field(default_factory=set)
    seen: set[str] = field(default_factory=set)
    table: dict[bytes, str] = field(default_factory=dict)

    @property
    def members(self) -> set[str]:
        return self.static_members | self.seen

    def set_members(self, paths: set[str]) -> None:
        """The daemon's members file changed: forget what we learned about sockets no longer listed."""
        gone = self.static_members - paths
        self.static_members = set(paths)
        if gone:
            self.forget(gone)

    def forget(self, paths: set[str]) -> None:
        self.seen -= paths
        self.table = {mac: p for mac, p in self.table.items() if p not in paths}

    def route(self, frame: bytes, sender: str) -> list[str]:
        """Learn the frame's source, then return the sockets it must be sent to (never back to its sender)."""
        if len(frame) < 14:  # not an Ethernet frame
            return []
        dst, src = frame[0:6], frame[6:12]
        if sender:
            self.seen.add(sender)
            if not _is_group(src):
                if src not in self.table and len(self.table) >= LEARN_MAX:
                    self.table.pop(next(iter(self.table)))
                self.table[src] = sender
        if not _is_group(dst):
            target = self.table.get(dst)
            if target is not None:
                return [] if target == sender else [target]
        return sorted(p for p in self.members if p != sender)


def read_members(path: Path) -> set[str]:
    try:
        return {line.strip() for line in path.read_text().splitlines() if line.strip()}
    except FileNotFoundError:
        return set()


def write_members(path: Path, members: list[str]) -> None:
    """Atomically replace the members file (the switch re-reads it when its mtime changes)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{m}\n" for m in sorted(set(members))))
    tmp.replace(path)


# --------------------------------------------------------------------------------------------- the process --
def serve(sock_path: Path, members_file: Path, pidfile: Path) -> None:
    with DatagramService(sock_path, pidfile) as service:
        sock = service.sock
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        core = SwitchCore()
        members_mtime = -1.0
        next_check = 0.0
        while not service.stop:
            now = time.monotonic()
            if now >= next_check:
                next_check = now + 1.0
                if not service.still_ours():
                    break  # removed (the network or the whole home was deleted), or another switch owns the name
                try:
                    mtime = members_file.stat().st_mtime
                except FileNotFoundError:
                    mtime = 0.0
                if mtime != members_mtime:
                    members_mtime = mtime
                    core.set_members(read_members(members_file))
            try:
                readable, _, _ = select.select([sock], [], [], 1.0)
            except InterruptedError:
                continue
            if not readable:
                continue
            for _ in range(256):  # drain what is queued, then look at the clock again
                try:
                    frame, sender = sock.recvfrom(MAX_FRAME)
                except (BlockingIOError, InterruptedError):
                    break
                dead: set[str] = set()
                for dest in core.route(frame, sender if isinstance(sender, str) else ""):
                    try:
                        sock.sendto(frame, dest)
                    except (BlockingIOError, InterruptedError):
                        pass  # the receiver is full: drop the frame, as a switch would
                    except OSError as exc:
                        if exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
                            dead.add(dest)  # that VM is not running now
                if dead:
                    core.forget(dead - core.static_members)


# ------------------------------------------------------------------------------------- managing the process --
def read_identity(pidfile: Path) -> process.ProcessIdentity | None:
    try:
        pid, ticks = pidfile.read_text().split()[:2]
        return process.ProcessIdentity(int(pid), int(ticks))
    except (FileNotFoundError, ValueError):
        return None


def running(sock_path: Path, pidfile: Path) -> process.ProcessIdentity | None:
    """The switch serving ``sock_path``, if it runs: pid, start time and command line all match."""
    ident = read_identity(pidfile)
    if ident is None or not process.matches(ident, str(sock_path)) or not sock_path.exists():
        return None
    return ident


def start(sock_path: Path, members_file: Path, pidfile: Path, log: Path, timeout: float = 10.0) -> int:
    """Start a detached switch (double fork, own session, no inherited descriptors); wait until it serves."""
    argv = [sys.executable, "-m", "corral.network.switch", "--members", str(members_file), "--pidfile",
            str(pidfile), str(sock_path)]
    return start_and_wait(argv, log, pidfile, lambda: running(sock_path, pidfile), f"the switch for {sock_path}",
                          timeout)


def stop(sock_path: Path, pidfile: Path, timeout: float = 5.0) -> None:
    """Stop the switch (only if the pidfile's process is really it), and wait until it is gone."""
    ident = running(sock_path, pidfile)
    if ident is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(ident.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while process.is_alive(ident.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    if process.matches(ident, str(sock_path)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(ident.pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="corral-switch", description="Corral's L2 switch for one private network")
    p.add_argument("socket", type=Path)
    p.add_argument("--members", type=Path, required=True)
    p.add_argument("--pidfile", type=Path, required=True)
    args = p.parse_args(argv)
    serve(args.socket, args.members, args.pidfile)


if __name__ == "__main__":
    main()
