"""Sandbox runs: the time from `sandbox run` to its report for a trivial sample, from the image (a cold boot) and
from a template of it (its saved state loaded), beside a cold launch-to-ready of the same image in the same run
(docs/explanation/sandbox.md)."""

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
MEMORY = 256  # the cold launch's too: the template's VMs get its source's memory
TEMPLATE, SOURCE = "bench-sbx", "bench-sbx-src"


def _template(ctx: Context) -> None:
    """The template the template rows start from: a fresh `tiny` VM captured, the source deleted."""
    c = ctx.bh.client
    c.create_vm(VMSpec(name=SOURCE, image="tiny", vcpus=1, memory=MEMORY))
    c.start_vm(SOURCE)
    c.wait_ready(SOURCE, timeout=READY_TIMEOUT)
    time.sleep(2.0)  # its boot's background work (DHCP, resize2fs) done
    c.create_template(TEMPLATE, SOURCE)
    c.delete_vm(SOURCE, force=True)


def _cold_launch(ctx: Context, name: str) -> float:
    c = ctx.bh.client
    t0 = time.monotonic()
    c.create_vm(VMSpec(name=name, image="tiny", vcpus=1, memory=MEMORY))
    c.start_vm(name)
    c.wait_ready(name, timeout=READY_TIMEOUT)
    elapsed = time.monotonic() - t0
    c.delete_vm(name, force=True)
    return elapsed


def _sandbox(ctx: Context, net: NetMode, parts: dict[str, list[float]], template: str | None = None) -> float:
    run = SandboxRun(sample_name="trivial.sh", sample=base64.b64encode(TRIVIAL).decode(),
                     image=None if template else "tiny", template=template, timeout=60, net=net)
    t0 = time.monotonic()
    rep = ctx.bh.client.sandbox_run(run)
    elapsed = time.monotonic() - t0
    if rep.exit_code != 0:
        raise RuntimeError(f"the trivial sample failed in the sandbox: {rep.stderr.text[:200]}")
    for k, v in rep.seconds.items():
        parts.setdefault(f"{'template ' if template else ''}{net.value} {k}", []).append(v)
    return elapsed


def sandbox_run(ctx: Context) -> BenchResult:
    cold = Row("cold launch-to-ready (client API: create_vm + start_vm + wait_ready)", baseline=True)
    none = Row("sandbox run, --net none: request to report (client API)")
    egress = Row("sandbox run, --net egress-log: request to report (client API)")
    t_none = Row("sandbox run --template, --net none: request to report (client API)")
    t_egress = Row("sandbox run --template, --net egress-log: request to report (client API)")
    parts: dict[str, list[float]] = {}
    res = BenchResult(
        key="sandbox_run",
        title="Sandbox run to report, trivial sample, `tiny` image",
        rows=[cold, none, egress, t_none, t_egress],
        how=(
            f"Each of {ctx.runs} rounds runs, one after the other: a cold launch of `tiny` through the client "
            "(create_vm until wait_ready returns; the VM is then deleted), a `sandbox_run` of a two-line shell "
            "sample with --net none, and one with --net egress-log (from the request until the report arrives: the "
            "VM made and booted, the sample copied in and run, the VM stopped, its disk and the image's converted "
            "to raw and walked with debugfs, the VM and its network deleted), then the same two from a template of "
            f"a {MEMORY} MiB `tiny` VM captured once before the rounds (the VM's state loaded, its NAT NIC "
            "restricted; egress-log read from QEMU's filter-dump). "
            f"{SETTLE:g} s pause between runs. The report's own breakdown (boot, run, collect) is in the details. "
            "Lower is better; the ratio (sandbox / cold launch) is how much a whole run costs beyond a boot."
        ),
    )
    ctx.log("sandbox: capturing the template")
    _template(ctx)
    try:
        _rounds(ctx, cold, none, egress, t_none, t_egress, parts)
    finally:
        ctx.bh.client.delete_template(TEMPLATE)
    for label, row in (("none", none), ("egress-log", egress), ("--template none", t_none),
                       ("--template egress-log", t_egress)):
        r = ratio(row.median, cold.median)
        res.summary[f"ratio of medians, sandbox {label} / cold launch"] = f"{r:.2f}" if r is not None else "–"
    medians = {k: round(statistics.median(v), 3) for k, v in parts.items()}
    for net in ("none", "egress-log", "template none", "template egress-log"):
        res.summary[f"the report's own breakdown, {net} (medians)"] = ", ".join(
            f"{k} {medians[f'{net} {k}']:.2f} s" for k in ("boot", "run", "collect") if f"{net} {k}" in medians)
    res.details = {"parts_median": medians}
    return res


def _rounds(ctx: Context, cold: Row, none: Row, egress: Row, t_none: Row, t_egress: Row,
            parts: dict[str, list[float]]) -> None:
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
        ctx.log(f"sandbox round {i + 1}/{ctx.runs}: from the template, none and egress-log")
        t_none.samples.append(_sandbox(ctx, NetMode.NONE, parts, TEMPLATE))
        time.sleep(SETTLE)
        t_egress.samples.append(_sandbox(ctx, NetMode.EGRESS_LOG, parts, TEMPLATE))
        time.sleep(SETTLE)
        ctx.log(f"  cold {cold.samples[-1]:.2f}s  none {none.samples[-1]:.2f}s  egress {egress.samples[-1]:.2f}s  "
                f"template none {t_none.samples[-1]:.2f}s  template egress {t_egress.samples[-1]:.2f}s")
