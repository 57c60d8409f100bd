"""Retention (keep-last, keep-daily, keep-weekly: restic's and Proxmox's rules) and when a schedule is due."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from corral.backup.models import Schedule
from corral.backup.retention import Policy, select
from corral.backup.schedule import next_run

T0 = datetime(2026, 11, 27, 12, 0)  # a Friday


def snaps(*hours_ago: float) -> list[tuple[str, datetime]]:
    return [(f"b{i}", T0 - timedelta(hours=h)) for i, h in enumerate(hours_ago)]


def test_keep_last() -> None:
    kept, removed = select(snaps(0, 1, 2, 3), Policy(keep_last=2))
    assert kept == ["b0", "b1"] and removed == ["b2", "b3"]
    assert select(snaps(0), Policy(keep_last=5)) == (["b0"], [])


def test_keep_daily_keeps_the_newest_of_each_of_the_last_n_days_with_backups() -> None:
    # today 12:00 and 11:00; yesterday 12:00 and 06:00; 3 days ago; 5 days ago
    backups = snaps(0, 1, 24, 30, 72, 120)
    kept, removed = select(backups, Policy(keep_daily=3))
    assert kept == ["b0", "b2", "b4"]
    assert removed == ["b1", "b3", "b5"]


def test_keep_weekly_by_iso_week_and_rules_add_up() -> None:
    # Friday; Monday of the same week; Sunday before (previous ISO week); two and three weeks back
    backups = snaps(0, 4 * 24, 5 * 24, 14 * 24, 21 * 24)
    assert select(backups, Policy(keep_weekly=2))[0] == ["b0", "b2"]
    assert select(backups, Policy(keep_weekly=2, keep_last=2))[0] == ["b0", "b1", "b2"]
    assert select(backups, Policy(keep_weekly=10))[1] == ["b1"]


def test_an_empty_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        select(snaps(0), Policy())


def test_schedule_due_times() -> None:
    s = Schedule(vm="a", every=3600, created=1000.0)
    assert next_run(s) == 4600.0
    assert next_run(s.model_copy(update={"last_run": 5000.0})) == 8600.0
    created = datetime(2026, 11, 27, 9, 30).astimezone().timestamp()
    d = Schedule(vm="a", daily_at="10:15", created=created)
    assert datetime.fromtimestamp(next_run(d)) == datetime(2026, 11, 27, 10, 15)
    later = datetime(2026, 11, 27, 10, 15).astimezone().timestamp()
    assert datetime.fromtimestamp(next_run(d.model_copy(update={"last_run": later}))) == datetime(2026, 11, 28, 10, 15)
    with pytest.raises(ValueError):
        Schedule(vm="a", daily_at="24:00")
