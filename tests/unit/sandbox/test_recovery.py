"""A sandbox run a dead daemon left is undone at the next start: its VM and network deleted (kept with --keep),
its sink stopped; the scratch directory goes with the journal's ``dirs`` (corral.operations.recovery)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from corral.operations.recovery import Outcome
from corral.sandbox.service import SandboxService
from corral.store.db import OperationRecord


class FakeVMs:
    """What the recovery asks of the VM service: the store's VM and network rows, delete; the network service."""

    def __init__(self, vms: set[str], networks: set[str]) -> None:
        self.deleted: list[str] = []
        self.removed: list[str] = []
        self.store = SimpleNamespace(get_vm=lambda n: n if n in vms else None,
                                     get_network=lambda n: n if n in networks else None)
        self.networks = SimpleNamespace(remove=self._remove)

    async def delete(self, name: str, force: bool = False) -> None:
        assert force
        self.deleted.append(name)

    async def _remove(self, name: str) -> None:
        self.removed.append(name)


def recover(fake: FakeVMs, tmp_path: Path, **data: Any) -> Outcome:
    svc = SandboxService(fake)  # type: ignore[arg-type]
    op = OperationRecord("op1", "sbx-abc123", "sandbox", 0.0,
                         {"sink": str(tmp_path / "sink.sock"), "pidfile": str(tmp_path / "sink.pid"), **data})
    return asyncio.run(svc._recover(op))


def test_an_interrupted_run_is_rolled_back(tmp_path: Path) -> None:
    fake = FakeVMs({"sbx-abc123"}, {"sbx-abc123"})
    out = recover(fake, tmp_path, network="sbx-abc123", keep=False)
    assert not out.finished and fake.deleted == ["sbx-abc123"] and fake.removed == ["sbx-abc123"]
    assert "deleted" in out.detail and "removed" in out.detail


def test_what_is_gone_already_is_not_touched(tmp_path: Path) -> None:
    fake = FakeVMs(set(), set())
    out = recover(fake, tmp_path, network="sbx-abc123", keep=False)
    assert not out.finished and fake.deleted == [] and fake.removed == []


def test_keep_keeps_the_vm_and_its_network(tmp_path: Path) -> None:
    fake = FakeVMs({"sbx-abc123"}, {"sbx-abc123"})
    out = recover(fake, tmp_path, network="sbx-abc123", keep=True)
    assert fake.deleted == [] and fake.removed == [] and "kept" in out.detail
