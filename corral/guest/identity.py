"""A guest takes its own identity: what a VM started from another VM's saved memory (a template, a clone) must change
before it is shown to anyone, so that no two such VMs look alike on a network or to SSH.

What changes, all in ONE guest command (every agent round trip costs milliseconds under TCG):

- fresh entropy: random bytes from the host written into ``/dev/urandom`` (mixed into the guest's pool; the
  kernel's generator state was copied with the memory);
- the hostname (``hostname``, ``/etc/hostname``, the ``127.0.1.1`` line of ``/etc/hosts``);
- a new ``/etc/machine-id`` (and ``/var/lib/dbus/machine-id`` where it exists), random from the host;
- the NIC's MAC (``ip link set dev NIC address MAC``): virtio-net's migrated state carries the saved VM's MAC, and
  the guest driver's change (VIRTIO_NET_CTRL_MAC_ADDR_SET) sets QEMU's device MAC too, so host and guest agree; the
  ``-device ...,mac=`` of the new VM is the same MAC, so a guest reboot (device reset) keeps it;
- new SSH host keys: dropbear's ed25519 key, made on the host (ssh-keygen, written in dropbear's format), and the
  listener restarted (init respawns it); OpenSSH's ed25519 and ecdsa keys made again in the guest and the service
  restarted;
- with ``set_clock``, the clock (``guest-set-time``): a saved guest's clock stands at the time it was saved.

Only POSIX sh and busybox applets are used, shell builtins wherever possible.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from corral.engine.guest_agent import GuestAgent, start_captured, wait_captured
from corral.errors import EngineError, GuestAgentError

#: Bytes of host randomness written into the guest's /dev/urandom.
ENTROPY_BYTES = 256
#: When the result of the one guest command is asked for: not at once (every question interrupts the guest, which
#: has one vCPU to run the script with), then often.
FIRST_POLL = 0.03
POLL = 0.01

#: The hostname becomes ``$name`` (``/proc/sys/kernel/hostname``, ``/etc/hostname``, the ``127.0.1.1`` line of
#: ``/etc/hosts``), with shell builtins only; exit 10 if it cannot be written. Part of IDENTITY_SCRIPT, and all a
#: warm pool's member needs when it is handed out under a new name.
HOSTNAME_SCRIPT = r"""
echo "$name" > /proc/sys/kernel/hostname && echo "$name" > /etc/hostname || exit 10
if [ -f /etc/hosts ]; then
    h=
    while IFS= read -r l; do
        case $l in 127.0.1.1[[:space:]]*) ;; *) h="$h$l
" ;; esac
    done < /etc/hosts
    printf '%s127.0.1.1\t%s\n' "$h" "$name" > /etc/hosts || exit 10
