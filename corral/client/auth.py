"""Users, tokens and logins (corral.auth): /auth, /users, /tokens."""

from __future__ import annotations

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
from corral.client.base import Core


class AuthCalls(Core):
    def login(self, user: str, password: str) -> LoginResponse:
        r = self._req("POST", "/auth/login", json=LoginRequest(user=user, password=password).model_dump())
        return LoginResponse.model_validate(r.json())

    def whoami(self) -> WhoAmI:
        return WhoAmI.model_validate(self._req("GET", "/auth/whoami").json())

    def list_users(self) -> list[UserInfo]:
        return [UserInfo.model_validate(u) for u in self._req("GET", "/users").json()]

    def add_user(self, req: UserCreate) -> UserInfo:
        return UserInfo.model_validate(self._req("POST", "/users", json=req.model_dump(mode="json")).json())

    def remove_user(self, name: str) -> None:
        self._req("DELETE", f"/users/{name}")

    def create_token(self, req: TokenCreate) -> TokenCreated:
        return TokenCreated.model_validate(self._req("POST", "/tokens", json=req.model_dump(mode="json")).json())

    def list_tokens(self) -> list[TokenInfo]:
        return [TokenInfo.model_validate(t) for t in self._req("GET", "/tokens").json()]

    def revoke_token(self, token_id: str) -> None:
        self._req("DELETE", f"/tokens/{token_id}")
