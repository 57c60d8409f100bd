"""Renaming a live VM (corral.vm.rename) against a real store and directory, with a fake VM service."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from corral.engine.guest_agent import GuestAgent
from corral.engine.monitor import Monitor
from corral.engine.process import ProcessIdentity
from corral.errors import Conflict
from corral.paths import VMPaths
from corral.store.db import Store, VMRecord
from corral.vm import rename
from corral.vm.machine import Machine
from corral.vm.spec import VMSpec
from corral.vm.states import VMState


@dataclass
class FakeVMs:
    store: Store
    root: Path
    _machines: dict[str, Machine] = field(default_factory=dict)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    def paths(self, name: str) -> VMPaths:
        return VMPaths(self.root / name)

    def machine(self, name: str) -> Machine | None:
        return self._machines.get(name)


def setup(tmp_path: Path) -> tuple[FakeVMs, Machine]:
    vms = FakeVMs(Store(tmp_path / "corral.db"), tmp_path / "vms")
    vms.store.insert_vm(VMRecord(spec=VMSpec(name="pool-t-1"), id="id-1", state=VMState.PAUSED, state_reason="",
                                 mac="52:54:00:00:00:01", created_at=0.0, last_exit_reason="", restart_count=0))
    p = vms.paths("pool-t-1")
    p.root.mkdir(parents=True)
    p.disk.write_text("disk")
    m = Machine(name="pool-t-1", vm_id="id-1", ident=ProcessIdentity(1, 1), accel="tcg", started_at=0.0,
                monitor=Monitor("pool-t-1", p.qmp_socket), agent=GuestAgent(p.qga_socket))
    vms._machines["pool-t-1"] = m
    vms._locks["pool-t-1"] = asyncio.Lock()
    return vms, m


def test_rename_moves_directory_rows_and_handles(tmp_path: Path) -> None:
    vms, m = setup(tmp_path)
    got = asyncio.run(rename.rename(vms, "pool-t-1", VMSpec(name="web", labels={"a": "b"})))  # type: ignore[arg-type]
    assert got is m and m.name == "web" and vms._machines == {"web": m} and "pool-t-1" not in vms._locks
    assert (tmp_path / "vms" / "web" / "disk.qcow2").read_text() == "disk"
    assert not (tmp_path / "vms" / "pool-t-1").exists()
    assert m.agent.socket_path == tmp_path / "vms" / "web" / "qga.sock"
    assert m.monitor is not None and m.monitor.socket == tmp_path / "vms" / "web" / "qmp.sock"
    rec = vms.store.get_vm("web")
    assert rec is not None and rec.spec.labels == {"a": "b"} and vms.store.get_vm("pool-t-1") is None


def test_a_refused_rename_changes_nothing(tmp_path: Path) -> None:
    vms, m = setup(tmp_path)
    (tmp_path / "vms" / "stray").mkdir()
    with pytest.raises(Conflict, match="already exists"):
        asyncio.run(rename.rename(vms, "pool-t-1", VMSpec(name="stray")))  # type: ignore[arg-type]
    assert m.name == "pool-t-1" and vms.store.get_vm("pool-t-1") is not None
    assert (tmp_path / "vms" / "pool-t-1" / "disk.qcow2").is_file()
