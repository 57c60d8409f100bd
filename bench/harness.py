"""The isolated Corral every benchmark runs against, the host facts, the hand-written QEMU baseline, and what every
benchmark module shares (its :class:`Context`, :func:`pss_mib`): the benchmark modules import this one, never each
other, except ``bench.cases``, which registers them all.

Everything started here is tracked by pid and killed by pid in :meth:`BenchHome.cleanup` (never by name: other
VMs run on the same machine).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral import paths
from corral.client import Client, start_daemon
from corral.engine import process
from corral.engine.process import find_qemu
from corral.settings import Settings, load_settings
from corral.store.db import Store


@dataclass
class BenchHome:
    """A throw-away Corral home under /tmp (short path: unix socket paths are limited to 107 bytes)."""

    home: Path
    settings: Settings
    env: dict[str, str]
    _client: Client | None = None
    baseline_pids: set[int] = field(default_factory=set)

    @classmethod
    def create(cls) -> BenchHome:
        home = Path(tempfile.mkdtemp(prefix="cb-", dir="/tmp"))
        env = dict(os.environ)
        env["CORRAL_HOME"] = str(home)
        env.setdefault("CORRAL_CACHE", str(Path.home() / ".cache" / "corral"))
        return cls(home=home, settings=load_settings(env), env=env)

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.settings.socket)
        return self._client

    def drop_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def start_daemon(self) -> None:
        start_daemon(self.settings)

    def daemon_pid(self) -> int | None:
        try:
            pid = int((self.home / paths.DAEMON_PID).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if process.is_alive(pid) else None

    def kill_daemon(self) -> None:
        """SIGKILL corrald and wait until it is gone."""
        pid = self.daemon_pid()
        if pid is None:
            raise RuntimeError("corrald is not running")
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while process.is_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        self.drop_client()

    def qemu_pids(self) -> dict[str, int]:
        """The live QEMU of each VM of this home, found by UUID in /proc (independent of the daemon)."""
        if not self.settings.database.exists():
            return {}
        store = Store(self.settings.database)
        try:
            found = {rec.name: find_qemu(rec.id) for rec in store.list_vms()}
        finally:
            store.close()
        return {name: ident.pid for name, ident in found.items() if ident is not None}

    def cleanup(self) -> None:
        self.drop_client()
        pid = self.daemon_pid()
        if pid is not None:
            _kill(pid)
        with contextlib.suppress(Exception):
            for qpid in self.qemu_pids().values():
                _kill(qpid)
        for qpid in self.baseline_pids:
            _kill(qpid)
        shutil.rmtree(self.home, ignore_errors=True)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


# ----------------------------------------------------------------------------------------------- host facts --
def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _ram_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / (1 << 20)
    return 0.0


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def host_facts(bh: BenchHome, quick: bool) -> dict[str, Any]:
    st = bh.client.status()
    qemu = subprocess.run([bh.settings.qemu_binary, "--version"], capture_output=True, text=True, check=False)
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "ram_gib": _ram_gib(),
        "kernel": f"Linux {platform.release()}",
        "accel": st.accel,
        "accel_reason": st.accel_reason,
        "qemu": (qemu.stdout.splitlines() or [st.qemu])[0],
        "load_start": load_average(),
        "mode": "quick (--quick)" if quick else "full",
    }


# ------------------------------------------------------------------------------------ hand-written baseline --
@dataclass
class Context:
    """What each benchmark gets: the Corral it runs against, the run's options, and where to log progress."""

    bh: BenchHome
    quick: bool
    runs: int
    accel: str
    log: Callable[[str], None]


