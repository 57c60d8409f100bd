"""Who a request is for. The unix socket is the local root (mode 0600: only the daemon's user reaches it); a TCP
request is for the user its bearer token belongs to (set by :mod:`corral.api.gate`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Role = Literal["admin", "operator", "viewer"]
ROLES: tuple[Role, ...] = ("admin", "operator", "viewer")

#: Keys the gate sets in an ASGI scope of a TCP request.
SCOPE_PRINCIPAL = "corral.principal"
SCOPE_REMOTE = "corral.remote"


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role
    project: str | None  # None: every project (admins, and the local root)


LOCAL_ROOT = Principal("root", "admin", None)  # a request on the unix socket: as today, may do everything


def principal_of(scope_or_conn: Any) -> Principal:
    """The principal of an ASGI scope, or of a Starlette Request/WebSocket (their ``.scope``); LOCAL_ROOT when the
    gate set none (the unix socket)."""
    scope: Mapping[str, Any] = getattr(scope_or_conn, "scope", scope_or_conn)
    p = scope.get(SCOPE_PRINCIPAL)
    return p if isinstance(p, Principal) else LOCAL_ROOT


def is_remote(scope_or_conn: Any) -> bool:
    scope: Mapping[str, Any] = getattr(scope_or_conn, "scope", scope_or_conn)
    return bool(scope.get(SCOPE_REMOTE))
