"""Which backups a retention policy keeps (pure), as restic and Proxmox do.

- ``keep_last`` N: the N most recent backups.
- ``keep_daily`` N: for each of the last N days that have backups, the most recent backup of that day.
- ``keep_weekly`` N: the same per ISO week (Monday to Sunday).

A backup kept by any rule is kept. Days and weeks are in the time zone of the times given (the caller passes host
local time). Every index in Corral's format lists all its chunks, so removing any backup never breaks another.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Policy:
    keep_last: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0

    @property
    def empty(self) -> bool:
        return not (self.keep_last or self.keep_daily or self.keep_weekly)


def _bucketed(newest_first: Sequence[tuple[str, datetime]], n: int, key: Callable[[datetime], Hashable]) -> set[str]:
    kept: set[str] = set()
    seen: set[Hashable] = set()
    for bid, t in newest_first:
        if len(seen) >= n:
            break
        k = key(t)
        if k not in seen:
            seen.add(k)
            kept.add(bid)
    return kept


def select(backups: Sequence[tuple[str, datetime]], policy: Policy) -> tuple[list[str], list[str]]:
    """(kept, removed) ids, each newest first, of ``backups`` given as (id, created)."""
    if policy.empty:
        raise ValueError("a retention policy needs at least one of keep-last, keep-daily, keep-weekly")
    newest_first = sorted(backups, key=lambda b: (b[1], b[0]), reverse=True)
    kept = {bid for bid, _ in newest_first[: policy.keep_last]}
    kept |= _bucketed(newest_first, policy.keep_daily, lambda t: t.date())
    kept |= _bucketed(newest_first, policy.keep_weekly, lambda t: tuple(t.isocalendar()[:2]))
    return ([b for b, _ in newest_first if b in kept], [b for b, _ in newest_first if b not in kept])