def pss_mib(pid: int) -> float:
    """Proportional set size of a process, MiB (shared pages divided among the processes mapping them)."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no Pss in /proc/{pid}/smaps_rollup")


#: The baseline's polling: as tight as a careful hand-written script would reasonably poll.
BASELINE_CONNECT_RETRY = 0.05
BASELINE_SYNC_RESEND = 0.5


@dataclass(frozen=True)
class ImageFiles:
    kernel: Path
    initrd: Path
    disk: Path
    cmdline: str

    @classmethod
    def from_store(cls, settings: Settings, image: str) -> ImageFiles:
        d = settings.images_dir / image
        manifest = json.loads((d / paths.IMAGE_MANIFEST).read_text())
        return cls(d / paths.IMAGE_KERNEL, d / paths.IMAGE_INITRD, d / paths.IMAGE_DISK, manifest["kernel_cmdline"])


def baseline_argv(qemu: str, img: ImageFiles, overlay: Path, qga: Path, serial: Path, accel: str,
                  tb_size_mib: int, memory_mib: int = 256) -> list[str]:
    """A minimal hand-written QEMU command line, comparable to Corral's (same machine, accelerator, sizes and
    virtio devices), without Corral's extras (QMP, pvpanic, virtio-rng, seccomp sandbox, console socket)."""
    accel_opt, cpu = ("kvm", "host") if accel == "kvm" else (f"tcg,tb-size={tb_size_mib}", "max")
    return [
        qemu, "-nodefaults", "-no-user-config", "-display", "none",
        "-machine", "q35", "-accel", accel_opt, "-cpu", cpu, "-smp", "1", "-m", str(memory_mib),
        "-kernel", str(img.kernel), "-initrd", str(img.initrd), "-append", img.cmdline,
        "-drive", f"file={overlay},format=qcow2,if=virtio",
        "-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0",
        "-device", "virtio-serial-pci,id=vser0",
        "-chardev", f"socket,id=qga0,path={qga},server=on,wait=off",
        "-device", "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0",
        "-serial", f"file:{serial}",
    ]  # fmt: skip


def make_overlay(base: Path, overlay: Path) -> None:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(overlay)],
                   check=True, capture_output=True)


def spawn_qemu(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as f:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)


class AgentTimeout(Exception):
    pass


def _read_until(sock: socket.socket, buf: bytearray, pred: Any, deadline: float) -> None:
    while not pred(buf):
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(4096)
        except TimeoutError:
            return
        if not data:
            raise ConnectionResetError("agent socket closed")
        buf += data


def qga_wait_ready(path: Path, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Connect to the agent's unix socket, send 0xFF + guest-sync-delimited (resent every BASELINE_SYNC_RESEND)
    until our id comes back after a 0xFF, then guest-ping until it answers."""
    deadline = time.monotonic() + timeout
    sock: socket.socket | None = None
    while sock is None:
        if proc.poll() is not None:
            raise RuntimeError(f"QEMU exited with {proc.returncode}")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(str(path))
            sock = s
        except (FileNotFoundError, ConnectionRefusedError):
            s.close()
            if time.monotonic() > deadline:
                raise AgentTimeout("agent socket never accepted") from None
            time.sleep(BASELINE_CONNECT_RETRY)
    try:
        sync_id = secrets.randbelow(2**31)
        req = b"\xff" + json.dumps({"execute": "guest-sync-delimited", "arguments": {"id": sync_id}}).encode() + b"\n"
        buf = bytearray()
        synced = False
        while not synced:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise AgentTimeout("agent did not answer guest-sync-delimited")
            sock.sendall(req)
            attempt_end = min(deadline, time.monotonic() + BASELINE_SYNC_RESEND)
            while time.monotonic() < attempt_end and not synced:
                _read_until(sock, buf, lambda b: b"\xff" in b and b"\n" in b[b.index(b"\xff"):], attempt_end)
                if b"\xff" not in buf:
                    buf.clear()
                    continue
                del buf[: buf.index(b"\xff") + 1]
                if b"\n" not in buf:
                    continue
                line, _, rest = bytes(buf).partition(b"\n")
                buf[:] = rest
                with contextlib.suppress(ValueError):
                    synced = json.loads(line).get("return") == sync_id
        sock.sendall(b'{"execute": "guest-ping"}\n')
        buf.clear()
        while True:
            if time.monotonic() > deadline:
                raise AgentTimeout("agent did not answer guest-ping")
            _read_until(sock, buf, lambda b: b"\n" in b, deadline)
            if b"\n" not in buf:
                continue
            line, _, rest = bytes(buf).partition(b"\n")
            buf[:] = rest
            with contextlib.suppress(ValueError):
                if json.loads(line.strip(b"\xff")) == {"return": {}}:
                    return
    finally:
        sock.close()
