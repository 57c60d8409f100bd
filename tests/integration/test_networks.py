"""Private networks: VMs on one network reach each other by name; another network cannot reach them."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from corral.engine import process
from corral.network import switch
from tests.conftest import CorralEnv

pytestmark = pytest.mark.vm


@pytest.fixture
def net_corral(corral: CorralEnv) -> Iterator[CorralEnv]:
    """``corral``, and afterwards every switch process of its home killed by pid (after an identity check)."""
    try:
        yield corral
    finally:
        for pidfile in (corral.home / "networks").glob("*/switch.pid"):
            ident = switch.running(pidfile.parent / "switch.sock", pidfile)
            if ident is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(ident.pid, signal.SIGKILL)


def ping(corral: CorralEnv, vm: str, target: str, tries: int = 3) -> bool:
    for _ in range(tries):
        r = corral.cli("exec", vm, "--", "ping", "-c1", "-W2", target)
        if r.returncode == 0:
            return True
    return False


def addresses(corral: CorralEnv, net: str) -> dict[str, str]:
    r = corral.cli("network", "ls", "--json")
    nets = {n["name"]: n for n in json.loads(r.stdout)}
    return {m["vm"]: m["address"] for m in nets[net]["members"]}


def test_private_networks(net_corral: CorralEnv) -> None:
    c = net_corral
    assert c.cli("network", "create", "blue", "--subnet", "10.99.1.0/24").returncode == 0
    assert c.cli("network", "create", "red").returncode == 0
    r = c.cli("network", "create", "dup", "--subnet", "10.99.1.128/25")
    assert r.returncode == 4 and "overlaps" in r.stderr
    r = c.cli("launch", "nope", "--network", "green")
    assert r.returncode == 3 and "no network named 'green'" in r.stderr

    with ThreadPoolExecutor(3) as pool:  # boots overlap: much shorter under TCG
        results = list(pool.map(lambda vn: c.cli("launch", vn[0], "--network", vn[1]),
                                (("a", "blue"), ("b", "blue"), ("c", "red"))))
    for r in results:
        assert r.returncode == 0, r.stderr
    blue = addresses(c, "blue")
    assert sorted(blue) == ["a", "b"] and set(blue.values()) == {"10.99.1.1", "10.99.1.2"}
    red = addresses(c, "red")
    switch_pid = c.client.get_network("blue").switch_pid
    assert switch_pid is not None

    # Same network: by name both ways (the /etc/hosts of a was refreshed when b joined).
    assert ping(c, "a", "b")
    assert ping(c, "b", "a")
    assert blue["b"] in c.cli("show", "b").stdout
    assert blue["a"] in c.cli("ls").stdout

    # Another network: even with an address in blue's subnet, c's frames never reach blue.
    r = c.cli("exec", "c", "--", "sh", "-c",
              "for d in /sys/class/net/*; do [ \"$(cat $d/address)\" = \"$1\" ] && IF=${d##*/}; done; "
              "ip addr add 10.99.1.200/24 dev $IF", "sh", c.client.get_network("red").members[0].mac)
    assert r.returncode == 0, r.stderr
    assert not ping(c, "c", blue["a"], tries=1)
    assert not ping(c, "c", "a", tries=1)  # and its /etc/hosts does not name a
    assert red["c"].startswith("10.77.")

    # Refused while VMs use it.
    r = c.cli("network", "rm", "blue")
    assert r.returncode == 4 and "used by VM a, b" in r.stderr

    # Stable across a restart of b (and of the daemon: the switch is re-used).
    assert c.cli("stop", "b").returncode == 0
    c.kill_daemon()
    c.start_daemon()
    assert c.cli("start", "b").returncode == 0
    assert addresses(c, "blue") == blue
    assert c.client.get_network("blue").switch_pid == switch_pid
    assert ping(c, "a", "b")

    # Removed: after its VMs; the switch stops.
    assert c.cli("rm", "--force", "a", "b").returncode == 0
    assert c.cli("network", "rm", "blue").returncode == 0
    deadline = time.monotonic() + 5
    while process.is_alive(switch_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process.is_alive(switch_pid)
    assert not Path(c.home / "networks" / "blue").exists()
    assert "blue" not in c.cli("network", "ls").stdout
