"""A guest's own identity, made new: for a clone's first boot (and a VM from a template).

Two VMs from one disk must not look alike on a network: each gets a new machine-id, its own hostname, fresh SSH host
keys (the SSH server restarted on them), and, when asked, a NIC address and the host's clock. Everything is done in
the guest through the agent, by one shell script that works on busybox (tiny) and Debian alike.
"""

from __future__ import annotations

import shlex
import time

from corral.engine.guest_agent import GuestAgent
from corral.guest.commands import run

#: Run with: $1 hostname. New machine-id (systemd and D-Bus read /etc/machine-id), hostname, SSH host keys.
RESET_SCRIPT = r"""
set -e
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
name="$1"
tr -d '-' < /proc/sys/kernel/random/uuid > /etc/machine-id.new
mv /etc/machine-id.new /etc/machine-id
[ -d /var/lib/dbus ] && [ ! -L /var/lib/dbus/machine-id ] && cp /etc/machine-id /var/lib/dbus/machine-id
echo "$name" > /etc/hostname
hostname "$name"
if [ -f /etc/hosts ] && ! grep -q "[[:space:]]$name\$" /etc/hosts; then echo "127.0.1.1 $name" >> /etc/hosts; fi
if command -v dropbearkey >/dev/null 2>&1; then
    key=/etc/dropbear/dropbear_ed25519_host_key
    mkdir -p /etc/dropbear
    rm -f "$key.new"
    dropbearkey -t ed25519 -f "$key.new" >/dev/null 2>&1
    mv "$key.new" "$key"
    rm -f /etc/dropbear/dropbear_rsa_host_key /etc/dropbear/dropbear_ecdsa_host_key
    for pid in $(pidof dropbear); do kill "$pid" 2>/dev/null || true; done  # init starts it again on the new key
fi
if [ -x /usr/sbin/sshd ] && command -v ssh-keygen >/dev/null 2>&1; then
    # ed25519 and ecdsa, as the images make them: an RSA key (ssh-keygen -A) takes minutes under TCG.
    rm -f /etc/ssh/ssh_host_*
    for t in ed25519 ecdsa; do ssh-keygen -q -t "$t" -N "" -f "/etc/ssh/ssh_host_${t}_key"; done
    if command -v systemctl >/dev/null 2>&1; then systemctl --no-block try-restart ssh.service || true; fi
fi
sync
"""


async def reset_identity(agent: GuestAgent, *, hostname: str, mac: str | None = None, nic: str = "eth0",
                         set_clock: bool = False) -> None:
    """Give the guest behind ``agent`` a new identity: machine-id, ``hostname``, SSH host keys; with ``mac``, that
    MAC on ``nic``; with ``set_clock``, the host's time. Raises GuestAgentError naming the step that failed."""
    await run(agent, ["/bin/sh", "-c", RESET_SCRIPT, "reset-identity", hostname], timeout=120.0)
    if mac is not None:
        script = f"ip link set dev {shlex.quote(nic)} address {shlex.quote(mac)}"
        await run(agent, ["/bin/sh", "-c", script], timeout=30.0)
    if set_clock:
        await agent.execute("guest-set-time", {"time": time.time_ns()}, timeout=5.0)
