"""Sandbox runs and ephemeral VMs, through the real CLI: a sample that tries to get out, one that never ends, bad
input, and a VM whose disk reverts at every start (docs/explanation/sandbox.md)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CorralEnv

pytestmark = pytest.mark.vm


def host_address() -> str:
    """The host's own address (the one its default route leaves from; no packet is sent), else loopback."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))
        return str(s.getsockname()[0])
    return "127.0.0.1"


@contextlib.contextmanager
def listener() -> Iterator[tuple[int, list[str]]]:
    """A TCP listener on every host address: (its port, the peers that connected)."""
    seen: list[str] = []
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("0.0.0.0", 0))
    srv.listen(8)
    srv.settimeout(0.2)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, peer = srv.accept()
            except (TimeoutError, OSError):
                continue
            seen.append(str(peer))
            conn.close()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1], seen
    finally:
        stop.set()
        t.join()
        srv.close()


SAMPLE = r"""#!/bin/sh
echo "sample starts"
mkdir -p /root/loot && echo secret > /root/loot/stolen.txt
echo "# changed by the sample" >> /etc/profile
rm -f /etc/shells
sleep 2 &
(echo "child $$"; sleep 1)
echo "ifaces: $(ls /sys/class/net | tr '\n' ' ')"
nslookup evil.example.com; echo "nslookup=$?"
nslookup exfil.example.org 10.0.2.3; echo "nslookup-nat-dns=$?"
wget -O /dev/null http://10.0.2.2:$PORT/; echo "wget-nat-host=$?"
wget -O /dev/null http://$HOSTIP:$PORT/; echo "wget-host=$?"
nc -w 3 127.0.0.1 $PORT </dev/null; echo "nc-loopback=$?"
if [ -e "$API" ]; then echo "api=reachable"; else echo "api=absent"; fi
wait
"""


def vms_and_networks(c: CorralEnv) -> tuple[list[str], list[str]]:
    vms = [v["name"] for v in json.loads(c.cli("ls", "--all", "--json").stdout)]
    nets = [n["name"] for n in json.loads(c.cli("network", "ls", "--json").stdout)]
    return vms, nets


def test_sandbox_egress_log_records_and_blocks(corral: CorralEnv, tmp_path: Path) -> None:
    c = corral
    host = host_address()
    with listener() as (port, seen):
        sample = tmp_path / "escape.sh"
        sample.write_text(SAMPLE.replace("$PORT", str(port)).replace("$HOSTIP", host)
                          .replace("$API", str(c.settings.socket)))
        out = tmp_path / "out.json"
        r = c.cli("sandbox", "run", str(sample), "--net", "egress-log", "--timeout", "2m", "--report", str(out),
                  timeout=900)
        assert r.returncode == 0, r.stderr
        assert seen == []  # nothing reached the host, on any of its addresses
    rep = json.loads(out.read_text())
    stdout = rep["stdout"]["text"]
    assert rep["exit_code"] == 0 and not rep["timed_out"], rep
    assert "sample starts" in stdout and "api=absent" in stdout
    for attempt in ("nslookup", "nslookup-nat-dns", "wget-nat-host", "wget-host", "nc-loopback"):
        assert f"{attempt}=0" not in stdout and f"{attempt}=" in stdout, stdout  # tried, and failed
    assert "ifaces: eth0 lo" in stdout or "ifaces: lo eth0" in stdout, stdout  # its private NIC only
    # Connections, from the sink: every attempt recorded, by name and by address.
    conns = rep["connections"]
    names = {x["name"] for x in conns if x["proto"] == "dns"}
    assert {"evil.example.com", "exfil.example.org"} <= names, conns
    tcp = {(x["dst"], x["port"]) for x in conns if x["proto"] == "tcp"}
    assert ("10.0.2.2", port) in tcp and (host, port) in tcp, conns
    assert any(x["proto"] == "dns" and x["dst"] == "10.0.2.3" for x in conns)  # QEMU's NAT DNS: not there
    # Processes, sampled in the guest.
    comms = [p["comm"] for p in rep["processes"]]
    assert {"escape.sh", "sleep", "mkdir", "rm", "wget", "nslookup", "nc"} <= set(comms), comms
    assert all(p["descendant"] for p in rep["processes"] if p["comm"] in ("wget", "nslookup", "sleep"))
    assert "tracer" in rep["processes_note"]
    # Files, read from the disk on the host.
    changes = {(f["path"], f["change"]) for f in rep["files"]}
    assert {("/root/loot", "created"), ("/root/loot/stolen.txt", "created"), ("/etc/profile", "modified"),
            ("/etc/shells", "deleted")} <= changes, changes
    assert rep["screenshot"] is None and "display" in rep["screenshot_note"]
    assert "deleted" in r.stdout and "evil.example.com" in r.stdout  # the summary
    assert vms_and_networks(c) == ([], [])  # the VM, its network and the sink are gone


