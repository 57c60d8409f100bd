"""An app with real services over a temp store (no QEMU), reached as the TCP listener reaches it (through the gate)
or as the unix socket does (directly)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.api.app import create_app
from corral.api.deps import Services, auth_service
from corral.api.gate import RemoteGate
from corral.auth.models import UserCreate
from corral.auth.service import AuthService
from corral.daemon.main import build_services
from corral.images.store import ImageStore
from corral.settings import load_settings
from corral.store.db import Store, VMRecord
from corral.vm.spec import VMSpec
from corral.vm.states import VMState


@dataclass
class Remote:
    svc: Services
    auth: AuthService
    gate: RemoteGate

    def request(self, method: str, url: str, token: str | None = None, local: bool = False,
                **kw: Any) -> httpx.Response:
        """One request over the "TCP" path (through the gate), or with ``local`` as on the unix socket."""
        headers = dict(kw.pop("headers", {}))
        if token:
            headers["Authorization"] = f"Bearer {token}"
        app = self.gate.app if local else self.gate

        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=app, client=("192.0.2.7", 4242))
            async with httpx.AsyncClient(transport=transport, base_url="https://corral") as c:
                return await c.request(method, url, headers=headers, **kw)

        return asyncio.run(go())

    def user(self, name: str, role: str, project: str | None = None, password: str = "pw-" + "x" * 8) -> str:
        """Add a user; their API token."""
        req = UserCreate(name=name, role=role, project=project, password=password)  # type: ignore[arg-type]
        asyncio.run(self.auth.add_user(req))
        return self.auth.create_token(name, None).token

    def vm(self, name: str, project: str = "default") -> None:
        spec = VMSpec(name=name, project=project)
        self.svc.store.insert_vm(VMRecord(spec=spec, id=f"id-{name}", state=VMState.STOPPED, state_reason="",
                                          mac=f"52:54:00:00:00:{len(name):02x}", created_at=0.0,
                                          last_exit_reason="", restart_count=0))


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[Remote]:
    settings = load_settings({"CORRAL_HOME": str(tmp_path / "home"), "CORRAL_CACHE": str(tmp_path / "cache")})
    store = Store(settings.database)
    svc = build_services(settings, store, ImageStore(settings.images_dir, settings.cache))
    app = create_app(svc)
    auth = auth_service(svc)
    yield Remote(svc, auth, RemoteGate(app, lambda: auth))
    store.close()
