"""The users and tokens tables, beside the VM store (same SQLite database and connection, as corral.pools').

    users   one row per user: name, role (admin, operator, viewer), project (NULL: every project), the argon2 hash
            of the password (NULL: a user who logs in with API tokens only), creation time
    tokens  one row per token: id (shown, revocable), user, the sha256 of the secret (never the secret), kind
            ("api": made by `corral token create`; "session": made by a login), description, creation and expiry
            times (NULL: never expires); deleted with the user
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from corral.auth.principal import Role
from corral.store.db import Store

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    project TEXT,
    password_hash TEXT,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    hash TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL CHECK (kind IN ('api', 'session')),
    description TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    expires_at REAL
);
CREATE INDEX IF NOT EXISTS tokens_user ON tokens(user);
"""


@dataclass(frozen=True)
class UserRecord:
    name: str
    role: Role
    project: str | None
    password_hash: str | None
    created_at: float


@dataclass(frozen=True)
class TokenRecord:
    id: str
    user: str
    hash: str
    kind: str
    description: str
    created_at: float
    expires_at: float | None


class AuthStore:
    def __init__(self, store: Store) -> None:
        self._db = store._db  # noqa: SLF001 - one database, one connection: the tables are this module's
        self._db.executescript(SCHEMA)

    def insert_user(self, rec: UserRecord) -> None:
        self._db.execute("INSERT INTO users (name, role, project, password_hash, created_at) VALUES (?,?,?,?,?)",
                         (rec.name, rec.role, rec.project, rec.password_hash, rec.created_at))

    def get_user(self, name: str) -> UserRecord | None:
        row = self._db.execute("SELECT * FROM users WHERE name = ?", (name,)).fetchone()
        return UserRecord(**dict(row)) if row else None

    def list_users(self) -> list[UserRecord]:
        return [UserRecord(**dict(r)) for r in self._db.execute("SELECT * FROM users ORDER BY name")]

    def delete_user(self, name: str) -> bool:
        """The user and every token of theirs, in one transaction."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute("DELETE FROM tokens WHERE user = ?", (name,))
            gone = self._db.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount > 0
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return gone

    def insert_token(self, rec: TokenRecord) -> None:
        self._db.execute("INSERT INTO tokens (id, user, hash, kind, description, created_at, expires_at) "
                         "VALUES (?,?,?,?,?,?,?)", (rec.id, rec.user, rec.hash, rec.kind, rec.description,
                                                    rec.created_at, rec.expires_at))

    def token_by_hash(self, hash_: str) -> TokenRecord | None:
        row = self._db.execute("SELECT * FROM tokens WHERE hash = ?", (hash_,)).fetchone()
        return TokenRecord(**dict(row)) if row else None

    def get_token(self, id_: str) -> TokenRecord | None:
        row = self._db.execute("SELECT * FROM tokens WHERE id = ?", (id_,)).fetchone()
        return TokenRecord(**dict(row)) if row else None

    def list_tokens(self, user: str | None = None) -> list[TokenRecord]:
        q, args = "SELECT * FROM tokens", tuple[str, ...]()
        if user is not None:
            q, args = q + " WHERE user = ?", (user,)
        return [TokenRecord(**dict(r)) for r in self._db.execute(q + " ORDER BY created_at, id", args)]

    def delete_token(self, id_: str) -> bool:
        return self._db.execute("DELETE FROM tokens WHERE id = ?", (id_,)).rowcount > 0

    def delete_expired(self, now: float | None = None) -> int:
        return self._db.execute("DELETE FROM tokens WHERE expires_at IS NOT NULL AND expires_at <= ?",
                                (time.time() if now is None else now,)).rowcount