fi
"""

#: Every fork and exec costs 5-30 ms under TCG in a QEMU that has not run the code yet (dropbearkey ~80 ms), so the
#: script runs shell builtins only, but for `ip` and, without a host key from the host, the SSH key tools: daemons
#: are found through their pidfiles (the tiny image writes them), the gratuitous ARP comes from the kernel
#: (arp_notify). Positional parameters: hostname, MAC ("" to leave it), NIC,
#: machine-id, entropy and the dropbear host key file (both as printf octal escapes; "" to make the key in the
#: guest).
IDENTITY_SCRIPT = r"""
name=$1 mac=$2 nic=$3 mid=$4 entropy=$5 dbkey=$6 renew_ipv6= restart_dropbear=
# stop_daemon NAME PIDFILE [only-if-parent-is-init]: kill the process NAME, found through its pidfile when it has
# one that names a live NAME (builtins only: no fork), else through pidof.
stop_daemon() {
    sd_name=$1 sd_pidfile=$2 sd_listener=$3
    if [ -r "$sd_pidfile" ] && read -r sd_pid < "$sd_pidfile" && [ -n "$sd_pid" ] &&
            read -r sd_comm 2>/dev/null < "/proc/$sd_pid/comm" && [ "$sd_comm" = "$sd_name" ]; then
        kill "$sd_pid" 2>/dev/null
        return 0
    fi
    for sd_pid in $(pidof "$sd_name" 2>/dev/null); do
        if [ -n "$sd_listener" ]; then  # init's child, not a session
            read -r sd_stat 2>/dev/null < "/proc/$sd_pid/stat" || continue
            set -- $sd_stat
            [ "$4" = 1 ] || continue
        fi
        kill "$sd_pid" 2>/dev/null
    done
    return 0
}
printf "$entropy" > /dev/urandom
""" + HOSTNAME_SCRIPT + r"""echo "$mid" > /etc/machine-id || exit 11
[ -f /var/lib/dbus/machine-id ] && [ ! -L /var/lib/dbus/machine-id ] && echo "$mid" > /var/lib/dbus/machine-id
if [ -n "$mac" ]; then
    # QEMU's NAT (user networking) has the address leased to the old MAC, and its DHCP server answers a request
    # carrying that MAC by pointing its ARP table at it again: the DHCP client (busybox udhcpc) goes first; the
    # address stays configured.
    stop_daemon udhcpc "/run/udhcpc.$nic.pid"
    # Neighbours learn the new MAC at once (QEMU's user-mode NAT among them: it may have the old one in its ARP
    # table, and the NIC now drops frames sent to that): with arp_notify the kernel itself sends a gratuitous ARP
    # for each IPv4 address when the address changes.
    [ -w "/proc/sys/net/ipv4/conf/$nic/arp_notify" ] && echo 1 > "/proc/sys/net/ipv4/conf/$nic/arp_notify"
    ip link set dev "$nic" address "$mac" || exit 12
    renew_ipv6=1  # at the end (IDENTITY_FINISH)
    # systemd-networkd asks for a new lease when the MAC changes, and QEMU's NAT gives the new MAC another address
    # (its old one stays leased to the old MAC): the host is told, and points its forwards at the new address.
    for l in /run/systemd/netif/leases/*; do
        [ -e "$l" ] && { echo lease-renewal; break; }
    done
fi
key=/etc/dropbear/dropbear_ed25519_host_key
restart_dropbear=
if [ -d /etc/dropbear ] || command -v dropbear >/dev/null 2>&1; then
    [ -d /etc/dropbear ] || mkdir -p /etc/dropbear
    if [ -n "$dbkey" ]; then
        umask 077
        printf "$dbkey" > "$key" || exit 13
    else
        rm -f "$key.new"
        dropbearkey -t ed25519 -f "$key.new" >/dev/null 2>&1 && mv "$key.new" "$key" || exit 13
    fi
    restart_dropbear=1  # at the very end (restart_dropbear): its restart is not waited for
fi
if [ -x /usr/sbin/sshd ] && command -v ssh-keygen >/dev/null 2>&1; then
    rm -f /etc/ssh/ssh_host_*
    # ed25519 and ecdsa, the keys the images make: an RSA key (ssh-keygen -A) takes minutes under TCG.
    for t in ed25519 ecdsa; do ssh-keygen -q -t "$t" -N "" -f "/etc/ssh/ssh_host_${t}_key" || exit 14; done
    systemctl --no-block try-restart ssh.service >/dev/null 2>&1 || true
fi
"""

#: The end of a script that began with IDENTITY_SCRIPT, in the same command: the work whose consequences run on in
#: the guest's background, after everything else so that they do not slow it down. IPv6
#: addresses derived from the old MAC go (re-enabling IPv6 makes them again from the new one), and dropbear's
#: listener is killed (init respawns it with the new key; sessions stay).
IDENTITY_FINISH = r"""
if [ -n "$renew_ipv6" ] && [ -w "/proc/sys/net/ipv6/conf/$nic/disable_ipv6" ]; then
    echo 1 > "/proc/sys/net/ipv6/conf/$nic/disable_ipv6"
    echo 0 > "/proc/sys/net/ipv6/conf/$nic/disable_ipv6"
fi
[ -n "$restart_dropbear" ] && stop_daemon dropbear /run/dropbear.pid listener
exit 0
"""


def octal_escapes(data: bytes) -> str:
    """``data`` as a printf format of octal escapes only (no ``%``, no quoting trouble)."""
    return "".join(f"\\{b:03o}" for b in data)


@dataclass(frozen=True)
class HostKey:
    """An ed25519 SSH host key made on the host: dropbear's private key file, and the public key line."""

    dropbear: bytes
    public: str  # "ssh-ed25519 BASE64"


def _sshstr(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _read_sshstr(buf: bytes, pos: int) -> tuple[bytes, int]:
    (n,) = struct.unpack_from(">I", buf, pos)
    return buf[pos + 4 : pos + 4 + n], pos + 4 + n


def new_host_key() -> HostKey:
    """A fresh ed25519 key pair from ``ssh-keygen`` (host randomness), in dropbear's key file format: string
    "ssh-ed25519", then a 64-byte string, the private seed followed by the public key (dropbear's
    buf_put_ed25519_priv_key). Made on the host: ~10 ms there, against ~80 ms for dropbearkey under TCG."""
    with tempfile.TemporaryDirectory(prefix="corral-hostkey-") as tmp:
        path = Path(tmp) / "key"
        try:
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)],
                           check=True, capture_output=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as exc:
            raise EngineError(f"ssh-keygen could not make a host key: {exc}") from exc
        text = path.read_text()
    body = "".join(ln for ln in text.splitlines() if not ln.startswith("-----"))
    raw = base64.b64decode(body)
    magic = b"openssh-key-v1\0"
    if not raw.startswith(magic):
        raise EngineError("ssh-keygen wrote a private key in an unknown format")
    pos = len(magic)
    cipher, pos = _read_sshstr(raw, pos)
    _kdf, pos = _read_sshstr(raw, pos)
    _kdfopts, pos = _read_sshstr(raw, pos)
    pos += 4  # number of keys (1)
    _pub_blob, pos = _read_sshstr(raw, pos)
    private, pos = _read_sshstr(raw, pos)
    if cipher != b"none":
        raise EngineError("ssh-keygen wrote an encrypted private key")
    p = 8  # two check integers
    ktype, p = _read_sshstr(private, p)
    pub, p = _read_sshstr(private, p)
    secret, p = _read_sshstr(private, p)
    if ktype != b"ssh-ed25519" or len(pub) != 32 or len(secret) != 64:
        raise EngineError("ssh-keygen wrote an unexpected ed25519 key")
    dropbear = _sshstr(b"ssh-ed25519") + _sshstr(secret[:32] + pub)
    public = "ssh-ed25519 " + base64.b64encode(_sshstr(b"ssh-ed25519") + _sshstr(pub)).decode()
    return HostKey(dropbear, public)


def identity_args(hostname: str, mac: str | None, nic: str, host_key: HostKey | None = None) -> list[str]:
    """The positional parameters of IDENTITY_SCRIPT; fresh entropy and machine-id from the host."""
    return [hostname, mac or "", nic, uuid.UUID(bytes=os.urandom(16), version=4).hex,
            octal_escapes(os.urandom(ENTROPY_BYTES)), octal_escapes(host_key.dropbear) if host_key else ""]


async def start_script(agent: GuestAgent, script: str, args: list[str], *, stdin: bytes = b"") -> int:
    """Start a shell script in the guest with its output captured by the agent (one guest-exec); its pid."""
    return await start_captured(agent, ["/bin/sh", "-c", script, "sh", *args], stdin=stdin or None)


async def wait_script(agent: GuestAgent, pid: int, timeout: float = 60.0) -> tuple[int, bytes, bytes]:
    """Wait for a script :func:`start_script` started, asking after FIRST_POLL and then every POLL (no files, no
    clean-up calls): (exit code, stdout, stderr)."""
    return await wait_captured(agent, pid, timeout, first_poll=FIRST_POLL, growth=1.0, max_poll=POLL)


async def run_script(agent: GuestAgent, script: str, args: list[str], *, stdin: bytes = b"",
                     timeout: float = 60.0) -> tuple[int, bytes, bytes]:
    """:func:`start_script` then :func:`wait_script`."""
    return await wait_script(agent, await start_script(agent, script, args, stdin=stdin), timeout)


async def set_time(agent: GuestAgent) -> None:
    """The guest's clock set to the host's, now."""
    await agent.execute("guest-set-time", {"time": time.time_ns()}, timeout=30.0)


async def reset_identity(agent: GuestAgent, *, hostname: str, mac: str | None = None, nic: str = "eth0",
                         set_clock: bool = False) -> None:
    """Give the guest behind ``agent`` its own identity (see the module's doc); raises GuestAgentError if a step
    failed."""
    host_key = await asyncio.to_thread(new_host_key)
    pid = await start_script(agent, IDENTITY_SCRIPT + IDENTITY_FINISH, identity_args(hostname, mac, nic, host_key))
    if set_clock:  # while the script runs: the agent answers meanwhile
        await set_time(agent)
    code, _, err = await wait_script(agent, pid)
    if code != 0:
        raise GuestAgentError(f"the guest could not take its new identity ({IDENTITY_STEPS.get(code, code)}): "
                              f"{err.decode(errors='replace').strip()}")


#: What each exit code of IDENTITY_SCRIPT means.
IDENTITY_STEPS = {10: "hostname", 11: "machine-id", 12: "MAC address", 13: "dropbear host key",
                  14: "OpenSSH host keys"}
