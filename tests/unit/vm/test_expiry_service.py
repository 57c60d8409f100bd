"""The service's side of expiry, without QEMU: defaults at create, the events once each, extend, start refused."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from corral.errors import Conflict, InvalidInput
from corral.images.store import ImageStore
from corral.settings import load_settings
from corral.store.db import ProjectRecord, Store, VMRecord
from corral.vm.expiry import ExpiryAction
from corral.vm.service import VMService
from corral.vm.spec import VMSpec
from corral.vm.states import VMState


@pytest.fixture
def svc(tmp_path: Path) -> VMService:
    settings = load_settings({"CORRAL_HOME": str(tmp_path / "home"), "CORRAL_CACHE": str(tmp_path / "cache")})
    store = Store(settings.database)
    return VMService(settings, store, ImageStore(settings.images_dir, settings.cache))


def put(svc: VMService, name: str, state: VMState, left: float, action: str = "stop",
        lifetime: float = 100.0) -> None:
    at = datetime.now(UTC) + timedelta(seconds=left)
    spec = VMSpec(name=name, expires_at=at, on_expiry=action)
    svc.store.insert_vm(VMRecord(spec=spec, id=f"id-{name}", state=state, state_reason="", mac=f"m-{name}",
                                 created_at=at.timestamp() - lifetime, last_exit_reason="", restart_count=0))


def kinds(svc: VMService, name: str) -> list[str]:
    return [e.type for e in svc.store.events(vm=name) if e.type in ("expiring", "expired")]


def test_expiry_from_ttl_else_project_default(svc: VMService) -> None:
    now = datetime.now(UTC)
    s = svc.expiry.with_expiry(VMSpec(name="a", ttl=3600))
    assert s.expires_at is not None and abs((s.expires_at - now).total_seconds() - 3600) < 5
    assert s.on_expiry == ExpiryAction.STOP
    assert svc.expiry.with_expiry(VMSpec(name="a")).expires_at is None  # no project default: never
    svc.store.put_project(ProjectRecord("short", 60, "delete"))
    s = svc.expiry.with_expiry(VMSpec(name="a", project="short"))
    assert s.expires_at is not None and s.on_expiry == ExpiryAction.DELETE and s.ttl == 60
    s = svc.expiry.with_expiry(VMSpec(name="a", project="short", ttl=7200, on_expiry="suspend"))  # its own wins
    assert s.ttl == 7200 and s.on_expiry == ExpiryAction.SUSPEND
    with pytest.raises(InvalidInput):
        svc.expiry.with_expiry(VMSpec(name="a", expires_at=now - timedelta(seconds=1)))


def test_warning_once_then_expired_once(svc: VMService) -> None:
    put(svc, "w", VMState.STOPPED, left=5.0)  # inside 10% of a 100 s lifetime
    put(svc, "far", VMState.STOPPED, left=50.0)
    asyncio.run(svc.expiry.check_expiry())
    asyncio.run(svc.expiry.check_expiry())
    assert kinds(svc, "w") == ["expiring"] and kinds(svc, "far") == []
    rec = svc.store.get_vm("w")
    assert rec is not None and rec.spec.expires_at is not None
    svc.store.update_spec(rec.spec.model_copy(update={"expires_at": datetime.now(UTC) - timedelta(seconds=1)}))
    asyncio.run(svc.expiry.check_expiry())
    asyncio.run(svc.expiry.check_expiry())
    # The expiry moved (to the past): warned for that one too, then already stopped: nothing to do, said once.
    assert kinds(svc, "w") == ["expiring", "expiring", "expired"]
    ev = svc.store.events(vm="w")[-1]
    assert ev.result == "ok" and ev.data["action"] == "stop" and ev.actor == "corrald"


def test_never_acts_on_unknown_or_between_states(svc: VMService) -> None:
    put(svc, "u", VMState.UNKNOWN, left=-1.0, action="delete")
    put(svc, "s", VMState.SUSPENDING, left=-1.0, action="stop")
    asyncio.run(svc.expiry.check_expiry())
    assert kinds(svc, "u") == [] and kinds(svc, "s") == []
    assert svc.store.get_vm("u") is not None


def test_delete_of_a_stopped_vm(svc: VMService) -> None:
    put(svc, "d", VMState.STOPPED, left=-1.0, action="delete")
    svc.paths("d").root.mkdir(parents=True)
    asyncio.run(svc.expiry.check_expiry())
    assert svc.store.get_vm("d") is None and not svc.paths("d").root.exists()
    assert [e.type for e in svc.store.events(vm="d")] == ["expiring", "delete", "expired"]


def test_extend_and_start_refused_when_expired(svc: VMService) -> None:
    put(svc, "e", VMState.STOPPED, left=-1.0)
    with pytest.raises(Conflict, match="extend"):
        asyncio.run(svc.start("e"))
    rec = asyncio.run(svc.expiry.extend("e", by=3600))
    assert rec.spec.expires_at is not None
    assert 3500 < rec.spec.expires_at.timestamp() - time.time() <= 3600  # from now, as it had passed
    rec = asyncio.run(svc.expiry.extend("e", by=60))
    assert rec.spec.expires_at is not None and rec.spec.expires_at.timestamp() - time.time() > 3600
    with pytest.raises(InvalidInput):
        asyncio.run(svc.expiry.extend("e", to=datetime(2000, 1, 1, tzinfo=UTC)))
    assert [e.type for e in svc.store.events(vm="e")] == ["extend", "extend"]


def test_warned_before_acting_even_when_the_window_was_missed(svc: VMService) -> None:
    """The VM's lock was held (a slow start on a busy host) through its whole warning window: at expiry the
    warning still comes first, then the expired event, each once."""
    put(svc, "late", VMState.STOPPED, left=-1.0)  # already past expiry, never warned
    asyncio.run(svc.expiry.check_expiry())
    asyncio.run(svc.expiry.check_expiry())
    assert kinds(svc, "late") == ["expiring", "expired"]
    warning = [e for e in svc.store.events(vm="late") if e.type == "expiring"][0]
    assert warning.message.startswith("expires now")


def test_a_held_lock_postpones_the_check(svc: VMService) -> None:
    put(svc, "busy", VMState.STOPPED, left=-1.0)

    async def held() -> None:
        async with svc._lock("busy"):
            await svc.expiry.check_expiry()
        assert kinds(svc, "busy") == []  # looked again at the next pass, not blocked behind the operation
        await svc.expiry.check_expiry()

    asyncio.run(held())
    assert kinds(svc, "busy") == ["expiring", "expired"]
