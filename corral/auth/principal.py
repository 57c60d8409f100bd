"""Who makes a request (the contract of issue 13; auth's version replaces this minimal one at merge)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Role = Literal["admin", "operator", "viewer"]


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role
    project: str | None  # None: every project (admins, and the local root)


LOCAL_ROOT = Principal("root", "admin", None)  # a request on the unix socket: as today, may do everything


def principal_of(scope_or_conn: Any) -> Principal:
    """The principal the auth layer put in ``scope["corral.principal"]``; the local root if none."""
    scope: Mapping[str, Any] = getattr(scope_or_conn, "scope", scope_or_conn)
    p = scope.get("corral.principal")
    return p if isinstance(p, Principal) else LOCAL_ROOT
