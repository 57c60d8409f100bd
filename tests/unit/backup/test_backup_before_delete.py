"""An expired VM whose spec asks for a final backup: the hook runs first, under the VM's lock; if it fails, the VM
is not deleted and the failure is the `expired` event's result."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from corral.errors import EngineError
from corral.images.store import ImageStore
from corral.settings import load_settings
from corral.store.db import Store, VMRecord
from corral.vm.service import VMService
from corral.vm.spec import VMSpec
from corral.vm.states import VMState


@pytest.fixture
def svc(tmp_path: Path) -> VMService:
    settings = load_settings({"CORRAL_HOME": str(tmp_path / "home"), "CORRAL_CACHE": str(tmp_path / "cache")})
    return VMService(settings, Store(settings.database), ImageStore(settings.images_dir, settings.cache))


def put(svc: VMService, name: str) -> None:
    at = datetime.now(UTC) - timedelta(seconds=1)
    spec = VMSpec(name=name, expires_at=at, on_expiry="delete", backup_before_delete=True)
    svc.store.insert_vm(VMRecord(spec=spec, id=f"id-{name}", state=VMState.STOPPED, state_reason="", mac="m",
                                 created_at=at.timestamp() - 100, last_exit_reason="", restart_count=0))
    svc.paths(name).root.mkdir(parents=True)


def test_final_backup_then_delete(svc: VMService) -> None:
    calls: list[tuple[str, bool]] = []

    async def backup(name: str) -> None:
        calls.append((name, svc.operation_lock(name).locked()))

    svc.before_expiry_delete = backup
    put(svc, "a")
    asyncio.run(svc.expiry.check_expiry())
    assert calls == [("a", True)]
    assert svc.store.get_vm("a") is None
    assert "after a final backup" in svc.store.events(vm="a")[-1].message


def test_failed_backup_keeps_the_vm(svc: VMService) -> None:
    async def backup(name: str) -> None:
        raise EngineError("repository full")

    svc.before_expiry_delete = backup
    put(svc, "b")
    asyncio.run(svc.expiry.check_expiry())
    assert svc.store.get_vm("b") is not None and svc.paths("b").root.exists()
    ev = svc.store.events(vm="b")[-1]
    assert ev.type == "expired" and ev.result == "error" and "repository full" in ev.message
