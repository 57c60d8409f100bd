"""The balloon service without QEMU: its checks (no balloon, not running, out of range), the QMP it sends to a fake
monitor, and turning the balloon on or off through the spec (not while suspended, never for a template's VM)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from corral.engine.process import ProcessIdentity
from corral.errors import Conflict, InvalidInput
from corral.images.store import ImageStore
from corral.memory.balloon import BalloonService
from corral.settings import load_settings
from corral.store.db import Store, TemplateRecord, VMRecord
from corral.vm.machine import Machine
from corral.vm.service import VMService
from corral.vm.spec import VMSpec
from corral.vm.states import VMState

MiB = 1 << 20


class FakeMonitor:
    """Answers the balloon's QMP commands as QEMU 7.2 does; records what it was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any] | None]] = []
        self.actual = 256 * MiB

    async def execute(self, cmd: str, args: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
        self.sent.append((cmd, args))
        if cmd == "balloon":
            assert args is not None
            self.actual = args["value"]
            return {}
        if cmd == "query-balloon":
            return {"actual": self.actual}
        if cmd == "qom-get":
            assert args == {"path": "/machine/peripheral/balloon0", "property": "guest-stats"}
            return {"stats": {"stat-total-memory": 217 * MiB, "stat-available-memory": 20 * MiB,
                              "stat-free-memory": (1 << 64) - 1}, "last-update": 1}
        raise AssertionError(cmd)


@pytest.fixture
def svc(tmp_path: Path) -> VMService:
    settings = load_settings({"CORRAL_HOME": str(tmp_path / "home"), "CORRAL_CACHE": str(tmp_path / "cache")})
    return VMService(settings, Store(settings.database), ImageStore(settings.images_dir, settings.cache))


def put(svc: VMService, name: str, state: VMState, balloon: bool, monitor: FakeMonitor | None = None) -> None:
    svc.store.insert_vm(VMRecord(spec=VMSpec(name=name, memory=256, balloon=balloon), id=f"id-{name}", state=state,
                                 state_reason="", mac=f"m-{name}", created_at=0, last_exit_reason="",
                                 restart_count=0))
    if monitor is not None:
        svc._machines[name] = Machine(name=name, vm_id=f"id-{name}", ident=ProcessIdentity(4242, 1), accel="tcg",
                                      started_at=0, monitor=monitor, agent=None)  # type: ignore[arg-type]


def test_target_sent_and_reported(svc: VMService) -> None:
    mon = FakeMonitor()
    put(svc, "b", VMState.RUNNING, True, mon)
    bs = BalloonService(svc)
    st = asyncio.run(bs.set_target("b", "96M"))
    assert ("balloon", {"value": 96 * MiB}) in mon.sent
    assert (st.memory, st.size, st.target) == (256 * MiB, 96 * MiB, 96 * MiB)
    assert (st.guest_total, st.guest_available, st.guest_free) == (217 * MiB, 20 * MiB, None)
    assert [e.type for e in svc.store.events(vm="b")] == ["balloon"]


@pytest.mark.parametrize("target", ["1G", "257M", "63M", "lots"])
def test_out_of_range_sends_nothing(svc: VMService, target: str) -> None:
    mon = FakeMonitor()
    put(svc, "b", VMState.RUNNING, True, mon)
    with pytest.raises(InvalidInput):
        asyncio.run(BalloonService(svc).set_target("b", target))
    assert not any(cmd == "balloon" for cmd, _ in mon.sent)


def test_no_balloon_or_not_running(svc: VMService) -> None:
    put(svc, "plain", VMState.RUNNING, False, FakeMonitor())
    put(svc, "off", VMState.STOPPED, True)
    bs = BalloonService(svc)
    with pytest.raises(InvalidInput, match="launched with --balloon"):
        asyncio.run(bs.set_target("plain", "96M"))
    with pytest.raises(Conflict, match="is stopped"):
        asyncio.run(bs.set_target("off", "96M"))
    assert asyncio.run(bs.status("plain")) is None and asyncio.run(bs.status("off")) is None


def test_balloon_changes_through_the_spec_but_not_suspended_nor_from_a_template(svc: VMService) -> None:
    put(svc, "s", VMState.STOPPED, False)
    assert asyncio.run(svc.specs.update("s", {"balloon": True})).spec.balloon is True
    put(svc, "z", VMState.SUSPENDED, False)
    with pytest.raises(Conflict, match="suspended"):
        asyncio.run(svc.specs.update("z", {"balloon": True}))
    svc.store.insert_template(TemplateRecord("t", "src", "tiny", 1, 256, 1 << 30, 0))
    put(svc, "t1", VMState.STOPPED, False)
    svc.store.link_template_vm("t1", "t")
    with pytest.raises(InvalidInput, match="template"):
        asyncio.run(svc.specs.update("t1", {"balloon": True}))
    rec = svc.store.get_vm("t1")
    assert rec is not None and rec.spec.balloon is False
