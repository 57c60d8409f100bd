"""Passwords hashed with argon2id (argon2-cffi's defaults, RFC 9106's low-memory profile); API and session tokens
are 32 random bytes, stored only as their sha256 (a secret of 256 bits needs no slow hash) and compared with
:func:`hmac.compare_digest`."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_HASHER = PasswordHasher()
#: Every token starts so: a token pasted in the wrong place is recognisable (and greppable in leaks).
TOKEN_PREFIX = "crl_"
#: The hash a login of an unknown user is checked against: unknown and known users take the same time.
_DUMMY = _HASHER.hash("corral: no such user")


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    """Whether ``password`` matches ``stored`` (None: an unknown user, checked against a dummy all the same)."""
    try:
        return _HASHER.verify(stored or _DUMMY, password) and stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def same_hash(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
