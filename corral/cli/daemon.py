"""`corral daemon start|stop|status`."""

from __future__ import annotations

import os
import signal
import time

import typer

from corral import paths
from corral.cli.common import EXIT_DAEMON, api, fail, out, print_json
from corral.client import DaemonUnavailable, daemon_running, start_daemon
from corral.settings import load_settings

app = typer.Typer(help="The per-host daemon, corrald.", no_args_is_help=True)


@app.command()
def start() -> None:
    """Start corrald if it is not running."""
    settings = load_settings()
    if daemon_running(settings):
        out.print(f"corrald already running ({settings.socket})")
        return
    try:
        start_daemon(settings)
    except DaemonUnavailable as exc:
        fail(exc.message, EXIT_DAEMON)
    out.print(f"corrald started ({settings.socket})")


@app.command()
def stop(timeout: float = typer.Option(15.0, help="seconds to wait")) -> None:
    """Stop corrald. Running VMs keep running; the next daemon re-attaches to them."""
    settings = load_settings()
    pidfile = settings.home / paths.DAEMON_PID
    if not daemon_running(settings):
        out.print("corrald is not running")
        return
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, signal.SIGTERM)
    except (ValueError, FileNotFoundError, ProcessLookupError):
        fail(f"cannot find corrald's pid in {pidfile}", EXIT_DAEMON)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{pid}"):
            out.print("corrald stopped (VMs keep running)")
            return
        time.sleep(0.05)
    fail(f"corrald (pid {pid}) did not stop within {timeout:.0f}s", EXIT_DAEMON)


@app.command()
def status(json_: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Show the daemon, its accelerator and its VMs."""
    with api() as client:
        st = client.status()
    if json_:
        print_json(st)
        return
    out.print(f"corrald {st.version}, pid {st.pid}, home {st.home}")
    out.print(f"socket: {st.socket}")
    out.print(f"qemu: {st.qemu}")
    accel = st.accel or "not probed yet"
    out.print(f"accelerator: {accel} ({st.accel_reason})" if st.accel else f"accelerator: {accel}")
    out.print("vms: " + (", ".join(f"{n} {s}" for s, n in sorted(st.vms.items())) or "none"))
