"""SSH access without set-up by the user: a key pair per VM, installed in the guest at every boot through the
guest agent, and the guest's host keys read back the same way (pinned in ``known_hosts``)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import subprocess

from corral.engine.guest_agent import GuestAgent
from corral.errors import EngineError, GuestAgentError
from corral.guest.commands import run
from corral.paths import VMPaths
from corral.vm.spec import VMSpec

#: The user `corral shell` logs in as (both images let root in with a key only).
SSH_USER = "root"
#: Where QEMU's NAT forwards each VM's port 22 (``hostfwd=tcp:127.0.0.1:<ssh_port>-:22``).
SSH_HOST = "127.0.0.1"


def ensure_keypair(paths: VMPaths) -> str:
    """The VM's public key, made with ssh-keygen (ed25519, no passphrase, mode 0600) the first time."""
    key = paths.ssh_key
    pub = key.with_suffix(".pub")
    if not key.exists() or not pub.exists():
        key.unlink(missing_ok=True)
        pub.unlink(missing_ok=True)
        try:
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"corral@{paths.root.name}",
                            "-f", str(key)], check=True, capture_output=True, timeout=30)
        except FileNotFoundError as exc:
            raise EngineError("ssh-keygen not found: install it with `apt-get install openssh-client`") from exc
        except subprocess.CalledProcessError as exc:
            raise EngineError(f"ssh-keygen failed: {exc.stderr.decode(errors='replace').strip()}") from exc
    return pub.read_text().strip()




# -- host keys: read through the agent, pinned in known_hosts ----------------------------------------------------

#: The one host key type pinned: both images make an ed25519 key, and with only that type in known_hosts OpenSSH
#: asks the server for it first, so a second key type would add nothing but a chance to read a half-written file.
HOST_KEY_TYPE = "ssh-ed25519"

#: Prints the guest's ed25519 host public key, waiting (up to 90 s) for the boot to make it: dropbear's (tiny) is
#: made before dropbear starts, OpenSSH's (debian-12) by a oneshot unit that may finish after the agent answers.
HOST_KEY_SCRIPT = r"""
i=0
while :; do
    if [ -s /etc/dropbear/dropbear_ed25519_host_key ] && command -v dropbearkey >/dev/null; then
        exec dropbearkey -y -f /etc/dropbear/dropbear_ed25519_host_key
    fi
    [ -s /etc/ssh/ssh_host_ed25519_key.pub ] && exec cat /etc/ssh/ssh_host_ed25519_key.pub
    if ! command -v dropbear >/dev/null && [ ! -x /usr/sbin/sshd ]; then
        echo "the guest has no SSH server (dropbear or sshd)" >&2
        exit 3
    fi
    if [ $i -ge 900 ]; then
        echo "no SSH host key appeared in the guest within 90s" >&2
        exit 4
    fi
    sleep 0.1
    i=$((i+1))
done
"""


#: The keys in ``$keys`` authorized for root (shell builtins but for a first mkdir); exit 20 if they cannot be
#: written. Part of every boot's provisioning, and of a template VM's identity command.
AUTHORIZE_KEYS_SCRIPT = r"""
umask 077
[ -d /root/.ssh ] || mkdir -p /root/.ssh || exit 20
printf '%s' "$keys" > /root/.ssh/authorized_keys || exit 20
"""

#: Every boot's provisioning in one guest command (each one costs the guest a fork and an exec): Corral's key and the
#: spec's ($1) authorized for root, then with $2 = "pin" the host key printed (HOST_KEY_SCRIPT). Exit 20: the keys
#: could not be written.
PROVISION_SCRIPT = 'keys=$1\n' + AUTHORIZE_KEYS_SCRIPT + '[ "$2" = pin ] || exit 0\n' + HOST_KEY_SCRIPT


