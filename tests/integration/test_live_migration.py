"""Live migration between two real corrald on one machine (two homes; the target listens on 127.0.0.1 with TLS): a
running tiny VM writing numbered, synced lines moves to the target and carries on there (no line lost, same id and
MAC, listed running there, gone here); a migration whose target QEMU is killed mid-way leaves the VM running here and
nothing there."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import struct
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.engine import process
from corral.vm.spec import VMSpec
from tests.conftest import CorralEnv, guest, make_env, ok, show, start_daemon, start_daemon_with, until
from tests.integration.test_remote_access import free_port

pytestmark = pytest.mark.vm

FIND_DATA = "for s in /sys/block/vd*; do [ \"$(cat $s/serial 2>/dev/null)\" = data ] && echo ${s##*/}; done"
MARK = "corral-live-migration-mark"
WRITER = "i=0; while :; do i=$((i+1)); echo $i >> /root/lines; sync; sleep 0.05; done"


def qemus_of(home: Path) -> list[int]:
    """The VMs' QEMU processes whose command line is in ``home`` (both hosts' QEMUs of a VM carry the same UUID, so
    the UUID alone does not tell them apart; the accelerator probe's QEMU has none)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        argv = process.cmdline(int(entry.name))
        if argv and "qemu-system" in argv[0] and "-uuid" in argv and any(str(home) + "/" in a for a in argv):
            found.append(int(entry.name))
    return found


def kill_qemus(*homes: Path) -> None:
    for home in homes:
        for pid in qemus_of(home):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def hosts(corral_home: CorralEnv) -> Iterator[tuple[CorralEnv, CorralEnv, dict[str, Any]]]:
    """A (the source, unix socket only) and B (the target, listening with TLS), and what A needs to reach B."""
    b_home = Path(tempfile.mkdtemp(prefix="cb-", dir="/tmp"))
    b = make_env(b_home)
    try:
        start_daemon_with(corral_home, {})
        port = free_port()
        for k in ("CORRAL_URL", "CORRAL_TOKEN"):
            b.env.pop(k, None)
        start_daemon_with(b, {"CORRAL_LISTEN": f"127.0.0.1:{port}"})
        assert b.cli("user", "add", "mig", "--role", "admin", "--no-password").returncode == 0
        r = b.cli("token", "create", "--user", "mig", "--ttl", "1h", "--description", "migration")
        assert r.returncode == 0, r.stderr
        target = {"to_url": f"https://127.0.0.1:{port}", "token": r.stdout.strip(),
                  "cert_pem": (b.home / "tls" / "cert.pem").read_text()}
        yield corral_home, b, target
    finally:
        if os.environ.get("CORRAL_TEST_SHOW_LOGS"):
            for c in (corral_home, b):
                log = c.home / "corrald.log"
                print(f"--- {log}\n" + (log.read_text()[-6000:] if log.exists() else "(none)"))
        for c in (b, corral_home):
            pid = c.daemon_pid()
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
        kill_qemus(b_home, corral_home.home)
        b.cleanup()
        shutil.rmtree(b_home, ignore_errors=True)


def migrate(a: CorralEnv, name: str, target: dict[str, Any], timeout: float = 300) -> httpx.Response:
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(a.settings.socket)), base_url="http://corral",
                      timeout=timeout) as h:
        return h.post(f"/v1/vms/{name}/migrate", json=target)


def lines(c: CorralEnv, name: str) -> list[int]:
    return [int(x) for x in guest(c, name, "sync; cat /root/lines").split()]


def launch_writer(a: CorralEnv, name: str) -> None:
    ok(a, "launch", name, "--memory", "256M")
    guest(a, name, f"({WRITER}) >/dev/null 2>&1 &")
    until(lambda: len(lines(a, name)) > 10, 60, "the guest writing lines")


