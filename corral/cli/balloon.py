"""`corral balloon VM [SIZE]`: a --balloon VM's live memory target (virsh setmem --live), or its memory stats."""

from __future__ import annotations

import time

import typer

from corral.api.models import BalloonStatus
from corral.cli.common import EXIT_INVALID, api, fail, out, print_json
from corral.engine.cmdline import BALLOON_STATS_INTERVAL
from corral.vm.sizes import format_size, parse_size

#: How long `corral balloon VM SIZE --wait` waits for the guest to reach the target.
WAIT_TIMEOUT = 60.0


def describe(b: BalloonStatus) -> str:
    """One line for `corral show`: the memory the guest has, the target, the guest's own view."""
    text = f"{format_size(b.size)} of {format_size(b.memory)}"
    if b.target is not None and b.target != b.size:
        text += f" (target {format_size(b.target)})"
    if b.guest_available is not None and b.guest_total is not None:
        text += f"; guest: {format_size(b.guest_available)} available of {format_size(b.guest_total)}"
    return text


def balloon(
    name: str = typer.Argument(..., help="VM name (launched with --balloon)"),
    size: str | None = typer.Argument(None, help="the memory the guest should have, e.g. 96M or 1G (from 64M to "
                                      "the VM's memory); without it: show the balloon"),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="wait (up to a minute) until the guest got there"),
    json_: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Set a running --balloon VM's memory target, live (a stop/start begins with all of its memory again)."""
    if size is not None:
        try:
            parse_size(size, default_unit="M")
        except ValueError as exc:
            fail(f"SIZE: {exc}", EXIT_INVALID)
    with api() as client:
        if size is None:
            b = client.balloon(name)
        else:
            b = client.set_balloon(name, size)
            target = b.target if b.target is not None else b.size
            deadline = time.monotonic() + WAIT_TIMEOUT
            with out.status(f"[bold]{name}[/]: balloon to {format_size(target)}...", spinner="dots"):
                while wait and abs(b.size - target) >= (1 << 20) and time.monotonic() < deadline:
                    time.sleep(0.5)
                    b = client.balloon(name)
                # ...and the guest's statistics sent since (every few seconds), so the line printed is current.
                reached, stats_deadline = time.time(), time.monotonic() + BALLOON_STATS_INTERVAL + 2
                while wait and b.stats_age is not None and b.stats_age > time.time() - reached + 1 and \
                        time.monotonic() < stats_deadline:
                    time.sleep(0.5)
                    b = client.balloon(name)
            if wait and abs(b.size - target) >= (1 << 20):
                out.print(f"[yellow]{name}: target {format_size(target)} set, but the guest still has "
                          f"{format_size(b.size)} after {WAIT_TIMEOUT:.0f}s (short of free memory?); "
                          f"`corral balloon {name}` to follow[/]", highlight=False)
    if json_:
        print_json(b)
        return
    out.print(f"{name}: {describe(b)}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command()(balloon)
