"""Benchmarks of templates and density: template launch vs cold launch, memory per VM (PSS) at 1, 10 and 50 VMs,
VMs started per second, and `ls` latency with 1,000 VMs defined. Registered in ``bench.cases.BENCHMARKS``."""

from __future__ import annotations

import contextlib
import shutil
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bench.harness import (
    BenchHome,
    Context,
    ImageFiles,
    baseline_argv,
    make_overlay,
    pss_mib,
    qga_wait_ready,
    spawn_qemu,
)
from bench.report import BenchResult, Row, ratio
from corral.api.models import API_PREFIX
from corral.client import Client
from corral.engine import process
from corral.store.db import Store, VMRecord
from corral.vm.spec import VMSpec
from corral.vm.states import VMState

READY_TIMEOUT = 600.0
MEMORY = 128  # MiB, every VM of these benchmarks (the template's size)
SETTLE = 1.0
TEMPLATE = "bench"
SOURCE = "tsrc"


def _wait_gone(pid: int | None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while pid is not None and process.is_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _delete(bh: BenchHome, names: list[str]) -> None:
    infos = {v.name: v for v in bh.client.list_vms()}
    for n in names:
        with contextlib.suppress(Exception):
            bh.client.delete_vm(n, force=True)
    for n in names:
        if n in infos:
            _wait_gone(infos[n].pid)


def ensure_template(bh: BenchHome, log: Callable[[str], None]) -> float:
    """The benchmark template (from a fresh 128 MiB tiny VM, deleted after); seconds the capture took (0 if it
    existed)."""
    if any(t.name == TEMPLATE for t in bh.client.list_templates()):
        return 0.0
    c = bh.client
    c.create_vm(VMSpec(name=SOURCE, image="tiny", vcpus=1, memory=MEMORY))
    c.start_vm(SOURCE)
    c.wait_ready(SOURCE, timeout=READY_TIMEOUT)
    time.sleep(2.0)  # its boot's background work (DHCP, resize2fs) done
    t0 = time.monotonic()
    c.create_template(TEMPLATE, SOURCE)
    took = time.monotonic() - t0
    log(f"template '{TEMPLATE}' captured in {took:.2f}s")
    _delete(bh, [SOURCE])
    return took


def _cold(c: Client, name: str) -> None:
    c.create_vm(VMSpec(name=name, image="tiny", vcpus=1, memory=MEMORY))
    c.start_vm(name)
    c.wait_ready(name, timeout=READY_TIMEOUT)


def _warm(c: Client, name: str) -> None:
    c.launch_from_template(TEMPLATE, VMSpec(name=name))
    c.wait_ready(name, timeout=READY_TIMEOUT)


# ------------------------------------------------------------------------- template launch vs cold launch --
TEMPLATE_RATIO_TARGET = 0.05  # issue 11, part 4 (it was 0.1)


def template_launch(ctx: Context) -> BenchResult:
    bh = ctx.bh
    log = ctx.log
    runs = ctx.runs
    cold = Row(f"cold launch: create_vm + start_vm + wait_ready ({MEMORY} MiB tiny, boots the kernel)",
               baseline=True)
    warm = Row("template launch: launch_from_template + wait_ready (state loaded, own identity, provisioned)")
    pool = Row("pool launch: launch_from_template + wait_ready with a ready member in the template's warm pool "
               "(renamed, continued, hostname and clock set)")
    res = BenchResult(
        key="template_launch",
        title=f"3. Template launch-to-ready vs cold launch-to-ready, `tiny` {MEMORY} MiB",
        rows=[cold, warm, pool],
        how=(
            f"A {MEMORY} MiB `tiny` VM is launched, left 2 s, and captured with `template create` (the capture "
            f"time is below), then deleted. Each of {runs} rounds runs a cold launch through the Python client "
            f"(create_vm, start_vm, wait_ready: QEMU boots the kernel, the agent answers, the guest is provisioned) "
            f"and a template launch (launch_from_template, wait_ready: QEMU starts with `-incoming defer` and the "
            f"template's memory file mapped privately, loads the device state with x-ignore-shared, continues; the "
            f"guest gets its own MAC, hostname, machine-id, entropy, clock and SSH host key and Corral's SSH key in "
            f"one guest command; ready), interleaved, each VM deleted before the next with a {SETTLE:g} s pause. "
            f"Both are the same client calls a `corral launch` makes, timed from the first call until wait_ready "
            f"returns. Target: the ratio of medians template / cold <= {TEMPLATE_RATIO_TARGET:g}. Then, in the "
            f"same run, a warm pool of one member of the template (`corral pool create --template {TEMPLATE} "
            f"--size 1`): each of {runs} rounds waits (untimed) until its member is paused and ready, then times "
            f"launch_from_template + wait_ready, which hands the member out (validated, renamed, its forwards "
            f"added, continued, hostname and clock set in one guest command); the pool refills after."
        ),
    )
    res.details["template_capture_s"] = ensure_template(bh, log)
    res.summary["template capture (`corral template create`, source pauses for part of it)"] = (
        f"{res.details['template_capture_s']:.2f} s")
    _warm(bh.client, "tw-warmup")  # untimed: the template's files into the page cache
    _delete(bh, ["tw-warmup"])
    for i in range(runs):
        for row, fn, name in ((cold, _cold, f"tc{i}"), (warm, _warm, f"tw{i}")):
            t0 = time.monotonic()
            fn(bh.client, name)
            row.samples.append(time.monotonic() - t0)
            _delete(bh, [name])
            time.sleep(SETTLE)
        log(f"round {i + 1}/{runs}: cold {cold.samples[-1]:.2f}s template {warm.samples[-1]:.2f}s")
    _pool_rounds(bh, pool, runs, log)
    r = ratio(warm.median, cold.median)
    res.summary["ratio of medians, template / cold"] = (
        f"{r:.3f} (target <= {TEMPLATE_RATIO_TARGET:g}: {'met' if r <= TEMPLATE_RATIO_TARGET else 'NOT met'})"
        if r is not None else "–")
    r_min = ratio(warm.min, cold.min)
    res.summary["ratio of mins, template / cold"] = f"{r_min:.3f}" if r_min is not None else "–"
    res.details.update({"ratio": r, "ratio_min": r_min, "target": TEMPLATE_RATIO_TARGET})
    r_pool = ratio(pool.median, cold.median)
    res.summary["ratio of medians, pool / cold"] = f"{r_pool:.3f}" if r_pool is not None else "–"
    r_pool_t = ratio(pool.median, warm.median)
    res.summary["ratio of medians, pool / template"] = f"{r_pool_t:.3f}" if r_pool_t is not None else "–"
    res.details.update({"ratio_pool": r_pool, "ratio_pool_template": r_pool_t})
    return res


def _pool_rounds(bh: BenchHome, row: Row, runs: int, log: Callable[[str], None]) -> None:
    """A warm pool of one member of the template; each round waits (untimed) until it is ready, then times a launch
    from the template (which hands the member out) until ready. The pool is removed at the end."""
    c = bh.client
    c.create_pool(TEMPLATE, 1)
    try:
        for i in range(runs):
            deadline = time.monotonic() + READY_TIMEOUT
            while c.get_pool(TEMPLATE).ready < 1:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the pool of '{TEMPLATE}' was not filled within {READY_TIMEOUT:.0f}s")
                time.sleep(0.2)
            time.sleep(SETTLE)
            name = f"tp{i}"
            t0 = time.monotonic()
            _warm(c, name)
            row.samples.append(time.monotonic() - t0)
            _delete(bh, [name])
            log(f"pool round {i + 1}/{runs}: {row.samples[-1]:.2f}s")
    finally:
        c.delete_pool(TEMPLATE)


# ------------------------------------------------------------------------------------- memory per VM (PSS) --
def _start_parallel(fn: Callable[[Client, str], None], bh: BenchHome, names: list[str], workers: int) -> float:
    def one(name: str) -> None:
        with Client(bh.settings.socket) as c:
            fn(c, name)

    t0 = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, names))
    return time.monotonic() - t0


