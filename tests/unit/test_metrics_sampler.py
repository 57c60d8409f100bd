"""The metrics sampler: all VMs sampled concurrently, each within its timeout, so one VM whose QMP hangs does not
hold up the others or the pass; what QEMU and /sys answer is parsed per drive and per interface."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.engine.process import ProcessIdentity
from corral.metrics import registry
from corral.metrics.sampler import MetricsSampler, drive_of, parse_blockstats, tap_counters
from corral.metrics.samples import DiskSample, HostSample, NicSample, QuotaSample
from corral.store.db import VMRecord
from corral.vm.quota import Quota
from corral.vm.spec import VMSpec
from corral.vm.states import VMState

BLOCKSTATS = [
    {"device": "", "node-name": "root", "qdev": "/machine/peripheral/root-disk/virtio-backend",
     "stats": {"rd_bytes": 100, "wr_bytes": 200, "rd_operations": 3, "wr_operations": 4}},
    {"device": "", "node-name": "xd-data", "qdev": "/machine/peripheral/xd-data-dev/virtio-backend",
     "stats": {"rd_bytes": 1, "wr_bytes": 2, "rd_operations": 5, "wr_operations": 6}},
]


class FakeMonitor:
    def __init__(self, hang: bool) -> None:
        self.hang = hang

    async def execute(self, cmd: str, args: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
        if self.hang:
            await asyncio.sleep(3600)  # a QEMU whose monitor never answers (and ignores the timeout asked for)
        if cmd == "query-blockstats":
            return BLOCKSTATS
        if cmd == "query-balloon":
            return {"actual": 200 << 20}
        raise AssertionError(cmd)


@dataclass
class FakeMachine:
    monitor: FakeMonitor
    ident: ProcessIdentity = field(default_factory=lambda: ProcessIdentity(os.getpid(), 0))
    agent_ready: bool = False
    agent: Any = None
    interfaces_seen: tuple[float, list[dict[str, Any]]] | None = None


class FakeStore:
    def __init__(self) -> None:
        self.quotas: list[Quota] = []
        self.vms: list[VMRecord] = []

    def get_network(self, name: str) -> None:
        return None

    def list_quotas(self) -> list[Quota]:
        return self.quotas

    def list_vms(self) -> list[VMRecord]:
        return self.vms


class FakeVMs:
    def __init__(self, recs: list[VMRecord], machines: dict[str, FakeMachine]) -> None:
        self.recs, self.machines, self.store = recs, machines, FakeStore()

    def list(self) -> list[VMRecord]:
        return self.recs

    def machine(self, name: str) -> FakeMachine | None:
        return self.machines.get(name)

    def disk_size(self, spec: VMSpec) -> int:
        return 1 << 30


class Sampler(MetricsSampler):
    def sample_host(self) -> HostSample:  # the host's part is corral.vm.capacity's, tested with it
        return HostSample(*([1] * 14))


def rec(name: str, state: VMState = VMState.RUNNING, balloon: bool = False) -> VMRecord:
    return VMRecord(spec=VMSpec(name=name, project="p", owner="ann", balloon=balloon), id=f"id-{name}", state=state,
                    state_reason="", mac="52:54:00:00:00:01", created_at=0.0, last_exit_reason="", restart_count=0)


def test_one_hung_monitor_does_not_hold_up_the_others() -> None:
    recs = [rec("stuck"), *(rec(f"vm{i}", balloon=i == 0) for i in range(5)), rec("off", VMState.STOPPED)]
    machines = {r.name: FakeMachine(FakeMonitor(hang=r.name == "stuck")) for r in recs if r.name != "off"}
    sampler = Sampler(FakeVMs(recs, machines), interval=10, timeout=0.5)  # type: ignore[arg-type]
    incomplete = registry.REGISTRY.get_sample_value("corral_metrics_incomplete_samples_total") or 0.0
    t0 = time.monotonic()
    cache = asyncio.run(sampler.sample_once())
    took = time.monotonic() - t0
    assert took < 1.5, f"the pass took {took:.2f}s: one hung monitor held it up"
    assert set(cache.vms) == {r.name for r in recs}
    for i in range(5):
        s = cache.vms[f"vm{i}"]
        assert s.disks == (DiskSample("root", 100, 200, 3, 4), DiskSample("data", 1, 2, 5, 6))
        assert s.cpu_seconds is not None and s.cpu_seconds > 0 and s.rss_bytes and s.rss_bytes > 0
        assert s.balloon_bytes == (200 << 20 if i == 0 else None)
    stuck = cache.vms["stuck"]
    assert stuck.disks == () and stuck.cpu_seconds is not None  # /proc still read; QMP figures left out
    assert cache.vms["off"].state == "stopped" and cache.vms["off"].cpu_seconds is None
    assert registry.REGISTRY.get_sample_value("corral_metrics_incomplete_samples_total") == incomplete + 1


def test_a_timed_out_vm_keeps_its_previous_qmp_figures() -> None:
    recs = [rec("a")]
    machine = FakeMachine(FakeMonitor(hang=False))
    sampler = Sampler(FakeVMs(recs, {"a": machine}), interval=10, timeout=0.3)  # type: ignore[arg-type]

    async def two_passes() -> tuple[Any, Any]:
        first = await sampler.sample_once()
        machine.monitor.hang = True
        return first, await sampler.sample_once()

    first, second = asyncio.run(two_passes())
    assert second.vms["a"].disks == first.vms["a"].disks != ()


def test_drive_labels() -> None:
    assert [d.drive for d in parse_blockstats(BLOCKSTATS)] == ["root", "data"]
    assert drive_of({"qdev": "/machine/peripheral/seed-disk/virtio-backend"}) == "seed"
    assert drive_of({"device": "ide0-cd0", "qdev": ""}) == "ide0-cd0"
    assert drive_of({"qdev": ""}) is None


def test_tap_counters_are_from_the_guests_side(tmp_path: Path) -> None:
    stats = tmp_path / "crt123" / "statistics"
    stats.mkdir(parents=True)
    (stats / "tx_bytes").write_text("1000\n")  # the host sent into the tap: the guest received it
    (stats / "rx_bytes").write_text("20\n")
    assert tap_counters("crt123", tmp_path) == NicSample("crt123", "tap", received_bytes=1000, sent_bytes=20)
    assert tap_counters("gone", tmp_path) is None


def test_quotas_limits_and_what_is_held() -> None:
    recs = [rec("a"), rec("b", VMState.STOPPED)]  # project p: a stopped VM holds its quota too
    vms = FakeVMs(recs, {})
    vms.store.vms = recs
    vms.store.quotas = [Quota("project", "p", vms=5, memory=1024), Quota("owner", "bob", vcpus=4)]
    sampler = Sampler(vms, interval=10)  # type: ignore[arg-type]
    assert sampler.sample_quotas() == (
        QuotaSample("project", "p", "vms", 5, 2),
        QuotaSample("project", "p", "memory_bytes", 1024 << 20, 2 * (VMSpec(name="x").memory << 20)),
        QuotaSample("owner", "bob", "vcpus", 4, 0))


class CountingAgent:
    def __init__(self) -> None:
        self.asked = 0

    async def execute(self, cmd: str, args: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
        assert cmd == "guest-network-get-interfaces"
        self.asked += 1
        return [{"name": "eth0", "statistics": {"rx-bytes": 7, "tx-bytes": 8}}]


def test_idle_controls_recent_answer_is_read_not_asked_again() -> None:
    """Idle control asks every running VM's agent each pass; the metrics sampler reads that answer while it is
    younger than one interval, and asks the guest itself only when it is older (or there is none)."""
    agent = CountingAgent()
    machine = FakeMachine(FakeMonitor(hang=False), agent_ready=True, agent=agent)
    machine.interfaces_seen = (time.monotonic(), [{"name": "eth0", "statistics": {"rx-bytes": 1, "tx-bytes": 2}}])
    sampler = Sampler(FakeVMs([rec("a")], {"a": machine}), interval=10, timeout=1)  # type: ignore[arg-type]
    nics = asyncio.run(sampler.sample_once()).vms["a"].nics
    assert agent.asked == 0 and nics == (NicSample("eth0", "guest-agent", received_bytes=1, sent_bytes=2),)
    machine.interfaces_seen = (time.monotonic() - 11, machine.interfaces_seen[1])
    nics = asyncio.run(sampler.sample_once()).vms["a"].nics
    assert agent.asked == 1 and nics == (NicSample("eth0", "guest-agent", received_bytes=7, sent_bytes=8),)
