"""Console tickets (as Proxmox's VNC tickets): a browser's websocket cannot send an Authorization header, so the
page first asks for a ticket over HTTP (with its token) and opens the websocket with ``?ticket=``. A ticket is
bound to the principal's name, the VM and the console's kind, is used once, and lives 60 seconds. In memory: a
daemon restart drops every ticket, which costs a page one more request. Pure: the clock is injected."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Kind = Literal["serial", "vnc"]
KINDS: tuple[Kind, ...] = ("serial", "vnc")
TTL = 60.0
MAX_OPEN = 10_000  # outstanding tickets kept at most: the oldest go first (a flood cannot grow memory forever)


class TicketError(Exception):
    """The ticket is unknown, used, expired, or for another VM or kind; the message is one line."""


@dataclass(frozen=True)
class Ticket:
    value: str
    principal: str
    vm: str
    kind: Kind
    expires_at: float  # the clock's time (wall clock by default: the API reports it)


def _key(value: str) -> str:
    # Kept by hash: a lookup cannot be timed into revealing an outstanding ticket.
    return hashlib.sha256(value.encode()).hexdigest()


class Tickets:
    def __init__(self, clock: Callable[[], float] = time.time, ttl: float = TTL) -> None:
        self._clock = clock
        self._ttl = ttl
        self._open: dict[str, Ticket] = {}

    def issue(self, principal: str, vm: str, kind: Kind) -> Ticket:
        if kind not in KINDS:
            raise ValueError(f"console kind {kind!r}: give serial or vnc")
        self._prune()
        t = Ticket(secrets.token_urlsafe(32), principal, vm, kind, self._clock() + self._ttl)
        self._open[_key(t.value)] = t
        while len(self._open) > MAX_OPEN:
            del self._open[next(iter(self._open))]
        return t

    def redeem(self, value: str | None, vm: str, kind: Kind) -> Ticket:
        """The ticket, used up (whatever the outcome: one use); TicketError if it does not open this console."""
        if not value:
            raise TicketError(f"a {kind} console over the network needs a ticket: "
                              f"POST /v1/vms/{vm}/console/tickets, then ?ticket=")
        t = self._open.pop(_key(value), None)
        if t is None:
            raise TicketError("unknown or already used console ticket: ask for a new one")
        if self._clock() >= t.expires_at:
            raise TicketError("console ticket expired (they live 60 s): ask for a new one")
        if t.vm != vm or t.kind != kind:
            raise TicketError(f"this ticket is for the {t.kind} console of '{t.vm}', not the {kind} console of "
                              f"'{vm}'")
        return t

    def _prune(self) -> None:
        now = self._clock()
        for k in [k for k, t in self._open.items() if now >= t.expires_at]:
            del self._open[k]

    def __len__(self) -> int:
        return len(self._open)
