"""Boot the tiny image under TCG with a hand-written QEMU command line and check what the daemon relies on."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral import paths
from corral.images.store import ImageStore
from corral.settings import load_settings

pytestmark = [pytest.mark.vm, pytest.mark.slow]


class QGA:
    """Just enough of the guest agent protocol for this test (the real client lives in corral.engine)."""

    def __init__(self, path: Path, timeout: float = 60) -> None:
        self.path, self.deadline, self.buf, self.sock = path, time.monotonic() + timeout, b"", None
        self.n = 1000

    def connect(self) -> None:
        while True:
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(str(self.path))
                self.sock = s
                return
            except OSError:
                s.close()
                if time.monotonic() > self.deadline:
                    raise
                time.sleep(0.05)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()

    def _line(self, timeout: float) -> dict | None:
        assert self.sock is not None
        self.sock.settimeout(timeout)
        while b"\n" not in self.buf:
            try:
                chunk = self.sock.recv(4096)
            except TimeoutError:
                return None
            if not chunk:
                raise ConnectionError("agent channel closed")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        line = line.lstrip(b"\xff").strip()
        return json.loads(line) if line else {}

    def sync(self) -> None:
        """guest-sync-delimited until the agent answers with our id (it may not be running yet)."""
        while True:
            self.n += 1
            assert self.sock is not None
            self.sock.sendall(
                b"\xff" + json.dumps({"execute": "guest-sync-delimited", "arguments": {"id": self.n}}).encode()
                + b"\n"
            )
            end = time.monotonic() + 1
            while time.monotonic() < end:
                msg = self._line(0.5)
                if msg and msg.get("return") == self.n:
                    return
            if time.monotonic() > self.deadline:
                raise TimeoutError("guest agent did not answer")

    def call(self, cmd: str, **args: object) -> object:
        assert self.sock is not None
        self.sock.sendall(json.dumps({"execute": cmd, "arguments": args}).encode() + b"\n")
        while True:
            msg = self._line(30)
            if msg is None:
                raise TimeoutError(f"no answer to {cmd}")
            if "error" in msg:
                raise RuntimeError(f"{cmd}: {msg['error']}")
            if "return" in msg:
                return msg["return"]

    def exec(self, *argv: str) -> tuple[int, str]:
        pid = self.call("guest-exec", path=argv[0], arg=list(argv[1:]), **{"capture-output": True})["pid"]  # type: ignore[index]
        for _ in range(300):
            st = self.call("guest-exec-status", pid=pid)
            if st["exited"]:  # type: ignore[index]
                import base64

                return st.get("exitcode", -1), base64.b64decode(st.get("out-data", "")).decode()  # type: ignore[union-attr]
            time.sleep(0.1)
        raise TimeoutError(f"{argv} did not finish")


def qmp(path: Path, *commands: str) -> list[dict]:
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(path))
    f = s.makefile("rwb")
    json.loads(f.readline())
    out = []
    for cmd in ("qmp_capabilities", *commands):
        f.write(json.dumps({"execute": cmd}).encode() + b"\n")
        f.flush()
        while True:
            msg = json.loads(f.readline())
            if "return" in msg or "error" in msg:
                out.append(msg)
                break
    s.close()
    return out


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny image, built once per cache (``~/.cache/corral``) and installed into a throwaway store."""
    settings = load_settings()
    store = ImageStore(tmp_path_factory.mktemp("images"), settings.cache)
    store.ensure("tiny", settings.mirror)
    return store.dir("tiny")


