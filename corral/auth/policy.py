"""Placeholder of auth's policy (issue 13's contract): the web branch only needs its two names; auth's one table
replaces this file at merge."""

from __future__ import annotations

from fastapi import HTTPException

from corral.auth.principal import Principal

READ = "read"


def visible(principal: Principal, project: str | None) -> bool:
    """May ``principal`` see what belongs to ``project``?"""
    return principal.project is None or principal.project == project


def require(principal: Principal, action: str, project: str | None) -> None:
    """403 (one line) unless ``principal`` may do ``action`` in ``project``."""
    if principal.role == "admin" or (visible(principal, project)
                                     and (action == READ or principal.role == "operator")):
        return
    raise HTTPException(403, f"{principal.name} ({principal.role}) may not {action} in project {project or '-'}")
