"""Benchmark: 100 `tiny` VMs from one template running at once on this host, every one answering `exec`.

Registered in ``bench.cases.BENCHMARKS`` as ``crowd``. The settings it needs (and a user would set the same way) are
in docs/how-to/many-vms.md: vCPU overcommit, file descriptors, the daemon's open files; this module checks them
first and says which one is missing rather than failing half-way.
"""

from __future__ import annotations

import contextlib
import os
import resource
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from bench.density import MEMORY, TEMPLATE, _delete, _start_parallel, _warm, ensure_template
from bench.harness import Context, load_average, pss_mib
from bench.report import BenchResult, Row
from corral.client import Client
from corral.engine import process
from corral.vm import host

#: How many VMs (``--quick``: 10), and how many launches are in flight at once.
COUNT = 100
QUICK_COUNT = 10
PARALLEL = 8
#: How long the VMs sit idle (all running) before the idle CPU is measured, and for how long it is measured.
SETTLE_S = 10.0
IDLE_WINDOW_S = 10.0


def _mem_available_mib() -> float:
    for line in open("/proc/meminfo"):  # noqa: SIM115 - a /proc file, read once
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _exec_timed(ctx: Context, names: list[str]) -> tuple[int, list[float]]:
    """One `hostname` through each VM's agent, 4 at a time: how many answered with their own name, and each
    answer's latency (seconds)."""
    bh = ctx.bh

    def one(name: str) -> float | None:
        t0 = time.monotonic()
        with contextlib.suppress(Exception), Client(bh.settings.socket) as c:
            code, out, _ = c.exec(name, ["hostname"])
            if code == 0 and out.decode().strip() == name:
                return time.monotonic() - t0
        return None

    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(one, names))
    ok = [t for t in got if t is not None]
    return len(ok), ok


def _cpu_seconds(pids: list[int]) -> float:
    return sum(process.cpu_seconds(p) or 0.0 for p in pids)


def crowd(ctx: Context) -> BenchResult:
    bh = ctx.bh
    log = ctx.log
    n = QUICK_COUNT if ctx.quick else COUNT
    cpu_limit = host.cpu_limit(bh.settings.cpu_overcommit)
    res = BenchResult(
        key="crowd",
        title=f"10. {n} `tiny` VMs from one template at once, every one answering `exec`",
        how=(
            f"{n} VMs ({MEMORY} MiB, 1 vCPU) are launched from one template of a {MEMORY} MiB `tiny` VM, "
            f"{PARALLEL} launches in flight at a time (each `launch_from_template` + `wait_ready`, as `corral launch "
            f"--template` does). Once all are ready, each is asked `hostname` through `exec` (4 at a time; it must "
            f"answer its own name) and each answer's latency is a sample of the exec row. After {SETTLE_S:g} s of "
            f"rest, the CPU time all QEMU processes use in {IDLE_WINDOW_S:g} s is read from /proc (idle guests: "
            f"what {n} VMs cost the host when nothing happens), then the PSS of each QEMU (/proc/PID/smaps_rollup), "
            f"and MemAvailable before and after. Then `exec` is asked of every VM once more. Settings of this run: "
            f"CORRAL_CPU_OVERCOMMIT={bh.settings.cpu_overcommit:g} (the default, 4, allows "
            f"{host.cpu_limit(4.0)} running vCPUs here), CORRAL_TCG_TB_SIZE={bh.settings.tcg_tb_size_mib}, "
            f"RLIMIT_NOFILE {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}; docs/how-to/many-vms.md says why each. "
            f"The launch row's samples are the launch-to-ready time of each VM while the others start beside it."
        ),
    )
    if cpu_limit < n:
        res.error = (f"{n} VMs of 1 vCPU need CORRAL_CPU_OVERCOMMIT >= {n / host.host_cpus():g} here (it allows "
                     f"{cpu_limit} vCPUs): set it before starting the daemon (docs/how-to/many-vms.md)")
        return res
    ensure_template(bh, log)
    names = [f"crowd{i:03d}" for i in range(n)]
    mem_before = _mem_available_mib()
    launch = Row(f"launch-to-ready of each VM, {PARALLEL} at a time ({n} VMs)")

    def timed(c: Client, name: str) -> None:
        t0 = time.monotonic()
        _warm(c, name)
        launch.samples.append(time.monotonic() - t0)

    log(f"crowd: launching {n} VMs from template '{TEMPLATE}', {PARALLEL} at a time")
    try:
        took = _start_parallel(timed, bh, names, PARALLEL)
        log(f"crowd: all {n} ready in {took:.1f}s (load {load_average()})")
        answered, lat = _exec_timed(ctx, names)
        log(f"crowd: {answered}/{n} answered exec")
        time.sleep(SETTLE_S)
        pids = [v.pid for v in bh.client.list_vms() if v.name in names and v.pid]
        c0, t0 = _cpu_seconds(pids), time.monotonic()
        time.sleep(IDLE_WINDOW_S)
        idle_cpu = (_cpu_seconds(pids) - c0) / (time.monotonic() - t0)
        pss = [pss_mib(p) for p in pids]
        mem_after = _mem_available_mib()
        again, lat2 = _exec_timed(ctx, names)
        log(f"crowd: idle CPU {idle_cpu:.2f} cores, PSS median {statistics.median(pss):.1f} MiB, "
            f"{again}/{n} answered exec again")
        res.rows = [
            launch,
            Row(f"`exec hostname` latency, all {n} running", lat),
            Row(f"PSS per QEMU, all {n} running", pss, unit="MiB"),
        ]
        res.summary[f"running at once, answering `exec` (first round / after {SETTLE_S + IDLE_WINDOW_S:g} s idle)"] = (
            f"{answered}/{n} / {again}/{n}")
        res.summary["all started (first launch call to last ready)"] = f"{took:.1f} s"
        res.summary["host CPU used by the idle VMs (all QEMU processes)"] = (
            f"{idle_cpu:.2f} of {host.host_cpus()} cores ({100 * idle_cpu / n:.1f}% of a core per VM)")
        res.summary["host memory used (MemAvailable before - after, and total PSS)"] = (
            f"{(mem_before - mem_after) / 1024:.1f} GiB / {sum(pss) / 1024:.1f} GiB")
        if lat2:
            res.summary["`exec` latency after the idle period, p50 / max"] = (
                f"{statistics.median(lat2) * 1000:.0f} / {max(lat2) * 1000:.0f} ms")
        res.details = {"answered": answered, "answered_again": again, "start_s": took, "idle_cpu_cores": idle_cpu,
                       "mem_used_mib": mem_before - mem_after, "load_end": load_average(),
                       "daemon_fds": _fds(bh.daemon_pid()), "qemu_threads": _threads(pids)}
        res.summary["host limits used: the daemon's open files / threads of all QEMU processes"] = (
            f"{res.details['daemon_fds']} / {res.details['qemu_threads']}")
    finally:
        _delete(bh, names)
    return res


def _threads(pids: list[int]) -> int:
    """Threads of all the QEMU processes (each counts against the host's and the user's process limits)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += len(os.listdir(f"/proc/{pid}/task"))
    return total


def _fds(pid: int | None) -> int:
    """How many files the daemon has open (with the VMs running: QMP, agent and channel sockets per VM)."""
    if pid is None:
        return 0
    with contextlib.suppress(OSError):
        return len(os.listdir(f"/proc/{pid}/fd"))
    return 0
