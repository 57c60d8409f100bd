"""Reading QEMU's filter-dump pcap: frames and their times, then the same attempt records as the sink's; bad files
refused, a last record cut short left out."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from corral.sandbox import packets as pk
from corral.sandbox import pcap
from tests.unit.sandbox.test_packets import GUEST, GUEST_MAC, SINK_MAC, dns_query, syn

HOST = pk.ip_bytes("10.0.2.2")
DNS = pk.ip_bytes("10.0.2.3")


def header(magic: int = pcap.MAGIC_US, link: int = pcap.LINKTYPE_ETHERNET, order: str = "<") -> bytes:
    return struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535, link)  # what QEMU's net/dump.c writes


def record(t: float, frame: bytes, order: str = "<") -> bytes:
    return struct.pack(order + "IIII", int(t), round((t % 1) * 1e6), len(frame), len(frame)) + frame


def eth(payload: bytes, etype: int = pk.ETH_IPV4) -> bytes:
    return pk.ether(SINK_MAC, GUEST_MAC, etype, payload)


def dns_to(dst: bytes, name: str) -> bytes:
    return pk.udp(GUEST, dst, 40000, 53, dns_query(name))


def test_frames_and_attempts_as_the_sink_records_them(tmp_path: Path) -> None:
    arp = eth(b"\x00\x01\x08\x00\x06\x04\x00\x01" + GUEST_MAC + GUEST + b"\0" * 6 + HOST, pk.ETH_ARP)
    data = (header() + record(100.25, arp) + record(101.5, eth(dns_to(DNS, "evil.example.com")))
            + record(102.0, eth(syn(HOST, 8080))) + record(103.0, eth(b"\x60" + b"\0" * 39, 0x86DD))
            + record(104.0, eth(pk.udp(GUEST, HOST, 40001, 9999, b"x" * 5))))
    path = tmp_path / "net0.pcap"
    path.write_bytes(data)
    found, dropped, count = pcap.read(path)
    assert count == 5 and dropped == 0
    assert found == [
        {"t": 101.5, "proto": "dns", "src": "10.77.0.1", "dst": "10.0.2.3", "port": 53, "name": "evil.example.com",
         "type": "A"},
        {"t": 102.0, "proto": "tcp", "src": "10.77.0.1", "dst": "10.0.2.2", "port": 8080},
        {"t": 104.0, "proto": "udp", "src": "10.77.0.1", "dst": "10.0.2.2", "port": 9999, "bytes": 5},
    ]  # ARP and IPv6 make no record; no "answer": slirp with restrict=on answers no DNS


def test_big_endian_and_nanosecond_files_read_too() -> None:
    data = header(pcap.MAGIC_NS, order=">") + struct.pack(">IIII", 7, 500_000_000, 4, 4) + b"abcd"
    assert pcap.frames(data) == [(7.5, b"abcd")]


def test_an_empty_capture_has_no_frames() -> None:
    assert pcap.frames(header()) == []


def test_a_last_record_cut_short_is_left_out() -> None:
    whole = record(1.0, eth(syn(HOST, 80)))
    assert len(pcap.frames(header() + whole + whole[:30])) == 1
    assert len(pcap.frames(header() + whole + whole[:10])) == 1  # even its record header cut


@pytest.mark.parametrize(("data", "message"), [
    (b"", "shorter than its header"),
    (b"\x0a\x0d\x0d\x0a" + b"\0" * 40, "magic 0a0d0d0a"),  # pcapng: not what QEMU writes
    (header(link=101), "link type 101"),
    (header() + struct.pack("<IIII", 0, 0, 1 << 30, 1 << 30), "not a frame"),
])
def test_bad_files_are_refused_in_one_line(data: bytes, message: str) -> None:
    with pytest.raises(pcap.PcapError, match=message):
        pcap.frames(data)


def test_attempts_are_bounded() -> None:
    recs = [(float(i), eth(syn(HOST, 1000 + i))) for i in range(5)]
    found, dropped = pcap.attempts(recs, limit=3)
    assert [r["port"] for r in found] == [1000, 1001, 1002] and dropped == 2