def test_live_migration_moves_a_running_vm(hosts: tuple[CorralEnv, CorralEnv, dict[str, Any]],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    a, b, target = hosts
    launch_writer(a, "mv")
    ok(a, "disk", "add", "mv", "data", "--size", "64M")  # an extra disk moves too
    until(lambda: guest(a, "mv", FIND_DATA).strip(), 30, "the guest seeing the extra disk")
    guest(a, "mv", f"d=$({FIND_DATA}); echo {MARK} | dd of=/dev/$d bs=512 seek=1000 conv=fsync 2>/dev/null")
    before = show(a, "mv")
    written = lines(a, "mv")

    r = migrate(a, "mv", target)
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["vm"] == "mv" and result["downtime_ms"] > 0 and result["ram_bytes"] > 0, result

    # gone from A: record, folder and QEMU
    assert a.cli("show", "mv").returncode != 0
    assert not (a.settings.vms_dir / "mv").exists()
    assert qemus_of(a.home) == []
    assert not process.is_alive(before["pid"])

    # on B: the same VM, running, its guest carrying on
    after = show(b, "mv")
    assert after["state"] == "running", after
    assert after["id"] == before["id"] and after["mac"] == before["mac"], (before, after)
    assert len(qemus_of(b.home)) == 1
    time.sleep(1.0)
    # the file as the target's disk has it (the page cache dropped): every line, none missing, and more since
    got = [int(x) for x in guest(b, "mv", "sync; echo 3 > /proc/sys/vm/drop_caches; cat /root/lines").split()]
    assert got[: len(written)] == written
    assert got == list(range(1, len(got) + 1)), "no line lost or repeated"
    assert len(got) > len(written) + 5, "the guest writes on after the migration"
    on_disk = guest(b, "mv", f"d=$({FIND_DATA}); echo 3 > /proc/sys/vm/drop_caches; "
                    "dd if=/dev/$d bs=512 skip=1000 count=1 2>/dev/null | head -n 1")
    assert on_disk.strip() == MARK
    assert "data" in ok(b, "disk", "ls", "mv")
    listed = b.cli("ls", "--json")
    assert '"mv"' in listed.stdout and "running" in listed.stdout
    with capsys.disabled():
        print(f"\nlive migration of a 256M tiny VM: {result['seconds']:.2f}s in all, downtime "
              f"{result['downtime_ms']} ms, {result['ram_bytes'] >> 20} MiB of state, "
              f"{result['disk_bytes'] >> 20} MiB of disk, stream {result['migrate_ms']} ms")


def test_failed_migration_leaves_the_vm_running_on_the_source(
        hosts: tuple[CorralEnv, CorralEnv, dict[str, Any]]) -> None:
    a, b, target = hosts
    launch_writer(a, "stay")
    before = show(a, "stay")

    # a target that refuses (a VM of that name there): one line, nothing changed on either side
    b.client.create_vm({"name": "stay", "image": "tiny"})
    r = migrate(a, "stay", target)
    assert r.status_code >= 400 and "already exists" in r.json()["message"], r.text
    assert show(a, "stay")["state"] == "running"
    assert show(b, "stay")["state"] == "stopped"
    ok(b, "rm", "stay")

    # B's QEMU for the arriving VM is killed once it is ready to receive (during the disk copy or the stream)
    killed: list[int] = []
    log = b.home / "corrald.log"

    def kill_target_qemu() -> bool:
        pids = qemus_of(b.home)
        if not pids or "stay: arriving from" not in log.read_text():
            return False
        os.kill(pids[0], signal.SIGKILL)
        killed.append(pids[0])
        return True

    def killer() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not kill_target_qemu():
            time.sleep(0.02)

    t = threading.Thread(target=killer)
    t.start()
    r = migrate(a, "stay", target)
    t.join()
    assert killed, "the target's QEMU was found and killed"
    assert r.status_code >= 400, r.text

    # A: the VM runs on, its guest answers and is still writing
    s = show(a, "stay")
    assert s["state"] == "running" and s["pid"] == before["pid"], s
    n = len(lines(a, "stay"))
    until(lambda: len(lines(a, "stay")) > n, 30, "the guest writing on")
    got = lines(a, "stay")
    assert got == list(range(1, len(got) + 1))

    # B: nothing left (record, folder, QEMU)
    until(lambda: b.cli("show", "stay").returncode != 0, 30, "the target's record removed")
    assert not (b.settings.vms_dir / "stay").exists()
    assert qemus_of(b.home) == []
    assert not process.is_alive(killed[0])

    # a second attempt succeeds (nothing stale on either side)
    r = migrate(a, "stay", target)
    assert r.status_code == 200, r.text
    assert show(b, "stay")["state"] == "running"


@pytest.mark.parametrize("point", ["migrate.during-mirror", "migrate.before-commit"])
def test_source_daemon_killed_mid_migration_is_rolled_back(
        hosts: tuple[CorralEnv, CorralEnv, dict[str, Any]], point: str) -> None:
    """corrald of the source SIGKILLs itself mid-way (its disks mirrored; or the state sent, its vCPUs stopped): the
    next one rolls the migration back: the VM runs on the source, the target's arriving copy is removed."""
    a, b, target = hosts
    launch_writer(a, "crash")
    pid = show(a, "crash")["pid"]
    a.kill_daemon()
    start_daemon(a.settings, environ=dict(a.env, CORRAL_FAULT=point))
    with pytest.raises(httpx.HTTPError):
        r = migrate(a, "crash", target)
        raise AssertionError(f"the daemon answered: {r.status_code} {r.text}")
    until(lambda: a.daemon_pid() is None, 15, "the source daemon killed at the fault point")
    assert process.is_alive(pid), "the VM's QEMU outlives the daemon"
    a.start_daemon()

    s = show(a, "crash")
    assert s["state"] == "running" and s["pid"] == pid, s
    n = len(lines(a, "crash"))
    until(lambda: len(lines(a, "crash")) > n, 30, "the guest writing on")
    got = lines(a, "crash")
    assert got == list(range(1, len(got) + 1))
    events = [e.message for e in a.client.events(vm="crash")]
    assert any("migrate interrupted by a daemon restart: rolled back" in m for m in events), events[-5:]

    until(lambda: b.cli("show", "crash").returncode != 0, 30, "the target's copy removed")
    assert not (b.settings.vms_dir / "crash").exists()
    assert qemus_of(b.home) == []


def test_source_daemon_killed_after_the_hand_over_removes_its_copy(
        hosts: tuple[CorralEnv, CorralEnv, dict[str, Any]]) -> None:
    """corrald of the source dies once the target runs the VM, before its own copy is gone: the next one asks the
    target (the VM runs there: 409) and removes its copy; the VM runs on the target only."""
    a, b, target = hosts
    launch_writer(a, "done")
    pid = show(a, "done")["pid"]
    a.kill_daemon()
    start_daemon(a.settings, environ=dict(a.env, CORRAL_FAULT="migrate.after-commit"))
    with pytest.raises(httpx.HTTPError):
        r = migrate(a, "done", target)
        raise AssertionError(f"the daemon answered: {r.status_code} {r.text}")
    until(lambda: a.daemon_pid() is None, 15, "the source daemon killed at the fault point")
    a.start_daemon()
    assert a.cli("show", "done").returncode != 0
    assert not (a.settings.vms_dir / "done").exists()
    until(lambda: not process.is_alive(pid), 10, "the source's QEMU gone")
    assert show(b, "done")["state"] == "running"
    got = lines(b, "done")
    assert got == list(range(1, len(got) + 1))
    events = [e.message for e in a.client.events(vm="done")]
    assert any("migrate interrupted by a daemon restart: finished" in m for m in events), events[-5:]


NBD_REP_ERR_TLS_REQD = (1 << 31) + 5


def nbd_reply_to_plain_client(host: str, port: int) -> int:
    """The reply type an NBD server gives a client that asks for the export list without TLS."""
    with socket.create_connection((host, port), timeout=10) as s:
        hello = b""
        while len(hello) < 18:
            hello += s.recv(18 - len(hello))
        assert hello[:16] == b"NBDMAGICIHAVEOPT", hello
        s.sendall(struct.pack(">I", 3))  # fixed newstyle, no zeroes
        s.sendall(b"IHAVEOPT" + struct.pack(">II", 3, 0))  # NBD_OPT_LIST
        reply = b""
        while len(reply) < 20:
            reply += s.recv(20 - len(reply))
        _, _, kind, _ = struct.unpack(">QIII", reply)
        return int(kind)


def test_target_daemon_killed_while_a_vm_arrives(hosts: tuple[CorralEnv, CorralEnv, dict[str, Any]]) -> None:
    """The target's corrald dies while a VM waits there for its state: the next one removes it (QEMU killed by pid,
    record and folder gone). Its disks' NBD export meanwhile refuses a client without TLS (the migration's key)."""
    _, b, _ = hosts
    spec = VMSpec(name="ghost", image="tiny", memory=256).model_dump(mode="json")
    req = {"spec": spec, "id": str(uuid.uuid4()), "mac": "52:54:00:12:34:56", "created_at": time.time(),
           "disks": [{"root": True, "name": "", "size": 1 << 30}], "source": "nowhere"}
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(b.settings.socket)), base_url="http://corral",
                      timeout=120) as h:
        r = h.post("/v1/migrations/incoming", json=req)
    assert r.status_code == 201, r.text
    answer = r.json()
    assert show(b, "ghost")["state"] == "incoming"
    assert nbd_reply_to_plain_client(answer["nbd_host"], answer["nbd_port"]) == NBD_REP_ERR_TLS_REQD
    pids = qemus_of(b.home)
    assert len(pids) == 1
    b.kill_daemon()
    assert process.is_alive(pids[0]), "its QEMU outlives the daemon"
    b.start_daemon()
    assert b.cli("show", "ghost").returncode != 0
    assert not (b.settings.vms_dir / "ghost").exists()
    until(lambda: not process.is_alive(pids[0]), 10, "the arriving VM's QEMU killed")
    events = [e.message for e in b.client.events(vm="ghost")]
    assert any("migrate-in interrupted by a daemon restart: rolled back" in m for m in events), events[-5:]
