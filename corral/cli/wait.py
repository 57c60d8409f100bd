"""`corral wait VM [--ready] [--state STATE] [--timeout S]`: block until a VM is ready or in a state, for scripts.

The daemon does the waiting on its own state-change and readiness signals, so this costs one request, not a poll.
Exit 0 when reached; otherwise one line saying what was still missing, and the exit code of its error class.
"""

from __future__ import annotations

import typer

from corral.cli.common import EXIT_ERROR, EXIT_INVALID, api, fail, out
from corral.vm.states import VMState


def wait(
    name: str = typer.Argument(..., help="VM name"),
    ready: bool = typer.Option(False, "--ready", help="until the guest agent answered (the default without --state)"),
    state: str | None = typer.Option(None, "--state", help="until the VM is in this state, e.g. stopped"),
    timeout: float = typer.Option(300.0, "--timeout", help="give up after this many seconds"),
    exit_code: bool = typer.Option(False, "--exit-code", help="OCI images: until the VM stopped, then exit with "
                                   "its main process's exit code (as `docker wait`)"),
) -> None:
    """Wait until a VM is ready (guest agent up, guest provisioned) and/or in a given state."""
    if exit_code:
        if ready or state is not None:
            fail("--exit-code waits for the VM to stop: leave out --ready and --state", EXIT_INVALID)
        with api() as client:
            if (v := client.get_vm(name)).state == "crashed":
                fail(f"{name} crashed ({v.last_exit_reason or v.state_reason}): its main process left no exit code",
                     EXIT_ERROR)
            v = client.wait_for(name, state="stopped", timeout=timeout)
        if v.exit_code is None:
            fail(f"{name} stopped, but no main process exit code was seen ({v.last_exit_reason or v.state_reason}): "
                 "is it an OCI image's VM?", EXIT_ERROR)
        out.print(f"{name} stopped: its main process exited with code {v.exit_code}", highlight=False)
        raise typer.Exit(v.exit_code)
    states = [s.value for s in VMState]
    if state is not None and state not in states:
        fail(f"--state {state!r} is not a VM state (one of: {', '.join(states)})", EXIT_INVALID)
    if timeout < 0:
        fail("--timeout must be 0 or more seconds", EXIT_INVALID)
    with api() as client:
        v = client.wait_for(name, state=state, ready=ready, timeout=timeout)
    reached = [f"is {v.state}"] if state is not None else []
    if ready or state is None:
        reached.append("is ready")
    out.print(f"{name} {' and '.join(reached)}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command()(wait)
