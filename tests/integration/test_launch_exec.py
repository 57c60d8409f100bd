"""Launch to agent-ready, then exec with output, exit codes, stdin, env, cwd and timeout: through the real CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import CorralEnv

pytestmark = pytest.mark.vm


def test_launch_then_exec(corral: CorralEnv) -> None:
    r = corral.cli("launch", "demo", "--memory", "256M", "--disk", "2G")
    assert r.returncode == 0, r.stderr
    assert "demo ready in" in r.stdout

    r = corral.cli("exec", "demo", "--", "uname", "-a")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Linux demo ")

    # The guest's exit code is ours, stdout and stderr stay apart.
    r = corral.cli("exec", "demo", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n")

    r = corral.cli("exec", "demo", "--", "no-such-command")
    assert r.returncode == 127
    assert "no-such-command" in r.stderr

    r = corral.cli("exec", "demo", "--", "tr", "a-z", "A-Z", input=b"hello from stdin\n")
    assert r.stdout == "HELLO FROM STDIN\n"

    r = corral.cli("exec", "--env", "GREETING=hi there", "--cwd", "/etc", "demo", "--",
                   "sh", "-c", 'echo "$GREETING in $(pwd)"')
    assert r.stdout == "hi there in /etc\n", r.stderr

    r = corral.cli("exec", "--timeout", "2", "demo", "--", "sleep", "60")
    assert r.returncode == 124
    assert "timed out" in r.stderr

    # The disk is the size asked for: the guest grew its root file system to it.
    r = corral.cli("exec", "demo", "--", "sh", "-c", "cat /sys/block/vda/size")
    assert int(r.stdout) * 512 == 2 << 30

    vms = json.loads(corral.cli("ls", "--json").stdout)
    assert [(v["name"], v["state"], v["agent_ready"]) for v in vms] == [("demo", "running", True)]

    show = json.loads(corral.cli("show", "demo", "--json").stdout)
    assert show["accel"] in ("tcg", "kvm") and show["pid"] > 0
    assert show["disks"][0]["backing_format"] == "qcow2"
    assert show["addresses"], "the guest got an address by DHCP"
    text = corral.cli("show", "demo").stdout
    assert "accelerator:" in text and "uptime:" in text

    # QEMU inherits none of the daemon's descriptors (its database, socket, log).
    fds = {os.readlink(f"/proc/{show['pid']}/fd/{fd}") for fd in os.listdir(f"/proc/{show['pid']}/fd")}
    home = str(corral.home)
    leaked = {f for f in fds if f.startswith(home) and "/vms/demo/" not in f and "/images/tiny/" not in f}
    assert not leaked, leaked
    cmdline = Path(f"/proc/{show['pid']}/cmdline").read_text().split("\0")
    assert "-sandbox" in cmdline

    st = corral.cli("daemon", "status").stdout
    assert "accelerator: tcg" in st or "accelerator: kvm" in st


def test_exec_streams_output_as_it_comes(corral: CorralEnv) -> None:
    assert corral.cli("launch", "s1").returncode == 0
    import time

    t0 = time.monotonic()
    seen: list[tuple[float, str]] = []
    for chunk in corral.client.exec_stream("s1", ["sh", "-c", "echo first; sleep 3; echo second"]):
        if chunk.kind == "stdout":
            import base64

            seen.append((time.monotonic() - t0, base64.b64decode(chunk.data_b64 or "").decode()))
    assert "".join(s for _, s in seen) == "first\nsecond\n"
    assert seen[0][1].startswith("first")
    assert seen[-1][0] - seen[0][0] > 2, "the first line arrived before the command ended"
