"""The sink's parsers and builders: what a guest sends parses to its fields, the answers are well-formed (checksums
verify), and malformed input is refused rather than crashing the sink."""

from __future__ import annotations

import struct

import pytest

from corral.sandbox import packets as pk

GUEST_MAC, SINK_MAC = pk.mac_bytes("52:54:00:12:34:56"), pk.mac_bytes("52:54:00:ab:cd:ef")
GUEST, GW = pk.ip_bytes("10.77.0.1"), pk.ip_bytes("10.77.0.254")


def dns_query(name: str, qid: int = 0x1234, qtype: int = 1) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack("!HH", qtype, 1)


def syn(dst: bytes, dport: int, seq: int = 1000) -> bytes:
    tcp = struct.pack("!HHIIHHHH", 40000, dport, seq, 0, (5 << 12) | pk.TCP_SYN, 64240, 0, 0)
    return pk.ipv4(GUEST, dst, pk.PROTO_TCP, tcp)


def test_checksum_of_a_valid_header_is_zero() -> None:
    packet = pk.ipv4(GUEST, GW, pk.PROTO_UDP, b"x" * 9)
    assert pk.checksum(packet[:20]) == 0
    ip = pk.parse_ipv4(packet)
    assert ip is not None and ip.src == GUEST and ip.dst == GW and ip.payload == b"x" * 9


def test_arp_request_and_reply() -> None:
    body = struct.pack("!HHBBH", 1, pk.ETH_IPV4, 6, 4, 1) + GUEST_MAC + GUEST + b"\0" * 6 + pk.ip_bytes("10.0.2.2")
    arp = pk.parse_arp(body)
    assert arp is not None and arp.op == 1 and arp.target_ip == pk.ip_bytes("10.0.2.2")
    frame = pk.arp_reply(arp, SINK_MAC)
    eth = pk.parse_ether(frame)
    assert eth is not None and eth.dst == GUEST_MAC and eth.src == SINK_MAC and eth.type == pk.ETH_ARP
    reply = pk.parse_arp(eth.payload)
    assert reply is not None and reply.op == 2 and reply.sender_mac == SINK_MAC
    assert reply.sender_ip == pk.ip_bytes("10.0.2.2") and reply.target_ip == GUEST
    assert pk.parse_arp(body[:27]) is None
    assert pk.parse_arp(struct.pack("!HHBBH", 6, pk.ETH_IPV4, 6, 4, 1) + body[8:]) is None  # not Ethernet


def test_tcp_rst_answers_a_syn() -> None:
    ip = pk.parse_ipv4(syn(pk.ip_bytes("192.0.2.9"), 443))
    assert ip is not None
    seg = pk.parse_tcp(ip.payload)
    assert seg is not None and seg.dport == 443 and seg.flags == pk.TCP_SYN
    rst = pk.parse_ipv4(pk.tcp_rst_for(ip, seg))
    assert rst is not None and rst.src == pk.ip_bytes("192.0.2.9") and rst.dst == GUEST
    out = pk.parse_tcp(rst.payload)
    assert out is not None and out.sport == 443 and out.dport == 40000
    assert out.flags == pk.TCP_RST | pk.TCP_ACK and out.ack == 1001  # acknowledges the SYN
    pseudo = rst.src + rst.dst + struct.pack("!BBH", 0, pk.PROTO_TCP, len(rst.payload))
    assert pk.checksum(pseudo + rst.payload) == 0


def test_dns_question_and_nxdomain() -> None:
    q = pk.parse_dns_query(dns_query("evil.example.com", qtype=28))
    assert (q.id, q.name, q.qtype, pk.QTYPES[q.qtype]) == (0x1234, "evil.example.com", 28, "AAAA")
    answer = pk.dns_nxdomain(q)
    qid, flags, qd, an = struct.unpack("!HHHH", answer[:8])
    assert qid == 0x1234 and flags & 0x8000 and flags & 0xF == 3 and (qd, an) == (1, 0)
    assert answer[12:] == q.question
    packet = pk.parse_ipv4(pk.udp(GW, GUEST, 53, 5353, answer))
    assert packet is not None
    d = pk.parse_udp(packet.payload)
    assert d is not None and (d.sport, d.dport, d.payload) == (53, 5353, answer)
    pseudo = packet.src + packet.dst + struct.pack("!BBH", 0, pk.PROTO_UDP, len(packet.payload))
    assert pk.checksum(pseudo + packet.payload) == 0


@pytest.mark.parametrize("msg", [
    b"\x12",  # shorter than a header
    struct.pack("!HHHHHH", 1, 0x8180, 1, 0, 0, 0) + b"\0\0\1\0\1",  # a response, not a query
    struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\x05abc",  # label runs past the end
    struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c\0\1\0\1",  # compression pointer in a question
    struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + (b"\x3f" + b"a" * 63) * 5 + b"\0\0\1\0\1",  # name > 255
    struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\x01a\0\0",  # question cut short
])
def test_malformed_dns_is_refused(msg: bytes) -> None:
    with pytest.raises(pk.Malformed):
        pk.parse_dns_query(msg)


def test_short_or_bogus_headers_parse_to_none() -> None:
    assert pk.parse_ether(b"\0" * 13) is None
    assert pk.parse_ipv4(b"\x45" + b"\0" * 10) is None
    assert pk.parse_ipv4(b"\x65" + b"\0" * 30) is None  # version 6
    long_total = bytearray(pk.ipv4(GUEST, GW, pk.PROTO_UDP, b"abc"))
    long_total[2:4] = struct.pack("!H", 200)  # claims more than it holds
    assert pk.parse_ipv4(bytes(long_total)) is None
    fragment = bytearray(pk.ipv4(GUEST, GW, pk.PROTO_UDP, b"abc"))
    fragment[6:8] = struct.pack("!H", 0x2001)
    assert pk.parse_ipv4(bytes(fragment)) is None
    assert pk.parse_tcp(b"\0" * 19) is None
    assert pk.parse_udp(struct.pack("!HHHH", 1, 2, 50, 0)) is None  # length past the end
