"""The identity reset's host side: its arguments, the host key in dropbear's format, the one guest command (run by a
real /bin/sh against a fake agent), and the template provisioning script."""

from __future__ import annotations

import asyncio
import base64
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from corral.guest import identity, ssh


def _strings(buf: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(buf):
        (n,) = struct.unpack_from(">I", buf, pos)
        out.append(buf[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return out


def test_host_key_is_in_dropbears_format_and_matches_its_public_key() -> None:
    key = identity.new_host_key()
    ktype, secret = _strings(key.dropbear)
    assert ktype == b"ssh-ed25519" and len(secret) == 64
    assert ssh.parse_host_keys(key.public) == [key.public]
    pub_type, pub = _strings(base64.b64decode(key.public.split()[1]))
    assert pub_type == b"ssh-ed25519" and secret[32:] == pub
    assert identity.new_host_key().public != key.public


def test_octal_escapes_round_trip_through_printf(tmp_path: Path) -> None:
    data = bytes(range(256))
    out = subprocess.run(["sh", "-c", 'printf "$1"', "sh", identity.octal_escapes(data)], capture_output=True,
                         check=True).stdout
    assert out == data
    assert "%" not in identity.octal_escapes(b"%s%n")


def test_identity_args_are_fresh_each_time() -> None:
    a = identity.identity_args("web", "52:54:00:00:00:01", "eth0")
    b = identity.identity_args("web", "52:54:00:00:00:01", "eth0")
    assert a[:3] == ["web", "52:54:00:00:00:01", "eth0"] and a[5] == ""
    assert len(a[3]) == 32 and a[3] != b[3] and a[4] != b[4]


class FakeAgent:
    """Runs guest-exec's script with the host's /bin/sh (its files redirected into a scratch root)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.calls: list[str] = []
        self.result: dict[str, Any] = {}

    async def execute(self, command: str, arguments: dict[str, Any] | None = None, timeout: float = 0) -> Any:
        self.calls.append(command)
        if command == "guest-exec":
            assert arguments is not None and arguments["capture-output"] is True
            script = arguments["arg"][1]
            for path in ("/etc/", "/proc/", "/dev/urandom", "/var/", "/run/"):  # never the host's processes
                script = script.replace(path, f"{self.root}{path}")
            script = script.replace("ip link set", "echo ip link set >> $ROOT/ip.log #")
            script = script.replace("pidof ", "true ")
            r = subprocess.run(["sh", "-c", script, *arguments["arg"][2:]], capture_output=True,  # noqa: ASYNC221
                               env={"PATH": "/usr/bin:/bin", "ROOT": str(self.root)})
            self.result = {"exited": True, "exitcode": r.returncode, "out-data": base64.b64encode(r.stdout).decode(),
                           "err-data": base64.b64encode(r.stderr).decode()}
            return {"pid": 42}
        if command == "guest-exec-status":
            return self.result
        if command == "guest-set-time":
            return {}
        raise AssertionError(command)


def test_reset_identity_is_one_guest_command(tmp_path: Path) -> None:
    for d in ("etc/dropbear", "proc/sys/kernel", "proc/sys/net/ipv4/conf/eth0", "dev", "run"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "proc/sys/net/ipv4/conf/eth0/arp_notify").write_text("0\n")
    # The DHCP client and dropbear's listener, found through their pidfiles (a pid whose comm names them).
    daemons = {name: subprocess.Popen(["sleep", "60"]) for name in ("udhcpc", "dropbear")}
    for name, proc in daemons.items():
        (tmp_path / "run" / ("udhcpc.eth0.pid" if name == "udhcpc" else "dropbear.pid")).write_text(f"{proc.pid}\n")
        (tmp_path / f"proc/{proc.pid}").mkdir()
        (tmp_path / f"proc/{proc.pid}/comm").write_text(f"{name}\n")
    (tmp_path / "etc/hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\told\n::1\tlocalhost\n")
    (tmp_path / "etc/hostname").write_text("old\n")
    (tmp_path / "etc/machine-id").write_text("0" * 32 + "\n")
    agent = FakeAgent(tmp_path)
    asyncio.run(identity.reset_identity(agent, hostname="new", mac="52:54:00:aa:bb:cc",  # type: ignore[arg-type]
                                        set_clock=True))
    assert agent.calls == ["guest-exec", "guest-set-time", "guest-exec-status"]
    assert agent.result["exitcode"] == 0, base64.b64decode(agent.result["err-data"])
    assert (tmp_path / "etc/hostname").read_text() == "new\n"
    assert (tmp_path / "proc/sys/kernel/hostname").read_text() == "new\n"
    assert (tmp_path / "etc/hosts").read_text() == "127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\tnew\n"
    mid = (tmp_path / "etc/machine-id").read_text().strip()
    assert len(mid) == 32 and mid != "0" * 32
    assert (tmp_path / "ip.log").read_text().strip() == "ip link set"
    assert (tmp_path / "proc/sys/net/ipv4/conf/eth0/arp_notify").read_text() == "1\n"  # the kernel's gratuitous ARP
    for name, proc in daemons.items():
        assert proc.wait(timeout=5) == -15, f"{name} was not stopped"
    assert (tmp_path / "dev/urandom").stat().st_size == identity.ENTROPY_BYTES
    key = (tmp_path / "etc/dropbear/dropbear_ed25519_host_key").read_bytes()
    assert _strings(key)[0] == b"ssh-ed25519" and (tmp_path / "etc/dropbear/dropbear_ed25519_host_key").stat(
    ).st_mode & 0o077 == 0


def test_a_pidfile_naming_another_process_is_not_trusted(tmp_path: Path) -> None:
    for d in ("etc", "proc/sys/kernel", "run"):
        (tmp_path / d).mkdir(parents=True)
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / "run/udhcpc.eth0.pid").write_text(f"{bystander.pid}\n")
        (tmp_path / f"proc/{bystander.pid}").mkdir()
        (tmp_path / f"proc/{bystander.pid}/comm").write_text("sleep\n")  # a stale pidfile: the pid was reused
        agent = FakeAgent(tmp_path)
        asyncio.run(identity.reset_identity(agent, hostname="new", mac="52:54:00:aa:bb:cc"))  # type: ignore[arg-type]
        assert agent.result["exitcode"] == 0, base64.b64decode(agent.result["err-data"])
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_a_failed_step_is_named(tmp_path: Path) -> None:
    agent = FakeAgent(tmp_path)  # no /etc: the hostname cannot be written
    with pytest.raises(identity.GuestAgentError, match=r"hostname"):
        asyncio.run(identity.reset_identity(agent, hostname="new"))  # type: ignore[arg-type]
