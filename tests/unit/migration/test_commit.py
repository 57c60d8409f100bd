"""The source's hand-over (Departures._commit) against a fake target (httpx.MockTransport): a refusal continues the
VM here, a lost answer is settled by an abort request (409: it runs there), and a target out of reach leaves the VM
paused, never running on both hosts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from corral.migration.outgoing import Departures, MigrationFailed
from corral.vm.states import VMState


class FakeMonitor:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def execute(self, cmd: str, args: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
        self.calls.append(cmd)
        return {}


class FakeVMs:
    def __init__(self) -> None:
        self.states: list[tuple[str, VMState, str]] = []
        self.events: list[str] = []

    async def _set_state(self, name: str, state: VMState, reason: str = "") -> None:
        self.states.append((name, state, reason))

    def event(self, vm: str | None, type_: str, message: str, **kw: Any) -> None:
        self.events.append(message)


class FakeOp:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {"committing": True}

    def note(self, **kw: Any) -> None:
        for k, v in kw.items():
            if v is None:
                self.data.pop(k, None)
            else:
                self.data[k] = v


def run(commit: Callable[[httpx.Request], httpx.Response],
        abort: Callable[[httpx.Request], httpx.Response]) -> tuple[FakeVMs, FakeMonitor, FakeOp, Exception | None]:
    def handler(request: httpx.Request) -> httpx.Response:
        return commit(request) if request.method == "POST" else abort(request)

    vms, monitor, op = FakeVMs(), FakeMonitor(), FakeOp()
    d = Departures(vms, "here")  # type: ignore[arg-type]
    m = SimpleNamespace(monitor=monitor)

    async def go() -> Exception | None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="https://there/v1") as http:
            try:
                await d._commit(op, "vm", m, http)  # type: ignore[arg-type]
            except MigrationFailed as exc:
                return exc
        return None

    return vms, monitor, op, asyncio.run(go())


def lost(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("no answer", request=request)


def answer(status: int) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(status, json={"error": "E", "message": f"said {status}"})


def test_committed() -> None:
    vms, monitor, op, exc = run(answer(200), answer(500))
    assert exc is None and monitor.calls == [] and vms.states == []


@pytest.mark.parametrize("removed", [204, 404])
def test_refused_or_lost_and_removed_there_continues_here(removed: int) -> None:
    for commit in (answer(409), lost):
        vms, monitor, op, exc = run(commit, answer(removed))
        assert isinstance(exc, MigrationFailed) and "runs on here" in exc.message
        assert monitor.calls[-1] == "cont" and vms.states == []
        assert "committing" not in op.data


def test_lost_answer_but_running_there_is_done() -> None:
    vms, monitor, op, exc = run(lost, answer(409))
    assert exc is None and "cont" not in monitor.calls


@pytest.mark.parametrize("abort", [lost, answer(500)])
def test_target_out_of_reach_leaves_the_vm_paused(abort: Callable[[httpx.Request], httpx.Response]) -> None:
    vms, monitor, op, exc = run(lost, abort)
    assert isinstance(exc, MigrationFailed) and "may run there" in exc.message
    assert "cont" not in monitor.calls
    assert vms.states and vms.states[-1][1] == VMState.PAUSED and "may run there" in vms.states[-1][2]
