"""Console tickets: one use, 60 s, bound to the principal, the VM and the kind."""

from __future__ import annotations

import pytest

from corral.auth import tickets as tk
from corral.auth.tickets import TicketError, Tickets


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_ticket_opens_its_console_once() -> None:
    t = Tickets(clock=Clock())
    issued = t.issue("alice", "web", "serial")
    assert issued.expires_at == 1060.0 and len(issued.value) >= 40
    assert t.redeem(issued.value, "web", "serial").principal == "alice"
    with pytest.raises(TicketError, match="already used"):
        t.redeem(issued.value, "web", "serial")


def test_a_ticket_expires_after_60_seconds() -> None:
    clock = Clock()
    t = Tickets(clock=clock)
    early, late = t.issue("alice", "web", "vnc"), t.issue("alice", "web", "vnc")
    clock.now += 59.9
    t.redeem(early.value, "web", "vnc")
    clock.now += 0.1
    with pytest.raises(TicketError, match="expired"):
        t.redeem(late.value, "web", "vnc")


@pytest.mark.parametrize("vm,kind", [("db", "serial"), ("web", "vnc")])
def test_a_ticket_is_for_one_vm_and_kind_and_is_spent_by_a_wrong_try(vm: str, kind: tk.Kind) -> None:
    t = Tickets(clock=Clock())
    issued = t.issue("alice", "web", "serial")
    with pytest.raises(TicketError, match="not the"):
        t.redeem(issued.value, vm, kind)
    with pytest.raises(TicketError, match="already used"):
        t.redeem(issued.value, "web", "serial")


@pytest.mark.parametrize("value", [None, "", "made-up"])
def test_no_or_unknown_ticket(value: str | None) -> None:
    with pytest.raises(TicketError):
        Tickets(clock=Clock()).redeem(value, "web", "serial")


def test_expired_tickets_are_dropped_and_outstanding_ones_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    t = Tickets(clock=clock)
    t.issue("alice", "web", "serial")
    clock.now += 61
    t.issue("alice", "web", "serial")
    assert len(t) == 1
    monkeypatch.setattr(tk, "MAX_OPEN", 3)
    first = t.issue("bob", "web", "serial")
    for _ in range(3):
        t.issue("bob", "web", "serial")
    assert len(t) == 3
    with pytest.raises(TicketError):
        t.redeem(first.value, "web", "serial")


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError):
        Tickets().issue("alice", "web", "sdl")  # type: ignore[arg-type]
