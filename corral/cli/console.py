"""`corral console VM`: the serial console, interactive, through the API's websocket. Detach with Ctrl-]."""

from __future__ import annotations

import contextlib
import os
import sys
import termios
import threading
import tty

import typer
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import unix_connect

from corral.api.models import API_PREFIX
from corral.cli.common import EXIT_DAEMON, EXIT_ENGINE, api, err, fail
from corral.settings import load_settings

DETACH = b"\x1d"  # Ctrl-]


def console(name: str) -> None:
    """Attach to the VM's serial console (Ctrl-] detaches; the VM keeps running)."""
    with api() as client:
        client.get_vm(name)  # clear error for an unknown VM, and starts the daemon if needed
    settings = load_settings()
    try:
        ws = unix_connect(str(settings.socket), uri=f"ws://corral{API_PREFIX}/vms/{name}/console")
    except (OSError, InvalidStatus) as exc:
        fail(f"cannot attach to the console of '{name}': {exc}", EXIT_DAEMON)
    err.print(f"[dim]attached to {name}'s console; detach with Ctrl-][/]")
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd) if os.isatty(fd) else None
    closed: list[str] = []

    def pump_out() -> None:
        try:
            for msg in ws:
                data = msg if isinstance(msg, bytes) else msg.encode()
                os.write(sys.stdout.fileno(), data)
        except ConnectionClosed as exc:
            if exc.rcvd and exc.rcvd.code == 4000:
                closed.append(exc.rcvd.reason)
        finally:
            closed.append("")
            with contextlib.suppress(OSError):
                os.write(fd if saved is None else sys.stdout.fileno(), b"")

    reader = threading.Thread(target=pump_out, daemon=True)
    reader.start()
    try:
        if saved is not None:
            tty.setraw(fd)
        while not closed:
            data = os.read(fd, 1024)
            if not data or DETACH in data:
                before = data.split(DETACH, 1)[0]
                if before:
                    ws.send(before)
                break
            ws.send(data)
    except ConnectionClosed:
        pass
    finally:
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        ws.close()
    if closed and closed[0]:
        fail(closed[0], EXIT_ENGINE)
    err.print(f"\n[dim]detached from {name}[/]")


def register(app: typer.Typer) -> None:
    app.command()(console)
