"""Several Corral hosts on this one machine: each host a corrald in a network namespace of its own, with its own
home, listening on its own address; the hosts' namespaces joined by a bridge that lives in one more namespace (the
"switch"), so nothing touches the machine's own interfaces. Everything is taken down by pid and by namespace name
afterwards, even when the test fails: the daemons, their QEMUs, the etcd a host started."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from corral.client import DAEMON_PREFIX_ENV
from corral.cluster import etcd_server, fence
from tests.conftest import CorralEnv, make_env
from tests.integration.test_bridged import _netns_unavailable

SUBNET = "10.77.0"
PORT = 8443


def sh(*argv: str) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"{' '.join(argv)}: {r.stderr}"
    return r


@dataclass
class Host:
    name: str
    ns: str
    ip: str
    env: CorralEnv
    dev: str = ""  # its end of the link to the switch, in its namespace

    def cut(self, up: bool = False) -> None:
        """Take the host's link down (cut off from etcd and the other hosts), or up again."""
        sh("ip", "-n", self.ns, "link", "set", self.dev, "up" if up else "down")

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return self.env.cli(*args, timeout=timeout)

    def json(self, *args: str) -> object:
        r = self.cli(*args, "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    @property
    def etcd_data(self) -> Path:
        return self.env.home / "etcd" / "data"


@dataclass
class Cluster:
    switch: str
    hosts: list[Host] = field(default_factory=list)

    def add(self, i: int, env_extra: dict[str, str]) -> Host:
        tag = secrets.token_hex(3)
        ns, ip = f"crlh-{tag}", f"{SUBNET}.{10 + i}"
        sh("ip", "netns", "add", ns)
        home = Path(tempfile.mkdtemp(prefix="ch-", dir="/tmp"))
        host = Host(f"h{i}", ns, ip, make_env(home), dev=f"crla{tag}")
        self.hosts.append(host)
        a, b = f"crla{tag}", f"crlb{tag}"
        sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
        sh("ip", "link", "set", a, "netns", ns)
        sh("ip", "link", "set", b, "netns", self.switch)
        sh("ip", "-n", self.switch, "link", "set", b, "master", "br0", "up")
        sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", a)
        sh("ip", "-n", ns, "link", "set", a, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        host.env.env.update(env_extra)
        host.env.env[DAEMON_PREFIX_ENV] = f"ip netns exec {ns}"
        host.env.env["CORRAL_LISTEN"] = f"{ip}:{PORT}"
        host.env.start_daemon()
        return host

    def cleanup(self) -> None:
        for h in self.hosts:
            h.env.cleanup()
            for pid in (etcd_server.find(h.etcd_data), fence.running(h.env.home)):
                if pid is not None:
                    os.kill(pid, signal.SIGKILL)
        for h in self.hosts:
            subprocess.run(["ip", "netns", "del", h.ns], capture_output=True)
            shutil.rmtree(h.env.home, ignore_errors=True)
        subprocess.run(["ip", "netns", "del", self.switch], capture_output=True)


def make_cluster(n: int, env_extra: dict[str, str] | None = None) -> Iterator[Cluster]:
    """``n`` hosts h1..hN, each with its daemon started (no cluster made yet: the test runs `cluster init|join`)."""
    reason = _netns_unavailable()
    if reason:
        pytest.skip(reason)
    switch = f"crls-{secrets.token_hex(3)}"
    sh("ip", "netns", "add", switch)
    c = Cluster(switch)
    try:
        sh("ip", "-n", switch, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", switch, "link", "set", "br0", "up")
        for i in range(1, n + 1):
            c.add(i, dict(env_extra or {}))
        yield c
    finally:
        c.cleanup()