def _plain_qemus(bh: BenchHome, accel: str, n: int) -> tuple[list[subprocess.Popen[bytes]], list[Path]]:
    img = ImageFiles.from_store(bh.settings, "tiny")
    procs, dirs = [], []
    for i in range(n):
        d = bh.home / f"plain{i}"
        d.mkdir()
        make_overlay(img.disk, d / "disk.qcow2")
        argv = baseline_argv(bh.settings.qemu_binary, img, d / "disk.qcow2", d / "qga.sock", d / "serial.log",
                             accel, bh.settings.tcg_tb_size_mib, memory_mib=MEMORY)
        p = spawn_qemu(argv, d / "qemu.log")
        bh.baseline_pids.add(p.pid)
        procs.append(p)
        dirs.append(d)
    for p, d in zip(procs, dirs, strict=True):
        qga_wait_ready(d / "qga.sock", p, READY_TIMEOUT)
    return procs, dirs


def _stop_plain(bh: BenchHome, procs: list[subprocess.Popen[bytes]], dirs: list[Path]) -> None:
    for p in procs:
        p.kill()
        p.wait()
        bh.baseline_pids.discard(p.pid)
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


def _exec_all(bh: BenchHome, names: list[str]) -> int:
    ok = 0
    for n in names:
        with contextlib.suppress(Exception):
            code, out, _ = bh.client.exec(n, ["hostname"])
            ok += code == 0 and out.decode().strip() == n
    return ok


