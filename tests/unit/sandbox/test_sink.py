"""The sink's decisions: it answers ARP for every other address, DNS with NXDOMAIN, TCP with RST, records each
attempt (bounded), and answers nothing that would confuse the guest (its own address, probes)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from corral.sandbox import packets as pk
from corral.sandbox import sink
from tests.unit.sandbox.test_packets import GUEST, GUEST_MAC, GW, SINK_MAC, dns_query, syn


def frame(payload: bytes, etype: int = pk.ETH_IPV4, dst: bytes = SINK_MAC) -> bytes:
    return pk.ether(dst, GUEST_MAC, etype, payload)


def arp_request(sender_ip: bytes, target_ip: bytes) -> bytes:
    body = struct.pack("!HHBBH", 1, pk.ETH_IPV4, 6, 4, 1) + GUEST_MAC + sender_ip + b"\0" * 6 + target_ip
    return frame(body, pk.ETH_ARP, b"\xff" * 6)


def core() -> sink.SinkCore:
    return sink.SinkCore(SINK_MAC, GW)


def test_arp_is_answered_for_any_other_address() -> None:
    c = core()
    for target in ("10.77.0.254", "10.0.2.2", "192.0.2.7"):
        records, replies = c.handle(arp_request(GUEST, pk.ip_bytes(target)))
        assert records == [] and len(replies) == 1
        eth = pk.parse_ether(replies[0])
        assert eth is not None
        arp = pk.parse_arp(eth.payload)
        assert arp is not None and arp.sender_mac == SINK_MAC and arp.sender_ip == pk.ip_bytes(target)
    assert c.handle(arp_request(GUEST, GUEST)) == ([], [])  # its own address: never "taken"
    assert c.handle(arp_request(b"\0\0\0\0", pk.ip_bytes("10.77.0.1"))) == ([], [])  # a probe


def test_syn_is_recorded_and_refused() -> None:
    records, replies = core().handle(frame(syn(pk.ip_bytes("10.0.2.2"), 8080)))
    assert records == [{"proto": "tcp", "src": "10.77.0.1", "dst": "10.0.2.2", "port": 8080}]
    assert len(replies) == 1
    eth = pk.parse_ether(replies[0])
    assert eth is not None and eth.dst == GUEST_MAC
    ip = pk.parse_ipv4(eth.payload)
    assert ip is not None
    seg = pk.parse_tcp(ip.payload)
    assert seg is not None and seg.flags & pk.TCP_RST


def test_dns_is_recorded_and_answered_nxdomain() -> None:
    query = dns_query("exfil.example.org")
    records, replies = core().handle(frame(pk.udp(GUEST, GW, 40001, 53, query)))
    assert records == [{"proto": "dns", "src": "10.77.0.1", "dst": "10.77.0.254", "port": 53,
                        "name": "exfil.example.org", "type": "A", "answer": "NXDOMAIN"}]
    eth = pk.parse_ether(replies[0])
    assert eth is not None
    ip = pk.parse_ipv4(eth.payload)
    assert ip is not None and ip.src == GW
    d = pk.parse_udp(ip.payload)
    assert d is not None and d.dport == 40001 and d.payload[3] & 0xF == 3
    bad, no_reply = core().handle(frame(pk.udp(GUEST, GW, 40001, 53, b"\x01")))
    assert bad[0]["proto"] == "dns" and "error" in bad[0] and no_reply == []


def test_other_traffic_is_recorded_and_dropped() -> None:
    c = core()
    records, replies = c.handle(frame(pk.udp(GUEST, pk.ip_bytes("8.8.4.4"), 5000, 123, b"ntp")))
    assert records == [{"proto": "udp", "src": "10.77.0.1", "dst": "8.8.4.4", "port": 123, "bytes": 3}]
    assert replies == []
    records, replies = c.handle(frame(pk.ipv4(GUEST, pk.ip_bytes("10.0.2.2"), pk.PROTO_ICMP, b"\x08\0\0\0")))
    assert records[0]["proto"] == "icmp" and records[0]["icmp_type"] == 8 and replies == []
    assert c.handle(frame(b"\x60" + b"\0" * 60, pk.ETH_IPV6)) == ([], [])
    assert c.handle(frame(b"garbage")) == ([], [])
    assert c.handle(pk.ether(SINK_MAC, SINK_MAC, pk.ETH_IPV4, syn(GW, 1))) == ([], [])  # its own frames


def test_records_are_bounded() -> None:
    c = sink.SinkCore(SINK_MAC, GW)
    c.records = sink.MAX_RECORDS - 1
    assert len(c.handle(frame(syn(GW, 1)))[0]) == 1
    records, replies = c.handle(frame(syn(GW, 2)))
    assert records == [] and len(replies) == 1 and c.dropped == 1  # still refused, no longer recorded


def test_read_records_skips_what_is_not_a_record(tmp_path: Path) -> None:
    log = tmp_path / "sink.log"
    log.write_text(json.dumps({"t": 1.0, "proto": "tcp", "src": "a", "dst": "b", "port": 1}) + "\n"
                   "Traceback (most recent call last):\n" + json.dumps({"dropped": 7}) + "\n")
    records, dropped = sink.read_records(log)
    assert [r["port"] for r in records] == [1] and dropped == 7
    assert sink.read_records(tmp_path / "none") == ([], 0)


def test_announce_is_a_gratuitous_arp() -> None:
    eth = pk.parse_ether(core().announce())
    assert eth is not None and eth.dst == b"\xff" * 6
    arp = pk.parse_arp(eth.payload)
    assert arp is not None and arp.sender_ip == arp.target_ip == GW and arp.sender_mac == SINK_MAC
