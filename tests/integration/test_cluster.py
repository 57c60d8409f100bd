"""A cluster of three hosts on this machine (tests/integration/cluster_net.py): `cluster init` on h1 starts etcd
there, h2 and h3 join; `host ls` from any host shows the three; six launches from one host are spread 2/2/2 by the
scheduler; `ls` on any host lists every VM with its host; exec, stop and rm of a VM on another host are forwarded to
it; --host and --host-label are obeyed, a VM no host can take is refused with one line and leaves nothing, a drained
host takes no new VM; etcd killed (and started again by h1's daemon) and a daemon restarted change no VM."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from corral.cluster import etcd_server
from tests.conftest import until
from tests.integration.cluster_net import Cluster, Host, make_cluster

pytestmark = [pytest.mark.vm, pytest.mark.slow]


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    # a short lease: a host's death is seen within seconds; small hosts: 0.1 x RAM each
    yield from make_cluster(3, {"CORRAL_CLUSTER_LEASE_TTL": "3", "CORRAL_MEMORY_OVERCOMMIT": "0.1"})


def one_line(r: object) -> str:
    lines = r.stderr.strip().splitlines()  # type: ignore[attr-defined]
    assert r.returncode != 0 and len(lines) == 1, (r.returncode, r.stderr)  # type: ignore[attr-defined]
    return str(lines[0])


def hosts_of(h: Host) -> dict[str, dict]:  # type: ignore[type-arg]
    return {x["name"]: x for x in h.json("host", "ls")}  # type: ignore[union-attr]


def vms_of(h: Host) -> dict[str, dict]:  # type: ignore[type-arg]
    r = h.cli("ls", "--json")
    assert r.returncode == 0, r.stderr
    return {v["name"]: v for v in json.loads(r.stdout)}


def test_three_hosts_place_forward_drain_and_survive_etcd(cluster: Cluster) -> None:
    h1, h2, h3 = cluster.hosts
    # bad input first: nothing changes, one line each
    assert "does not answer" in one_line(h2.cli("cluster", "join", f"http://{h1.ip}:2379"))  # no etcd yet
    assert "not an etcd address" in one_line(h2.cli("cluster", "join", "ftp://x"))
    r = h1.cli("cluster", "init", "--name", "h1", "--label", "zone=a")
    assert r.returncode == 0, r.stderr
    assert f"corral cluster join http://{h1.ip}:2379" in r.stdout
    assert etcd_server.find(h1.etcd_data) is not None, "cluster init started etcd"
    assert "already a member" in one_line(h1.cli("cluster", "init", "--name", "again"))
    assert "already a live member" in one_line(h2.cli("cluster", "join", f"http://{h1.ip}:2379", "--name", "h1"))
    for h, zone in ((h2, "b"), (h3, "c")):
        r = h.cli("cluster", "join", f"http://{h1.ip}:2379", "--name", h.name, "--label", f"zone={zone}")
        assert r.returncode == 0, r.stderr
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda h: h.env.client.build_image("tiny"), cluster.hosts))
    until(lambda: all(len(h["images"]) for h in hosts_of(h3).values()), 30, "every host publishes its images")
    hosts = hosts_of(h3)
    assert sorted(hosts) == ["h1", "h2", "h3"] and {h["state"] for h in hosts.values()} == {"ready"}
    assert hosts["h2"]["address"] == f"https://{h2.ip}:8443" and hosts["h2"]["labels"] == {"zone": "b"}
    assert "h1" in h2.cli("host", "ls").stdout and "ready" in h2.cli("host", "ls").stdout

    # six launches from h1: spread 2/2/2
    for i in range(6):
        r = h1.cli("launch", f"vm{i}", "--no-wait")
        assert r.returncode == 0, r.stderr
    listed = vms_of(h2)
    assert sorted(listed) == [f"vm{i}" for i in range(6)]
    assert Counter(v["host"] for v in listed.values()) == {"h1": 2, "h2": 2, "h3": 2}
    assert "HOST" in h3.cli("ls").stdout
    for h in cluster.hosts:  # each VM's QEMU runs on the host the list says
        assert sorted(h.env.qemu_pids()) == sorted(n for n, v in listed.items() if v["host"] == h.name)

    # a VM on h3, driven from h1: exec, stop, start, rm
    on3 = sorted(n for n, v in listed.items() if v["host"] == "h3")[0]
    r = h1.cli("exec", on3, "--", "cat", "/proc/sys/kernel/hostname")
    assert r.returncode == 0 and on3 in r.stdout, r.stderr
    assert h1.cli("stop", on3).returncode == 0
    assert until(lambda: vms_of(h2)[on3]["state"] == "stopped", 30, "the stop seen from h2")
    assert on3 not in h3.env.qemu_pids()

    # pins and labels; a VM no host can take is refused, leaving nothing
    r = h1.cli("launch", "pinned", "--host", "h2", "--no-wait")
    assert r.returncode == 0, r.stderr
    r = h2.cli("launch", "zoned", "--host-label", "zone=c", "--no-wait")
    assert r.returncode == 0, r.stderr
    listed = vms_of(h1)
    assert listed["pinned"]["host"] == "h2" and listed["zoned"]["host"] == "h3"
    big = h1.cli("launch", "big", "--memory", "4G", "--no-wait")
    assert big.returncode == 5 and "no host can take" in one_line(big)
    nowhere = h1.cli("launch", "nowhere", "--host", "h9", "--no-wait")
    assert nowhere.returncode != 0 and "h9" in one_line(nowhere)
    assert "big" not in vms_of(h3) and "nowhere" not in vms_of(h3)
    assert all("big" not in h.env.qemu_pids() for h in cluster.hosts)

    # a drained host takes no new VM
    assert "draining" in h1.cli("host", "drain", "h3").stdout
    assert hosts_of(h2)["h3"]["state"] == "draining"
    for i in range(3):
        assert h2.cli("launch", f"after{i}", "--no-wait").returncode == 0
    assert all(vms_of(h3)[f"after{i}"]["host"] != "h3" for i in range(3))
    assert h1.cli("host", "undrain", "h3").returncode == 0
    assert "no host named" in one_line(h1.cli("host", "drain", "h9"))

    # rm from another host: gone everywhere, its room given back
    assert h2.cli("rm", "--force", "pinned").returncode == 0
    assert until(lambda: "pinned" not in vms_of(h3), 30, "the removed VM gone from the cluster's list")
    assert "pinned" not in h2.env.qemu_pids()

    # etcd killed: every VM keeps running; h1's daemon starts it again; nothing changed
    before = {h.name: h.env.qemu_pids() for h in cluster.hosts}
    on2 = next(n for n, v in vms_of(h2).items() if v["host"] == "h2" and v["state"] == "running")
    etcd = etcd_server.find(h1.etcd_data)
    assert etcd is not None
    os.kill(etcd, signal.SIGKILL)
    time.sleep(1)
    r = h2.cli("exec", on2, "--", "true")
    assert r.returncode == 0, f"a VM of h2 answers without etcd: {r.stderr}"
    local = h2.cli("ls", "--json")
    assert local.returncode == 0, "ls still answers (this host's VMs) without etcd"
    until(lambda: etcd_server.find(h1.etcd_data) not in (None, etcd), 60, "etcd started again by h1's daemon")
    until(lambda: {h["state"] for h in hosts_of(h3).values()} == {"ready"}, 60, "every host ready again")
    assert {h.name: h.env.qemu_pids() for h in cluster.hosts} == before
    assert len(vms_of(h1)) == len(vms_of(h3))

    # a daemon restarted rejoins from its home; its VMs are still listed, on it
    h2.env.kill_daemon(signal.SIGTERM)
    h2.env.start_daemon()
    until(lambda: vms_of(h1).get("after0") is not None and hosts_of(h1)["h2"]["state"] == "ready", 60,
          "h2 back in the cluster")
    assert Counter(v["host"] for v in vms_of(h2).values())["h2"] == len(h2.env.qemu_pids()) + sum(
        1 for v in vms_of(h2).values() if v["host"] == "h2" and v["state"] == "stopped")


WRITER = "i=0; while :; do i=$((i+1)); echo $i >> /root/lines; sync; sleep 0.05; done"


def guest(h: Host, vm: str, script: str) -> str:
    r = h.cli("exec", vm, "--", "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    return r.stdout


def lines(h: Host, vm: str) -> list[int]:
    return [int(x) for x in guest(h, vm, "sync; cat /root/lines").split()]


@pytest.fixture
def pair() -> Iterator[Cluster]:
    yield from make_cluster(2, {"CORRAL_CLUSTER_LEASE_TTL": "3"})


def test_migrate_between_hosts_and_drain(pair: Cluster) -> None:
    h1, h2 = pair.hosts
    assert h1.cli("cluster", "init", "--name", "h1").returncode == 0
    assert h2.cli("cluster", "join", f"http://{h1.ip}:2379", "--name", "h2").returncode == 0
    for h in pair.hosts:
        h.env.client.build_image("tiny")
    until(lambda: all(x["images"] for x in hosts_of(h1).values()), 30, "both hosts publish their images")
    r = h1.cli("launch", "mv", "--host", "h1", "--memory", "256M")
    assert r.returncode == 0, r.stderr
    before = vms_of(h2)["mv"]
    guest(h2, "mv", f"({WRITER}) >/dev/null 2>&1 &")  # from h2: forwarded to h1
    until(lambda: len(lines(h1, "mv")) > 10, 60, "the guest writing lines")
    written = lines(h1, "mv")

    # bad input first: one line, nothing moves
    assert "no host named" in one_line(h2.cli("migrate", "mv", "--to", "h9"))
    assert "already runs on host" in one_line(h1.cli("migrate", "mv", "--to", "h1"))
    assert vms_of(h1)["mv"]["host"] == "h1" and "mv" in h1.env.qemu_pids()

    r = h2.cli("migrate", "mv", "--to", "h2")  # asked on h2, run by h1 (the VM's host)
    assert r.returncode == 0, r.stderr
    assert "now runs on h2" in r.stdout and "paused" in r.stdout, r.stdout
    after = vms_of(h1)["mv"]
    assert after["host"] == "h2" and after["state"] == "running"
    assert after["id"] == before["id"] and after["mac"] == before["mac"]
    assert "mv" not in h1.env.qemu_pids() and "mv" in h2.env.qemu_pids()
    assert not (h1.env.settings.vms_dir / "mv").exists()
    time.sleep(1)
    got = [int(x) for x in guest(h1, "mv", "sync; echo 3 > /proc/sys/vm/drop_caches; cat /root/lines").split()]
    assert got[: len(written)] == written and got == list(range(1, len(got) + 1)), "no write lost"
    assert len(got) > len(written) + 5, "the guest writes on after the move"

    # drain h2: its running VM moves back to h1, it takes no new VM
    r = h1.cli("host", "drain", "h2")
    assert r.returncode == 0, r.stderr
    assert "moved 1 VMs (mv)" in r.stdout, r.stdout
    assert vms_of(h2)["mv"]["host"] == "h1" and h2.env.qemu_pids() == {}
    assert hosts_of(h2)["h2"]["state"] == "draining"
    assert h2.cli("launch", "new", "--no-wait").returncode == 0
    assert vms_of(h1)["new"]["host"] == "h1"
    assert guest(h2, "mv", "cat /root/lines").split()[-1] != written[-1]
