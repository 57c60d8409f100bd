"""Benchmark of GET /metrics: scrape latency with 100 VMs. Registered in ``bench.cases.BENCHMARKS``.

Two measures, each against a baseline measured in the same run, interleaved with it:

- In-process, 100 VMs' cached samples: the cache is filled with 100 synthetic samples of running VMs (each with two
  drives and two interfaces: every per-VM family has its series), because 100 real running VMs are another
  benchmark (``crowd``); a scrape never asks QEMU, so what the VMs do does not change its cost. The cache's text is
  rendered once per sampler pass (corral.metrics.collector.VMScrape), off the scrape's path: that rendering is timed
  on its own too.
  GET /metrics is sent to the API application in-process (httpx's ASGI transport: the app, its middlewares, the
  route, the rendering; no socket). Baseline: the same request with an empty cache.
- Over the daemon's unix socket, 100 VMs defined: 100 stopped VMs' records put in the store (as ``ls_latency``
  does), the daemon's sampler left to see them, then GET /metrics; baseline: GET /v1/status on the same connection.

Target: p99 < 100 ms for a scrape with 100 VMs (issue 13).
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.density import _percentile
from bench.harness import Context
from bench.report import BenchResult, Row, ratio
from corral.api.app import create_app
from corral.metrics.collector import VMCollector, VMScrape, render_cache
from corral.metrics.samples import Cache, DiskSample, HostSample, NicSample, VMSample
from corral.store.db import Store, VMRecord
from corral.vm.spec import VMSpec
from corral.vm.states import VMState

N_VMS = 100
TARGET_P99_MS = 100.0
PREFIX = "mx"


def synthetic_cache(n: int) -> Cache:
    """``n`` running VMs' samples, every figure set (two drives, a tap and a guest interface each)."""
    vms = {}
    for i in range(n):
        name = f"{PREFIX}{i:03d}"
        vms[name] = VMSample(
            vm=name, project=f"p{i % 7}", owner=f"u{i % 5}", state="running", vcpus=1 + i % 4,
            memory_bytes=(256 + i) << 20, pid=10_000 + i, cpu_seconds=i * 1.5, rss_bytes=(200 + i) << 20,
            balloon_bytes=(256 << 20) if i % 2 else None,
            disks=(DiskSample("root", i * 4096, i * 8192, i * 3, i * 5), DiskSample("data", i, 2 * i, i, i)),
            nics=(NicSample(f"crt{i:06x}00001", "tap", i * 100, i * 200), NicSample("eth0", "guest-agent", i, i)))
    host = HostSample(*([1 << 30] * 14))
    return Cache(vms=vms, host=host, at=time.time())


def _defined(text: str) -> set[str]:
    """The bench's VMs a scrape shows."""
    return {s.labels["vm"] for f in text_string_to_metric_families(text) if f.name == "corral_vm_state"
            for s in f.samples if s.labels["vm"].startswith(PREFIX)}


def _timed_ms(fn: Callable[[], Awaitable[object]], loop: asyncio.AbstractEventLoop) -> float:
    t0 = time.perf_counter()
    loop.run_until_complete(fn())
    return (time.perf_counter() - t0) * 1000


