"""`corral shell` (a real SSH session, host key pinned) and `corral wait`, on real VMs, through the real CLI.
debian-12's (OpenSSH instead of dropbear) is in test_debian12_vm.py, in its one VM."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.conftest import CORRAL, CorralEnv
from tests.terminal import Pty, set_size

pytestmark = pytest.mark.vm


def test_shell_on_a_terminal_and_with_a_command(corral: CorralEnv) -> None:
    assert corral.cli("launch", "sh1").returncode == 0
    term = Pty(dict(corral.env, TERM="xterm-256color"), ["shell", "sh1"], rows=33, cols=101)
    try:
        term.expect(b"sh1:~# ")  # the login profile's prompt, in /root
        term.send(b"echo SHELL-$((6*7))\r")
        term.expect(b"SHELL-42")
        term.send(b"stty size; echo TERM=$TERM\r")
        term.expect(b"33 101")
        term.expect(b"TERM=xterm-256color")  # the terminal type goes through too
        set_size(term.fd, 40, 120)  # a resized window reaches the guest (SIGWINCH through ssh)
        time.sleep(0.5)
        term.send(b"stty size\r")
        term.expect(b"40 120")
        term.send(b"exit 7\r")
        assert term.wait() == 7, term.buf[-500:]
    finally:
        term.close()

    r = corral.cli("shell", "sh1", "--", "uname", "-n")
    assert (r.returncode, r.stdout, r.stderr) == (0, "sh1\n", "")
    # Each word reaches the guest as it was given, and the remote exit code is ours.
    r = corral.cli("shell", "sh1", "--", "sh", "-c", 'echo "[$1]" "[$2]"; exit 3', "x", "a b", "$HOME")
    assert (r.returncode, r.stdout) == (3, "[a b] [$HOME]\n"), r.stderr
    # stdin goes through too, without a terminal.
    r = corral.cli("shell", "sh1", "--", "tr", "a-z", "A-Z", input=b"piped\n")
    assert (r.returncode, r.stdout) == (0, "PIPED\n"), r.stderr

    info = corral.client.ssh_info("sh1")
    known = (corral.settings.vms_dir / "sh1" / "known_hosts").read_text()
    assert info.known_hosts.endswith("/sh1/known_hosts") and info.user == "root" and info.host == "127.0.0.1"
    assert known.startswith(f"[127.0.0.1]:{info.port} ssh-ed25519 ") and len(known.splitlines()) == 1
    # The pinned key is the guest's own (read through the agent), so a forged one would be refused.
    r = corral.cli("exec", "sh1", "--", "dropbearkey", "-y", "-f", "/etc/dropbear/dropbear_ed25519_host_key")
    assert known.split()[2] in r.stdout


def test_wait_for_state_and_readiness(corral: CorralEnv) -> None:
    assert corral.cli("launch", "w1").returncode == 0
    r = corral.cli("wait", "w1")
    assert (r.returncode, r.stdout.strip()) == (0, "w1 is ready"), r.stderr
    key_before = (corral.settings.vms_dir / "w1" / "known_hosts").read_text().split()[1:]

    waiter = subprocess.Popen([CORRAL, "wait", "w1", "--state", "stopped", "--timeout", "120"], env=corral.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(1.0)
        assert waiter.poll() is None, "waits while the VM runs"
        assert corral.cli("stop", "w1").returncode == 0
        out, err = waiter.communicate(timeout=60)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()
    assert (waiter.returncode, out.decode().strip()) == (0, "w1 is stopped"), err

    r = corral.cli("wait", "w1", "--ready", "--timeout", "1")
    assert r.returncode != 0 and "w1" in r.stderr and "stopped" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = corral.cli("wait", "w1", "--state", "running", "--timeout", "1")
    assert r.returncode != 0 and "still stopped after 1s" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = corral.cli("wait", "w1", "--state", "sleeping")
    assert r.returncode == 2 and "not a VM state" in r.stderr
    r = corral.cli("shell", "w1", "--", "true")
    assert r.returncode == 4 and "stopped" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert corral.cli("shell", "nope", "--", "true").returncode == 3

    # Started again, on another port: the host key is the same one (kept on the VM's disk), pinned again.
    assert corral.cli("start", "w1", "--no-wait").returncode == 0
    r = corral.cli("shell", "w1", "--", "hostname")
    assert (r.returncode, r.stdout) == (0, "w1\n"), r.stderr
    assert (corral.settings.vms_dir / "w1" / "known_hosts").read_text().split()[1:] == key_before
