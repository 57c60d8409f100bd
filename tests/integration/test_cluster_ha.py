"""HA on a three-host cluster (tests/integration/cluster_net.py; etcd started by h1's `cluster init`, a shared HA
repository): a whole host SIGKILLed (its daemon, its fence, its QEMUs) has its --ha VM started on another host from
its newest backup exactly once, with the data of that backup, while its other VM is listed unknown; when the host
comes back its copy is refused a start. A host cut off from the network fences itself: its fence kills its HA VM's
QEMU before the others start it, so the VM never runs twice."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.cluster import fence
from tests.conftest import until
from tests.integration.cluster_net import Cluster, Host, make_cluster
from tests.integration.test_cluster import hosts_of, one_line, vms_of

pytestmark = [pytest.mark.vm, pytest.mark.slow]


@pytest.fixture
def ha() -> Iterator[tuple[Cluster, Path]]:
    repo = Path(tempfile.mkdtemp(prefix="ha-repo-", dir="/tmp"))
    try:
        yield from ((c, repo) for c in make_cluster(3, {"CORRAL_CLUSTER_LEASE_TTL": "3"}))
    finally:
        shutil.rmtree(repo, ignore_errors=True)


def ok(h: Host, *args: str) -> str:
    r = h.cli(*args)
    assert r.returncode == 0, f"{args}: {r.stderr}"
    return r.stdout


def running_on(c: Cluster, vm: str) -> list[str]:
    """The hosts where a QEMU of ``vm`` runs, by each home's own records."""
    return [h.name for h in c.hosts if vm in h.env.qemu_pids()]


def ha_events(h: Host, vm: str) -> list[tuple[str, str]]:
    return [(e.result, e.message) for e in h.env.client.events(vm=vm) if e.type == "ha"]


def test_ha_restarts_a_dead_hosts_vm_once_and_fences_a_cut_off_host(ha: tuple[Cluster, Path]) -> None:
    c, repo = ha
    h1, h2, h3 = c.hosts
    assert "absolute path" in one_line(h1.cli("cluster", "init", "--name", "h1", "--ha-repo", "rel/dir"))
    ok(h1, "cluster", "init", "--name", "h1", "--ha-repo", str(repo))
    for h in (h2, h3):
        ok(h, "cluster", "join", f"http://{h1.ip}:2379", "--name", h.name)
    for h in c.hosts:
        h.env.client.build_image("tiny")
    until(lambda: all(x["images"] for x in hosts_of(h1).values()), 30, "every host publishes its images")

    # a whole host dies: its HA VM comes back elsewhere, once, from its backup
    ok(h1, "launch", "web", "--ha", "--host", "h3")
    ok(h1, "launch", "plain", "--host", "h3", "--no-wait")
    ok(h1, "exec", "web", "--", "sh", "-c", "echo from-the-backup > /root/marker; sync")
    ok(h3, "backup", "create", "web", "--repo", str(repo))
    for pid in (h3.env.daemon_pid(), fence.running(h3.env.home), *h3.env.qemu_pids().values()):
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
    until(lambda: hosts_of(h1)["h3"]["state"] == "down", 30, "h3 seen down")
    until(lambda: vms_of(h2).get("web", {}).get("state") == "running", 120, "web running again on another host")
    listed = vms_of(h1)
    assert listed["web"]["host"] in ("h1", "h2") and listed["plain"]["state"] == "unknown", listed
    new_host = next(h for h in c.hosts if h.name == listed["web"]["host"])
    assert running_on(c, "web") == [new_host.name], "exactly one QEMU of web, on its new host"
    assert [r for r, _ in ha_events(new_host, "web")] == ["ok"], ha_events(new_host, "web")
    other = h1 if new_host is h2 else h2
    assert ha_events(other, "web") == [], "the other survivor did not restart it too"
    r = h1.cli("exec", "web", "--", "cat", "/root/marker")
    assert r.returncode == 0 and "from-the-backup" in r.stdout, r.stderr

    # the dead host comes back: its copy of web is refused a start (etcd places web elsewhere)
    h3.env.start_daemon()
    until(lambda: hosts_of(h1)["h3"]["state"] == "ready", 60, "h3 back")
    refused = h3.cli("start", "web")
    assert refused.returncode == 4 and "now runs on host" in one_line(refused)
    assert running_on(c, "web") == [new_host.name]

    # a host cut off from etcd fences itself before the others start its HA VM
    cut_host = h2  # not h1: it runs etcd, and cutting it would take the whole cluster's etcd with it
    ok(h1, "launch", "db", "--ha", "--host", cut_host.name)
    ok(cut_host, "backup", "create", "db", "--repo", str(repo))
    qemu = cut_host.env.qemu_pids()["db"]
    cut_host.cut()
    try:
        until(lambda: "db" not in cut_host.env.qemu_pids(), 30, "the cut-off host's fence killing db's QEMU")
        assert not os.path.exists(f"/proc/{qemu}")
        until(lambda: (vms_of(h3).get("db") or {}).get("state") == "running"
              and vms_of(h3)["db"]["host"] != cut_host.name, 120, "db running on a host that can reach etcd")
        assert running_on(c, "db") == [vms_of(h3)["db"]["host"]], "db never ran on two hosts at once"
    finally:
        cut_host.cut(up=True)
