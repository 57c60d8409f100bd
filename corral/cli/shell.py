"""`corral shell VM [-- CMD...]`: a real SSH session into the guest, by Corral's per-VM key and pinned host key.

The CLI asks the API where the VM's SSH server is, then becomes ``ssh`` (exec, not a child): the terminal, its
window size, Ctrl-C and the remote exit code all go through ssh untouched, and nothing of ours sits in between.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys

import typer

from corral.api.models import SSHInfo
from corral.cli.common import EXIT_ERROR, api, fail


def ssh_argv(info: SSHInfo, command: list[str], tty: bool) -> list[str]:
    """The ssh command line: only Corral's key, only the pinned host key, no prompts, no user ssh config (whose
    ``Host *`` settings could change which key or host key is used)."""
    argv = [
        "ssh", "-F", "/dev/null", "-i", info.identity_file, "-p", str(info.port), "-l", info.user,
        "-o", f'UserKnownHostsFile="{info.known_hosts}"', "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
        "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=15",
        "-t" if tty else "-T", info.host,
    ]
    if command:
        # ssh hands the remote shell one string: quote each word so the guest sees exactly these arguments.
        argv += ["--", shlex.join(command)]
    return argv


def shell(
    name: str = typer.Argument(..., help="VM name"),
    command: list[str] | None = typer.Argument(None, help="command and arguments to run instead of a shell (after --)"),
    timeout: float = typer.Option(120.0, "--timeout", help="seconds to wait for the guest to be ready"),
) -> None:
    """Open a shell in the VM over SSH (or run a command after --); the remote exit code is ours."""
    if shutil.which("ssh") is None:
        fail("ssh not found: install it with `apt-get install openssh-client`", EXIT_ERROR)
    with api() as client:
        info = client.ssh_info(name, timeout=timeout)
    tty = sys.stdin.isatty() and sys.stdout.isatty()
    argv = ssh_argv(info, command or [], tty)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        fail(f"cannot run ssh: {exc}", EXIT_ERROR)


def register(app: typer.Typer) -> None:
    app.command()(shell)
