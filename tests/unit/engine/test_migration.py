"""engine/migration against a fake monitor: the protocol order, an atomic state file, and undo on failure."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from corral.engine import migration
from corral.engine.monitor import MonitorError


class FakeMonitor:
    name = "vm"

    def __init__(self, statuses: list[str], fail: str | None = None, ports: list[str] | None = None) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.statuses = statuses
        self.fail = fail
        self.fds: list[int] = []
        self.devices = ["vser0", *(ports or [])]  # qom /machine/peripheral
        self.chardevs = ["qga0", *(ports or [])]

    async def execute(self, cmd: str, args: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
        self.calls.append((cmd, args))
        if cmd == self.fail:
            raise MonitorError(f"QMP {cmd} failed on 'vm': GenericError: boom")
        if cmd == "qom-list":
            return [{"name": d, "type": "child<virtserialport>"} for d in self.devices]
        if cmd == "query-chardev":
            return [{"label": c, "filename": "unix:x"} for c in self.chardevs]
        if cmd == "device_del":
            self.devices.remove(args["id"] if args else "")
        if cmd == "chardev-remove":
            self.chardevs.remove(args["id"] if args else "")
        if cmd == "query-migrate":
            status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
            return {"status": status, "error-desc": "disk full"} if status == "failed" else {"status": status}
        return {}

    async def pass_fd(self, fd: int, fdname: str, timeout: float = 10.0) -> None:
        self.fds.append(fd)
        self.calls.append(("getfd", {"fdname": fdname}))


def names(m: FakeMonitor) -> list[str]:
    return [c for c, _ in m.calls if c not in ("query-migrate", "qom-list", "query-chardev")]


def test_incoming_argv_appends_defer() -> None:
    assert migration.incoming_argv(["qemu", "-m", "256M"]) == ["qemu", "-m", "256M", "-incoming", "defer"]


def test_save_stops_first_and_renames_when_complete(tmp_path: Path) -> None:
    m = FakeMonitor(["active", "completed"])
    path = tmp_path / "state.bin"
    t = asyncio.run(migration.save_state(m, path, was_running=True))  # type: ignore[arg-type]
    assert names(m) == ["stop", "migrate-set-parameters", "getfd", "migrate"]
    assert m.calls[-1][0] == "query-migrate"
    assert ("migrate", {"uri": "fd:corral-state"}) in m.calls
    assert path.exists() and not (tmp_path / "state.bin.partial").exists() and t.size == 0


def test_save_removes_data_ports_before_it_stops(tmp_path: Path) -> None:
    """A copy's temporary virtio-serial port is not on the command line: a state holding it would not load."""
    m = FakeMonitor(["completed"], ports=["cdata-0a1b2c3d"])
    asyncio.run(migration.save_state(m, tmp_path / "state.bin", was_running=True))  # type: ignore[arg-type]
    assert names(m)[:3] == ["device_del", "chardev-remove", "stop"]
    assert m.devices == ["vser0"] and m.chardevs == ["qga0"]


@pytest.mark.parametrize("how", ["failed", "monitor"])
def test_failed_save_leaves_no_file_and_runs_again(tmp_path: Path, how: str) -> None:
    m = FakeMonitor(["failed"], fail="migrate" if how == "monitor" else None)
    path = tmp_path / "state.bin"
    with pytest.raises(migration.MigrationError, match="saving the state of 'vm' failed: .*(disk full|boom)"):
        asyncio.run(migration.save_state(m, path, was_running=True))  # type: ignore[arg-type]
    assert not path.exists() and not (tmp_path / "state.bin.partial").exists()
    assert names(m)[-1] == "cont"


def test_failed_save_of_paused_vm_stays_paused(tmp_path: Path) -> None:
    m = FakeMonitor(["failed"])
    with pytest.raises(migration.MigrationError):
        asyncio.run(migration.save_state(m, tmp_path / "s", was_running=False))  # type: ignore[arg-type]
    assert "cont" not in names(m)


def test_load_missing_or_empty_state(tmp_path: Path) -> None:
    m = FakeMonitor(["completed"])
    with pytest.raises(migration.MigrationError, match="cannot read the saved state of 'vm'"):
        asyncio.run(migration.load_state(m, tmp_path / "nope"))  # type: ignore[arg-type]
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(migration.MigrationError, match="is empty"):
        asyncio.run(migration.load_state(m, tmp_path / "empty"))  # type: ignore[arg-type]
    assert m.calls == []


def test_load_passes_the_file_and_waits(tmp_path: Path) -> None:
    (tmp_path / "s").write_bytes(b"QEVM")
    m = FakeMonitor(["active", "completed"])
    t = asyncio.run(migration.load_state(m, tmp_path / "s"))  # type: ignore[arg-type]
    assert names(m) == ["getfd", "migrate-incoming"] and t.size == 4
    m = FakeMonitor(["failed"])
    with pytest.raises(migration.MigrationError, match="loading the saved state of 'vm' failed: disk full"):
        asyncio.run(migration.load_state(m, tmp_path / "s"))  # type: ignore[arg-type]


def test_qemu_last_words_drop_timestamps() -> None:
    tail = ("2026-11-27T07:56:16.117241Z qemu-system-x86_64: error while loading state section id 2(ram) | "
            "2026-11-27T07:56:16.117388Z qemu-system-x86_64: load of migration failed: Input/output error")
    assert migration.qemu_last_words(tail) == ("error while loading state section id 2(ram) | "
                                               "load of migration failed: Input/output error")