@pytest.mark.slow  # about a minute on a busy host: a boot, the 10 s timeout, the stop
def test_sandbox_none_timeout_and_bad_input(corral: CorralEnv, tmp_path: Path) -> None:
    c = corral
    sample = tmp_path / "forever.sh"
    sample.write_text("#!/bin/sh\necho \"ifaces: $(ls /sys/class/net | tr '\\n' ' ')\"\nsleep 100000\n")
    for args, message in (
        (["sandbox", "run", str(tmp_path / "missing.sh")], "is not a file"),
        (["sandbox", "run", str(sample), "--net", "bridged"], "--net 'bridged': use none, isolated or egress-log"),
        (["sandbox", "run", str(sample), "--timeout", "soon"], "--timeout 'soon'"),
        (["sandbox", "run", str(sample), "--image", "no-such-image"], "no-such-image"),
    ):
        r = c.cli(*args)
        assert r.returncode != 0 and message in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert vms_and_networks(c) == ([], [])

    out = tmp_path / "out.json"
    r = c.cli("sandbox", "run", str(sample), "--timeout", "10s", "--keep", "--report", str(out), timeout=900)
    assert r.returncode == 0, r.stderr
    rep = json.loads(out.read_text())
    assert rep["timed_out"] and rep["exit_code"] is None, rep
    assert "timed out" in r.stdout
    assert rep["stdout"]["text"].strip() == "ifaces: lo", rep["stdout"]  # --net none: no NIC but lo
    assert rep["connections"] is None and "no network interface" in rep["connections_note"]
    assert any(p["comm"] == "sleep" for p in rep["processes"])
    if os.geteuid() == 0:  # a root daemon: the sandbox's QEMU dropped to nobody, as /proc showed during the run
        assert any("uid 65534" in p and "-runas nobody" in p for p in rep["protections"]), rep["protections"]
    # --keep: the VM stays, stopped, its disk as the sample left it; no network was made for it.
    kept = json.loads(c.cli("show", rep["vm"], "--json").stdout)
    spec = kept["spec"]
    assert kept["state"] == "stopped" and spec["nat"] is False and spec["labels"] == {"sandbox": "true"}
    assert spec["ephemeral"] is False  # started again, it would show what the sample left
    assert c.cli("rm", rep["vm"]).returncode == 0
    assert vms_and_networks(c) == ([], [])


@pytest.mark.slow  # about a minute on a busy host: a boot, a clean stop, a second boot
def test_ephemeral_vm_forgets_its_disk(corral: CorralEnv) -> None:
    c = corral
    assert c.cli("launch", "eph", "--ephemeral").returncode == 0
    assert json.loads(c.cli("show", "eph", "--json").stdout)["spec"]["ephemeral"] is True
    r = c.cli("exec", "eph", "--", "sh", "-c", "echo kept > /root/note && sync && cat /root/note")
    assert r.returncode == 0 and r.stdout.strip() == "kept", r.stderr
    assert c.cli("stop", "eph").returncode == 0
    assert c.cli("start", "eph").returncode == 0
    r = c.cli("exec", "eph", "--", "sh", "-c", "test -e /root/note && echo still-there || echo gone")
    assert r.stdout.strip() == "gone", (r.stdout, r.stderr)