@pytest.fixture
def vm(image: Path, tmp_path: Path) -> Iterator[dict]:
    manifest = json.loads((image / paths.IMAGE_MANIFEST).read_text())
    d = Path(os.environ.get("CORRAL_TEST_VMDIR", tmp_path))
    sockdir = Path(f"/tmp/ct-{os.getpid()}")  # unix socket paths must stay short
    sockdir.mkdir(exist_ok=True)
    overlay = d / "overlay.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(image / paths.IMAGE_DISK),
                    str(overlay), "2G"], check=True)
    qga, qmp_sock, con = sockdir / "qga.sock", sockdir / "qmp.sock", sockdir / "console.sock"
    cmd = [
        "qemu-system-x86_64", "-accel", "tcg,tb-size=32", "-machine", "q35", "-cpu", "max", "-m", "256", "-smp", "1",
        "-nodefaults", "-no-user-config", "-display", "none",
        "-kernel", str(image / paths.IMAGE_KERNEL), "-initrd", str(image / paths.IMAGE_INITRD),
        "-append", manifest["kernel_cmdline"] + " corral.hostname=probe-vm",
        "-drive", f"file={overlay},format=qcow2,if=virtio,cache=unsafe",
        "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0",
        "-device", "virtio-serial-pci",
        "-chardev", f"socket,id=qga0,path={qga},server=on,wait=off",
        "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
        "-chardev", f"socket,id=ser0,path={con},server=on,wait=off,logfile={d / 'serial.log'}",
        "-serial", "chardev:ser0", "-device", "pvpanic",
        "-qmp", f"unix:{qmp_sock},server=on,wait=off",
        "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
    ]
    t0 = time.monotonic()
    with open(d / "qemu.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield {"proc": proc, "qga": qga, "qmp": qmp_sock, "t0": t0, "dir": d}
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(sockdir, ignore_errors=True)
        print("serial log:\n" + (d / "serial.log").read_text(errors="replace")[-3000:])


def test_tiny_boots_answers_and_powers_off(vm: dict) -> None:
    agent = QGA(vm["qga"], timeout=90)
    try:
        agent.connect()
        _check_guest(agent, vm)
    finally:
        agent.close()


def _check_guest(agent: QGA, vm: dict) -> None:
    agent.sync()
    boot = time.monotonic() - vm["t0"]
    print(f"boot-to-agent: {boot:.2f} s")
    assert agent.call("guest-ping") == {}
    print("guest uptime at first answer: " + agent.exec("/bin/cat", "/proc/uptime")[1].split()[0] + " s")
    code, out = agent.exec("/bin/sh", "-c", "uname -a")
    assert code == 0 and "Linux" in out
    code, out = agent.exec("/bin/sh", "-c", "hostname")
    assert out.strip() == "probe-vm"
    # The root filesystem grew online to the overlay's 2 GiB.
    for _ in range(50):
        code, out = agent.exec("/bin/sh", "-c", "df -k / | tail -1")
        if int(out.split()[1]) > 1_500_000:
            break
        time.sleep(0.2)
    assert int(out.split()[1]) > 1_500_000, out
    # The kernel sees the power button; the pvpanic driver is bound.
    code, out = agent.exec("/bin/sh", "-c", "cat /proc/bus/input/devices; ls /sys/bus/platform/drivers/pvpanic-mmio")
    assert "Power Button" in out and "QEMU0001" in out, out
    assert qmp(vm["qmp"], "system_powerdown")[-1] == {"return": {}}
    assert vm["proc"].wait(timeout=60) == 0


class QMPEvents:
    """A QMP connection that remembers every event it sees."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(str(path))
        self.f = self.sock.makefile("rwb")
        self.events: list[str] = []
        json.loads(self.f.readline())
        self.f.write(b'{"execute": "qmp_capabilities"}\n')
        self.f.flush()
        self.f.readline()

    def wait(self, event: str, timeout: float) -> None:
        self.sock.settimeout(timeout)
        while event not in self.events:
            msg = json.loads(self.f.readline())
            if "event" in msg:
                self.events.append(msg["event"])

    def close(self) -> None:
        self.f.close()
        self.sock.close()


def test_tiny_reboots_and_reports_panic(vm: dict) -> None:
    agent = QGA(vm["qga"], timeout=90)
    events = None
    try:
        agent.connect()
        agent.sync()
        events = QMPEvents(vm["qmp"])
        agent.call("guest-exec", path="/bin/sh", arg=["-c", "reboot"])
        events.wait("RESET", 60)
        agent.deadline = time.monotonic() + 90
        agent.sync()  # the agent is back after the reboot
        _, out = agent.exec("/bin/sh", "-c", "hostname")
        assert out.strip() == "probe-vm"
        agent.call("guest-exec", path="/bin/sh", arg=["-c", "echo c > /proc/sysrq-trigger"])
        events.wait("GUEST_PANICKED", 60)
    finally:
        agent.close()
        if events:
            events.close()
