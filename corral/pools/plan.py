"""What a pool needs, as pure decisions: member names, size limits, and what to do next (fill one, remove some).

The service (corral.pools.service) observes its members, asks :func:`decide` and carries the answer out, one step at
a time.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

#: A pool holds at most this many members (each a live QEMU holding its vCPUs and memory against the host).
MAX_SIZE = 32
#: Every member carries this label (the template's name as its value): `corral ls` hides such VMs unless --all.
LABEL = "corral.dev/pool"
#: Members belong to this project and owner (the daemon's), so no user's quota or project default applies to them.
PROJECT = "corral-pool"
OWNER = "corrald"
PREFIX = "pool-"
#: Random hex digits at the end of a member's name.
TOKEN_HEX = 6


def member_name(template: str, token: str | None = None) -> str:
    """``pool-<template>-<hex>``, a DNS label of at most 63 characters (the template's name shortened if need be)."""
    token = token or secrets.token_hex(TOKEN_HEX // 2)
    room = 63 - len(PREFIX) - 1 - len(token)
    return f"{PREFIX}{template[:room].rstrip('-')}-{token}"


def check_size(size: int) -> None:
    """ValueError saying what is wrong, unless 1 <= size <= MAX_SIZE."""
    if size < 1:
        raise ValueError(f"pool size {size} is not possible: give 1 to {MAX_SIZE} (to remove the pool: "
                         "`corral pool rm --template T`)")
    if size > MAX_SIZE:
        raise ValueError(f"pool size {size} is over the limit of {MAX_SIZE} members")


class Condition(enum.StrEnum):
    """What a member is, as the pool sees it."""

    READY = "ready"  #: paused, its identity taken: can be handed out
    FILLING = "filling"  #: being launched now (by this daemon)
    BROKEN = "broken"  #: the pool's own VM in a known state that is not READY (interrupted fill, crashed, resumed)
    UNKNOWN = "unknown"  #: its state is unknown (its QEMU may run): left alone, never deleted by the pool
    GONE = "gone"  #: its VM no longer exists (deleted by hand)


@dataclass(frozen=True)
class Member:
    name: str
    condition: Condition


@dataclass(frozen=True)
class Step:
    """The next thing to do for one pool: forget these rows, delete these VMs, and fill one more member or not."""

    forget: tuple[str, ...] = ()
    delete: tuple[str, ...] = ()
    fill: bool = False


def decide(size: int, members: Sequence[Member], *, filling_elsewhere: bool = False) -> Step:
    """The next step towards ``size`` members ready. Gone members are forgotten, broken ones deleted (and replaced);
    unknown ones are left alone but hold their place; a pool over its size sheds ready members, the last in ``members``
    first, once no fill is under way. One fill at a time (none while one runs anywhere)."""
    forget = tuple(m.name for m in members if m.condition == Condition.GONE)
    delete = [m.name for m in members if m.condition == Condition.BROKEN]
    kept = [m for m in members if m.condition in (Condition.READY, Condition.FILLING, Condition.UNKNOWN)]
    filling = any(m.condition == Condition.FILLING for m in kept)
    excess = len(kept) - size
    if excess > 0 and not filling:  # a fill under way ends first; unknown members cannot go: shed ready ones
        delete += [m.name for m in reversed(kept) if m.condition == Condition.READY][:excess]
    fill = len(kept) < size and not filling_elsewhere and not filling
    return Step(forget=forget, delete=tuple(delete), fill=fill)
