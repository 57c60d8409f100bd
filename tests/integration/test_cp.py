"""`corral cp` against a real guest: a 64 MiB file and a directory tree round-trip with their contents and modes,
errors are one line and change nothing, and an interrupted copy leaves no temporary on either side. By default the
bytes go over a virtio-serial port the daemon plugs for the copy (and removes after it: checked from the guest's
side, the VM's directory and the operations journal); ``--via ssh`` and ``--via agent`` do the same."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from corral.api.models import API_PREFIX
from corral.client import APIError, Client, DaemonUnavailable
from corral.client import port_upload as client_files
from corral.store.db import Store
from tests.conftest import CORRAL, CorralEnv

pytestmark = pytest.mark.vm

VM = "cpvm"
BIG = 64 << 20


def launch(c: CorralEnv) -> None:
    r = c.cli("launch", VM, "--memory", "256M", "--disk", "2G")
    assert r.returncode == 0, r.stderr


def guest(c: CorralEnv, script: str) -> str:
    r = c.cli("exec", VM, "--", "sh", "-c", script)
    assert r.returncode == 0, (script, r.stderr)
    return r.stdout


def copy(c: CorralEnv, *args: str, via: str = "virtio") -> float:
    """Run `corral cp`; checks it went ``via`` that channel, returns the MiB/s it reported."""
    r = c.cli("cp", *args, timeout=900)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    match = re.search(r"\(([\d.]+) MiB/s\) via (\w+)$", r.stdout.strip())
    assert match, r.stdout
    assert match.group(2) == via, (args, r.stdout, r.stderr)
    return float(match.group(1))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def write_random(path: Path, size: int, mode: int) -> None:
    with path.open("wb") as f:
        for _ in range(size >> 20):
            f.write(os.urandom(1 << 20))
    path.chmod(mode)


def no_temporaries(c: CorralEnv, *dirs: str) -> str:
    return guest(c, f"find {' '.join(dirs)} -name '*corral-tmp*' 2>/dev/null; true")


def data_ports(c: CorralEnv) -> list[str]:
    """What is left of copies' data ports: ports the guest still sees, socket files, journalled operations."""
    names = guest(c, "cat /sys/class/virtio-ports/*/name").split()
    left = [n for n in names if n.startswith("org.corral.data.")]
    left += [p.name for p in c.settings.vm_paths(VM).root.glob("data-*.sock")]
    store = Store(c.settings.database)
    try:
        left += [f"operation {op.kind}" for op in store.list_operations()]
    finally:
        store.close()
    return left


@pytest.mark.parametrize("via", ["virtio", "ssh"])
def test_big_file_round_trip(corral: CorralEnv, tmp_path: Path, via: str) -> None:
    launch(corral)
    src = tmp_path / "big.bin"
    size = BIG if via == "virtio" else BIG // 4  # SSH runs at a few MiB/s under TCG: 16 MiB tell the same
    write_random(src, size, 0o640)

    def cp(c: CorralEnv, *args: str) -> float:
        return copy(c, "--via", via, *args, via=via)

    up = cp(corral, str(src), f"{VM}:/root/")  # into a directory: keeps its name
    sum_, mode = guest(corral, "sha256sum /root/big.bin | cut -d' ' -f1; stat -c %a /root/big.bin").split()
    assert (sum_, mode) == (sha256(src), "640")

    back = tmp_path / "back.bin"
    down = cp(corral, f"{VM}:big.bin", str(back))  # relative guest paths start at /root
    assert sha256(back) == sha256(src)
    assert back.stat().st_mode & 0o7777 == 0o640
    assert back.stat().st_mtime == pytest.approx(src.stat().st_mtime, abs=1)
    print(f"\ncp throughput via {via}, {size >> 20} MiB: host->guest {up:.1f} MiB/s, guest->host {down:.1f} MiB/s")

    # Replacing an existing file is atomic (mv -f over it), and leaves no temporary.
    small = tmp_path / "small.txt"
    small.write_text("replaced\n")
    cp(corral, str(small), f"{VM}:/root/big.bin")
    assert guest(corral, "cat /root/big.bin") == "replaced\n"

    # A size that is no multiple of the guest's blocks, to ext4 (written with O_DIRECT, the last block without)
    # and to tmpfs (/tmp: it refuses O_DIRECT, so through the page cache): the same bytes, mode and mtime.
    odd = tmp_path / "odd.bin"
    odd.write_bytes(os.urandom((3 << 20) + 3))
    odd.chmod(0o600)
    os.utime(odd, (1_700_000_000, 1_700_000_000))
    for where in ("/root/odd.bin", "/tmp/odd.bin"):
        cp(corral, str(odd), f"{VM}:{where}")
        assert guest(corral, f"sha256sum {where} | cut -d' ' -f1; stat -c '%a %Y' {where}").split() == \
            [sha256(odd), "600", "1700000000"]
    odd.unlink()
    assert no_temporaries(corral, "/root", "/var/tmp", "/tmp") == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back.bin", "big.bin", "small.txt"]
    assert data_ports(corral) == []


