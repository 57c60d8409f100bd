"""Bridged networks (root): a whole Corral daemon runs inside a fresh network namespace, so its bridge and taps never
touch the host's interfaces; the CLI outside talks to it over its unix socket. Two VMs on one bridge reach each
other by name and address; the bridge and taps go away with the VMs and the network."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from corral.client import DAEMON_PREFIX_ENV
from tests.conftest import CorralEnv, make_env
from tests.integration.test_networks import ping

pytestmark = pytest.mark.vm


def _netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "bridged networks need root (a Linux bridge and tap devices)"
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed"
    r = subprocess.run(["ip", "netns", "list"], capture_output=True)
    if r.returncode != 0:
        return f"`ip netns` is unavailable: {r.stderr.decode(errors='replace').strip()}"
    if not Path("/dev/net/tun").exists():
        return "/dev/net/tun is missing (no tap devices)"
    return None


def ip_ns(ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True, timeout=30)


def links(ns: str) -> dict[str, dict[str, object]]:
    """The network devices of namespace ``ns`` by name (``ip -j link``)."""
    r = ip_ns(ns, "-j", "link", "show")
    assert r.returncode == 0, r.stderr
    return {d["ifname"]: d for d in json.loads(r.stdout)}


@pytest.fixture
def ns_corral() -> Iterator[tuple[CorralEnv, str]]:
    """A Corral home whose daemon runs inside a fresh network namespace; afterwards its daemon and QEMU processes
    are killed by pid and the namespace (with whatever devices are left in it) is deleted."""
    reason = _netns_unavailable()
    if reason:
        pytest.skip(reason)
    ns = f"corral-br-{secrets.token_hex(4)}"
    r = subprocess.run(["ip", "netns", "add", ns], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {r.stderr.strip()}")
    home = Path(tempfile.mkdtemp(prefix="ch-", dir="/tmp"))
    ce = make_env(home)
    try:
        assert ip_ns(ns, "link", "set", "lo", "up").returncode == 0  # QEMU's host forwards bind loopback
        ce.env[DAEMON_PREFIX_ENV] = f"ip netns exec {ns}"  # also any daemon the CLI would start by itself
        ce.start_daemon()
        ce.client.build_image("tiny")
        yield ce, ns
    finally:
        ce.cleanup()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def in_netns(pid: int, ns: str) -> bool:
    """Whether process ``pid`` runs in network namespace ``ns``."""
    return os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/run/netns/{ns}").st_ino


def test_bridged_network(ns_corral: tuple[CorralEnv, str]) -> None:
    c, ns = ns_corral
    daemon = c.daemon_pid()
    assert daemon is not None and in_netns(daemon, ns)

    r = c.cli("network", "create", "lan", "--subnet", "10.98.7.0/24", "--bridge")
    assert r.returncode == 0, r.stderr
    assert "bridge crl-lan" in r.stdout
    dev = links(ns)
    assert "crl-lan" in dev and "UP" in dev["crl-lan"]["flags"]  # type: ignore[operator]
    assert not Path("/sys/class/net/crl-lan").exists()  # nothing on the host's own interfaces
    r = ip_ns(ns, "-4", "-o", "addr", "show", "dev", "crl-lan")
    assert "10.98.7.1/24" in r.stdout
    net = c.client.get_network("lan")
    assert net.kind == "bridge" and net.bridge == "crl-lan"

    t0 = time.monotonic()
    with ThreadPoolExecutor(2) as pool:  # boots overlap: much shorter under TCG
        results = list(pool.map(lambda vm: c.cli("launch", vm, "--network", "lan"), ("a", "b")))
    for r in results:
        assert r.returncode == 0, r.stderr
    print(f"two VMs launched in {time.monotonic() - t0:.1f}s")
    qemu = c.qemu_pids()
    assert sorted(qemu) == ["a", "b"] and all(in_netns(pid, ns) for pid in qemu.values())

    members = {m.vm: m.address for m in c.client.get_network("lan").members}
    assert sorted(members) == ["a", "b"] and set(members.values()) == {"10.98.7.2", "10.98.7.3"}  # bridge: .1
    taps = {n for n, d in links(ns).items() if d.get("master") == "crl-lan"}
    assert len(taps) == 2 and all(t.startswith("crt") for t in taps)

    # By name and by address, both ways; and the bridge's own address (the namespace's side).
    assert ping(c, "a", "b")
    assert ping(c, "b", "a")
    assert ping(c, "a", members["b"])
    assert ping(c, "b", members["a"])
    assert ping(c, "a", "10.98.7.1")
    assert members["a"] in c.cli("show", "a").stdout

    # Refused while VMs use it: nothing changes.
    r = c.cli("network", "rm", "lan")
    assert r.returncode == 4 and "used by VM a, b" in r.stderr
    assert taps <= set(links(ns))

    # A stopped VM's tap is deleted; it comes back (same address) when the VM starts again.
    tap_b = {n for n in taps if n.startswith("crt" + c.client.get_vm("b").id.replace("-", "")[:6])}
    assert len(tap_b) == 1
    assert c.cli("stop", "b").returncode == 0
    assert not tap_b & set(links(ns))
    assert c.cli("start", "b").returncode == 0
    assert tap_b <= set(links(ns))
    assert {m.vm: m.address for m in c.client.get_network("lan").members} == members
    assert ping(c, "a", "b")

    # Deleted VMs take their taps; then the network goes, with its bridge.
    assert c.cli("rm", "--force", "a", "b").returncode == 0
    assert not taps & set(links(ns))
    assert c.cli("network", "rm", "lan").returncode == 0
    assert set(links(ns)) == {"lo"}
    assert "lan" not in c.cli("network", "ls").stdout
    assert c.qemu_pids() == {}
