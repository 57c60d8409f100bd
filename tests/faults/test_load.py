"""Concurrent load on the API: N clients doing mixed operations on M running VMs for a bounded time.

Each client is a thread with its own :class:`corral.client.Client` (httpx over the daemon's unix socket) that
loops until the deadline, picking a VM and an operation at random: ``ls`` (list every VM), ``show``, ``exec``
(``echo`` in the guest), ``pause`` then ``resume``, and ``snapshot create`` then ``snapshot rm`` of a snapshot of
its own. Asserted:

- no unexpected error: an operation refused because of the VM's state or another's operation (409 Conflict, e.g.
  an exec or a pause on a VM another client just paused) is expected and counted apart; any other API error
  (a 5xx above all), a transport error or a timeout of the client (a hang), or an exec with a wrong answer fails;
- afterwards every VM is running and answers exec, and no lock is left held: a final pause/resume and a snapshot
  create/rm on each VM succeed, and no snapshot of the run is left.

Latency (p50/p99 per route) is printed as a table; the full run's figures are in docs/reliability.md ("Load").
The full run (soak) is the issue's 100 clients on 20 VMs; the quick one 10 clients on 2 VMs for 15 s.
"""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

import httpx
import pytest

from corral.client import APIError, Client, DaemonUnavailable
from tests.conftest import CorralEnv, ok, start_daemon_with

pytestmark = pytest.mark.vm

# Operation -> weight. pause/resume and snapshot create/rm come in pairs, so a VM is never left paused or with a
# snapshot of the run by the client that made it.
MIX = {"ls": 3, "show": 3, "exec": 3, "pause": 1, "snapshot": 1}
CLIENT_TIMEOUT = 120.0  # a request taking longer is a hang: a transport error, counted as unexpected


@dataclass
class Stats:
    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    conflicts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    unexpected: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def timed(self, route: str, fn, *args, **kw):  # type: ignore[no-untyped-def]
        """Call ``fn``; its latency under ``route``. A 409 is counted (None returned); anything else is raised."""
        t0 = time.perf_counter()
        try:
            result = fn(*args, **kw)
        except APIError as exc:
            if exc.status != 409:
                raise
            with self.lock:
                self.conflicts[route] += 1
                self.latency[route].append(time.perf_counter() - t0)
            return None
        with self.lock:
            self.latency[route].append(time.perf_counter() - t0)
        return result if result is not None else True


def client_loop(c: CorralEnv, vms: list[str], deadline: float, stats: Stats, tid: int) -> None:
    rng = random.Random(tid)
    ops, weights = list(MIX), list(MIX.values())
    n = 0
    with Client(c.settings.socket, timeout=CLIENT_TIMEOUT) as client:
        while time.monotonic() < deadline:
            vm, op = rng.choice(vms), rng.choices(ops, weights)[0]
            n += 1
            try:
                if op == "ls":
                    got = stats.timed("GET /vms", client.list_vms)
                    assert {v.name for v in got} >= set(vms), "ls lost a VM"
                elif op == "show":
                    stats.timed("GET /vms/{name}", client.get_vm, vm)
                elif op == "exec":
                    r = stats.timed("POST /vms/{name}/exec", client.exec, vm, ["echo", f"t{tid}-{n}"])
                    if r is not None:
                        assert r == (0, f"t{tid}-{n}\n".encode(), b""), f"exec in {vm}: {r}"
                elif op == "pause":
                    if stats.timed("POST /vms/{name}/pause", client.pause_vm, vm) is not None:
                        time.sleep(rng.uniform(0, 0.5))
                        resumed = None
                        while resumed is None and time.monotonic() < deadline + CLIENT_TIMEOUT:
                            # 409 only while another operation changes its state: it is ours to resume
                            resumed = stats.timed("POST /vms/{name}/resume", client.resume_vm, vm)
                            if resumed is None:
                                time.sleep(0.2)
                        assert resumed is not None, f"{vm}: could not resume it"
                elif op == "snapshot":
                    snap = f"t{tid}-{n}"
                    if stats.timed("POST /vms/{name}/snapshots", client.create_snapshot, vm, snap) is not None:
                        stats.timed("DELETE /vms/{name}/snapshots/{snap}", client.delete_snapshot, vm, snap)
            except (APIError, DaemonUnavailable, httpx.HTTPError, AssertionError) as exc:
                with stats.lock:
                    stats.unexpected.append(f"client {tid} {op} {vm}: {type(exc).__name__}: {exc}")


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


def table(stats: Stats, seconds: float) -> str:
    rows = ["| route | calls | 409 | p50 (ms) | p99 (ms) | max (ms) |", "|---|---:|---:|---:|---:|---:|"]
    for route in sorted(stats.latency):
        xs = stats.latency[route]
        rows.append(f"| `{route}` | {len(xs)} | {stats.conflicts.get(route, 0)} | {pct(xs, 50) * 1e3:.0f} | "
                    f"{pct(xs, 99) * 1e3:.0f} | {max(xs) * 1e3:.0f} |")
    total = sum(len(xs) for xs in stats.latency.values())
    rows.append(f"\n{total} calls in {seconds:.0f} s ({total / seconds:.1f}/s), "
                f"{sum(stats.conflicts.values())} refused with 409, {len(stats.unexpected)} unexpected errors")
    return "\n".join(rows)


def launch(c: CorralEnv, count: int) -> list[str]:
    names = [f"l{i:02d}" for i in range(count)]
    for n in names:
        ok(c, "launch", n, "--memory", "128M", "--no-wait")
    for n in names:
        c.client.wait_ready(n, 600)
    return names


def run_load(c: CorralEnv, clients: int, vms: int, seconds: float) -> Stats:
    t_boot = time.monotonic()
    names = launch(c, vms)
    print(f"\n{vms} VMs ready in {time.monotonic() - t_boot:.0f} s")
    stats = Stats()
    t0 = time.monotonic()
    deadline = t0 + seconds
    threads = [threading.Thread(target=client_loop, args=(c, names, deadline, stats, i), daemon=True)
               for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(1.0, deadline - time.monotonic()) + CLIENT_TIMEOUT * 3)
    assert not any(t.is_alive() for t in threads), "a client is stuck"
    elapsed = time.monotonic() - t0
    print(f"\nload: {clients} clients on {vms} VMs for {seconds:.0f} s (ended after {elapsed:.0f} s)")
    print(table(stats, elapsed))
    for line in stats.unexpected[:20]:
        print("UNEXPECTED", line)
    assert not stats.unexpected, f"{len(stats.unexpected)} unexpected errors, first: {stats.unexpected[:5]}"

    cl = c.client
    for n in names:  # every VM still running and answering; no lock left held
        assert cl.get_vm(n).state == "running", n
        assert cl.exec(n, ["echo", "after"]) == (0, b"after\n", b"")
        assert cl.pause_vm(n).state == "paused" and cl.resume_vm(n).state == "running"
        cl.create_snapshot(n, "final")
        cl.delete_snapshot(n, "final")
        assert cl.list_snapshots(n) == [], f"{n}: snapshots left by the run"
    return stats


def test_load_quick(corral: CorralEnv) -> None:
    run_load(corral, clients=10, vms=2, seconds=15)


@pytest.mark.soak
@pytest.mark.timeout(1500)  # 20 boots under TCG on a shared host come first
def test_load_soak(corral_home: CorralEnv) -> None:
    # 20 vCPUs on 2 host threads: the default overcommit allows 8
    run_load(start_daemon_with(corral_home, {"CORRAL_CPU_OVERCOMMIT": "12"}), clients=100, vms=20, seconds=120)
