"""engine/live_migration: the QMP arguments each step sends, query-migrate and query-block-jobs read into numbers and
verdicts, and the source's steps in order against a fake monitor."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from corral.engine import live_migration as live


def test_addresses_and_uris() -> None:
    assert live.inet("10.0.0.2", 4000) == {"type": "inet", "host": "10.0.0.2", "port": "4000"}
    assert live.inet_legacy("10.0.0.2", 4000) == {"type": "inet", "data": {"host": "10.0.0.2", "port": "4000"}}
    assert live.tcp_uri("10.0.0.2", 4000) == "tcp:10.0.0.2:4000"
    assert live.tcp_uri("fd00::2", 4000) == "tcp:[fd00::2]:4000"
    assert live.INCOMING_ARGS == ("-S", "-incoming", "defer")  # -S: the target runs the guest only at the commit


def test_export_client_and_mirror_arguments() -> None:
    assert live.export_args(live.Export("root", "root")) == {
        "type": "nbd", "id": "exp-root", "node-name": "root", "name": "root", "writable": True}
    assert live.nbd_client_args("mig-0", "10.0.0.2", 5000, "disk-data") == {
        "driver": "nbd", "node-name": "mig-0", "export": "disk-data", "tls-creds": live.CREDS,
        "server": {"type": "inet", "host": "10.0.0.2", "port": "5000"}}
    assert live.mirror_args(live.Mirror(device="root", target="mig-0", job="mig-0")) == {
        "job-id": "mig-0", "device": "root", "target": "mig-0", "sync": "full", "auto-finalize": True,
        "auto-dismiss": False}


def test_stream_result_from_query_migrate() -> None:
    info = {"status": "completed", "total-time": 352, "downtime": 239, "setup-time": 3,
            "ram": {"transferred": 101_000_000, "total": 268_000_000}}
    assert live.stream_result(info) == live.StreamResult(total_ms=352, downtime_ms=239, ram_bytes=101_000_000)
    assert live.stream_result({"status": "completed"}) == live.StreamResult(0, 0, 0)


def test_mirrors_state() -> None:
    ready = {"device": "mig-0", "ready": True, "status": "ready"}
    running = {"device": "mig-1", "ready": False, "status": "running"}
    assert live.mirrors_state([ready], ["mig-0"]) == (True, None)
    assert live.mirrors_state([ready, running], ["mig-0", "mig-1"]) == (False, None)
    assert live.mirrors_state([ready], ["mig-0", "mig-1"]) == (False, "mirror mig-1 ended")
    failed = {"device": "mig-0", "ready": False, "status": "concluded", "error": "Input/output error"}
    assert live.mirrors_state([failed], ["mig-0"]) == (False, "mirror mig-0 failed: Input/output error")


class FakeMonitor:
    name = "vm"

    def __init__(self, migrate: list[str]) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.migrate = migrate
        self.jobs: dict[str, dict[str, Any]] = {}

    async def execute(self, cmd: str, args: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
        self.calls.append((cmd, args))
        a = args or {}
        if cmd == "blockdev-mirror":
            self.jobs[a["job-id"]] = {"device": a["job-id"], "id": a["job-id"], "ready": True, "status": "ready",
                                      "offset": 1 << 30}
        if cmd == "query-block-jobs":
            return [j for j in self.jobs.values() if j["status"] != "concluded"]
        if cmd == "query-jobs":
            return list(self.jobs.values())
        if cmd == "block-job-cancel":
            self.jobs[a["device"]]["status"] = "concluded"
        if cmd == "query-migrate":
            status = self.migrate.pop(0) if len(self.migrate) > 1 else self.migrate[0]
            return {"status": status, "downtime": 40, "total-time": 300, "ram": {"transferred": 5}}
        return {}


def names(m: FakeMonitor) -> list[str]:
    return [c for c, _ in m.calls if not c.startswith("query-")]


def test_the_source_steps_in_order() -> None:
    m = FakeMonitor(["active", "completed"])
    mirror = live.Mirror("root", "mig-0", "mig-0")
    noted: list[live.Mirror] = []

    async def run() -> tuple[live.StreamResult, int]:
        await live.mirror_disks(m, "10.0.0.2", 5000, [(mirror, "root")], noted.append)  # type: ignore[arg-type]
        await live.wait_ready(m, ["mig-0"], 5)  # type: ignore[arg-type]
        stream = await live.migrate(m, "tcp:10.0.0.2:4000", 5, ["mig-0"])  # type: ignore[arg-type]
        return stream, await live.finish_mirrors(m, ["mig-0"])  # type: ignore[arg-type]

    stream, copied = asyncio.run(run())
    assert noted == [mirror]
    assert names(m) == ["blockdev-add", "blockdev-mirror", "migrate-set-parameters", "migrate-set-capabilities",
                        "migrate", "block-job-cancel", "job-dismiss"]
    assert dict(m.calls)["migrate"] == {"uri": "tcp:10.0.0.2:4000"}
    assert dict(m.calls)["migrate-set-parameters"]["tls-creds"] == live.CREDS
    assert dict(m.calls)["blockdev-add"]["tls-creds"] == live.CREDS
    assert stream.downtime_ms == 40 and copied == 1 << 30


def test_a_failed_migration_raises() -> None:
    m = FakeMonitor(["active", "failed"])
    with pytest.raises(live.LiveMigrationError, match="failed"):
        asyncio.run(live.migrate(m, "tcp:h:1", 5, []))  # type: ignore[arg-type]


def test_the_target_hands_over_only_once_the_state_is_there() -> None:
    m = FakeMonitor(["active"])
    with pytest.raises(live.LiveMigrationError, match="has not arrived"):
        asyncio.run(live.hand_over(m))  # type: ignore[arg-type]
    assert "cont" not in names(m)
    m = FakeMonitor(["completed"])
    asyncio.run(live.hand_over(m))  # type: ignore[arg-type]
    # the export first (the device takes its write permission back), then no TLS for a later save (suspend)
    assert names(m) == ["nbd-server-stop", "cont", "migrate-set-parameters", "migrate-set-capabilities",
                        "object-del"]
    assert dict(m.calls)["migrate-set-parameters"] == {"tls-creds": ""}


def test_the_pre_shared_key_file(tmp_path: Path) -> None:
    key = live.new_key()
    assert len(key) == 64 and key != live.new_key()
    path = live.write_key(tmp_path / "tls", key)
    assert path.read_text() == f"corral:{key}\n"
    assert path.stat().st_mode & 0o777 == 0o600 and (tmp_path / "tls").stat().st_mode & 0o777 == 0o700
    assert live.creds_args(tmp_path, "server") == {"qom-type": "tls-creds-psk", "id": "mig-tls",
                                                   "dir": str(tmp_path), "endpoint": "server"}
    assert live.creds_args(tmp_path, "client")["username"] == "corral"
