"""The egress sink of a sandbox's ``egress-log`` network: it records every connection attempt and lets nothing out.

A small detached process, like the private network's switch (:mod:`corral.network.switch`) and managed the same way
(own session, no inherited descriptors, pid and start time in a pidfile, exits on SIGTERM or when its socket file is
removed). It is one more member of the sandbox's private network: one unix datagram socket that sends to and
receives from the network's switch. It plays the guest's gateway and DNS server and the whole rest of the world:

- ARP: it answers every request for an address other than the asker's own, with its own MAC, so whatever the guest
  tries to reach (its gateway, 10.0.2.2, the host's own address) is "on the wire", and the packet comes here;
- DNS (UDP port 53, to any address): the question is recorded and answered NXDOMAIN;
- TCP: a SYN is recorded (address and port) and refused with a RST (the guest sees "connection refused" at once);
  every other segment is refused too, unrecorded;
- other UDP datagrams and ICMP: recorded, dropped.

Nothing is ever forwarded: the sink has no other socket. Records are JSON lines in its log, at most
:data:`MAX_RECORDS` (then only counted). The decisions (:class:`SinkCore`) are pure and unit-tested
(tests/unit/sandbox/test_sink.py); the loop around them is a select loop.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import select
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.detach import DatagramService, start_and_wait
from corral.network import switch
from corral.sandbox import packets as pk

MAX_RECORDS = 5000
ANNOUNCE_EVERY = 5.0  # seconds between gratuitous ARPs (the switch learns the sink's socket from them)


def attempt(ip: pk.IPv4) -> list[dict[str, Any]]:
    """What one IPv4 packet the guest sent tried (at most one record): a TCP SYN (address and port), a DNS question
    (UDP 53, to any address: the name and type), another UDP datagram, ICMP, another protocol. Pure: the sink's
    records and those read from a pcap (:mod:`corral.sandbox.pcap`) are the same."""
    src, dst = pk.ip_text(ip.src), pk.ip_text(ip.dst)
    if ip.proto == pk.PROTO_TCP:
        seg = pk.parse_tcp(ip.payload)
        if seg is None or seg.flags & pk.TCP_RST or not seg.flags & pk.TCP_SYN or seg.flags & pk.TCP_ACK:
            return []
        return [{"proto": "tcp", "src": src, "dst": dst, "port": seg.dport}]
    if ip.proto == pk.PROTO_UDP:
        dgram = pk.parse_udp(ip.payload)
        if dgram is None:
            return []
        if dgram.dport != pk.DNS_PORT:
            return [{"proto": "udp", "src": src, "dst": dst, "port": dgram.dport, "bytes": len(dgram.payload)}]
        try:
            q = pk.parse_dns_query(dgram.payload)
        except pk.Malformed as exc:
            return [{"proto": "dns", "src": src, "dst": dst, "port": 53, "error": str(exc)}]
        return [{"proto": "dns", "src": src, "dst": dst, "port": 53, "name": q.name,
                 "type": pk.QTYPES.get(q.qtype, str(q.qtype))}]
    if ip.proto == pk.PROTO_ICMP:
        return [{"proto": "icmp", "src": src, "dst": dst, "icmp_type": ip.payload[0] if ip.payload else -1}]
    return [{"proto": f"ip-{ip.proto}", "src": src, "dst": dst}]


@dataclass
class SinkCore:
    """What the sink does with one frame: the records it makes and the frames it answers with."""

    mac: bytes
    gateway: bytes  # the address the guest is given as its gateway and DNS server
    records: int = 0
    dropped: int = 0

    def handle(self, frame: bytes) -> tuple[list[dict[str, Any]], list[bytes]]:
        eth = pk.parse_ether(frame)
        if eth is None or eth.src == self.mac:
            return [], []
        if eth.type == pk.ETH_ARP:
            return [], self._arp(eth)
        if eth.type != pk.ETH_IPV4:
            return [], []  # IPv6 and the rest: the guest has no IPv6 route; nothing answers
        ip = pk.parse_ipv4(eth.payload)
        if ip is None:
            return [], []
        records = attempt(ip)
        replies: list[bytes] = []
        if ip.proto == pk.PROTO_TCP:
            seg = pk.parse_tcp(ip.payload)
            if seg is not None and not seg.flags & pk.TCP_RST:
                replies.append(pk.tcp_rst_for(ip, seg))
        elif records and records[0]["proto"] == "dns" and "name" in records[0]:
            dgram = pk.parse_udp(ip.payload)
            assert dgram is not None  # attempt() parsed it
            records[0]["answer"] = "NXDOMAIN"
            replies.append(pk.udp(ip.dst, ip.src, pk.DNS_PORT, dgram.sport,
                                  pk.dns_nxdomain(pk.parse_dns_query(dgram.payload))))
        return self._bounded(records), [pk.ether(eth.src, self.mac, pk.ETH_IPV4, r) for r in replies]

    def _arp(self, eth: pk.Ether) -> list[bytes]:
        arp = pk.parse_arp(eth.payload)
        # Not a request, a probe (sender 0.0.0.0: the guest checks its address is free) or a guest asking for its
        # own address: no answer, or it would think its address taken.
        if arp is None or arp.op != 1 or arp.sender_ip == b"\0\0\0\0" or arp.target_ip == arp.sender_ip:
            return []
        return [pk.arp_reply(arp, self.mac)]

    def announce(self) -> bytes:
        """A gratuitous ARP for the gateway address: tells the switch (and the guest) where the sink is."""
        req = pk.Arp(1, self.mac, self.gateway, b"\xff" * 6, self.gateway)
        body = (b"\x00\x01\x08\x00\x06\x04\x00\x01" + req.sender_mac + req.sender_ip + b"\0" * 6 + req.target_ip)
        return pk.ether(b"\xff" * 6, self.mac, pk.ETH_ARP, body)

    def _bounded(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        kept = []
        for r in records:
            if self.records >= MAX_RECORDS:
                self.dropped += 1
                continue
            self.records += 1
            kept.append(r)
        return kept


def read_records(log: Path, limit: int = MAX_RECORDS) -> tuple[list[dict[str, Any]], int]:
    """The sink's records (JSON lines with a ``t`` field) and how many it had to leave out; lines that are not
    records (a traceback) are skipped."""
    out: list[dict[str, Any]] = []
    dropped = 0
    try:
        lines = log.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return [], 0
    for line in lines:
        with contextlib.suppress(ValueError):
            r = json.loads(line)
            if isinstance(r, dict) and "dropped" in r:
                dropped = int(r["dropped"])
            elif isinstance(r, dict) and "proto" in r and len(out) < limit:
                out.append(r)
    return out, dropped


# --------------------------------------------------------------------------------------------- the process --
def serve(sock_path: Path, switch_path: Path, pidfile: Path, mac: str, gateway: str) -> None:
    with DatagramService(sock_path, pidfile) as service:
        sock = service.sock
        core = SinkCore(pk.mac_bytes(mac), pk.ip_bytes(gateway))
        next_announce = 0.0
        while not service.stop:
            now = time.monotonic()
            if now >= next_announce:
                next_announce = now + ANNOUNCE_EVERY
                if not service.still_ours():
                    break
                with contextlib.suppress(OSError):
                    sock.sendto(core.announce(), str(switch_path))
            try:
                readable, _, _ = select.select([sock], [], [], 1.0)
            except InterruptedError:
                continue
            if not readable:
                continue
            for _ in range(256):
                try:
                    frame = sock.recv(switch.MAX_FRAME)
                except (BlockingIOError, InterruptedError):
                    break
                records, replies = core.handle(frame)
                for r in records:
                    print(json.dumps({"t": round(time.time(), 3), **r}), flush=True)
                for reply in replies:
                    with contextlib.suppress(OSError):
                        sock.sendto(reply, str(switch_path))
        print(json.dumps({"dropped": core.dropped}), flush=True)


def start(sock_path: Path, switch_path: Path, pidfile: Path, log: Path, mac: str, gateway: str,
          timeout: float = 10.0) -> int:
    """Start a detached sink; wait until it serves. Its records go to ``log``."""
    argv = [sys.executable, "-m", "corral.sandbox.sink", "--switch", str(switch_path), "--pidfile", str(pidfile),
            "--mac", mac, "--gateway", gateway, str(sock_path)]
    return start_and_wait(argv, log, pidfile, lambda: switch.running(sock_path, pidfile),
                          f"the sandbox's sink for {sock_path}", timeout)


def stop(sock_path: Path, pidfile: Path) -> None:
    """Stop the sink (only if the pidfile's process is really it) and wait until it has written its last line."""
    switch.stop(sock_path, pidfile)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="corral-sink", description="a Corral sandbox's egress sink")
    p.add_argument("socket", type=Path)
    p.add_argument("--switch", type=Path, required=True)
    p.add_argument("--pidfile", type=Path, required=True)
    p.add_argument("--mac", required=True)
    p.add_argument("--gateway", required=True)
    args = p.parse_args(argv)
    serve(args.socket, args.switch, args.pidfile, args.mac, args.gateway)


if __name__ == "__main__":
    main()
