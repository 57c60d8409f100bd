"""The file-system freeze around a live disk snapshot: frozen and always thawed; a guest agent that does not answer
does not hang the snapshot (it is taken unfrozen, saying why) and is asked to thaw again later; a paused VM is not
frozen (its agent could not answer, and a freeze read on resume would have no thaw)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from corral.errors import GuestAgentTimeout
from corral.storage import freezing
from corral.storage.service import StorageService
from corral.vm.states import VMState


class FakeAgent:
    def __init__(self, fail: set[str]) -> None:
        self.fail = fail
        self.calls: list[str] = []

    async def execute(self, command: str, arguments: Any = None, timeout: float = 10.0) -> Any:
        self.calls.append(command)
        if command in self.fail:
            raise GuestAgentTimeout(f"guest agent did not answer {command} in time")
        return 1


class FakeVMs:
    def __init__(self, state: VMState, tmp: Path) -> None:
        self.settings = SimpleNamespace(home=tmp)
        self.store = SimpleNamespace(get_vm=lambda name: SimpleNamespace(state=state))
        self.root_chain = None
        self.provision_hooks: list[Any] = []
        self.delete_hooks: list[Any] = []
        self.background: list[asyncio.Task[Any]] = []
        self.events: list[str] = []

    def spawn_background(self, coro: Any, name: str) -> None:
        self.background.append(asyncio.get_running_loop().create_task(coro, name=name))

    def event(self, vm: str, type_: str, message: str, **kw: Any) -> None:
        self.events.append(message)


def machine(agent: FakeAgent) -> Any:
    return SimpleNamespace(name="v", agent=agent, agent_ready=True, exited=asyncio.Event())


async def frozen(vms: FakeVMs, agent: FakeAgent, wanted: bool = True) -> tuple[str, list[str]]:
    svc = StorageService(vms)  # type: ignore[arg-type]
    inside: list[str] = []
    async with svc._fs_frozen(machine(agent), wanted) as note:
        inside = list(agent.calls)
    return note[0], inside


def test_frozen_then_thawed(tmp_path: Path) -> None:
    agent = FakeAgent(set())
    note, inside = asyncio.run(frozen(FakeVMs(VMState.RUNNING, tmp_path), agent))
    assert note == "1 file system(s) frozen"
    assert inside == ["guest-fsfreeze-freeze"] and agent.calls == ["guest-fsfreeze-freeze", "guest-fsfreeze-thaw"]


def test_no_freeze_asked_or_paused(tmp_path: Path) -> None:
    agent = FakeAgent(set())
    note, _ = asyncio.run(frozen(FakeVMs(VMState.RUNNING, tmp_path), agent, wanted=False))
    assert "--no-freeze" in note and agent.calls == []
    note, _ = asyncio.run(frozen(FakeVMs(VMState.PAUSED, tmp_path), agent))
    assert "paused" in note and agent.calls == []


def test_a_hung_agent_is_thawed_later(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(freezing, "THAW_RETRY_INTERVAL", 0.01)
    vms = FakeVMs(VMState.RUNNING, tmp_path)
    agent = FakeAgent({"guest-fsfreeze-freeze", "guest-fsfreeze-thaw"})

    async def run() -> str:
        note, _ = await frozen(vms, agent)
        await asyncio.sleep(0.05)
        assert vms.background and not vms.background[0].done(), "still asking"
        agent.fail.clear()  # the agent answers again
        await asyncio.wait_for(vms.background[0], 5)
        return note

    note = asyncio.run(run())
    assert note.startswith("file systems not frozen: guest agent did not answer")
    assert agent.calls.count("guest-fsfreeze-thaw") >= 3
    assert vms.events == ["the guest agent answers again: file systems thawed"]
