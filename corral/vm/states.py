"""VM states and the transitions between them, declared once.

Every change of a VM's state goes through :func:`check_transition`, and the service logs each one as an event.
Operations (what a user asks) are legal only from the states in :data:`ALLOWED_FROM`.

::

    stopped --start--> starting --agent or QMP up--> running <--pause/resume--> paused
       ^                  |                           |  |
       |                  +-------- crashed <---------+  +--stop--> stopping --> stopped
       +---------------------------- (start) ---------+

    running/paused --suspend--> suspending --> suspended --resume/start--> starting --> running
                                    |                                     |
                                    +-- (failed) --> running/paused      +-- (failed load) --> suspended

    stopped/crashed --revert to a whole-machine snapshot--> suspended (its state loads at the next start)

``suspended``: no QEMU process; the machine state (memory and devices) is in the VM's ``state.bin`` and its disk is
left as it was. A resting state like ``stopped``: it survives daemon restarts.

``unknown`` means the VM's QEMU process exists but its monitor cannot be reached: never treated as absent.

``incoming``: a live migration from another host is arriving (corral.migration): a QEMU waits for the machine state
(``-S -incoming defer``) while the source's disks are mirrored into this host's over NBD. It becomes ``running`` when
the source hands over (commit), and goes (``stopped``, then deleted with its files) on an abort; a daemon restart
finds no migration to finish it and removes it. Never supervised, restarted or listed as running.
"""

from __future__ import annotations

from enum import StrEnum

from corral.errors import StateError


class VMState(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"
    CRASHED = "crashed"
    UNKNOWN = "unknown"
    SUSPENDING = "suspending"
    SUSPENDED = "suspended"
    INCOMING = "incoming"


S = VMState

#: States in which a QEMU process is believed to exist.
LIVE = frozenset({S.STARTING, S.RUNNING, S.PAUSED, S.STOPPING, S.SUSPENDING, S.UNKNOWN, S.INCOMING})

TRANSITIONS: frozenset[tuple[VMState, VMState]] = frozenset(
    {
        (S.STOPPED, S.STARTING),
        (S.CRASHED, S.STARTING),
        (S.STARTING, S.RUNNING),
        (S.STARTING, S.PAUSED),
        (S.STARTING, S.STOPPED),  # failed to start: nothing left running
        (S.STARTING, S.CRASHED),
        (S.RUNNING, S.PAUSED),
        (S.PAUSED, S.RUNNING),
        (S.RUNNING, S.STOPPING),
        (S.PAUSED, S.STOPPING),
        (S.STARTING, S.STOPPING),
        (S.STOPPING, S.STOPPED),
        (S.STOPPING, S.CRASHED),
        (S.RUNNING, S.STOPPED),  # the guest powered off, or killed on request
        (S.PAUSED, S.STOPPED),
        (S.RUNNING, S.CRASHED),
        (S.PAUSED, S.CRASHED),
        (S.UNKNOWN, S.RUNNING),
        (S.UNKNOWN, S.PAUSED),
        (S.UNKNOWN, S.STOPPED),
        (S.UNKNOWN, S.CRASHED),
        (S.RUNNING, S.UNKNOWN),
        (S.PAUSED, S.UNKNOWN),
        (S.STARTING, S.UNKNOWN),
        (S.STOPPING, S.UNKNOWN),
        # Suspend to disk: the state is saved, then QEMU quits.
        (S.RUNNING, S.SUSPENDING),
        (S.PAUSED, S.SUSPENDING),
        (S.SUSPENDING, S.SUSPENDED),
        (S.SUSPENDING, S.RUNNING),  # saving failed: the VM runs on
        (S.SUSPENDING, S.PAUSED),
        (S.SUSPENDING, S.CRASHED),  # QEMU died while saving
        (S.SUSPENDING, S.STOPPED),  # killed on request while saving
        (S.SUSPENDING, S.UNKNOWN),
        (S.UNKNOWN, S.SUSPENDING),
        (S.SUSPENDED, S.STARTING),  # resume: a QEMU that loads the saved state
        (S.STARTING, S.SUSPENDED),  # loading failed: still suspended, the state file intact
        (S.SUSPENDED, S.STOPPED),  # stop: the saved state is discarded
        (S.STOPPED, S.SUSPENDED),  # reverted to a whole-machine snapshot: its state loads at the next start
        (S.CRASHED, S.SUSPENDED),
        # A live migration arriving from another host (corral.migration): handed over, or aborted.
        (S.INCOMING, S.RUNNING),
        (S.INCOMING, S.STOPPED),
    }
)

#: Which states each user operation may start from.
ALLOWED_FROM: dict[str, frozenset[VMState]] = {
    "start": frozenset({S.STOPPED, S.CRASHED, S.SUSPENDED}),  # from suspended: resumes
    "stop": frozenset({S.RUNNING, S.PAUSED, S.STARTING, S.SUSPENDED}),  # suspended: discards the state (force)
    "kill": frozenset({S.RUNNING, S.PAUSED, S.STARTING, S.STOPPING, S.SUSPENDING, S.UNKNOWN}),
    "restart": frozenset({S.RUNNING}),
    "pause": frozenset({S.RUNNING}),
    "resume": frozenset({S.PAUSED, S.SUSPENDED}),
    "suspend": frozenset({S.RUNNING, S.PAUSED}),
    "exec": frozenset({S.RUNNING}),
    "migrate": frozenset({S.RUNNING}),  # live, to another host (corral.migration)
    "console": frozenset({S.RUNNING, S.PAUSED, S.STARTING}),
    "delete": frozenset({S.STOPPED, S.CRASHED, S.SUSPENDED}),  # suspended: the state file goes too
}


def check_operation(vm: str, operation: str, state: VMState) -> None:
    """Raise :class:`StateError` unless ``operation`` is allowed while the VM is in ``state``."""
    allowed = ALLOWED_FROM[operation]
    if state not in allowed:
        raise StateError(vm, operation, state.value, sorted(s.value for s in allowed))


def check_transition(old: VMState, new: VMState) -> None:
    """Raise ValueError for a transition the table does not declare (a bug, not a user error)."""
    if old != new and (old, new) not in TRANSITIONS:
        raise ValueError(f"undeclared VM state transition {old} -> {new}")