def metrics_scrape(ctx: Context) -> BenchResult:
    bh, log = ctx.bh, ctx.log
    calls = 100 if ctx.quick else 300
    res = BenchResult(
        key="metrics_scrape",
        title="GET /metrics scrape latency with 100 VMs",
        how=(
            f"In-process: the metrics collector's cache is filled with {N_VMS} synthetic samples of running VMs "
            "(two drives and two interfaces each, so every per-VM family has its series; 100 real running VMs are "
            "the crowd benchmark, and a scrape never asks QEMU: it joins the cache's text, rendered once per sampler "
            "pass; that rendering is timed on its own, every 10th round), and GET /metrics is sent "
            f"to the API application through httpx's ASGI transport (no socket), {calls} times one after the other, "
            "alternating with the baseline: the same request with an empty cache. Over the daemon's unix socket: "
            f"{N_VMS} stopped VMs' records are put in the store (as ls_latency does), the daemon's sampler is left "
            f"to see them, then GET /metrics {calls} times on one connection, alternating with the baseline GET "
            f"/v1/status. Each timed from sending the request to the end of the body. Target: p99 < "
            f"{TARGET_P99_MS:g} ms with {N_VMS} VMs. The VM records are deleted afterwards."
        ),
    )
    full, empty = synthetic_cache(N_VMS), Cache()
    app_full, app_empty = create_app(None), create_app(None)
    collector = VMCollector(lambda: full, "bench-host")
    app_full.state.metrics = VMScrape(collector)
    app_empty.state.metrics = VMScrape(VMCollector(lambda: empty, "bench-host"))
    loop = asyncio.new_event_loop()
    c_full = httpx.AsyncClient(transport=httpx.ASGITransport(app=app_full), base_url="http://corral")
    c_empty = httpx.AsyncClient(transport=httpx.ASGITransport(app=app_empty), base_url="http://corral")
    http = httpx.Client(transport=httpx.HTTPTransport(uds=str(bh.settings.socket)), base_url="http://corral",
                        timeout=60)
    store = Store(bh.settings.database)
    in_full = Row(f"in-process GET /metrics, {N_VMS} running VMs' cached samples", unit="ms")
    in_empty = Row("in-process GET /metrics, empty cache", unit="ms", baseline=True)
    sock_full = Row(f"GET /metrics over the unix socket, {N_VMS} VMs defined", unit="ms")
    sock_status = Row("GET /v1/status over the unix socket", unit="ms", baseline=True)
    pass_render = Row(f"per sampler pass, off the scrape's path: rendering {N_VMS} VMs' samples", unit="ms")
    try:
        async def get_full() -> bytes:
            return (await c_full.get("/metrics")).content

        async def get_empty() -> bytes:
            return (await c_empty.get("/metrics")).content

        body = loop.run_until_complete(get_full()).decode()
        series = sum(len(f.samples) for f in text_string_to_metric_families(body)
                     if f.name.startswith("corral_vm_"))
        log(f"metrics: the in-process scrape has {series} per-VM series, {len(body)} bytes")
        for i in range(calls):
            in_full.samples.append(_timed_ms(get_full, loop))
            in_empty.samples.append(_timed_ms(get_empty, loop))
            if i % 10 == 0:
                t0 = time.perf_counter()
                render_cache(collector, full)
                pass_render.samples.append((time.perf_counter() - t0) * 1000)

        store._db.execute("BEGIN")  # noqa: SLF001 - one transaction for the whole batch
        for i in range(N_VMS):
            store.insert_vm(VMRecord(VMSpec(name=f"{PREFIX}{i:03d}", memory=128), str(uuid.uuid4()),
                                     VMState.STOPPED, "", f"52:54:00:20:{i >> 8:02x}:{i & 255:02x}", time.time(), "",
                                     0))
        store._db.execute("COMMIT")  # noqa: SLF001
        deadline = time.monotonic() + 60  # the sampler's next pass (CORRAL_METRICS_INTERVAL, 10 s by default)
        while len(_defined(http.get("/metrics").text)) < N_VMS:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the daemon's metrics did not show the {N_VMS} VMs within 60 s")
            time.sleep(0.5)
        for _ in range(calls):
            t0 = time.perf_counter()
            http.get("/metrics").read()
            sock_full.samples.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            http.get("/v1/status").read()
            sock_status.samples.append((time.perf_counter() - t0) * 1000)

        res.rows += [in_full, in_empty, sock_full, sock_status, pass_render]
        for row in res.rows:
            p50, p99 = _percentile(row.samples, 50), _percentile(row.samples, 99)
            res.summary[f"{row.label}: p50 / p99"] = f"{p50:.1f} / {p99:.1f} ms"
            row.note = f"p99 {p99:.1f} ms"
        p99_in, p99_sock = _percentile(in_full.samples, 99), _percentile(sock_full.samples, 99)
        r_in = ratio(_percentile(in_full.samples, 99), _percentile(in_empty.samples, 99))
        r_sock = ratio(_percentile(sock_full.samples, 99), _percentile(sock_status.samples, 99))
        res.summary["p99 ratio, in-process: 100 VMs / empty cache"] = f"{r_in:.2f} x" if r_in else "–"
        res.summary["p99 ratio, unix socket: /metrics with 100 VMs / /v1/status"] = f"{r_sock:.2f} x" if r_sock else "–"
        res.summary[f"target p99 < {TARGET_P99_MS:g} ms ({N_VMS} VMs)"] = \
            "met" if max(p99_in, p99_sock) < TARGET_P99_MS else "NOT met"
        res.details = {"vms": N_VMS, "calls": calls, "per_vm_series": series, "body_bytes": len(body),
                       "p50_ms_in_process": statistics.median(in_full.samples), "p99_ms_in_process": p99_in,
                       "p99_ms_socket": p99_sock}
        log(f"metrics: p99 in-process {p99_in:.1f} ms, over the socket {p99_sock:.1f} ms")
    finally:
        store._db.execute(f"DELETE FROM vms WHERE name LIKE '{PREFIX}%'")  # noqa: SLF001
        store.close()
        http.close()
        loop.run_until_complete(c_full.aclose())
        loop.run_until_complete(c_empty.aclose())
        loop.close()
    return res
