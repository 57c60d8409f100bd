"""The idle decision from samples: rates per interval, activity over thresholds or unknown, the whole window."""

from __future__ import annotations

from corral.idle.detector import Activity, Counters, Rates, over, rates
from corral.idle.policy import IdlePolicy

POLICY = IdlePolicy(suspend_after=10, cpu=5, disk=64 << 10, net=16 << 10)


def c(t: float, cpu: float | None = 0.0, disk: int | None = 0, net: int | None = 0) -> Counters:
    return Counters(t=t, cpu_seconds=cpu, disk_bytes=disk, net_bytes=net)


def test_rates_are_per_second_and_cpu_per_vcpu() -> None:
    r = rates(c(0, 1.0, 0, 0), c(2, 2.0, 4096, 1000), vcpus=2)
    assert r == Rates(seconds=2, cpu=25.0, disk=2048.0, net=500.0)
    assert rates(c(1), c(1), 1) is None
    assert rates(c(0, 5.0), c(1, 1.0), 1).cpu is None  # type: ignore[union-attr]  # a counter that went back


def test_over_names_each_busy_or_unknown_measure() -> None:
    assert over(Rates(1, 1.0, 100, 100), POLICY) == []
    assert over(Rates(1, 50.0, 1 << 20, None), POLICY) == ["cpu 50.0%", "disk 1M/s", "net unknown"]
    zero = IdlePolicy(suspend_after=10, disk=0)
    assert over(Rates(1, 0.0, 0, 0), zero) == [] and over(Rates(1, 0.0, 1, 0), zero) == ["disk 1B/s"]


def feed(samples: list[tuple[float, Counters]], start: float = 0.0) -> Activity:
    a = Activity(last_active=start)
    for now, counters in samples:
        a.observe(counters, now, 1, POLICY)
    return a


def test_quiet_for_the_whole_window_is_idle() -> None:
    a = feed([(t, c(t, cpu=0.01 * t)) for t in range(0, 12)])  # 1% CPU: under 5%
    assert a.busy == [] and a.last_active == 0
    assert not a.idle(9.9, POLICY) and a.idle(10, POLICY)
    assert a.quiet_for(11) == 11


def test_a_busy_interval_restarts_the_window() -> None:
    samples = [(t, c(t, cpu=0.0)) for t in range(0, 6)] + [(6, c(6, cpu=0.5))]  # 50% in (5, 6]
    samples += [(t, c(t, cpu=0.5)) for t in range(7, 17)]
    a = feed(samples)
    assert a.last_active == 6
    assert not a.idle(15, POLICY) and a.idle(16, POLICY)


def test_unknown_counters_count_as_activity() -> None:
    a = feed([(t, c(t, net=None)) for t in range(0, 20)])  # no guest agent: network unknown
    assert a.busy == ["net unknown"] and not a.idle(19, POLICY)


def test_disk_and_network_bursts_keep_it_awake() -> None:
    a = feed([(0, c(0)), (1, c(1, disk=1 << 20)), (2, c(2, disk=1 << 20))])
    assert a.last_active == 1
    a = feed([(0, c(0)), (1, c(1, net=20 << 10))])
    assert a.last_active == 1 and a.busy == ["net 20K/s"]


def test_touch_and_no_policy() -> None:
    a = feed([(t, c(t)) for t in range(0, 12)])
    a.touch(8)
    assert not a.idle(12, POLICY) and a.idle(18, POLICY)
    assert not a.idle(100, None) and not a.idle(100, IdlePolicy(suspend_after=None))
    a.touch(3)  # never goes back
    assert a.last_active == 8


def test_only_a_watched_window_proves_it_idle() -> None:
    """After a daemon restart the stored last activity may be old: the VM must still be watched a whole window."""
    a = Activity(last_active=0, watched_since=100)
    for t in range(100, 112):
        a.observe(c(t), t, 1, POLICY)
    assert a.quiet_for(105) == 105 and not a.idle(105, POLICY) and a.idle(110, POLICY)
