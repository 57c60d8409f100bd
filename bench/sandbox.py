"""Sandbox runs: the time from `sandbox run` to its report for a trivial sample, beside a cold launch-to-ready of
the same image in the same run (docs/explanation/sandbox.md)."""

from __future__ import annotations

import base64
import statistics
import time

from bench.harness import Context
from bench.report import BenchResult, Row, ratio
from corral.sandbox.models import NetMode, SandboxRun
from corral.vm.spec import VMSpec

READY_TIMEOUT = 600.0
SETTLE = 1.0
TRIVIAL = b"#!/bin/sh\necho hello from the sandbox\n"


def _cold_launch(ctx: Context, name: str) -> float:
    c = ctx.bh.client
    t0 = time.monotonic()
    c.create_vm(VMSpec(name=name, image="tiny", vcpus=1, memory=256))
    c.start_vm(name)
    c.wait_ready(name, timeout=READY_TIMEOUT)
    elapsed = time.monotonic() - t0
    c.delete_vm(name, force=True)
    return elapsed


def _sandbox(ctx: Context, net: NetMode, parts: dict[str, list[float]]) -> float:
    run = SandboxRun(sample_name="trivial.sh", sample=base64.b64encode(TRIVIAL).decode(), image="tiny",
                     timeout=60, net=net)
    t0 = time.monotonic()
    rep = ctx.bh.client.sandbox_run(run)
    elapsed = time.monotonic() - t0
    if rep.exit_code != 0:
        raise RuntimeError(f"the trivial sample failed in the sandbox: {rep.stderr.text[:200]}")
    for k, v in rep.seconds.items():
        parts.setdefault(f"{net.value} {k}", []).append(v)
    return elapsed


def sandbox_run(ctx: Context) -> BenchResult:
    cold = Row("cold launch-to-ready (client API: create_vm + start_vm + wait_ready)", baseline=True)
    none = Row("sandbox run, --net none: request to report (client API)")
    egress = Row("sandbox run, --net egress-log: request to report (client API)")
    parts: dict[str, list[float]] = {}
    res = BenchResult(
        key="sandbox_run",
        title="Sandbox run to report, trivial sample, `tiny` image",
        rows=[cold, none, egress],
        how=(
            f"Each of {ctx.runs} rounds runs, one after the other: a cold launch of `tiny` through the client "
            "(create_vm until wait_ready returns; the VM is then deleted), a `sandbox_run` of a two-line shell "
            "sample with --net none, and one with --net egress-log (from the request until the report arrives: the "
            "VM made and booted, the sample copied in and run, the VM stopped, its disk and the image's converted "
            "to raw and walked with debugfs, the VM and its network deleted). "
            f"{SETTLE:g} s pause between runs. The report's own breakdown (boot, run, collect) is in the details. "
            "Lower is better; the ratio (sandbox / cold launch) is how much a whole run costs beyond a boot."
        ),
    )
    for i in range(ctx.runs):
        ctx.log(f"sandbox round {i + 1}/{ctx.runs}: cold launch")
        cold.samples.append(_cold_launch(ctx, f"sb{i}"))
        time.sleep(SETTLE)
        ctx.log(f"sandbox round {i + 1}/{ctx.runs}: sandbox none")
        none.samples.append(_sandbox(ctx, NetMode.NONE, parts))
        time.sleep(SETTLE)
        ctx.log(f"sandbox round {i + 1}/{ctx.runs}: sandbox egress-log")
        egress.samples.append(_sandbox(ctx, NetMode.EGRESS_LOG, parts))
        time.sleep(SETTLE)
        ctx.log(f"  cold {cold.samples[-1]:.2f}s  none {none.samples[-1]:.2f}s  egress {egress.samples[-1]:.2f}s")
    for label, row in (("none", none), ("egress-log", egress)):
        r = ratio(row.median, cold.median)
        res.summary[f"ratio of medians, sandbox {label} / cold launch"] = f"{r:.2f}" if r is not None else "–"
    medians = {k: round(statistics.median(v), 3) for k, v in parts.items()}
    for net in ("none", "egress-log"):
        res.summary[f"the report's own breakdown, {net} (medians)"] = ", ".join(
            f"{k} {medians[f'{net} {k}']:.2f} s" for k in ("boot", "run", "collect") if f"{net} {k}" in medians)
    res.details = {"parts_median": medians}
    return res
