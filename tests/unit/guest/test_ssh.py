"""Host-key pinning and the ssh command line, without a VM: what is written to known_hosts and passed to ssh."""

from __future__ import annotations

import asyncio
import base64
import stat
import subprocess
from pathlib import Path

import pytest

from corral.api.models import SSHInfo
from corral.cli.shell import ssh_argv
from corral.errors import GuestAgentError
from corral.guest import ssh
from corral.guest.ssh import known_hosts_text, parse_host_keys, write_known_hosts
from corral.paths import VMPaths
from corral.vm.spec import VMSpec

BLOB = base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes(range(32))).decode()

DROPBEARKEY_Y = f"""Public key portion is:
ssh-ed25519 {BLOB} root@tiny
Fingerprint: SHA256:0zbzIX7Hfn4m+I2olJe3xx6R8yAK9u5ivgef1Z10heg
"""


def test_parse_dropbearkey_output_and_pub_file() -> None:
    assert parse_host_keys(DROPBEARKEY_Y) == [f"ssh-ed25519 {BLOB}"]
    assert parse_host_keys(f"ssh-ed25519 {BLOB} root@deb\n") == [f"ssh-ed25519 {BLOB}"]


def test_parse_drops_garbled_and_other_keys() -> None:
    truncated = BLOB[:20]
    wrong_type = base64.b64encode(b"\x00\x00\x00\x07ssh-rsa" + b"x" * 40).decode()
    text = f"ssh-ed25519 {truncated}\nssh-ed25519 {wrong_type}\nssh-rsa {wrong_type}\nssh-ed25519 !!notbase64\n"
    assert parse_host_keys(text) == []


def test_known_hosts_lines_name_the_forwarded_port() -> None:
    key = f"ssh-ed25519 {BLOB}"
    assert known_hosts_text(40022, [key]) == f"[127.0.0.1]:40022 {key}\n"
    assert known_hosts_text(22, [key]) == f"127.0.0.1 {key}\n"


def test_write_known_hosts_is_private_and_replaces(tmp_path: Path) -> None:
    paths = VMPaths(tmp_path)
    write_known_hosts(paths, 1000, [f"ssh-ed25519 {BLOB}"])
    write_known_hosts(paths, 2000, [f"ssh-ed25519 {BLOB}"])
    assert paths.known_hosts.read_text() == f"[127.0.0.1]:2000 ssh-ed25519 {BLOB}\n"
    assert stat.S_IMODE(paths.known_hosts.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["known_hosts"]


def test_ssh_argv_pins_the_host_key_and_quotes_the_command() -> None:
    info = SSHInfo(host="127.0.0.1", port=40022, user="root", identity_file="/h/vms/a/id_ed25519",
                   known_hosts="/h/my vms/a/known_hosts")
    argv = ssh_argv(info, ["sh", "-c", "echo $A; exit 3"], tty=False)
    assert argv[0] == "ssh"
    assert argv[-2:] == ["--", "sh -c 'echo $A; exit 3'"]
    assert argv[-3] == "127.0.0.1" and "-T" in argv
    opts = [argv[i + 1] for i, a in enumerate(argv) if a == "-o"]
    assert 'UserKnownHostsFile="/h/my vms/a/known_hosts"' in opts
    assert {"StrictHostKeyChecking=yes", "IdentitiesOnly=yes", "BatchMode=yes"} <= set(opts)
    assert argv[argv.index("-i") + 1] == "/h/vms/a/id_ed25519" and argv[argv.index("-p") + 1] == "40022"
    assert "-t" in ssh_argv(info, [], tty=True) and "--" not in ssh_argv(info, [], tty=True)


class _ScratchAgent:
    """exec_captured runs the command with the host's /bin/sh, its /root and /etc redirected into a scratch root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.calls = 0

    async def exec_captured(self, argv: list[str], *, stdin: bytes | None = None,
                            timeout: float = 60.0) -> tuple[int | None, bytes, bytes]:
        self.calls += 1
        script = argv[2].replace("/root/", f"{self.root}/root/").replace("/etc/", f"{self.root}/etc/")
        script = script.replace("/usr/sbin/sshd", f"{self.root}/usr/sbin/sshd")
        r = subprocess.run(["sh", "-c", script, *argv[3:]], capture_output=True, timeout=timeout,  # noqa: ASYNC221
                           env={"PATH": "/usr/bin:/bin"})
        return r.returncode, r.stdout, r.stderr


def test_provision_is_one_guest_command_that_authorizes_and_pins(tmp_path: Path) -> None:
    key = "ssh-ed25519 " + base64.b64encode(b"\0\0\0\x0bssh-ed25519\0\0\0\x20" + b"k" * 32).decode()
    (tmp_path / "etc/ssh").mkdir(parents=True)
    (tmp_path / "etc/ssh/ssh_host_ed25519_key.pub").write_text(f"{key} root@guest\n")
    (tmp_path / "usr/sbin").mkdir(parents=True)
    (tmp_path / "usr/sbin/sshd").touch(mode=0o755)
    paths = VMPaths(tmp_path / "vm")
    paths.root.mkdir()
    agent = _ScratchAgent(tmp_path)
    spec = VMSpec(name="web", ssh_keys=["ssh-ed25519 AAAAuser user@host"])
    problem = asyncio.run(ssh.provision(agent, spec, "ssh-ed25519 AAAAcorral corral@web", paths, 2222))  # type: ignore[arg-type]
    assert problem is None and agent.calls == 1
    assert (tmp_path / "root/.ssh/authorized_keys").read_text() == (
        "ssh-ed25519 AAAAcorral corral@web\nssh-ed25519 AAAAuser user@host\n")
    assert (tmp_path / "root/.ssh/authorized_keys").stat().st_mode & 0o077 == 0
    assert paths.known_hosts.read_text() == f"[127.0.0.1]:2222 {key}\n"
    # No SSH port: the keys only. Keys that cannot be written: an error, not a problem to report.
    assert asyncio.run(ssh.provision(agent, spec, "k", paths, None)) is None  # type: ignore[arg-type]
    (tmp_path / "root/.ssh/authorized_keys").unlink()
    (tmp_path / "root/.ssh").rmdir()
    (tmp_path / "root/.ssh").write_text("not a directory")
    with pytest.raises(GuestAgentError, match="could not authorize"):
        asyncio.run(ssh.provision(agent, spec, "k", paths, 2222))  # type: ignore[arg-type]
