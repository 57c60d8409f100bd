"""Idle control's service side without QEMU: which policy applies, the project default kept apart from the TTL
settings, wake refusing a VM without a policy, and held ports following the VMs' states and policies."""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from corral.errors import Conflict, InvalidInput
from corral.idle.policy import IdlePolicy
from corral.idle.service import IdleService
from corral.images.store import ImageStore
from corral.network.ports import free_port
from corral.settings import load_settings
from corral.store.db import ProjectRecord, Store, VMRecord
from corral.vm.expiry import ExpiryAction
from corral.vm.service import VMService
from corral.vm.spec import VMSpec
from corral.vm.states import VMState


@pytest.fixture
def idle(tmp_path: Path) -> IdleService:
    settings = load_settings({"CORRAL_HOME": str(tmp_path / "home"), "CORRAL_CACHE": str(tmp_path / "cache")})
    vms = VMService(settings, Store(settings.database), ImageStore(settings.images_dir, settings.cache))
    return IdleService(vms, 1.0)


def put(svc: IdleService, name: str, state: VMState, reason: str = "", **spec: object) -> None:
    svc.store.insert_vm(VMRecord(spec=VMSpec.model_validate({"name": name} | spec), id=f"id-{name}",
                                  state=VMState.STOPPED, state_reason="", mac=f"m-{name}", created_at=0,
                                  last_exit_reason="", restart_count=0))
    svc.store.set_state(name, state, reason)


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_project_default_is_kept_apart_from_the_ttl_settings(idle: IdleService) -> None:
    put(idle, "a", VMState.RUNNING, project="web")
    put(idle, "b", VMState.RUNNING, project="web", idle={"suspend_after": "off"})
    asyncio.run(idle.set_project_policy("web", IdlePolicy(suspend_after=3600)))
    idle.vms.expiry.set_project("web", 60.0, ExpiryAction.STOP)
    p = idle.store.get_project("web")
    assert p is not None and p.default_ttl == 60 and p.idle == IdlePolicy(suspend_after=3600)
    idle.store.put_project(ProjectRecord("web", None, "stop"))
    assert idle.store.get_project("web").idle is not None  # type: ignore[union-attr]
    a, b = idle.store.get_vm("a"), idle.store.get_vm("b")
    assert a is not None and b is not None
    assert idle.policy(a) == (IdlePolicy(suspend_after=3600), "project")
    assert idle.policy(b)[1] == "vm" and not idle.status(b).policy.enabled  # type: ignore[union-attr]
    with pytest.raises(InvalidInput):
        asyncio.run(idle.set_project_policy("Bad Name", None))


def test_wake_refuses_a_suspended_vm_without_a_policy(idle: IdleService) -> None:
    put(idle, "man", VMState.SUSPENDED, "suspended by user")
    with pytest.raises(Conflict, match="cannot exec VM 'man' while it is suspended: it has no idle policy"):
        asyncio.run(idle.wake("man", "exec"))
    put(idle, "run", VMState.STOPPED)
    asyncio.run(idle.wake("run", "exec"))  # not suspended: left to the operation's own checks


def test_held_ports_follow_state_policy_and_expiry(idle: IdleService) -> None:
    p1, p2, p3 = free_port(), free_port(), free_port()
    put(idle, "held", VMState.SUSPENDED, "idle: no activity for 5s", ports=[f"{p1}:80", f"{p1}:53/udp"],
        idle={"suspend_after": 5})
    put(idle, "nopolicy", VMState.SUSPENDED, "suspended by user", ports=[f"{p2}:80"])
    put(idle, "expired", VMState.SUSPENDED, "", ports=[f"{p3}:80"], idle={"suspend_after": 5},
        expires_at=datetime.now(UTC) - timedelta(seconds=1), on_expiry="suspend")

    async def main() -> None:
        await idle.reconcile()
        assert listening(p1) and not listening(p2) and not listening(p3)
        rec = idle.store.get_vm("held")
        assert rec is not None
        st = idle.status(rec)
        assert st.suspended_by_idle and st.auto_resume and st.held_ports == [f"127.0.0.1:{p1}"]
        assert idle.vms.before_start is not None
        idle.vms.before_start("held")  # QEMU is about to start: the port is given back
        assert not listening(p1)
        await idle.reconcile()  # still suspended (the start failed): held again
        assert listening(p1)
        await idle.set_policy("held", IdlePolicy(suspend_after=None))
        assert not listening(p1)
        await idle.close()

    asyncio.run(main())
