"""Expiry: a VM's time to live, and the pure decision of what the daemon does about it.

A VM may carry ``expires_at`` (absolute, UTC) and ``on_expiry`` (stop, suspend or delete) in its spec: from
``corral launch --ttl 2h`` / ``--expires-at ISO``, or from its project's default TTL when it has none of its own.
The daemon's housekeeping calls :func:`decide` every few seconds for each VM and acts on the answer under the VM's
lock. An ``expiring`` event is recorded once when the VM enters its warning window (:func:`warning_window`), an
``expired`` event once when the action was taken (or found unnecessary), with the action and its result.

An expired VM is not started (or resumed) again until its expiry is pushed out: ``corral extend VM 1h``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from corral.vm.states import VMState

S = VMState

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
MAX_TTL = 10 * 365 * 86400  # ten years


class ExpiryAction(StrEnum):
    """What happens to a VM when it expires."""

    STOP = "stop"  # clean power-off, then kill
    SUSPEND = "suspend"  # save its state to disk; `corral resume` continues it (after `corral extend`)
    DELETE = "delete"  # kill it and remove its disks (after a final backup if its spec has backup_before_delete)


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``90s``, ``30m``, ``2h``, ``7d``, ``1w``, ``1h30m``; a bare number is seconds."""
    t = text.strip().lower()
    if not t:
        raise ValueError("empty duration: use e.g. 30m, 2h or 7d")
    try:
        seconds = float(t)
    except ValueError:
        pos, seconds = 0, 0.0
        for m in DURATION_RE.finditer(t):
            if m.start() != pos:
                break
            seconds += float(m[1]) * UNITS[m[2]]
            pos = m.end()
        if pos != len(t):
            raise ValueError(f"{text!r} is not a duration: use e.g. 90s, 30m, 2h, 7d or 1h30m") from None
    if not 0 < seconds <= MAX_TTL:
        raise ValueError(f"{text!r} is out of range: a duration is more than 0 s and at most 10 years")
    return seconds


def parse_time(text: str) -> datetime:
    """An ISO 8601 time; without a zone it is taken as UTC. Returned in UTC."""
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00") if text.strip().endswith("Z") else text)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 time: use e.g. 2026-12-01T18:00:00Z") from None
    return to_utc(t)


def to_utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def format_duration(seconds: float) -> str:
    """``1d2h``, ``3h5m``, ``4m10s``, ``7s``: the two largest units."""
    s = int(max(seconds, 0))
    parts = [(s // 86400, "d"), (s % 86400 // 3600, "h"), (s % 3600 // 60, "m"), (s % 60, "s")]
    while len(parts) > 1 and parts[0][0] == 0:
        parts.pop(0)
    return "".join(f"{n}{u}" for n, u in parts[:2] if n or u == parts[0][1])


def warning_window(lifetime: float, fraction: float, maximum: float) -> float:
    """How long before expiry the ``expiring`` warning comes: ``fraction`` of the lifetime, at most ``maximum``."""
    return max(0.0, min(lifetime * fraction, maximum))


class Decision(StrEnum):
    NONE = "none"  # nothing to do (no expiry, or not yet)
    WARN = "warn"  # record the `expiring` event
    ACT = "act"  # take the expiry action now
    DONE = "done"  # expired, but nothing to do: the VM is already where the action would bring it
    WAIT = "wait"  # expired, but the VM is between states or unknown: look again later


#: States the expiry action is taken from, per action; DONE_IN: states in which it is already done.
ACT_FROM: dict[ExpiryAction, frozenset[VMState]] = {
    ExpiryAction.STOP: frozenset({S.RUNNING, S.PAUSED, S.STARTING}),
    ExpiryAction.SUSPEND: frozenset({S.RUNNING, S.PAUSED}),
    ExpiryAction.DELETE: frozenset({S.RUNNING, S.PAUSED, S.STOPPED, S.CRASHED, S.SUSPENDED}),
}
DONE_IN: dict[ExpiryAction, frozenset[VMState]] = {
    ExpiryAction.STOP: frozenset({S.STOPPED, S.CRASHED, S.SUSPENDED}),
    ExpiryAction.SUSPEND: frozenset({S.SUSPENDED, S.STOPPED, S.CRASHED}),
    ExpiryAction.DELETE: frozenset(),
}


@dataclass(frozen=True)
class ExpiryCheck:
    """What :func:`decide` needs to know about one VM."""

    now: datetime
    expires_at: datetime | None
    state: VMState
    action: ExpiryAction
    window: float = 0.0  # seconds before expiry the warning comes
    warned: bool = False  # the `expiring` event for this expires_at was recorded
    expired: bool = False  # the `expired` event for this expires_at was recorded (the action was taken)


def decide(c: ExpiryCheck) -> Decision:
    """The pure expiry decision: given the time, the VM's expiry and state, what to do now.

    Never acts on a VM whose state is unknown, or one between states (starting for suspend, stopping,
    suspending): it waits until the VM settles. A suspended VM is not running: stop counts it as done.
    """
    if c.expires_at is None:
        return Decision.NONE
    left = (to_utc(c.expires_at) - to_utc(c.now)) / timedelta(seconds=1)
    if left > 0:
        return Decision.WARN if left <= c.window and not c.warned else Decision.NONE
    if c.state in ACT_FROM[c.action]:
        return Decision.ACT
    if c.expired:
        return Decision.NONE
    if c.state in DONE_IN[c.action]:
        return Decision.DONE
    return Decision.WAIT
