"""Booting an image with a hand-written QEMU command line, independent of Corral's daemon and command-line builder,
to test what the image builders promise. The guest agent is spoken to with Corral's own client."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from corral import paths
from corral.engine.guest_agent import ExecExit, ExecOutput, GuestAgent
from corral.images.store import ImageStore
from corral.settings import load_settings


def installed_image(name: str, store_dir: Path) -> Path:
    """The image ``name`` installed into a throwaway store (built into the shared cache when it is not there)."""
    settings = load_settings()
    store = ImageStore(store_dir, settings.cache)
    store.ensure(name, settings.mirror, lambda s, n, t: None)
    return store.dir(name)


@dataclass
class HandVM:
    proc: subprocess.Popen[bytes]
    qga: Path
    qmp: Path
    serial: Path
    t0: float

    def wait_agent(self, timeout: float) -> float:
        """Seconds from QEMU's start until the guest agent answered."""
        asyncio.run(_ready(self.qga, timeout))
        return time.monotonic() - self.t0

    def exec(self, *argv: str, timeout: float = 60) -> tuple[int | None, str]:
        """(exit code, stdout) of ``argv`` in the guest."""
        return asyncio.run(_exec(self.qga, list(argv), timeout))


async def _ready(qga: Path, timeout: float) -> None:
    agent = GuestAgent(qga)
    try:
        await agent.wait_ready(timeout)
    finally:
        await agent.close()


async def _exec(qga: Path, argv: list[str], timeout: float) -> tuple[int | None, str]:
    agent = GuestAgent(qga)
    out, code = bytearray(), None
    try:
        await agent.wait_ready(30)
        async for item in agent.exec_stream(argv, timeout=timeout):
            if isinstance(item, ExecOutput) and item.stream == "stdout":
                out += item.data
            elif isinstance(item, ExecExit):
                code = item.exit_code
    finally:
        await agent.close()
    return code, out.decode(errors="replace")


@contextmanager
def hand_boot(image: Path, workdir: Path, *, hostname: str, memory: int = 256, smp: int = 1,
              disk_size: str | None = None, tb_size: int = 32) -> Iterator[HandVM]:
    """Boot ``image`` on a fresh overlay; QEMU is killed by pid afterwards, the serial log's end printed."""
    manifest = json.loads((image / paths.IMAGE_MANIFEST).read_text())
    sockdir = Path(tempfile.mkdtemp(prefix="hb-", dir="/tmp"))  # unix socket paths must stay short
    overlay = workdir / "overlay.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(image / paths.IMAGE_DISK),
                    str(overlay), *([disk_size] if disk_size else [])], check=True)
    qga, qmp_sock, con = sockdir / "qga.sock", sockdir / "qmp.sock", sockdir / "con.sock"
    serial = workdir / "serial.log"
    cmd = [
        "qemu-system-x86_64", "-accel", f"tcg,tb-size={tb_size}", "-machine", "q35", "-cpu", "max",
        "-m", str(memory), "-smp", str(smp), "-nodefaults", "-no-user-config", "-display", "none",
        "-kernel", str(image / paths.IMAGE_KERNEL), "-initrd", str(image / paths.IMAGE_INITRD),
        "-append", f"{manifest['kernel_cmdline']} corral.hostname={hostname} systemd.hostname={hostname}",
        "-drive", f"file={overlay},format=qcow2,if=virtio",
        "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0",
        "-device", "virtio-serial-pci",
        "-chardev", f"socket,id=qga0,path={qga},server=on,wait=off",
        "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
        "-chardev", f"socket,id=ser0,path={con},server=on,wait=off,logfile={serial}",
        "-serial", "chardev:ser0", "-device", "pvpanic",
        "-qmp", f"unix:{qmp_sock},server=on,wait=off",
        "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
    ]
    t0 = time.monotonic()
    with open(workdir / "qemu.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield HandVM(proc, qga, qmp_sock, serial, t0)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(sockdir, ignore_errors=True)
        if serial.exists():
            print("serial log (end):\n" + serial.read_text(errors="replace")[-3000:])


class QMP:
    """A plain QMP connection that runs commands and remembers every event it sees."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(str(path))
        self.f = self.sock.makefile("rwb")
        self.events: list[str] = []
        json.loads(self.f.readline())
        self.execute("qmp_capabilities")

    def execute(self, cmd: str) -> dict[str, object]:
        self.f.write(json.dumps({"execute": cmd}).encode() + b"\n")
        self.f.flush()
        while True:
            msg = json.loads(self.f.readline())
            if "event" in msg:
                self.events.append(msg["event"])
            elif "return" in msg or "error" in msg:
                return dict(msg)

    def wait(self, event: str, timeout: float) -> None:
        self.sock.settimeout(timeout)
        while event not in self.events:
            msg = json.loads(self.f.readline())
            if "event" in msg:
                self.events.append(msg["event"])

    def close(self) -> None:
        self.f.close()
        self.sock.close()
