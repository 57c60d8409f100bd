"""The pools' two tables, beside the VM store (same SQLite database and connection).

    pools         one row per warm pool: its template (one pool per template), its size, when it was made
    pool_members  one row per member VM: its pool's template, ``ready`` = 1 once it is paused with its own identity;
                  written before the member's VM exists (so an interrupted fill is recognised after a restart), and
                  deleted when the member is handed out or deleted
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from corral.store.db import Store

SCHEMA = """
CREATE TABLE IF NOT EXISTS pools (
    template TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS pool_members (
    vm TEXT PRIMARY KEY,
    template TEXT NOT NULL,
    ready INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class PoolRecord:
    template: str
    size: int
    created_at: float


@dataclass(frozen=True)
class MemberRecord:
    vm: str
    template: str
    ready: bool
    created_at: float


class PoolStore:
    def __init__(self, store: Store) -> None:
        self._db = store._db  # noqa: SLF001 - one database, one connection: the tables are this module's
        self._db.executescript(SCHEMA)

    def insert(self, template: str, size: int) -> PoolRecord:
        rec = PoolRecord(template, size, time.time())
        self._db.execute("INSERT INTO pools (template, size, created_at) VALUES (?,?,?)",
                         (rec.template, rec.size, rec.created_at))
        return rec

    def get(self, template: str) -> PoolRecord | None:
        row = self._db.execute("SELECT * FROM pools WHERE template = ?", (template,)).fetchone()
        return PoolRecord(**dict(row)) if row else None

    def pools(self) -> list[PoolRecord]:
        return [PoolRecord(**dict(r)) for r in self._db.execute("SELECT * FROM pools ORDER BY template")]

    def resize(self, template: str, size: int) -> None:
        self._db.execute("UPDATE pools SET size = ? WHERE template = ?", (size, template))

    def delete(self, template: str) -> None:
        self._db.execute("DELETE FROM pools WHERE template = ?", (template,))

    def add_member(self, vm: str, template: str) -> None:
        self._db.execute("INSERT INTO pool_members (vm, template, ready, created_at) VALUES (?,?,0,?)",
                         (vm, template, time.time()))

    def set_ready(self, vm: str, ready: bool = True) -> None:
        self._db.execute("UPDATE pool_members SET ready = ? WHERE vm = ?", (int(ready), vm))

    def members(self, template: str | None = None) -> list[MemberRecord]:
        q, args = "SELECT * FROM pool_members", tuple[str, ...]()
        if template is not None:
            q, args = q + " WHERE template = ?", (template,)
        return [MemberRecord(r["vm"], r["template"], bool(r["ready"]), r["created_at"])
                for r in self._db.execute(q + " ORDER BY created_at, vm", args)]

    def member(self, vm: str) -> MemberRecord | None:
        row = self._db.execute("SELECT * FROM pool_members WHERE vm = ?", (vm,)).fetchone()
        return MemberRecord(row["vm"], row["template"], bool(row["ready"]), row["created_at"]) if row else None

    def forget(self, vm: str) -> bool:
        return self._db.execute("DELETE FROM pool_members WHERE vm = ?", (vm,)).rowcount > 0
