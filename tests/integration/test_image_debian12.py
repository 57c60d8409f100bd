"""Build debian-12 (or reuse the cached build) and boot it under TCG with a hand-written QEMU command line.

Checks what the daemon relies on: the guest agent answers on org.qemu.guest_agent.0, systemd reaches ``running``
with no failed units, apt works and the hostname comes from the kernel command line.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from corral import paths
from corral.images import debian12
from corral.images.artifacts import BuiltImage, Manifest

pytestmark = [pytest.mark.vm, pytest.mark.slow]

MIRROR = os.environ.get("CORRAL_MIRROR", "http://deb.debian.org/debian")
CACHE = Path(os.environ.get("CORRAL_CACHE", Path.home() / ".cache/corral")).expanduser()
FILES = (paths.IMAGE_KERNEL, paths.IMAGE_INITRD, paths.IMAGE_DISK)
MEMORY_MIB = int(os.environ.get("CORRAL_TEST_MEMORY", "1024"))


class QGA:
    """Just enough of the guest agent protocol for this test (the real client lives in corral.engine)."""

    def __init__(self, path: Path, timeout: float) -> None:
        self.path, self.deadline = path, time.monotonic() + timeout
        self.sock: socket.socket | None = None
        self.buf = b""
        self.n = 5000

    def _connect(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock, self.buf = socket.socket(socket.AF_UNIX), b""
        self.sock.connect(str(self.path))

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _line(self, timeout: float) -> dict | None:
        assert self.sock is not None
        self.sock.settimeout(timeout)
        while b"\n" not in self.buf:
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return None
            if not chunk:
                raise ConnectionError("agent channel closed")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        line = line.rpartition(b"\xff")[2].strip()  # the sync answer is preceded by 0xFF
        try:
            return json.loads(line) if line else {}
        except ValueError:
            return {}

    def sync(self) -> None:
        """guest-sync-delimited until the agent answers with our id (it is not running until the guest boots)."""
        while True:
            try:
                if self.sock is None:
                    self._connect()
                self.n += 1
                assert self.sock is not None
                req = {"execute": "guest-sync-delimited", "arguments": {"id": self.n}}
                self.sock.sendall(b"\xff" + json.dumps(req).encode() + b"\n")
                end = time.monotonic() + 2
                while time.monotonic() < end:
                    msg = self._line(0.5)
                    if msg and msg.get("return") == self.n:
                        return
            except OSError:
                self.close()
                time.sleep(0.2)
            if time.monotonic() > self.deadline:
                raise TimeoutError("guest agent did not answer")

    def call(self, cmd: str, timeout: float = 30, **args: object) -> object:
        assert self.sock is not None
        self.sock.sendall(json.dumps({"execute": cmd, "arguments": args}).encode() + b"\n")
        while True:
            msg = self._line(timeout)
            if msg is None:
                raise TimeoutError(f"no answer to {cmd}")
            if "error" in msg:
                raise RuntimeError(f"{cmd}: {msg['error']}")
            if "return" in msg:
                return msg["return"]

    def exec(self, *argv: str, timeout: float = 60) -> tuple[int, str]:
        """Run argv in the guest; return (exit code, stdout + stderr)."""
        pid = self.call("guest-exec", path=argv[0], arg=list(argv[1:]), **{"capture-output": True})["pid"]  # type: ignore[index]
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            st: dict = self.call("guest-exec-status", pid=pid)  # type: ignore[assignment]
            if st["exited"]:
                out = base64.b64decode(st.get("out-data", "")) + base64.b64decode(st.get("err-data", ""))
                return st.get("exitcode", -1), out.decode(errors="replace")
            time.sleep(0.2)
        raise TimeoutError(f"{argv} did not finish in {timeout} s")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_manifest(out: Path, built: BuiltImage) -> None:
    """A manifest next to the cached build, in the image store's format, so the store can reuse it as is."""
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(built.disk)],
                                     capture_output=True, check=True).stdout)
    manifest = Manifest(
        name=built.name, disk_sha256=_sha256(built.disk), disk_virtual_size=info["virtual-size"],
        size=sum((out / f).stat().st_size for f in FILES), kernel_cmdline=built.kernel_cmdline,
        build_date=datetime.now(UTC).isoformat(timespec="seconds"), builder=built.builder,
        mirror=built.mirror, suite=built.suite, packages=built.packages,
    )
    (out / paths.IMAGE_MANIFEST).write_text(manifest.model_dump_json(indent=2))


