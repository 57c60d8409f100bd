"""Users, tokens and logins over :class:`corral.auth.store.AuthStore`.

A login checks the password with argon2 and makes a session token (12 h); failed logins are counted per user and
per client address (:class:`corral.auth.ratelimit.RateLimiter`), and a locked key gets TooManyAttempts before its
password is even checked. :meth:`AuthService.authenticate` turns a bearer token into its :class:`Principal`, or None.
If a call here fails, the store is as before it (each change is one statement, or one transaction).
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import time

from corral.auth import hashing
from corral.auth.errors import Forbidden, TooManyAttempts, Unauthorized
from corral.auth.models import LoginResponse, TokenCreated, TokenInfo, UserCreate, UserInfo
from corral.auth.principal import Principal
from corral.auth.ratelimit import RateLimiter
from corral.auth.store import AuthStore, TokenRecord, UserRecord
from corral.errors import Conflict, InvalidInput, NotFound
from corral.store.db import Store

SESSION_TTL = 12 * 3600.0


class AuthService:
    def __init__(self, store: Store, limiter: RateLimiter | None = None) -> None:
        self.store = AuthStore(store)
        self.limiter = limiter or RateLimiter()

    # --- users ---------------------------------------------------------------------------------------------
    async def add_user(self, req: UserCreate) -> UserInfo:
        """Add a user (its password hashed in a thread: argon2 takes tens of milliseconds, not for the event loop)."""
        if req.role == "admin" and req.project is not None:
            raise InvalidInput("an admin acts on every project: give no project for role admin")
        if self.store.get_user(req.name) is not None:
            raise Conflict(f"user '{req.name}' already exists (`corral user rm {req.name}` first)")
        hashed = await asyncio.to_thread(hashing.hash_password, req.password) if req.password is not None else None
        rec = UserRecord(req.name, req.role, req.project, hashed, time.time())
        try:
            self.store.insert_user(rec)
        except sqlite3.IntegrityError:  # added meanwhile, while the password was being hashed
            raise Conflict(f"user '{req.name}' already exists (`corral user rm {req.name}` first)") from None
        return self._info(rec)

    def list_users(self) -> list[UserInfo]:
        return [self._info(r) for r in self.store.list_users()]

    def get_user(self, name: str) -> UserInfo:
        return self._info(self._user(name))

    def remove_user(self, name: str) -> None:
        if not self.store.delete_user(name):
            raise NotFound(f"no user '{name}' (see `corral user ls`)")

    def _user(self, name: str) -> UserRecord:
        rec = self.store.get_user(name)
        if rec is None:
            raise NotFound(f"no user '{name}' (see `corral user ls`)")
        return rec

    def _info(self, rec: UserRecord) -> UserInfo:
        return UserInfo(name=rec.name, role=rec.role, project=rec.project, has_password=rec.password_hash is not None,
                        created_at=rec.created_at, tokens=len(self.store.list_tokens(rec.name)))

    # --- tokens --------------------------------------------------------------------------------------------
    def create_token(self, user: str, ttl: float | None, description: str = "", kind: str = "api") -> TokenCreated:
        self._user(user)
        secret = hashing.new_token()
        now = time.time()
        rec = TokenRecord(secrets.token_hex(6), user, hashing.token_hash(secret), kind, description, now,
                          now + ttl if ttl is not None else None)
        self.store.insert_token(rec)
        return TokenCreated(token=secret, **_token_info(rec).model_dump())

    def list_tokens(self, user: str | None = None) -> list[TokenInfo]:
        self.store.delete_expired()
        return [_token_info(r) for r in self.store.list_tokens(user)]

    def revoke(self, id_: str, by: Principal) -> None:
        """Revoke token ``id_``: an admin any, another user only their own (else NotFound, as if it did not
        exist: a non-admin learns nothing about other users' token ids)."""
        rec = self.store.get_token(id_)
        if rec is None or (by.role != "admin" and rec.user != by.name):
            raise NotFound(f"no token '{id_}' (see `corral token ls`)")
        self.store.delete_token(id_)

    def authenticate(self, token: str) -> Principal | None:
        """The principal of a bearer token; None for an unknown, expired or malformed one."""
        if not token.startswith(hashing.TOKEN_PREFIX) or len(token) > 200:
            return None
        digest = hashing.token_hash(token)
        rec = self.store.token_by_hash(digest)
        # The lookup is by an index over the hash (nothing to learn from its timing: a guess's hash is unrelated to
        # the stored ones); the equality is checked once more in constant time all the same.
        if rec is None or not hashing.same_hash(rec.hash, digest):
            return None
        if rec.expires_at is not None and rec.expires_at <= time.time():
            self.store.delete_token(rec.id)
            return None
        user = self.store.get_user(rec.user)
        return Principal(user.name, user.role, user.project) if user else None

    # --- logins --------------------------------------------------------------------------------------------
    async def login(self, user: str, password: str, address: str) -> LoginResponse:
        """A session token for ``user``'s password (checked in a thread), unless too many logins failed lately."""
        keys = (f"user:{user}", f"addr:{address}")
        wait = max(self.limiter.retry_after(k) for k in keys)
        if wait > 0:
            raise TooManyAttempts(f"too many failed logins: try again in {int(wait) + 1} s")
        rec = self.store.get_user(user)
        good = await asyncio.to_thread(hashing.verify_password, rec.password_hash if rec else None, password)
        if not good or rec is None:
            for k in keys:
                self.limiter.failed(k)
            raise Unauthorized("wrong user name or password")
        for k in keys:
            self.limiter.succeeded(k)
        self.store.delete_expired()  # sessions of past logins do not pile up
        tok = self.create_token(rec.name, SESSION_TTL, "login session", kind="session")
        assert tok.expires_at is not None
        return LoginResponse(token=tok.token, expires_at=tok.expires_at, user=rec.name, role=rec.role,
                             project=rec.project)


def require_user_of(principal: Principal, user: str | None, local_default: str | None = None) -> str:
    """The user a token is made for: ``user`` (another than oneself: admins only), else the principal itself."""
    if user is None:
        if local_default is None:
            raise InvalidInput("say whose token it is (--user NAME): the local root is no user")
        return local_default
    if user != principal.name and principal.role != "admin":
        raise Forbidden(f"only an admin makes tokens for another user than '{principal.name}'")
    return user


def _token_info(rec: TokenRecord) -> TokenInfo:
    return TokenInfo(id=rec.id, user=rec.user, kind=rec.kind, description=rec.description,
                     created_at=rec.created_at, expires_at=rec.expires_at)
