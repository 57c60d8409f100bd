"""SSH access without set-up by the user: a key pair per VM, installed in the guest at every boot through the
guest agent, and the guest's host keys read back the same way (pinned in ``known_hosts``)."""

from __future__ import annotations

import subprocess

from corral.engine.guest_agent import GuestAgent
from corral.errors import EngineError
from corral.guest.commands import run
from corral.paths import VMPaths
from corral.vm.spec import VMSpec

#: The user `corral shell` logs in as (both images let root in with a key only).
SSH_USER = "root"


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


async def provision(agent: GuestAgent, spec: VMSpec, public_key: str) -> None:
    """Authorize Corral's key (and the spec's keys) for root in the guest."""
    keys = "\n".join([public_key, *spec.ssh_keys]) + "\n"
    await run(agent, ["/bin/sh", "-c", "umask 077 && mkdir -p /root/.ssh && cat > /root/.ssh/authorized_keys"],
              stdin=keys.encode())
