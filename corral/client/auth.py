"""Users, tokens and logins (corral.auth): /auth, /users, /tokens. The models are imported by the calls that use
them: every `corral` command builds a Client, few of them these calls."""

from __future__ import annotations

from typing import TYPE_CHECKING

from corral.client.base import Core

if TYPE_CHECKING:
    from corral.auth.models import LoginResponse, TokenCreate, TokenCreated, TokenInfo, UserCreate, UserInfo, WhoAmI


class AuthCalls(Core):
    def login(self, user: str, password: str) -> LoginResponse:
        from corral.auth.models import LoginRequest, LoginResponse

        r = self._req("POST", "/auth/login", json=LoginRequest(user=user, password=password).model_dump())
        return LoginResponse.model_validate(r.json())

    def whoami(self) -> WhoAmI:
        from corral.auth.models import WhoAmI

        return WhoAmI.model_validate(self._req("GET", "/auth/whoami").json())

    def list_users(self) -> list[UserInfo]:
        from corral.auth.models import UserInfo

        return [UserInfo.model_validate(u) for u in self._req("GET", "/users").json()]

    def add_user(self, req: UserCreate) -> UserInfo:
        from corral.auth.models import UserInfo

        return UserInfo.model_validate(self._req("POST", "/users", json=req.model_dump(mode="json")).json())

    def remove_user(self, name: str) -> None:
        self._req("DELETE", f"/users/{name}")

    def create_token(self, req: TokenCreate) -> TokenCreated:
        from corral.auth.models import TokenCreated

        return TokenCreated.model_validate(self._req("POST", "/tokens", json=req.model_dump(mode="json")).json())

    def list_tokens(self) -> list[TokenInfo]:
        from corral.auth.models import TokenInfo

        return [TokenInfo.model_validate(t) for t in self._req("GET", "/tokens").json()]

    def revoke_token(self, token_id: str) -> None:
        self._req("DELETE", f"/tokens/{token_id}")
