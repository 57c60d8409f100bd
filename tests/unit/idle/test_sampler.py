"""Counters from QEMU's answers: query-blockstats (disk) and the agent's guest-network-get-interfaces (network)."""

from __future__ import annotations

from corral.idle.sampler import disk_bytes, net_bytes

BLOCKSTATS = [
    {"device": "", "qdev": "/machine/peripheral/root-disk/virtio-backend", "node-name": "root",
     "stats": {"rd_bytes": 1000, "wr_bytes": 24, "rd_operations": 3}},
    {"device": "", "qdev": "seed", "stats": {"rd_bytes": 10, "wr_bytes": 0}},
]

INTERFACES = [
    {"name": "lo", "hardware-address": "00:00:00:00:00:00",
     "statistics": {"rx-bytes": 999999, "tx-bytes": 999999, "rx-packets": 1}},
    {"name": "eth0", "hardware-address": "52:54:00:12:34:56",
     "ip-addresses": [{"ip-address": "10.0.2.15", "ip-address-type": "ipv4", "prefix": 24}],
     "statistics": {"rx-bytes": 5000, "tx-bytes": 700, "rx-packets": 10, "tx-packets": 5}},
    {"name": "eth1", "statistics": {"rx-bytes": 1, "tx-bytes": 2}},
]


def test_disk_bytes_sums_every_device() -> None:
    assert disk_bytes(BLOCKSTATS) == 1034
    assert disk_bytes([]) == 0


def test_net_bytes_leaves_out_loopback_and_needs_statistics() -> None:
    assert net_bytes(INTERFACES) == 5703
    assert net_bytes([{"name": "eth0", "ip-addresses": []}]) is None  # an agent older than QEMU 7.1
    assert net_bytes([INTERFACES[0]]) is None