def memory_per_vm(ctx: Context) -> BenchResult:
    bh = ctx.bh
    log = ctx.log
    quick = ctx.quick
    accel = ctx.accel
    counts_cold = [1, 4] if quick else [1, 10]
    counts_warm = [1, 4] if quick else [1, 10, 50]
    ensure_template(bh, log)
    res = BenchResult(
        key="memory_per_vm",
        title=f"4. Host memory per VM (PSS), `tiny` {MEMORY} MiB: plain QEMU, cold-booted, from a template",
        how=(
            f"N VMs run at once ({MEMORY} MiB, 1 vCPU, TCG tb-size {bh.settings.tcg_tb_size_mib} MiB), all ready "
            f"(cold and template VMs also answered one `exec`), then after 5 s the PSS of each QEMU process is read "
            f"from /proc/PID/smaps_rollup (shared pages count divided by the number of processes mapping them). "
            f"Each row is one N; its median and min are over the N processes. The plain QEMU baseline is the "
            f"hand-written command line of benchmark 1 with `-m {MEMORY}`, booted until its agent answers. Cold "
            f"Corral VMs boot the kernel ({', '.join(map(str, counts_cold))} at once); template VMs are launched "
            f"8 at a time ({', '.join(map(str, counts_warm))}); the 50-VM row is the density target: 50 `tiny` "
            f"VMs running at once on this host, every one answering `exec` (below). Lower is better. The target is "
            f"the issue's: memory per *additional* template VM <= 0.5 x memory per cold-booted VM, where the "
            f"additional VM's share is (total PSS of the {max(counts_cold)} template VMs - PSS of the one alone) / "
            f"{max(counts_cold) - 1} (the first VM from a template pays for every template page it touched; the "
            f"others share them), and a cold VM's is the median at {max(counts_cold)}. The per-N ratios are shown "
            f"too, without a target."
        ),
    )
    by_kind: dict[str, dict[int, float]] = {"plain": {}, "cold": {}, "template": {}}
    totals: dict[str, dict[int, float]] = {"cold": {}, "template": {}}
    for n in counts_cold:
        log(f"memory: {n} plain QEMU")
        procs, dirs = _plain_qemus(bh, accel, n)
        try:
            time.sleep(5.0)
            row = Row(f"plain QEMU x{n}", [pss_mib(p.pid) for p in procs], unit="MiB", baseline=True)
        finally:
            _stop_plain(bh, procs, dirs)
        res.rows.append(row)
        by_kind["plain"][n] = row.median or 0.0
    for kind, fn, counts in (("cold", _cold, counts_cold), ("template", _warm, counts_warm)):
        for n in counts:
            names = [f"m{kind[0]}{i}" for i in range(n)]
            log(f"memory: {n} {kind} VMs")
            took = _start_parallel(fn, bh, names, 8 if kind == "template" else n)
            try:
                answered = _exec_all(bh, names)
                time.sleep(5.0)
                pids = {v.name: v.pid for v in bh.client.list_vms() if v.name in names}
                row = Row(f"Corral {kind} x{n}", [pss_mib(p) for p in pids.values() if p], unit="MiB",
                          note=f"all started in {took:.1f} s, {answered}/{n} answered exec")
                res.details[f"{kind}_{n}"] = {"answered": answered, "start_s": took, "pss": row.samples}
                if kind == "template" and n == max(counts_warm):
                    res.summary[f"{n} template VMs running at once, answering `exec`"] = f"{answered}/{n}"
            finally:
                _delete(bh, names)
            res.rows.append(row)
            by_kind[kind][n] = row.median or 0.0
            totals[kind][n] = sum(row.samples)
            log(f"  median PSS {row.median:.1f} MiB, {answered}/{n} answered")
    for n in counts_cold:
        r = ratio(by_kind["template"].get(n), by_kind["cold"].get(n))
        if r is not None:
            res.summary[f"PSS ratio template / cold at {n} VMs (median per VM)"] = f"{r:.2f}"
    n = max(counts_cold)
    if n in totals["template"] and 1 in totals["template"] and by_kind["cold"].get(n):
        extra = (totals["template"][n] - totals["template"][1]) / (n - 1)
        r = extra / by_kind["cold"][n]
        res.summary["memory per additional template VM"] = f"{extra:.1f} MiB"
        res.summary["ratio per additional template VM / per cold VM"] = (
            f"{r:.2f} (target <= 0.5: {'met' if r <= 0.5 else 'NOT met'})")
        res.details["per_additional_template_mib"] = extra
        res.details["ratio_additional"] = r
    return res


