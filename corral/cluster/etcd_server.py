"""The etcd that `corral cluster init` starts when it is given none: Debian's ``etcd`` (package etcd-server), one
member, detached like a VM's QEMU (it outlives corrald), its data under the Corral home, listening on the host's
cluster address. corrald starts it again if it finds it gone (a crash, a reboot)."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

from corral import detach
from corral.engine import process
from corral.errors import EngineError

CLIENT_PORT = 2379
PEER_PORT = 2380


def binary() -> str:
    found = shutil.which("etcd") or ("/usr/bin/etcd" if Path("/usr/bin/etcd").exists() else None)
    if found is None:
        raise EngineError("etcd not found: install it with `apt-get install etcd-server`, or give an existing one "
                          "with `corral cluster init --etcd http://HOST:2379`")
    return found


def argv(data_dir: Path, name: str, ip: str) -> list[str]:
    client, peer = f"http://{ip}:{CLIENT_PORT}", f"http://{ip}:{PEER_PORT}"
    return [binary(), "--name", name, "--data-dir", str(data_dir),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{name}={peer}", "--initial-cluster-state", "new"]


def find(data_dir: Path) -> int | None:
    """The pid of the etcd serving ``data_dir``, if one runs."""
    want = str(data_dir)
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        cmd = process.cmdline(int(p.name))
        if cmd and Path(cmd[0]).name == "etcd" and want in cmd:
            return int(p.name)
    return None


def answers(ip: str, port: int = CLIENT_PORT, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return True
    except OSError:
        return False


def ensure(data_dir: Path, name: str, ip: str, timeout: float = 20.0) -> int:
    """Start etcd for ``data_dir`` unless it runs; wait until it answers; its pid."""
    pid = find(data_dir)
    if pid is None:
        data_dir.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        detach.spawn_detached(argv(data_dir, name, ip), data_dir.parent / "etcd.log")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = find(data_dir)
        if pid is not None and answers(ip):
            return pid
        time.sleep(0.1)
    raise EngineError(f"etcd did not start on {ip}:{CLIENT_PORT}: see {data_dir.parent / 'etcd.log'}")