async def provision(agent: GuestAgent, spec: VMSpec, public_key: str, paths: VMPaths, port: int | None) -> str | None:
    """Authorize Corral's key (and the spec's keys) for root in the guest and, with a forwarded SSH ``port``, read
    the guest's host key and pin it for that port (before "ready", so `corral shell` never trusts a host key on
    first use); why the host key could not be pinned, or None. Raises GuestAgentError if the keys could not be
    written.

    Not being able to pin is not an error of the boot (an image may have no SSH server): the VM is still ready, the
    known_hosts file is removed, and `corral shell` says why it cannot connect.
    """
    keys = "\n".join([public_key, *spec.ssh_keys]) + "\n"
    paths.known_hosts.unlink(missing_ok=True)
    code, out, err = await run(agent, ["/bin/sh", "-c", PROVISION_SCRIPT, "sh", keys, "pin" if port else ""],
                               timeout=120.0, check=False)
    if code == 20 or (code != 0 and port is None):
        raise GuestAgentError(f"the guest could not authorize Corral's SSH key: {err.decode(errors='replace').strip()}")
    if port is None:
        return None
    if code != 0:
        return f"no SSH host key read from the guest: {err.decode(errors='replace').strip() or f'exit {code}'}"
    host_keys = parse_host_keys(out.decode(errors="replace"))
    if not host_keys:
        return f"no {HOST_KEY_TYPE} host key in what the guest printed: {out[:200]!r}"
    await asyncio.to_thread(write_known_hosts, paths, port, host_keys)
    return None


def parse_host_keys(text: str) -> list[str]:
    """``type base64`` for each well-formed public key line in ``text`` (dropbearkey -y and .pub formats).

    A line counts only if its base64 decodes to a whole ed25519 key blob: a truncated or garbled key is dropped
    rather than pinned.
    """
    keys: list[str] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 2 or parts[0] != HOST_KEY_TYPE:
            continue
        try:
            blob = base64.b64decode(parts[1], validate=True)
        except ValueError:
            continue
        if _ed25519_fields(blob) is None:
            continue
        if f"{parts[0]} {parts[1]}" not in keys:
            keys.append(f"{parts[0]} {parts[1]}")
    return keys


def _ed25519_fields(blob: bytes) -> tuple[bytes, bytes] | None:
    """(type, key) when ``blob`` is exactly an SSH ed25519 public key: the string "ssh-ed25519" then 32 bytes."""
    fields: list[bytes] = []
    pos = 0
    while pos < len(blob):
        if pos + 4 > len(blob):
            return None
        size = int.from_bytes(blob[pos : pos + 4], "big")
        if pos + 4 + size > len(blob):
            return None
        fields.append(blob[pos + 4 : pos + 4 + size])
        pos += 4 + size
    if len(fields) != 2 or fields[0] != HOST_KEY_TYPE.encode() or len(fields[1]) != 32:
        return None
    return fields[0], fields[1]


def known_hosts_text(port: int, keys: list[str], host: str = SSH_HOST) -> str:
    """known_hosts lines for the forwarded port: ``[127.0.0.1]:PORT type base64`` (OpenSSH's non-22 port form)."""
    pattern = host if port == 22 else f"[{host}]:{port}"
    return "".join(f"{pattern} {key}\n" for key in keys)


def write_known_hosts(paths: VMPaths, port: int, keys: list[str]) -> None:
    """Replace the VM's known_hosts in one rename (an ssh starting meanwhile sees the old file or the new one)."""
    tmp = paths.known_hosts.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(known_hosts_text(port, keys))
    tmp.replace(paths.known_hosts)


async def wait_ssh_banner(port: int, timeout: float, host: str = SSH_HOST) -> None:
    """Wait until the guest's SSH server greets on the forwarded port (``SSH-2.0-...``).

    QEMU's NAT accepts the connection on the host before the guest's server is up, so a plain connect proves
    nothing; the banner does. Raises EngineError naming the last problem after ``timeout`` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last = "no attempt"
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise EngineError(f"the SSH server of the guest did not answer on {host}:{port} within "
                              f"{timeout:.0f}s ({last})")
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), min(remaining, 5.0))
            try:
                line = await asyncio.wait_for(reader.readline(), min(max(deadline - loop.time(), 0.1), 5.0))
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            if line.startswith(b"SSH-"):
                return
            last = f"got {line[:40]!r} instead of an SSH banner" if line else "connection closed"
        except (OSError, TimeoutError) as exc:
            last = str(exc) or type(exc).__name__
        await asyncio.sleep(0.2)