def test_sandbox_from_a_template_in_every_net_mode(corral: CorralEnv, tmp_path: Path) -> None:
    """A template's machine has the NAT NIC: kept, but restrict=on and no forwards; egress-log reads what the guest
    sent from QEMU's filter-dump, --net none also sets the NIC's link down, isolated is the restricted NIC alone. The
    image path's sample and checks, a listener on every host address throughout."""
    c = corral
    (tmp_path / "x.sh").write_text("#!/bin/sh\n")
    for args, message in ((["--template", "nope"], "nope"), (["--template", "nope", "--image", "tiny"], "not both")):
        r = c.cli("sandbox", "run", str(tmp_path / "x.sh"), *args)
        assert r.returncode != 0 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert vms_and_networks(c) == ([], [])
    assert c.cli("launch", "src", "--memory", "128M").returncode == 0
    assert c.cli("template", "create", "base", "--from", "src").returncode == 0
    assert c.cli("rm", "--force", "src").returncode == 0
    host = host_address()
    with listener() as (port, seen):
        sample = tmp_path / "escape.sh"
        sample.write_text(SAMPLE.replace("$PORT", str(port)).replace("$HOSTIP", host)
                          .replace("$API", str(c.settings.socket))
                          + 'echo "link: $(cat /sys/class/net/eth0/operstate)"\n')
        out = tmp_path / "out.json"
        r = c.cli("sandbox", "run", str(sample), "--template", "base", "--net", "egress-log", "--timeout", "2m",
                  "--report", str(out), timeout=900)
        assert r.returncode == 0, r.stderr
        rep = json.loads(out.read_text())
        out_none = tmp_path / "none.json"
        r_none = c.cli("sandbox", "run", str(sample), "--template", "base", "--timeout", "2m",
                       "--report", str(out_none), timeout=900)
        assert r_none.returncode == 0, r_none.stderr
        short = tmp_path / "short.sh"  # --net isolated: the restricted NIC alone, no capture
        short.write_text(f"#!/bin/sh\nwget -O /dev/null http://10.0.2.2:{port}/; echo \"wget-nat-host=$?\"\n")
        out_iso = tmp_path / "isolated.json"
        r_iso = c.cli("sandbox", "run", str(short), "--template", "base", "--net", "isolated", "--report",
                      str(out_iso), timeout=900)
        assert r_iso.returncode == 0, r_iso.stderr
        assert seen == []  # nothing reached the host, on any of its addresses
    assert rep["source"] == "template:base" and rep["exit_code"] == 0 and not rep["timed_out"], rep
    for report in (rep, json.loads(out_none.read_text())):
        stdout = report["stdout"]["text"]
        assert "sample starts" in stdout and "api=absent" in stdout, stdout
        for attempt in ("nslookup", "nslookup-nat-dns", "wget-nat-host", "wget-host", "nc-loopback"):
            assert f"{attempt}=0" not in stdout and f"{attempt}=" in stdout, stdout  # tried, and failed
        assert any("restrict=on" in p for p in report["protections"]), report["protections"]
        changes = {(f["path"], f["change"]) for f in report["files"]}
        assert {("/root/loot/stolen.txt", "created"), ("/etc/shells", "deleted")} <= changes, changes
    assert "link: up" in rep["stdout"]["text"]
    rep_none = json.loads(out_none.read_text())
    assert "link: down" in rep_none["stdout"]["text"] and rep_none["connections"] is None
    # Connections, from the frames QEMU's filter-dump saw the guest send: every attempt, by name and by address.
    conns = rep["connections"]
    names = {x["name"] for x in conns if x["proto"] == "dns"}
    assert {"evil.example.com", "exfil.example.org"} <= names, conns
    tcp = {(x["dst"], x["port"]) for x in conns if x["proto"] == "tcp"}
    assert ("10.0.2.2", port) in tcp and (host, port) in tcp, conns
    assert "filter-dump" in rep["connections_note"]
    rep_iso = json.loads(out_iso.read_text())
    assert "wget-nat-host=" in rep_iso["stdout"]["text"] and "wget-nat-host=0" not in rep_iso["stdout"]["text"]
    assert rep_iso["connections"] is None and any("restrict=on" in p for p in rep_iso["protections"])
    assert vms_and_networks(c) == ([], [])  # the sandbox VMs are gone, no network was made
    assert not list((c.settings.home / "sandbox").iterdir())
