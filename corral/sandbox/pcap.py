"""What a sandbox's guest sent on a restricted NAT NIC, read from QEMU's filter-dump pcap (egress-log from a template).

A VM from a template keeps the template's NAT NIC (its state is in the saved machine), cut off with ``restrict=on``;
QEMU's ``filter-dump`` on the netdev's receive queue writes every frame the guest sends to a classic pcap file
(``vms/NAME/net0.pcap``, link type Ethernet). The frames go through the sink's parsers and its :func:`attempt`, so the
report's connections are the same records as the sink's, from the same code; only the answer differs (slirp, with
``restrict=on``, answers a TCP SYN with a RST and drops every datagram, DNS included: no ``answer``).

Errors: :class:`PcapError` (a :class:`~corral.errors.CorralError`) for a file that is not such a pcap; a file cut
short in its last record (QEMU killed mid-write) keeps the records before it.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from corral.errors import CorralError
from corral.sandbox import packets as pk
from corral.sandbox.sink import MAX_RECORDS, attempt

MAGIC_US = 0xA1B2C3D4  # microsecond timestamps (what QEMU writes)
MAGIC_NS = 0xA1B23C4D
LINKTYPE_ETHERNET = 1
MAX_FRAME = 1 << 18  # a record longer than this is not a frame from QEMU (its snaplen is 65535)


class PcapError(CorralError):
    """The file is not a pcap of Ethernet frames."""


def frames(data: bytes) -> list[tuple[float, bytes]]:
    """The (time, frame) records of a pcap. Raises :class:`PcapError` for a bad header or a record longer than any
    frame; a last record cut short is left out."""
    if len(data) < 24:
        raise PcapError(f"not a pcap file: {len(data)} bytes, shorter than its header")
    for order in ("<", ">"):
        magic, _major, _minor, _zone, _sig, _snap, link = struct.unpack(order + "IHHiIII", data[:24])
        if magic in (MAGIC_US, MAGIC_NS):
            break
    else:
        raise PcapError(f"not a pcap file: magic {data[:4].hex()}")
    if link != LINKTYPE_ETHERNET:
        raise PcapError(f"pcap of link type {link}, not Ethernet")
    scale = 1e-6 if magic == MAGIC_US else 1e-9
    out: list[tuple[float, bytes]] = []
    off = 24
    while off + 16 <= len(data):
        sec, frac, incl, _orig = struct.unpack(order + "IIII", data[off:off + 16])
        if incl > MAX_FRAME:
            raise PcapError(f"pcap record at byte {off} claims {incl} bytes: not a frame")
        if off + 16 + incl > len(data):
            break  # cut short: the writer was stopped mid-record
        out.append((sec + frac * scale, data[off + 16:off + 16 + incl]))
        off += 16 + incl
    return out


def attempts(records: list[tuple[float, bytes]], limit: int = MAX_RECORDS) -> tuple[list[dict[str, Any]], int]:
    """The connection attempts in the guest's frames, as the sink records them (with the frame's time ``t``), and
    how many were left out past ``limit``. ARP, IPv6 and frames that do not parse make no record."""
    out: list[dict[str, Any]] = []
    dropped = 0
    for t, frame in records:
        eth = pk.parse_ether(frame)
        if eth is None or eth.type != pk.ETH_IPV4:
            continue
        ip = pk.parse_ipv4(eth.payload)
        if ip is None:
            continue
        for r in attempt(ip):
            if len(out) >= limit:
                dropped += 1
            else:
                out.append({"t": round(t, 3), **r})
    return out, dropped


def read(path: Path) -> tuple[list[dict[str, Any]], int, int]:
    """The attempts in the pcap at ``path``, how many were left out, and how many frames it held (a file QEMU never
    wrote to, because the guest sent nothing, holds none). Raises :class:`PcapError`, or OSError."""
    recs = frames(path.read_bytes())
    found, dropped = attempts(recs)
    return found, dropped, len(recs)
