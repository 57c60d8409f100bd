"""/v1/auth (log in, whoami), /v1/users and /v1/tokens: each route parses, calls corral.auth's service, returns a
wire model. Who may call which is corral.auth.policy's table (the gate checks it over TCP); what depends on the
principal (one's own tokens) is said here."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from corral.api.deps import Services, auth_service, services
from corral.auth.models import (
    LoginRequest,
    LoginResponse,
    TokenCreate,
    TokenCreated,
    TokenInfo,
    UserCreate,
    UserInfo,
    WhoAmI,
)
from corral.auth.principal import LOCAL_ROOT, principal_of
from corral.auth.service import require_user_of

router = APIRouter(tags=["auth"])
Svc = Annotated[Services, Depends(services)]


@router.post("/auth/login", response_model=LoginResponse)
async def login(req: LoginRequest, request: Request, svc: Svc) -> LoginResponse:
    """A session token (12 h) for a user's password. Failed logins are rate-limited per user and address (429)."""
    address = request.client.host if request.client else "local"
    return await auth_service(svc).login(req.user, req.password, address)


@router.get("/auth/whoami", response_model=WhoAmI)
async def whoami(request: Request) -> WhoAmI:
    p = principal_of(request)
    return WhoAmI(user=p.name, role=p.role, project=p.project)


@router.get("/users", response_model=list[UserInfo])
async def list_users(svc: Svc) -> list[UserInfo]:
    return auth_service(svc).list_users()


@router.post("/users", response_model=UserInfo, status_code=201)
async def add_user(req: UserCreate, svc: Svc) -> UserInfo:
    return await auth_service(svc).add_user(req)


@router.get("/users/{name}", response_model=UserInfo)
async def show_user(name: str, svc: Svc) -> UserInfo:
    return auth_service(svc).get_user(name)


@router.delete("/users/{name}", status_code=204)
async def remove_user(name: str, svc: Svc) -> None:
    """The user and all their tokens (sessions end at once)."""
    auth_service(svc).remove_user(name)


@router.get("/tokens", response_model=list[TokenInfo])
async def list_tokens(request: Request, svc: Svc) -> list[TokenInfo]:
    """One's own tokens; an admin's (and the local root's): everyone's."""
    p = principal_of(request)
    return auth_service(svc).list_tokens(None if p.role == "admin" else p.name)


@router.post("/tokens", response_model=TokenCreated, status_code=201)
async def create_token(req: TokenCreate, request: Request, svc: Svc) -> TokenCreated:
    """An API token (shown once: only its hash is kept), for oneself, or for another user (admins)."""
    p = principal_of(request)
    user = require_user_of(p, req.user, None if p == LOCAL_ROOT else p.name)
    return auth_service(svc).create_token(user, req.ttl, req.description)


@router.delete("/tokens/{token_id}", status_code=204)
async def revoke_token(token_id: str, request: Request, svc: Svc) -> None:
    auth_service(svc).revoke(token_id, principal_of(request))
