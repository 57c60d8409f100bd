"""A guest takes its own identity: what a VM started from another VM's saved memory (a template, a clone) must change
before it is shown to anyone, so that no two such VMs look alike on a network or to SSH.

What changes, all in ONE guest command (every agent round trip costs milliseconds under TCG):

- fresh entropy: random bytes from the host written into ``/dev/urandom`` (mixed into the guest's pool; the
  kernel's generator state was copied with the memory), before anything below draws from it;
- the hostname (``hostname``, ``/etc/hostname``, the ``127.0.1.1`` line of ``/etc/hosts``);
- a new ``/etc/machine-id`` (and ``/var/lib/dbus/machine-id`` where it exists);
- the NIC's MAC (``ip link set dev NIC address MAC``): virtio-net's migrated state carries the saved VM's MAC, and
  the guest driver's change (VIRTIO_NET_CTRL_MAC_ADDR_SET) sets QEMU's device MAC too, so host and guest agree; the
  ``-device ...,mac=`` of the new VM is the same MAC, so a guest reboot (device reset) keeps it;
- new SSH host keys: dropbear's ed25519 key made again and the listener restarted (init respawns it); OpenSSH's
  keys made again with ``ssh-keygen -A`` and the service restarted;
- with ``set_clock``, the clock (``guest-set-time``): a saved guest's clock stands at the time it was saved.

Only POSIX sh and busybox applets are used.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time

from corral.engine.guest_agent import GuestAgent
from corral.errors import GuestAgentError, GuestAgentTimeout

#: Bytes of host randomness written into the guest's /dev/urandom.
ENTROPY_BYTES = 512
#: How often the result of the one guest command is asked for (it usually takes a few tens of milliseconds).
POLL = 0.005

#: Positional parameters: hostname, MAC ("" to leave it), NIC. Standard input: the host's random bytes.
IDENTITY_SCRIPT = r"""
name=$1 mac=$2 nic=$3
cat > /dev/urandom
hostname "$name" && echo "$name" > /etc/hostname || exit 10
if [ -f /etc/hosts ]; then
    { grep -v '^127\.0\.1\.1[[:space:]]' /etc/hosts; printf '127.0.1.1\t%s\n' "$name"; } > /etc/hosts.corral &&
        mv /etc/hosts.corral /etc/hosts
fi
tr -d '-' < /proc/sys/kernel/random/uuid > /etc/machine-id.corral &&
    mv /etc/machine-id.corral /etc/machine-id || exit 11
[ -f /var/lib/dbus/machine-id ] && [ ! -L /var/lib/dbus/machine-id ] && cp /etc/machine-id /var/lib/dbus/machine-id
if [ -n "$mac" ]; then
    ip link set dev "$nic" address "$mac" || exit 12
fi
key=/etc/dropbear/dropbear_ed25519_host_key
if command -v dropbearkey >/dev/null 2>&1; then
    mkdir -p /etc/dropbear
    rm -f "$key.new"
    dropbearkey -t ed25519 -f "$key.new" >/dev/null 2>&1 && mv "$key.new" "$key" || exit 13
    for p in $(pidof dropbear); do
        read -r stat < "/proc/$p/stat" 2>/dev/null || continue
        set -- $stat
        [ "$4" = 1 ] && kill "$p"
    done
fi
if [ -x /usr/sbin/sshd ] && command -v ssh-keygen >/dev/null 2>&1; then
    rm -f /etc/ssh/ssh_host_*
    ssh-keygen -A >/dev/null 2>&1 || exit 14
    systemctl restart ssh >/dev/null 2>&1 || true
fi
"""


def identity_args(hostname: str, mac: str | None, nic: str) -> list[str]:
    return [hostname, mac or "", nic]


async def run_script(agent: GuestAgent, script: str, args: list[str], *, stdin: bytes = b"",
                     timeout: float = 60.0) -> tuple[int, bytes, bytes]:
    """Run a shell script in the guest with its output captured by the agent: one guest-exec, then
    guest-exec-status every few milliseconds (no files, no clean-up calls). (exit code, stdout, stderr)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    arguments = {"path": "/bin/sh", "arg": ["-c", script, "sh", *args], "capture-output": True,
                 "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root"]}
    if stdin:
        arguments["input-data"] = base64.b64encode(stdin).decode()
    pid = int((await agent.execute("guest-exec", arguments))["pid"])
    while True:
        status = await agent.execute("guest-exec-status", {"pid": pid})
        if status.get("exited"):
            out = base64.b64decode(status.get("out-data", ""))
            err = base64.b64decode(status.get("err-data", ""))
            code = status.get("exitcode")
            return (code if code is not None else 128 + int(status.get("signal", 0))), out, err
        if loop.time() >= deadline:
            raise GuestAgentTimeout(f"a guest command did not finish within {timeout:.0f}s")
        await asyncio.sleep(POLL)


async def set_time(agent: GuestAgent) -> None:
    """The guest's clock set to the host's, now."""
    await agent.execute("guest-set-time", {"time": time.time_ns()}, timeout=5.0)


async def reset_identity(agent: GuestAgent, *, hostname: str, mac: str | None = None, nic: str = "eth0",
                         set_clock: bool = False) -> None:
    """Give the guest behind ``agent`` its own identity (see the module's doc); raises GuestAgentError if a step
    failed."""
    if set_clock:
        await set_time(agent)
    code, _, err = await run_script(agent, IDENTITY_SCRIPT, identity_args(hostname, mac, nic),
                                    stdin=os.urandom(ENTROPY_BYTES))
    if code != 0:
        raise GuestAgentError(f"the guest could not take its new identity ({IDENTITY_STEPS.get(code, code)}): "
                              f"{err.decode(errors='replace').strip()}")


#: What each exit code of IDENTITY_SCRIPT means.
IDENTITY_STEPS = {10: "hostname", 11: "machine-id", 12: "MAC address", 13: "dropbear host key",
                  14: "OpenSSH host keys"}
