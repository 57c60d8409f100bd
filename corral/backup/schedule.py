"""Backup schedules: kept in the store's ``backup_schedules`` table (one per VM), and when one is due (pure).

``every`` seconds: due that long after its last run (or after it was set, before its first run).
``daily_at`` HH:MM (host local time): due at the first HH:MM after its last run (or after it was set).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from corral.backup.models import Schedule
from corral.store.db import Store

SCHEMA = """
CREATE TABLE IF NOT EXISTS backup_schedules (
    vm TEXT PRIMARY KEY,
    repo TEXT,
    every REAL,
    daily_at TEXT,
    keep_last INTEGER NOT NULL DEFAULT 0,
    keep_daily INTEGER NOT NULL DEFAULT 0,
    keep_weekly INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    last_run REAL,
    last_result TEXT NOT NULL DEFAULT ''
);
"""

_COLUMNS = ("vm", "repo", "every", "daily_at", "keep_last", "keep_daily", "keep_weekly", "created", "last_run",
            "last_result")


def next_run(s: Schedule) -> float:
    """When ``s`` is next due (a UNIX time)."""
    since = s.last_run if s.last_run is not None else s.created
    if s.every is not None:
        return since + s.every
    assert s.daily_at is not None
    hh, mm = (int(x) for x in s.daily_at.split(":"))
    base = datetime.fromtimestamp(since).astimezone()
    at = base.replace(hour=hh, minute=mm, second=0, microsecond=0)
    if at.timestamp() <= since:
        at = (base + timedelta(days=1)).replace(hour=hh, minute=mm, second=0, microsecond=0)
    return at.timestamp()


class ScheduleStore:
    """The schedules table, beside the VM store (same SQLite database and connection)."""

    def __init__(self, store: Store) -> None:
        self._db = store._db  # noqa: SLF001 - one database, one connection: the table is this module's
        self._db.executescript(SCHEMA)

    def put(self, s: Schedule) -> None:
        self._db.execute(f"INSERT OR REPLACE INTO backup_schedules ({', '.join(_COLUMNS)}) VALUES "
                         f"({', '.join('?' for _ in _COLUMNS)})", tuple(getattr(s, c) for c in _COLUMNS))

    def get(self, vm: str) -> Schedule | None:
        row = self._db.execute("SELECT * FROM backup_schedules WHERE vm = ?", (vm,)).fetchone()
        return self._schedule(row) if row else None

    def list(self) -> list[Schedule]:
        return [self._schedule(r) for r in self._db.execute("SELECT * FROM backup_schedules ORDER BY vm")]

    def delete(self, vm: str) -> bool:
        return self._db.execute("DELETE FROM backup_schedules WHERE vm = ?", (vm,)).rowcount > 0

    def record_run(self, vm: str, when: float, result: str) -> None:
        self._db.execute("UPDATE backup_schedules SET last_run = ?, last_result = ? WHERE vm = ?", (when, result, vm))

    @staticmethod
    def _schedule(row: object) -> Schedule:
        s = Schedule.model_validate(dict(row))  # type: ignore[call-overload]
        return s.model_copy(update={"next_run": next_run(s)})