# ------------------------------------------------------------------------------------ VMs started per second --
def start_rate(ctx: Context) -> BenchResult:
    bh = ctx.bh
    log = ctx.log
    quick = ctx.quick
    n_seq = 3 if quick else 5
    n_par = 8
    ensure_template(bh, log)
    res = BenchResult(
        key="start_rate",
        title="5. VMs started per second (to ready), one at a time and 8 in parallel",
        how=(
            f"One at a time: {n_seq} VMs launched one after the other, each waited for (ready) before the next; "
            f"8 in parallel: 8 VMs launched at once from 8 client threads. The figure is VMs / elapsed seconds "
            f"from the first call until the last VM is ready (higher is better); the VMs are deleted after each "
            f"measurement. Cold VMs boot the kernel, template VMs load the template's state (`tiny`, {MEMORY} MiB). "
            f"Under TCG on 2 cores, parallel cold boots compete for the CPU, so they gain little."
        ),
    )
    for kind, fn in (("cold", _cold), ("template", _warm)):
        for label, workers, n in (("one at a time", 1, n_seq), ("8 in parallel", n_par, n_par)):
            names = [f"r{kind[0]}{i}" for i in range(n)]
            took = _start_parallel(fn, bh, names, workers)
            _delete(bh, names)
            row = Row(f"{kind}, {label} ({n} VMs)", [n / took], unit="VMs/s", baseline=kind == "cold")
            res.rows.append(row)
            log(f"rate: {kind} {label}: {n / took:.2f} VMs/s")
            time.sleep(SETTLE)
    return res


# ------------------------------------------------------------------------------------ ls with 1,000 VMs --
LS_TARGET_P99_MS = 50.0


def _percentile(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def ls_latency(ctx: Context) -> BenchResult:
    bh = ctx.bh
    log = ctx.log
    quick = ctx.quick
    n_vms, calls = 1000, (100 if quick else 300)
    res = BenchResult(
        key="ls_latency",
        title="6. `ls` API latency with 1,000 VMs defined",
        how=(
            f"{n_vms} stopped VMs are defined by inserting their records into the store (the daemon runs; SQLite "
            f"WAL), as `corral create` would leave them. Then GET /v1/vms is called {calls} times one after the "
            f"other on one connection, timed from sending the request until the whole JSON body (all {n_vms} VMs) "
            f"is read; and {calls // 3} times through the Python client's `list_vms` (which also parses every VM into "
            f"a model, like `corral ls --json`). The baseline is the same request with 10 VMs defined. Target: "
            f"p99 of the API request < {LS_TARGET_P99_MS:g} ms. The VMs are deleted afterwards."
        ),
    )
    http = httpx.Client(transport=httpx.HTTPTransport(uds=str(bh.settings.socket)),
                        base_url="http://corral" + API_PREFIX, timeout=60)
    store = Store(bh.settings.database)

    def define(count: int) -> None:
        store._db.execute("BEGIN")  # noqa: SLF001 - one transaction for the whole batch
        for i in range(count):
            store.insert_vm(VMRecord(VMSpec(name=f"ls{i:04d}", memory=MEMORY, labels={"bench": "ls"}),
                                     str(uuid.uuid4()), VMState.STOPPED, "", f"52:54:00:10:{i >> 8:02x}:{i & 255:02x}",
                                     time.time(), "", 0))
        store._db.execute("COMMIT")  # noqa: SLF001

    def measure(fn: Callable[[], object], n: int) -> list[float]:
        fn()
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1000)
        return out

    try:
        define(10)
        base = Row("GET /v1/vms, 10 VMs defined", measure(lambda: http.get("/vms").content, calls), unit="ms",
                   baseline=True)
        store._db.execute("DELETE FROM vms WHERE name LIKE 'ls%'")  # noqa: SLF001
        define(n_vms)
        body = http.get("/vms").json()
        assert len(body) >= n_vms, len(body)
        api = Row(f"GET /v1/vms, {n_vms} VMs defined", measure(lambda: http.get("/vms").content, calls), unit="ms")
        client = Row(f"client list_vms (parsed), {n_vms} VMs", measure(bh.client.list_vms, calls // 3), unit="ms")
        res.rows += [base, api, client]
        for row in (base, api, client):
            p50, p99 = _percentile(row.samples, 50), _percentile(row.samples, 99)
            res.summary[f"{row.label}: p50 / p99"] = f"{p50:.1f} / {p99:.1f} ms"
            row.note = f"p99 {p99:.1f} ms"
        p99 = _percentile(api.samples, 99)
        res.summary["target p99 < 50 ms (API request, 1,000 VMs)"] = "met" if p99 < LS_TARGET_P99_MS else "NOT met"
        res.details = {"p50_ms": statistics.median(api.samples), "p99_ms": p99, "vms": n_vms}
        log(f"ls: p50 {statistics.median(api.samples):.1f} ms p99 {p99:.1f} ms")
    finally:
        store._db.execute("DELETE FROM vms WHERE name LIKE 'ls%'")  # noqa: SLF001
        store.close()
        http.close()
    return res
