"""Small, pure parsers and builders for the frames a sandbox's sink sees and answers: Ethernet, ARP, IPv4, TCP, UDP
and DNS questions. Only what the sink needs, each field bounds-checked: a frame from a hostile guest that is short
or malformed parses to ``None`` (or raises :class:`Malformed`), never to an exception the sink's loop does not
expect. Unit-tested in tests/unit/sandbox/test_packets.py.

Why not a library: the sink parses five headers and one DNS question; dnslib or dpkt would be a new dependency for
the daemon's packages for about 150 lines, and these are short enough to read and test whole.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

ETH_ARP = 0x0806
ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
PROTO_ICMP, PROTO_TCP, PROTO_UDP = 1, 6, 17
TCP_SYN, TCP_RST, TCP_ACK = 0x02, 0x04, 0x10
DNS_PORT = 53
MAX_NAME = 255  # RFC 1035: a name is at most 255 octets


class Malformed(ValueError):
    """A frame (or DNS message) that does not hold what its headers claim."""


def mac_text(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def mac_bytes(text: str) -> bytes:
    return bytes(int(p, 16) for p in text.split(":"))


def ip_text(b: bytes) -> str:
    return str(ipaddress.IPv4Address(b))


def ip_bytes(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


# -- Ethernet / ARP -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ether:
    dst: bytes
    src: bytes
    type: int
    payload: bytes


def parse_ether(frame: bytes) -> Ether | None:
    if len(frame) < 14:
        return None
    (etype,) = struct.unpack("!H", frame[12:14])
    return Ether(frame[0:6], frame[6:12], etype, frame[14:])


def ether(dst: bytes, src: bytes, etype: int, payload: bytes) -> bytes:
    return dst + src + struct.pack("!H", etype) + payload


@dataclass(frozen=True)
class Arp:
    op: int  # 1 request, 2 reply
    sender_mac: bytes
    sender_ip: bytes
    target_mac: bytes
    target_ip: bytes


def parse_arp(data: bytes) -> Arp | None:
    """An Ethernet/IPv4 ARP packet, else None."""
    if len(data) < 28:
        return None
    htype, ptype, hlen, plen, op = struct.unpack("!HHBBH", data[:8])
    if (htype, ptype, hlen, plen) != (1, ETH_IPV4, 6, 4):
        return None
    return Arp(op, data[8:14], data[14:18], data[18:24], data[24:28])


def arp_reply(req: Arp, mac: bytes) -> bytes:
    """The whole frame answering ``req``: ``target_ip`` is at ``mac``."""
    body = struct.pack("!HHBBH", 1, ETH_IPV4, 6, 4, 2) + mac + req.target_ip + req.sender_mac + req.sender_ip
    return ether(req.sender_mac, mac, ETH_ARP, body)


# -- IPv4 / TCP / UDP ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IPv4:
    src: bytes
    dst: bytes
    proto: int
    ttl: int
    payload: bytes


def parse_ipv4(data: bytes) -> IPv4 | None:
    if len(data) < 20 or data[0] >> 4 != 4:
        return None
    ihl = (data[0] & 0x0F) * 4
    (total,) = struct.unpack("!H", data[2:4])
    if ihl < 20 or total < ihl or len(data) < total:
        return None
    (frag,) = struct.unpack("!H", data[6:8])
    if frag & 0x1FFF:  # a later fragment: no transport header in it
        return None
    return IPv4(data[12:16], data[16:20], data[9], data[8], data[ihl:total])


def ipv4(src: bytes, dst: bytes, proto: int, payload: bytes, ttl: int = 64) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0x4000, ttl, proto, 0, src, dst)
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:] + payload


def _pseudo(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    return src + dst + struct.pack("!BBH", 0, proto, length)


@dataclass(frozen=True)
class Tcp:
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    payload_len: int


def parse_tcp(data: bytes) -> Tcp | None:
    if len(data) < 20:
        return None
    sport, dport, seq, ack, off_flags = struct.unpack("!HHIIH", data[:14])
    off = (off_flags >> 12) * 4
    if off < 20 or off > len(data):
        return None
    return Tcp(sport, dport, seq, ack, off_flags & 0x3F, len(data) - off)


def tcp_rst_for(ip: IPv4, seg: Tcp) -> bytes:
    """The IPv4 packet refusing ``seg`` (RFC 793: RST|ACK acknowledging the SYN), from its destination: the guest
    sees "connection refused" at once instead of waiting for a timeout."""
    ack = (seg.seq + seg.payload_len + (1 if seg.flags & TCP_SYN else 0)) & 0xFFFFFFFF
    hdr = struct.pack("!HHIIHHHH", seg.dport, seg.sport, 0, ack, (5 << 12) | TCP_RST | TCP_ACK, 0, 0, 0)
    csum = checksum(_pseudo(ip.dst, ip.src, PROTO_TCP, len(hdr)) + hdr)
    hdr = hdr[:16] + struct.pack("!H", csum) + hdr[18:]
    return ipv4(ip.dst, ip.src, PROTO_TCP, hdr)


@dataclass(frozen=True)
class Udp:
    sport: int
    dport: int
    payload: bytes


def parse_udp(data: bytes) -> Udp | None:
    if len(data) < 8:
        return None
    sport, dport, length = struct.unpack("!HHH", data[:6])
    if length < 8 or length > len(data):
        return None
    return Udp(sport, dport, data[8:length])


def udp(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> bytes:
    """A whole IPv4 packet carrying one UDP datagram."""
    hdr = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
    csum = checksum(_pseudo(src, dst, PROTO_UDP, len(hdr) + len(payload)) + hdr + payload) or 0xFFFF
    return ipv4(src, dst, PROTO_UDP, hdr[:6] + struct.pack("!H", csum) + payload)


# -- DNS ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DnsQuestion:
    id: int
    name: str
    qtype: int
    question: bytes  # the question section as sent (echoed in the answer)


QTYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV", 65: "HTTPS"}


def parse_dns_query(msg: bytes) -> DnsQuestion:
    """The first question of a DNS query; raises :class:`Malformed` for anything else (a response, compression in
    the question, a label or name too long, a truncated message)."""
    if len(msg) < 12:
        raise Malformed("DNS message shorter than its header")
    qid, flags, qd = struct.unpack("!HHH", msg[:6])
    if flags & 0x8000 or qd < 1:
        raise Malformed("not a DNS query")
    pos, labels, size = 12, [], 0
    while True:
        if pos >= len(msg):
            raise Malformed("DNS name runs past the message")
        n = msg[pos]
        pos += 1
        if n == 0:
            break
        if n & 0xC0:
            raise Malformed("compressed or extended label in a question")
        size += n + 1
        if size > MAX_NAME or pos + n > len(msg):
            raise Malformed("DNS name too long or truncated")
        labels.append(msg[pos:pos + n].decode("ascii", errors="replace"))
        pos += n
    if pos + 4 > len(msg):
        raise Malformed("DNS question truncated")
    (qtype,) = struct.unpack("!H", msg[pos:pos + 2])
    return DnsQuestion(qid, ".".join(labels) or ".", qtype, msg[12:pos + 4])


def dns_nxdomain(q: DnsQuestion) -> bytes:
    """The answer to ``q``: the name does not exist (RCODE 3), recursion available, the question echoed."""
    flags = 0x8000 | 0x0100 | 0x0080 | 3  # QR, RD, RA, NXDOMAIN
    return struct.pack("!HHHHHH", q.id, flags, 1, 0, 0, 0) + q.question
