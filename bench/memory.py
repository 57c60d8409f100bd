"""Benchmark of the balloon's free page reporting: the host memory of a VM after its guest allocated and freed N MiB,
with ``--balloon`` and without, in the same run. Registered in ``bench.cases.BENCHMARKS``."""

from __future__ import annotations

import time
from pathlib import Path

from bench.harness import BenchHome, Context, pss_mib
from bench.report import BenchResult, Row, ratio
from corral.vm.spec import VMSpec

READY_TIMEOUT = 600.0
MEMORY = 512  # MiB: /dev/shm (half the guest's memory) holds the largest N
#: How long after the guest freed its memory the host memory is read: free page reporting waits about 2 s, then
#: reports in batches; the VM without a balloon gets the same wait.
SETTLE = 8.0


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def _sh(bh: BenchHome, name: str, script: str) -> None:
    code, _, err = bh.client.exec(name, ["sh", "-c", script], timeout=600)
    if code != 0:
        raise RuntimeError(f"guest command failed ({code}): {err.decode(errors='replace')[-300:]}")


def balloon_reclaim(ctx: Context) -> BenchResult:
    bh = ctx.bh
    sizes = (64,) if ctx.quick else (64, 192)
    rounds = min(ctx.runs, 3)
    vms = {"plain": False, "bal": True}
    boot = {v: Row(f"{'with' if b else 'without'} --balloon: booted, idle", unit="MiB", baseline=not b)
            for v, b in vms.items()}
    filled = {(v, n): Row(f"N = {n} MiB: {'with' if b else 'without'} --balloon, N MiB in use",
                          unit="MiB", baseline=not b) for n in sizes for v, b in vms.items()}
    freed = {(v, n): Row(f"N = {n} MiB: {'with' if b else 'without'} --balloon, {SETTLE:g} s after freeing them",
                         unit="MiB", baseline=not b) for n in sizes for v, b in vms.items()}
    rss = {(v, n): Row(f"N = {n} MiB: {'with' if b else 'without'} --balloon, RSS after freeing", unit="MiB",
                       baseline=not b) for n in sizes for v, b in vms.items()}
    res = BenchResult(
        key="balloon_reclaim",
        title=f"9. Host memory after the guest freed N MiB: `tiny` {MEMORY} MiB, with `--balloon` vs without",
        rows=[*boot.values(), *[r for n in sizes for v in vms for r in (filled[v, n], freed[v, n], rss[v, n])]],
        how=(
            f"Two `tiny` VMs of {MEMORY} MiB run side by side, one launched with `--balloon` (virtio-balloon with "
            "free page reporting), one without (the baseline). Each is measured once booted and idle, then "
            f"{rounds} times for each N: its guest writes N MiB from /dev/urandom into /dev/shm (tmpfs: guest "
            f"memory), the host memory is read, the file is deleted, and {SETTLE:g} s later it is read again. "
            "Host memory is the QEMU process's PSS (/proc/PID/smaps_rollup; its RAM is private anonymous memory, "
            "so PSS is close to RSS, also shown). With the balloon, the guest reports freed blocks (2 MiB and "
            "up) and QEMU discards them (madvise DONTNEED): the memory goes back to the host. Without it, "
            "memory the guest touched stays the QEMU process's until it exits: from the second round on, its "
            "rows for the smaller N show the high-water mark of the larger one. Both VMs are deleted at the end."
        ),
    )
    try:
        for name, on in vms.items():
            bh.client.create_vm(VMSpec(name=name, image="tiny", vcpus=1, memory=MEMORY, balloon=on))
            bh.client.start_vm(name)
        pids = {}
        for name in vms:
            info = bh.client.wait_ready(name, timeout=READY_TIMEOUT)
            assert info.pid is not None
            pids[name] = info.pid
        time.sleep(SETTLE)  # the boot's own freed memory reported
        for name in vms:
            boot[name].samples.append(round(pss_mib(pids[name]), 1))
        for i in range(rounds):
            for n in sizes:
                for name in vms:
                    _sh(bh, name, f"dd if=/dev/urandom of=/dev/shm/fill bs=1M count={n} 2>/dev/null")
                    filled[name, n].samples.append(round(pss_mib(pids[name]), 1))
                for name in vms:
                    _sh(bh, name, "rm -f /dev/shm/fill")
                time.sleep(SETTLE)
                for name in vms:
                    freed[name, n].samples.append(round(pss_mib(pids[name]), 1))
                    rss[name, n].samples.append(round(rss_mib(pids[name]), 1))
                ctx.log(f"balloon round {i + 1}/{rounds}, N={n}: without {filled['plain', n].samples[-1]:.0f} -> "
                        f"{freed['plain', n].samples[-1]:.0f} MiB, with {filled['bal', n].samples[-1]:.0f} -> "
                        f"{freed['bal', n].samples[-1]:.0f} MiB")
        for n in sizes:
            with_, without = freed["bal", n].median, freed["plain", n].median
            r = ratio(with_, without)
            res.summary[f"N = {n} MiB: host memory after freeing, with / without --balloon (median)"] = (
                f"{r:.2f}" if r is not None else "–")
            for name, which in (("bal", "with"), ("plain", "without")):
                back = ratio((filled[name, n].median or 0) - (freed[name, n].median or 0), float(n))
                res.summary[f"N = {n} MiB: share of N given back to the host {which} --balloon"] = (
                    f"{back:.0%}" if back is not None else "–")
        res.details.update({"sizes_mib": list(sizes), "rounds": rounds, "memory_mib": MEMORY, "settle_s": SETTLE})
    finally:
        for name in vms:
            try:
                bh.client.delete_vm(name, force=True)
            except Exception:  # noqa: BLE001 - the run's cleanup kills what is left by pid
                ctx.log(f"could not delete {name}")
    return res