def snapshot(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every path under ``root``: its permission bits and, for files, its content."""
    found: dict[str, tuple[int, bytes | None]] = {".": (root.stat().st_mode & 0o7777, None)}
    for path in sorted(root.rglob("*")):
        found[str(path.relative_to(root))] = (path.stat().st_mode & 0o7777,
                                              path.read_bytes() if path.is_file() else None)
    return found


@pytest.mark.parametrize("via", ["virtio", "ssh"])
def test_tree_round_trip(corral: CorralEnv, tmp_path: Path, via: str) -> None:
    launch(corral)

    def cp(c: CorralEnv, *args: str) -> float:
        return copy(c, "--via", via, *args, via=via)

    tree = tmp_path / "tree"
    (tree / "sub" / "deeper").mkdir(parents=True)
    (tree / "empty").mkdir()
    (tree / "a.txt").write_text("alpha\n")
    (tree / "sub" / "run.sh").write_text("#!/bin/sh\necho ran\n")
    (tree / "sub" / "run.sh").chmod(0o755)
    (tree / "sub" / "deeper" / "secret").write_bytes(os.urandom(300_000))
    (tree / "sub" / "deeper" / "secret").chmod(0o600)
    (tree / "sub").chmod(0o750)
    tree.chmod(0o705)

    cp(corral, str(tree), f"{VM}:/root/")
    assert guest(corral, "/root/tree/sub/run.sh") == "ran\n"
    assert guest(corral, "stat -c '%a %n' /root/tree /root/tree/sub /root/tree/empty "
                         "/root/tree/sub/deeper/secret").split("\n")[:4] == [
        "705 /root/tree", "750 /root/tree/sub", "755 /root/tree/empty", "600 /root/tree/sub/deeper/secret"]

    cp(corral, "-r", f"{VM}:/root/tree", str(tmp_path / "back"))
    assert snapshot(tmp_path / "back") == snapshot(tree)

    # A tree is never merged into an existing one.
    r = corral.cli("cp", "--via", via, str(tree), f"{VM}:/root/")
    assert r.returncode == 4 and "already exists" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert no_temporaries(corral, "/root", "/var/tmp", "/tmp") == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back", "tree"]
    assert data_ports(corral) == []


def test_agent_path_and_fallback(corral: CorralEnv, tmp_path: Path) -> None:
    """--via agent copies a file and a tree both ways; auto takes the virtio-serial port and says so with
    --verbose; with no SSH to the VM, --via ssh refuses in one line and auto still copies."""
    launch(corral)
    r = corral.cli("cp", "-v", "/etc/hostname", f"{VM}:/root/h1")
    assert r.returncode == 0 and "copied via a virtio-serial port plugged for the copy" in r.stderr, r.stderr
    r = corral.cli("cp", "-v", "--via", "ssh", "/etc/hostname", f"{VM}:/root/h1")
    assert r.returncode == 0 and "copied via ssh to root@127.0.0.1:" in r.stderr, r.stderr
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "x.bin").write_bytes(os.urandom(100_000))
    (tree / "sub" / "x.bin").chmod(0o600)
    src = tmp_path / "f.bin"
    write_random(src, 1 << 20, 0o640)

    copy(corral, "--via", "agent", str(src), f"{VM}:/root/f.bin", via="agent")
    copy(corral, "--via", "agent", str(tree), f"{VM}:/root/", via="agent")
    copy(corral, "--via", "agent", f"{VM}:/root/f.bin", str(tmp_path / "f.back"), via="agent")
    copy(corral, "--via", "agent", f"{VM}:/root/tree", str(tmp_path / "tree.back"), via="agent")
    assert sha256(tmp_path / "f.back") == sha256(src) and (tmp_path / "f.back").stat().st_mode & 0o777 == 0o640
    assert snapshot(tmp_path / "tree.back") == snapshot(tree)

    # The VM's SSH is not available (as for an image without an SSH server: no pinned host key).
    corral.settings.vm_paths(VM).known_hosts.unlink()
    r = corral.cli("cp", "-v", str(src), f"{VM}:/root/g.bin")
    assert r.returncode == 0 and r.stdout.strip().endswith("via virtio"), (r.stdout, r.stderr)
    copy(corral, f"{VM}:/root/tree", str(tmp_path / "tree.again"))
    assert snapshot(tmp_path / "tree.again") == snapshot(tree)
    r = corral.cli("cp", "--via", "ssh", str(src), f"{VM}:/root/h.bin")
    assert r.returncode == 4 and len(r.stderr.strip().splitlines()) == 1 and "no SSH host key" in r.stderr
    assert guest(corral, "sha256sum /root/g.bin | cut -d' ' -f1").strip() == sha256(src)
    assert guest(corral, "ls /root") == "f.bin\ng.bin\nh1\ntree\n"
    assert no_temporaries(corral, "/root", "/var/tmp", "/tmp") == ""


ERRORS: list[tuple[list[str], int, str]] = [
    (["{src}", f"{VM}:/nope/dir/x.bin"], 3, "guest directory /nope/dir does not exist"),
    (["{src}", f"{VM}:/nope/"], 3, "guest directory /nope does not exist"),
    (["{tmp}/missing.bin", f"{VM}:/root/"], 3, "no such file or directory"),
    ([f"{VM}:/root/missing.bin", "{tmp}/"], 3, "no such file or directory in the guest: /root/missing.bin"),
    ([f"{VM}:/etc/hostname", "{tmp}/no/such/dir/"], 3, "host directory"),
    (["{src}", "{tmp}/x"], 2, "write one side as VM:PATH"),
    ([f"{VM}:/a", f"{VM}:/b"], 2, "one side must be a host path"),
    (["{src}", "ghost:/root/"], 3, "no VM named 'ghost'"),
]


def test_errors_are_one_line_and_change_nothing(corral: CorralEnv, tmp_path: Path) -> None:
    launch(corral)
    src = tmp_path / "f.txt"
    src.write_text("data\n")
    before_host = sorted(p.name for p in tmp_path.iterdir())
    before_guest = guest(corral, "ls -a / /root /var/tmp")
    for (args, code, words), via in [(e, v) for e in ERRORS for v in ("auto", "virtio", "agent")]:
        r = corral.cli("cp", "--via", via, *[a.format(src=src, tmp=tmp_path) for a in args])
        assert r.returncode == code, (args, r.returncode, r.stdout, r.stderr)
        err = r.stderr.strip()
        assert err.startswith("error:") and len(err.splitlines()) == 1 and words in err, (args, err)
        assert "Traceback" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before_host
    assert guest(corral, "ls -a / /root /var/tmp") == before_guest
    assert data_ports(corral) == []


def test_server_refuses_before_reading_and_stopped_vm(corral: CorralEnv, tmp_path: Path) -> None:
    launch(corral)
    # The API checks the destination itself (a client that skips the stat).
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(corral.settings.socket)),
                      base_url="http://corral" + API_PREFIX) as http:
        r = http.put(f"/vms/{VM}/files", params={"path": "/nope/x"}, content=b"abc")
        assert r.status_code == 404 and "guest directory /nope does not exist" in r.json()["message"]
        r = http.put(f"/vms/{VM}/files", params={"path": "/root", "kind": "file"}, content=b"abc")
        assert r.status_code == 409
        r = http.get(f"/vms/{VM}/files/stat", params={"path": "/etc"})
        assert r.json()["kind"] == "dir"
    assert corral.cli("stop", VM).returncode == 0
    src = tmp_path / "f.txt"
    src.write_text("data\n")
    r = corral.cli("cp", str(src), f"{VM}:/root/")
    assert r.returncode == 4, r.stderr
    assert "cannot copy files to or from VM 'cpvm' while it is stopped" in r.stderr
    r = corral.cli("cp", "--via", "virtio", str(src), f"{VM}:/root/")
    assert r.returncode == 4 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "cannot copy over a virtio-serial port: cannot copy files to or from VM 'cpvm' while it is stopped" \
        in r.stderr


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_interrupted_copies_leave_no_temporaries(corral: CorralEnv, tmp_path: Path) -> None:
    launch(corral)
    src = tmp_path / "big.bin"
    write_random(src, BIG, 0o644)

    # Upload killed outright (SIGKILL: no client cleanup): the daemon sees the broken answer and removes the port,
    # QEMU the broken socket; the guest side cleans up. A bigger file: over the port 64 MiB take about a second.
    huge = tmp_path / "huge.bin"
    write_random(huge, 4 * BIG, 0o644)
    proc = subprocess.Popen([CORRAL, "cp", "-q", str(huge), f"{VM}:/root/abort.bin"], env=corral.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: "corral-tmp" in no_temporaries(corral, "/root"), 120, "the guest temporary")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    wait_for(lambda: no_temporaries(corral, "/root") == "", 60, "the guest temporary to go")
    assert guest(corral, "ls /root") == ""

    # Download interrupted with Ctrl-C: the client removes its temporary.
    guest(corral, "head -c 67108864 /dev/urandom > /root/big.bin")
    dest = tmp_path / "down"
    dest.mkdir()
    for _ in range(3):  # on a quiet host 64 MiB may arrive before the signal does: then the copy is whole; again
        # SIGINT as a terminal gives it: pytest-xdist's workers ignore SIGINT, and children inherit that.
        proc = subprocess.Popen([CORRAL, "cp", "-q", f"{VM}:/root/big.bin", str(dest)], env=corral.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            wait_for(lambda: any(dest.iterdir()), 120, "the host temporary")
        finally:
            os.kill(proc.pid, signal.SIGINT)
            _, stderr = proc.communicate(timeout=60)
        if proc.returncode != 0:
            break
        assert [p.name for p in dest.iterdir()] == ["big.bin"]  # finished first: whole, under its own name
        (dest / "big.bin").unlink()
    assert proc.returncode != 0
    assert b"Traceback" not in stderr, stderr
    assert list(dest.iterdir()) == []
    assert no_temporaries(corral, "/root", "/var/tmp", "/tmp") == ""
    assert data_ports(corral) == []


def slow_upload(c: CorralEnv, name: str) -> tuple[threading.Thread, list[object]]:
    """An upload over a port in a thread, by a client sending 1 MiB every 0.2 s (of 100 MiB): its result or error
    lands in the list."""
    result: list[object] = []

    def body() -> Iterator[bytes]:
        for _ in range(100):
            yield os.urandom(1 << 20)
            time.sleep(0.2)

    def run() -> None:
        try:
            with Client(c.settings.socket) as client:
                result.append(client_files.upload(client, VM, "/root/", name, body(), kind="file", mode=0o644,
                                                  size=100 << 20))
        except Exception as exc:  # noqa: BLE001 - the failure is what the test looks at
            result.append(exc)

    sender = threading.Thread(target=run)
    sender.start()
    return sender, result


def test_virtio_port_failures_leave_nothing_plugged(corral: CorralEnv, tmp_path: Path) -> None:
    """A copy over the port that fails in the guest, one cut by a suspend, and one whose daemon is killed: each
    leaves no port, socket or journalled operation, no guest temporary; the suspended VM resumes from its state."""
    launch(corral)
    with Client(corral.settings.socket) as client:
        # The guest side refuses (fewer bytes than announced): a one-line error, nothing renamed into place.
        with pytest.raises(APIError, match="the copy ended early: 3 of 10 bytes arrived") as refused:
            client_files.upload(client, VM, "/root/", "short.bin", [b"abc"], kind="file", mode=0o644, size=10)
        assert refused.value.status == 502
        # Refused before a port is plugged.
        r = client.http.post(f"/vms/{VM}/files/virtio/uploads", params={"dest": "/root/x", "source": "x"})
        assert r.status_code == 422 and "needs its size" in r.json()["message"], r.text
    assert guest(corral, "ls /root") == ""
    assert data_ports(corral) == []

    src = tmp_path / "big.bin"
    write_random(src, BIG, 0o644)
    # A suspend while a copy runs (a slow one: a client sending 1 MiB every 0.2 s): the port goes first (the saved
    # state must not hold it), the copy fails.
    sender, result = slow_upload(corral, "cut.bin")
    wait_for(lambda: "corral-tmp" in no_temporaries(corral, "/root"), 120, "the guest temporary")
    r = corral.cli("suspend", VM, timeout=300)
    assert r.returncode == 0, r.stderr
    sender.join(timeout=120)
    assert result and isinstance(result[0], APIError), result
    r = corral.cli("resume", VM, timeout=300)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: no_temporaries(corral, "/root") == "", 60, "the guest temporary to go")
    assert data_ports(corral) == []
    copy(corral, str(src), f"{VM}:/root/after.bin")  # the resumed guest takes a new port
    assert guest(corral, "sha256sum /root/after.bin | cut -d' ' -f1").strip() == sha256(src)

    # The daemon killed mid-copy: the client sees its answer break and cuts its stream off (the guest side removes
    # its temporary); the next daemon's recovery removes the port.
    sender, result = slow_upload(corral, "killed.bin")
    wait_for(lambda: "corral-tmp" in no_temporaries(corral, "/root"), 120, "the guest temporary")
    corral.kill_daemon()
    sender.join(timeout=60)
    assert result and isinstance(result[0], DaemonUnavailable), result
    corral.start_daemon()
    wait_for(lambda: no_temporaries(corral, "/root") == "", 60, "the guest temporary to go")
    assert data_ports(corral) == []
    r = corral.cli("events", "--vm", VM, "--json")
    assert "cp interrupted by a daemon restart: rolled back (data port cdata-" in r.stdout, r.stdout[-2000:]
    assert guest(corral, "ls /root") == "after.bin\n"
