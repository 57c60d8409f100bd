"""Benchmark of OCI images as VMs: an OCI image to a running VM (its main process running, the guest agent
answering) beside the `tiny` image, whose root is the same kind of busybox root, booted the usual way; and the
cold import (skopeo copy, umoci unpack, ext4 disk) on its own. Registered in ``bench.cases.BENCHMARKS``.

The image is the integration test's hand-made one (tests/oci_images.py): two layers with whiteouts on Debian's
static busybox, its main process a shell loop that runs until the VM is stopped.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import Context
from bench.report import BenchResult, Row, ratio
from corral.images import tiny
from corral.images.oci import guest
from tests.oci_images import busybox, make_layout

CORRAL_CLI = str(Path(sys.executable).parent / "corral")
READY_TIMEOUT = 600.0
SETTLE = 1.0


def _cli(ctx: Context, *args: str) -> float:
    t0 = time.monotonic()
    r = subprocess.run([CORRAL_CLI, *args], env=ctx.bh.env, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"corral {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()[-400:]}")
    return time.monotonic() - t0


def _delete(ctx: Context, name: str) -> None:
    if any(v.name == name for v in ctx.bh.client.list_vms()):
        ctx.bh.client.delete_vm(name, force=True)


def oci_launch(ctx: Context) -> BenchResult:
    bh = ctx.bh
    work = Path(tempfile.mkdtemp(prefix="bench-oci-", dir=bh.home))
    layout = work / "layout"
    digest = make_layout(layout, busybox(bh.settings.cache, bh.settings.mirror), tag="v1")
    hexd = digest.removeprefix("sha256:")
    cached = bh.settings.cache / "oci" / "images" / f"{hexd}-{guest.KIT_VERSION}-tiny{tiny.BUILDER_VERSION}"
    ref = f"{layout}:v1"
    oci = Row("Corral: `corral launch --oci DIR:TAG` + `corral wait --ready` (image imported)")
    base = Row("`tiny` image: `corral launch` (waits for the agent)", baseline=True)
    cold = Row("cold `corral images import --oci` (skopeo copy, umoci unpack, ext4 disk; no cache)")
    res = BenchResult(
        key="oci_launch",
        title="OCI image to a running VM, beside the tiny image",
        rows=[oci, base, cold],
        how=(
            "The image is tests/oci_images.py's: two layers (Debian's static busybox, then whiteouts and an "
            "entrypoint), its main process a loop that runs until the VM stops. Each round, one after the other: "
            "`corral launch --oci DIR:TAG -- wait` then `corral wait NAME --ready` (from exec of the first CLI until "
            "the second exits: the skopeo copy that finds the image imported already, the VM's create and start, "
            "the tiny kernel and initrd, Corral's /.corral/init, until the guest agent beside the main process "
            "answers), then `corral launch` of the `tiny` image to agent-ready, the baseline: the same kernel and "
            "the same kind of busybox root under tiny's own init. Each VM is deleted before the next. Then, on its "
            "own, the cold import: the image removed and its cached disk deleted first, `corral images import "
            f"--oci` timed. {ctx.runs} rounds. Lower is better."
        ),
    )
    try:
        ctx.log("oci: one untimed import (the kit of /.corral into the cache)")
        _cli(ctx, "images", "import", "--oci", ref, "--name", "bench-oci-warm")
        _cli(ctx, "images", "rm", "bench-oci-warm")
        for i in range(ctx.runs):
            name = f"oci{i}"
            t = _cli(ctx, "launch", name, "--oci", ref, "--", "wait")
            t += _cli(ctx, "wait", name, "--ready", "--timeout", str(READY_TIMEOUT))
            oci.samples.append(t)
            _delete(ctx, name)
            time.sleep(SETTLE)
            base.samples.append(_cli(ctx, "launch", f"tiny{i}", "--timeout", str(READY_TIMEOUT)))
            _delete(ctx, f"tiny{i}")
            time.sleep(SETTLE)
            ctx.log(f"  oci {oci.samples[-1]:.2f}s  tiny {base.samples[-1]:.2f}s")
        for i in range(ctx.runs):
            shutil.rmtree(cached, ignore_errors=True)
            cold.samples.append(_cli(ctx, "images", "import", "--oci", ref, "--name", f"bench-oci-{i}"))
            _cli(ctx, "images", "rm", f"bench-oci-{i}")
            ctx.log(f"  cold import {cold.samples[-1]:.2f}s")
    finally:
        for v in bh.client.list_vms():
            if v.name.startswith(("oci", "tiny")):
                bh.client.delete_vm(v.name, force=True)
        shutil.rmtree(work, ignore_errors=True)
    r = ratio(oci.median, base.median)
    res.summary["ratio of medians, OCI launch / tiny launch"] = f"{r:.2f}" if r is not None else "–"
    res.details = {"ratio": r}
    return res