@pytest.fixture(scope="module")
def image() -> tuple[Path, str]:
    """The cached build in CACHE/built/debian-12/<BUILDER_VERSION>/, built (atomically) if it is not there."""
    out = CACHE / "built" / debian12.NAME / debian12.BUILDER_VERSION
    if not all((out / f).exists() for f in FILES):
        out.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=out.parent))
        try:
            t0 = time.monotonic()
            built = debian12.build_debian12(work, MIRROR, CACHE, lambda s, n, t: print(f"build: {s} {n}/{t}"))
            print(f"build time: {time.monotonic() - t0:.1f} s, {len(built.packages)} packages")
            _write_manifest(work, built)
            shutil.rmtree(out, ignore_errors=True)
            work.rename(out)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return out, debian12.KERNEL_CMDLINE


@pytest.fixture
def vm(image: tuple[Path, str], tmp_path: Path) -> Iterator[dict]:
    img, cmdline = image
    sockdir = Path(tempfile.mkdtemp(prefix="cd12-", dir="/tmp"))  # unix socket paths must stay short
    overlay = tmp_path / "overlay.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(img / paths.IMAGE_DISK),
                    str(overlay)], check=True)
    qga, qmp_sock, con = sockdir / "qga.sock", sockdir / "qmp.sock", sockdir / "console.sock"
    serial = tmp_path / "serial.log"
    cmd = [
        "qemu-system-x86_64", "-accel", "tcg,tb-size=64", "-machine", "q35", "-cpu", "max",
        "-m", str(MEMORY_MIB), "-smp", "2", "-nodefaults", "-no-user-config", "-display", "none",
        "-kernel", str(img / paths.IMAGE_KERNEL), "-initrd", str(img / paths.IMAGE_INITRD),
        "-append", f"{cmdline} corral.hostname=deb systemd.hostname=deb",
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
    with open(tmp_path / "qemu.log", "wb") as qlog:
        proc = subprocess.Popen(cmd, stdout=qlog, stderr=subprocess.STDOUT)
    try:
        yield {"proc": proc, "qga": qga, "t0": t0}
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(sockdir, ignore_errors=True)
        if serial.exists():
            print("serial log (end):\n" + serial.read_text(errors="replace")[-4000:])


def test_debian12_boots_to_running(vm: dict) -> None:
    agent = QGA(vm["qga"], timeout=400)
    try:
        _check_guest(agent, vm["t0"])
    finally:
        agent.close()


def _check_guest(agent: QGA, t0: float) -> None:
    agent.sync()
    boot = time.monotonic() - t0
    print(f"boot-to-agent: {boot:.1f} s")

    code, out = agent.exec("/bin/systemctl", "is-system-running", "--wait", timeout=400)
    running = time.monotonic() - t0
    print(f"is-system-running: {out.strip()} after {running:.1f} s")
    if out.strip() != "running":
        _, failed = agent.exec("/bin/systemctl", "--failed", "--no-legend", "--plain")
        units = [line.split()[0] for line in failed.splitlines() if line.strip()]
        _, journal = agent.exec("/bin/journalctl", "-b", "--no-pager", "-n", "80", *(f"-u{u}" for u in units))
        print(journal)
        _, cilog = agent.exec("/bin/grep", "-E", "-A3", "WARNING|Traceback|FAIL", "/var/log/cloud-init.log")
        print("cloud-init.log problems:\n" + cilog[-6000:])
        pytest.fail(f"system is {out.strip()!r}; failed units: {failed.strip()}")
    assert code == 0
    _, blame = agent.exec("/usr/bin/systemd-analyze", "blame")
    _, chain = agent.exec("/usr/bin/systemd-analyze", "critical-chain")
    print("slowest units:\n" + "\n".join(blame.splitlines()[:12]) + "\n" + chain)

    code, out = agent.exec("/usr/bin/apt", "--version")
    assert code == 0 and out.startswith("apt "), out
    code, out = agent.exec("/bin/hostname")
    assert out.strip() == "deb"
    # Each VM gets its own machine-id, written on first boot.
    code, out = agent.exec("/bin/cat", "/etc/machine-id")
    assert code == 0 and len(out.strip()) == 32, out
