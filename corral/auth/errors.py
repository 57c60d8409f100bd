"""The auth errors, each with its HTTP status (mapped in corral.api.errors' table)."""

from __future__ import annotations

from corral.errors import CorralError


class Unauthorized(CorralError):
    """No credentials, or wrong ones (HTTP 401)."""


class Forbidden(CorralError):
    """The principal may not do this (HTTP 403)."""


class TooManyAttempts(CorralError):
    """Too many failed logins for this user or address: wait (HTTP 429)."""
