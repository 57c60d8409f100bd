"""Wire models of users, tokens and logins, shared by the server (corral.api.routes.auth) and the client."""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator

from corral.auth.principal import Role
from corral.vm import labels

#: Longest password accepted: argon2 hashes any length, but a megabyte of "password" is an attack, not a secret.
MAX_PASSWORD = 1024
#: Longest token lifetime, seconds (ten years).
MAX_TTL = 10 * 365 * 86400.0


def _user_name(v: str) -> str:
    try:
        return labels.check_owner(v)
    except ValueError as exc:
        raise ValueError(str(exc).replace("owner", "user name", 1)) from None


class UserCreate(BaseModel):
    name: str
    role: Role
    project: str | None = Field(default=None, description="the one project an operator or viewer acts in; null: "
                                "every project (an admin always has none)")
    password: str | None = Field(default=None, min_length=1, max_length=MAX_PASSWORD,
                                 description="null: the user logs in with API tokens only")

    _name = field_validator("name")(_user_name)

    @field_validator("project")
    @classmethod
    def _project(cls, v: str | None) -> str | None:
        return labels.check_project(v) if v is not None else None


class UserInfo(BaseModel):
    name: str
    role: Role
    project: str | None = None
    has_password: bool = False
    created_at: float
    tokens: int = 0


class TokenCreate(BaseModel):
    user: str | None = Field(default=None, description="whose token (admins only for another user); default: the "
                             "requester (on the unix socket: required)")
    ttl: float | None = Field(default=None, gt=0, le=MAX_TTL, description="seconds; null: never expires")
    description: str = Field(default="", max_length=200)

    @field_validator("user")
    @classmethod
    def _user(cls, v: str | None) -> str | None:
        return _user_name(v) if v is not None else None


class TokenInfo(BaseModel):
    id: str
    user: str
    kind: str
    description: str = ""
    created_at: float
    expires_at: float | None = None


class TokenCreated(TokenInfo):
    token: str = Field(description="the secret: shown once, stored only as a hash")


class LoginRequest(BaseModel):
    user: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=MAX_PASSWORD)


class LoginResponse(BaseModel):
    token: str
    expires_at: float
    user: str
    role: Role
    project: str | None = None


class WhoAmI(BaseModel):
    user: str
    role: Role
    project: str | None = None
