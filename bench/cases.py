"""The benchmarks, one function each: ``(Context) -> BenchResult``, registered in ``BENCHMARKS``.

To add one (template start, memory per VM, clone time, API latency...): write a function that measures the Corral
figure and a baseline in the same run (interleaved when both repeat), returns a BenchResult with its rows and a
"how measured" paragraph, deletes every VM it made, and add it to ``BENCHMARKS``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench import crowd, density, memory, metrics, oci, sandbox
from bench.harness import (
    BASELINE_CONNECT_RETRY,
    BASELINE_SYNC_RESEND,
    BenchHome,
    Context,
    ImageFiles,
    baseline_argv,
    make_overlay,
    qga_wait_ready,
    spawn_qemu,
)
from bench.report import BenchResult, Row, ratio
from corral.cli.shell import ssh_argv
from corral.engine import process
from corral.vm.spec import VMSpec

CORRAL_CLI = str(Path(sys.executable).parent / "corral")
READY_TIMEOUT = 600.0
#: Pause between measured launches, so the previous VM's teardown does not overlap the next measurement.
SETTLE = 1.0


def _wait_gone(pid: int | None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while pid is not None and process.is_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def delete_all_vms(bh: BenchHome) -> None:
    for vm in bh.client.list_vms():
        with contextlib.suppress(Exception):
            bh.client.delete_vm(vm.name, force=True)
        _wait_gone(vm.pid)


def warm_up(bh: BenchHome) -> None:
    """One untimed launch: the accelerator probe (once per host boot) and a cold page cache are not what the
    benchmarks are about."""
    bh.client.create_vm(VMSpec(name="warmup", image="tiny", vcpus=1, memory=256))
    info = bh.client.start_vm("warmup")
    bh.client.wait_ready("warmup", timeout=READY_TIMEOUT)
    bh.client.delete_vm("warmup", force=True)
    _wait_gone(info.pid)


# ------------------------------------------------------------------------------- 1. cold launch-to-ready --
def _corral_api_launch(ctx: Context, name: str) -> float:
    c = ctx.bh.client
    t0 = time.monotonic()
    c.create_vm(VMSpec(name=name, image="tiny", vcpus=1, memory=256))
    c.start_vm(name)
    info = c.wait_ready(name, timeout=READY_TIMEOUT)
    elapsed = time.monotonic() - t0
    c.delete_vm(name, force=True)
    _wait_gone(info.pid)
    return elapsed


def _corral_cli_launch(ctx: Context, name: str) -> float:
    t0 = time.monotonic()
    r = subprocess.run([CORRAL_CLI, "launch", name, "--image", "tiny", "--cpus", "1", "--memory", "256M",
                        "--timeout", str(READY_TIMEOUT)], env=ctx.bh.env, capture_output=True, text=True,
                       check=False)
    elapsed = time.monotonic() - t0
    info = next((v for v in ctx.bh.client.list_vms() if v.name == name), None)
    if info is not None:
        ctx.bh.client.delete_vm(name, force=True)
        _wait_gone(info.pid)
    if r.returncode != 0:
        raise RuntimeError(f"corral launch failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    return elapsed


def _baseline_launch(ctx: Context, img: ImageFiles, i: int) -> float:
    d = ctx.bh.home / f"b{i}"
    d.mkdir()
    overlay, qga = d / "disk.qcow2", d / "qga.sock"
    argv = baseline_argv(ctx.bh.settings.qemu_binary, img, overlay, qga, d / "serial.log", ctx.accel,
                         ctx.bh.settings.tcg_tb_size_mib)
    t0 = time.monotonic()
    make_overlay(img.disk, overlay)
    proc = spawn_qemu(argv, d / "qemu.log")
    ctx.bh.baseline_pids.add(proc.pid)
    try:
        qga_wait_ready(qga, proc, READY_TIMEOUT)
        return time.monotonic() - t0
    finally:
        proc.kill()
        proc.wait()
        ctx.bh.baseline_pids.discard(proc.pid)
        shutil.rmtree(d, ignore_errors=True)


def launch_to_ready(ctx: Context) -> BenchResult:
    img = ImageFiles.from_store(ctx.bh.settings, "tiny")
    api = Row("Corral, client API: create_vm + start_vm + wait_ready")
    base = Row("hand-written QEMU: qemu-img overlay + qemu + agent sync/ping", baseline=True)
    cli = Row("Corral, CLI: `corral launch` (includes CLI process start-up)")
    res = BenchResult(
        key="launch_to_ready",
        title="1. Cold launch-to-ready, `tiny` image",
        rows=[api, base, cli],
        how=(
            f"Each round runs, one after the other: a Corral launch through the Python client (time from calling "
            f"`create_vm` until `wait_ready` returns; the client is already connected, so no process start-up is "
            f"counted), then the hand-written baseline, then `corral launch` as a subprocess (from exec of the CLI "
            f"until it exits, so Python start-up and imports are included). {ctx.runs} rounds, interleaved so host "
            f"noise hits both sides alike; each VM is deleted (its QEMU killed by pid) before the next starts, with "
            f"a {SETTLE:g} s pause. An untimed Corral launch and an untimed baseline launch come first (the "
            f"accelerator probe and a cold page cache are not measured; \"cold\" means a new VM). "
            f"The baseline boots the same kernel, initrd and image disk from the Corral home's "
            f"image store: it creates a fresh qcow2 overlay (`qemu-img create -f qcow2 -F qcow2 -b ...`, counted), "
            f"starts QEMU with `-nodefaults`, q35, the same accelerator and TCG tb-size "
            f"({ctx.bh.settings.tcg_tb_size_mib} MiB), `-smp 1 -m 256`, virtio-blk, virtio-net (user), "
            f"virtio-serial with the agent's chardev and the serial console to a file, but none of Corral's extras "
            f"(QMP, pvpanic, virtio-rng, seccomp sandbox, console socket, blockdev graph). It is ready when the "
            f"guest agent answers 0xFF + `guest-sync-delimited` and then `guest-ping` (socket connect retried every "
            f"{BASELINE_CONNECT_RETRY:g} s, sync resent every {BASELINE_SYNC_RESEND:g} s) — the same readiness "
            f"test as Corral's `wait_ready`. Lower is better; the ratio of medians (Corral API / baseline) is what "
            f"the target (<= 1.3) is about, and the min column shows the best case with the least interference."
        ),
    )
    ctx.log("launch: one untimed baseline warm-up")
    _baseline_launch(ctx, img, 99)
    time.sleep(SETTLE)
    for i in range(ctx.runs):
        ctx.log(f"launch round {i + 1}/{ctx.runs}: corral api")
        api.samples.append(_corral_api_launch(ctx, f"la{i}"))
        time.sleep(SETTLE)
        ctx.log(f"launch round {i + 1}/{ctx.runs}: baseline")
        base.samples.append(_baseline_launch(ctx, img, i))
        time.sleep(SETTLE)
        ctx.log(f"launch round {i + 1}/{ctx.runs}: corral cli")
        cli.samples.append(_corral_cli_launch(ctx, f"lc{i}"))
        time.sleep(SETTLE)
        ctx.log(f"  api {api.samples[-1]:.2f}s  baseline {base.samples[-1]:.2f}s  cli {cli.samples[-1]:.2f}s")
    r_api = ratio(api.median, base.median)
    r_cli = ratio(cli.median, base.median)
    res.summary["ratio of medians, Corral API / baseline"] = (
        f"{r_api:.2f} (target <= 1.3: {'met' if r_api <= 1.3 else 'NOT met'})" if r_api is not None else "–"
    )
    r_min = ratio(api.min, base.min)
    res.summary["ratio of medians, Corral CLI / baseline"] = f"{r_cli:.2f}" if r_cli is not None else "–"
    res.summary["ratio of mins, Corral API / baseline (least host noise)"] = (
        f"{r_min:.2f}" if r_min is not None else "–")
    res.details = {"ratio_api": r_api, "ratio_cli": r_cli, "ratio_api_min": r_min, "target_ratio": 1.3}
    return res


# ------------------------------------------------------------------------- 2. re-attach after SIGKILL --
REATTACH_TARGET = 2.0


def reattach_after_sigkill(ctx: Context) -> BenchResult:
    bh = ctx.bh
    n = 4 if ctx.quick else 10
    cycles = 2 if ctx.quick else 3
    names = [f"ra{i}" for i in range(n)]
    answered = Row("daemon start → API answers (start_daemon returns)", baseline=True)
    attached = Row(f"daemon start → all {n} VMs `running` with their original pid")
    res = BenchResult(
        key="reattach_after_sigkill",
        title=f"2. {n} running `tiny` VMs survive a SIGKILL of corrald",
        rows=[answered, attached],
        how=(
            f"{n} `tiny` VMs (128 MiB, 1 vCPU) are launched and waited for (guest agent answering). Then, "
            f"{cycles} times: corrald is killed with SIGKILL (pid from `$CORRAL_HOME/corrald.pid`, waited until "
            f"gone), and the clock starts when `corral.client.start_daemon` is called (it spawns corrald detached "
            f"and polls the socket every 50 ms). The baseline row is the time until the daemon answers at all; the "
            f"main row is the time until `list_vms` (polled every 20 ms) shows every VM `running` with the same "
            f"pid as before the kill. Separately, the QEMU processes are looked up in /proc by VM UUID before and "
            f"after: identical pids mean the same processes kept running (nothing was restarted). The target is "
            f"all re-attached within {REATTACH_TARGET:g} s; lower is better, and the difference between the two "
            f"rows is the re-attach work itself (start-up of the Python daemon dominates the baseline)."
        ),
    )
    try:
        t0 = time.monotonic()
        for name in names:
            bh.client.create_vm(VMSpec(name=name, image="tiny", vcpus=1, memory=128))
            bh.client.start_vm(name)
        for name in names:
            bh.client.wait_ready(name, timeout=READY_TIMEOUT)
        boot_all = time.monotonic() - t0
        ctx.log(f"reattach: {n} VMs ready in {boot_all:.1f}s")
        before = {v.name: v.pid for v in bh.client.list_vms()}
        proc_before = bh.qemu_pids()
        all_ok, pids_same = True, True
        for cycle in range(cycles):
            bh.kill_daemon()
            t_start = time.monotonic()
            bh.start_daemon()
            t_answer = time.monotonic() - t_start
            deadline = t_start + 120
            t_all: float | None = None
            while time.monotonic() < deadline:
                vms = {v.name: v for v in bh.client.list_vms()}
                if all(nm in vms and vms[nm].state == "running" and vms[nm].pid == before[nm] for nm in names):
                    t_all = time.monotonic() - t_start
                    break
                time.sleep(0.02)
            answered.samples.append(t_answer)
            if t_all is None:
                all_ok = False
                states = {v.name: (v.state, v.pid) for v in bh.client.list_vms()}
                res.details[f"cycle{cycle}_not_reattached"] = {k: list(v) for k, v in states.items()}
            else:
                attached.samples.append(t_all)
            proc_after = bh.qemu_pids()
            pids_same = pids_same and proc_after == proc_before and len(proc_after) == n
            shown = f"{t_all:.2f}s" if t_all is not None else "NO"
            ctx.log(f"reattach cycle {cycle + 1}/{cycles}: answered {t_answer:.2f}s, all re-attached {shown}, "
                    f"same pids {proc_after == proc_before}")
        agents = 0
        for name in names:
            with contextlib.suppress(Exception):
                bh.client.wait_ready(name, timeout=30)
                agents += 1
        worst = max(attached.samples) if attached.samples else None
        res.summary["all re-attached"] = "yes" if all_ok and len(attached.samples) == cycles else "no"
        res.summary["QEMU pids identical before and after (same processes, from /proc)"] = (
            "yes" if pids_same else "no")
        res.summary[f"within {REATTACH_TARGET:g} s (worst of {cycles})"] = (
            f"{'yes' if worst is not None and worst <= REATTACH_TARGET else 'no'}"
            + (f" ({worst:.2f} s)" if worst is not None else ""))
        res.summary["guest agents answering after the last re-attach"] = f"{agents}/{n}"
        res.details.update({"vms": n, "cycles": cycles, "boot_all_s": boot_all, "pids": proc_before,
                            "agents_answering": agents})
    finally:
        delete_all_vms(bh)
    return res


# ------------------------------------------------------------------ 7. linked clone time vs virtual size --
CLONE_TARGET_RATIO = 1.5
CLONE_TARGET_SECONDS = 0.1


def linked_clone(ctx: Context) -> BenchResult:
    c = ctx.bh.client
    n = 5 if ctx.quick else 15
    small = Row("linked clone of a 1 GiB disk (daemon-side)", baseline=True, unit="ms")
    big = Row("linked clone of a 100 GiB disk (daemon-side)", unit="ms")
    small_api = Row("linked clone of a 1 GiB disk (client API, round trip)", unit="ms")
    big_api = Row("linked clone of a 100 GiB disk (client API, round trip)", unit="ms")
    res = BenchResult(
        key="linked_clone",
        title="7. Linked clone time vs virtual disk size, `tiny` image",
        rows=[small, big, small_api, big_api],
        how=(
            f"Two stopped `tiny` VMs are defined, one with a 1 GiB and one with a 100 GiB virtual disk (qcow2 "
            f"overlays on the image: nothing is allocated either way). After one untimed clone, {n} rounds, each "
            f"cloning the 1 GiB one and then the 100 GiB one (`Client.clone_vm`, a linked clone: the clone gets a "
            f"new empty top layer on the source's frozen layer, made with `qemu-img create -u` and the size read "
            f"from the qcow2 header, plus a few SQLite rows; the first clone of each source also freezes its top, "
            f"and later ones share that frozen layer since nothing was written into the source). The daemon-side "
            f"rows are the time the daemon reports for the clone "
            f"(from its request's start to the new VM record); the round-trip rows add the HTTP request and the "
            f"NDJSON stream as the Python client sees them. The 1 GiB row is the baseline. Targets: the ratio of "
            f"medians 100 GiB / 1 GiB <= {CLONE_TARGET_RATIO:g}, and each median under "
            f"{CLONE_TARGET_SECONDS * 1000:.0f} ms. Every clone and source is deleted at the end."
        ),
    )
    try:
        c.create_vm(VMSpec(name="clone-1g", image="tiny", disk=1 << 30))
        c.create_vm(VMSpec(name="clone-100g", image="tiny", disk=100 << 30))
        c.clone_vm("clone-1g", "warm-clone")  # untimed: first use of the layers directory and qemu-img's cache
        for i in range(n):
            for src, row, api in (("clone-1g", small, small_api), ("clone-100g", big, big_api)):
                t0 = time.monotonic()
                ev = c.clone_vm(src, f"{src}-c{i}")
                api.samples.append(round((time.monotonic() - t0) * 1000, 1))
                row.samples.append(round(ev.seconds * 1000, 1) if ev.seconds is not None else api.samples[-1])
            ctx.log(f"linked clone round {i + 1}/{n}: 1 GiB {small.samples[-1]:.0f} ms, "
                    f"100 GiB {big.samples[-1]:.0f} ms")
        r = ratio(big.median, small.median)
        worst = max(small.median or 0.0, big.median or 0.0) / 1000
        res.summary["ratio of medians, 100 GiB / 1 GiB"] = (
            f"{r:.2f} (target <= {CLONE_TARGET_RATIO:g}: {'met' if r <= CLONE_TARGET_RATIO else 'NOT met'})"
            if r is not None else "–")
        res.summary[f"each median under {CLONE_TARGET_SECONDS * 1000:.0f} ms (daemon-side)"] = (
            f"{'yes' if worst < CLONE_TARGET_SECONDS else 'no'} (worst {worst * 1000:.0f} ms)")
        res.details = {"ratio": r, "target_ratio": CLONE_TARGET_RATIO, "target_seconds": CLONE_TARGET_SECONDS,
                       "rounds": n}
    finally:
        delete_all_vms(ctx.bh)
    return res


# ----------------------------------------------------------- 8. incremental backup after writing N MiB --
BACKUP_CHUNK_MIB = 4


def _guest_sh(bh: BenchHome, name: str, script: str) -> str:
    code, out, err = bh.client.exec(name, ["sh", "-c", script], timeout=600)
    if code != 0:
        raise RuntimeError(f"guest command failed ({code}): {err.decode(errors='replace')[-300:]}")
    return out.decode()


def incremental_backup(ctx: Context) -> BenchResult:
    bh = ctx.bh
    sizes = (16, 64) if ctx.quick else (16, 64, 256)
    rounds = min(ctx.runs, 3)
    written = {n: Row(f"N = {n} MiB: written in the guest (N)", unit="MiB", baseline=True) for n in sizes}
    stored = {n: Row(f"N = {n} MiB: stored by the incremental backup", unit="MiB") for n in sizes}
    read = {n: Row(f"N = {n} MiB: read from the disk (QEMU's dirty bitmap)", unit="MiB") for n in sizes}
    secs = {n: Row(f"N = {n} MiB: incremental backup time") for n in sizes}
    full_time = Row("full backup of the same VM (first backup), for comparison")
    res = BenchResult(
        key="incremental_backup",
        title="8. Incremental backup of a running VM after writing N MiB: bytes stored vs N",
        rows=[full_time] + [r for n in sizes for r in (written[n], read[n], stored[n], secs[n])],
        how=(
            "A running `tiny` VM with a 2 GiB disk is backed up once in full (`create_backup`, a new repository). "
            f"Then, {rounds} times for each N: the guest writes N MiB from /dev/urandom to a new file and syncs "
            "(incompressible data: what is stored is what changed), and an incremental backup is taken while it "
            "runs. `stored` is what the backup added to the repository (zstd-compressed chunks it did not hold "
            "yet), `read` is what QEMU copied: the clusters its persistent dirty bitmap marked. The target is "
            f"stored <= 1.1 x N + one {BACKUP_CHUNK_MIB} MiB chunk per changed region (a region is a run of "
            "consecutive changed chunks; a chunk changed in part is stored whole). The file is deleted after "
            "each round."
        ),
    )
    within = True
    worst = 0.0
    try:
        bh.client.create_vm(VMSpec(name="bk", image="tiny", vcpus=1, memory=256, disk=2 << 30))
        bh.client.start_vm("bk")
        bh.client.wait_ready("bk", timeout=READY_TIMEOUT)
        repo = str(bh.home / "bench-repo")
        bh.client.init_backup_repo(repo)
        t0 = time.monotonic()
        bh.client.create_backup("bk", repo)
        full_time.samples.append(time.monotonic() - t0)
        for i in range(rounds):
            for n in sizes:
                _guest_sh(bh, "bk", f"dd if=/dev/urandom of=/root/f{n} bs=1M count={n} 2>/dev/null && sync")
                t0 = time.monotonic()
                b = bh.client.create_backup("bk", repo)
                secs[n].samples.append(time.monotonic() - t0)
                if b.read != "bitmap":
                    raise RuntimeError(f"backup {b.id} read the whole disk: {b.reason}")
                mib = b.stored_bytes / (1 << 20)
                written[n].samples.append(float(n))
                stored[n].samples.append(round(mib, 2))
                read[n].samples.append(round(b.read_bytes / (1 << 20), 2))
                bound = 1.1 * n + BACKUP_CHUNK_MIB * b.changed_regions
                within = within and mib <= bound
                worst = max(worst, mib / n)
                ctx.log(f"backup round {i + 1}/{rounds}, N={n}: stored {mib:.1f} MiB, read "
                        f"{b.read_bytes / (1 << 20):.1f} MiB, {b.changed_regions} regions (bound {bound:.1f})")
                _guest_sh(bh, "bk", f"rm -f /root/f{n} && sync")
        for n in sizes:
            res.summary[f"N = {n} MiB: stored / N (median)"] = f"{ratio(stored[n].median, float(n)):.3f}"
        res.summary["stored <= 1.1 x N + one chunk per changed region, every round"] = "yes" if within else "no"
        res.details.update({"sizes_mib": list(sizes), "rounds": rounds, "worst_stored_over_n": worst})
    finally:
        delete_all_vms(bh)
    return res


# ------------------------------------------------------------------------------- 9. corral cp throughput --
CP_MIB = 64


def _timed(argv: list[str], env: dict[str, str], stdin: Path | None = None) -> float:
    t0 = time.monotonic()
    with contextlib.ExitStack() as stack:
        f = stack.enter_context(stdin.open("rb")) if stdin else subprocess.DEVNULL
        r = subprocess.run(argv, env=env, stdin=f, capture_output=True, text=True, check=False, timeout=1800)
    elapsed = time.monotonic() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])}... failed ({r.returncode}): {r.stderr.strip()[-300:]}")
    return elapsed


def cp_throughput(ctx: Context) -> BenchResult:
    """`corral cp` host -> guest of a 64 MiB file: the virtio-serial port (the default), the guest agent path, the SSH
    path, and plain ssh to the same VM."""
    bh = ctx.bh
    rounds = 1 if ctx.quick else min(ctx.runs, 3)
    virtio = Row(f"corral cp (default: a virtio-serial port), {CP_MIB} MiB host -> guest", unit="MiB/s")
    agent = Row(f"corral cp --via agent, {CP_MIB} MiB host -> guest", unit="MiB/s")
    fast = Row(f"corral cp --via ssh, {CP_MIB} MiB host -> guest", unit="MiB/s")
    plain = Row(f"ssh 'cat > FILE' < {CP_MIB} MiB, same VM, key and host key", unit="MiB/s", baseline=True)
    virtio_down = Row(f"corral cp (default: a virtio-serial port), {CP_MIB} MiB guest -> host", unit="MiB/s")
    down = Row(f"corral cp --via ssh, {CP_MIB} MiB guest -> host", unit="MiB/s")
    startup = Row("corral ls (the CLI's start-up and one API call: part of every corral cp row)")
    res = BenchResult(
        key="cp_throughput", title=f"corral cp throughput ({CP_MIB} MiB file)",
        rows=[virtio, agent, fast, plain, virtio_down, down, startup],
        how=(
            f"A running `tiny` VM (1 vCPU, 256 MiB, 2 GiB disk); a {CP_MIB} MiB file of random bytes on the host. "
            f"{rounds} round(s), interleaved: `corral cp` (the default: the CLI writes into the unix socket of a "
            "virtio-serial port the daemon hot-plugs for the copy, `dd bs=4M iflag=fullblock oflag=direct of=TMP` "
            "in the guest started by the guest agent, then a rename; the port removed after; a download comes "
            "through the daemon), "
            "`corral cp --via agent` (base64 chunks through the guest agent), "
            "`corral cp --via ssh` (`ssh 'dd ... of=TMP'` through the VM's forward, then a rename), and the baseline, "
            "plain `ssh` with the same key, pinned host key and port running `cat > FILE` in the guest (scp needs an "
            "sftp-server or scp binary, which dropbear's image does not have). Each is timed from the command's "
            "start to its exit (the CLI's API calls and ssh's connection included), the file removed in the guest "
            "after each. MiB/s = 64 / seconds. Under TCG the guest's one emulated vCPU does the SSH decryption "
            "(dropbear, chacha20-poly1305), the virtual NIC and ext4, so it, not the host, sets the pace."
        ),
    )
    try:
        bh.client.create_vm(VMSpec(name="cpb", image="tiny", vcpus=1, memory=256, disk=2 << 30))
        bh.client.start_vm("cpb")
        bh.client.wait_ready("cpb", timeout=READY_TIMEOUT)
        info = bh.client.ssh_info("cpb", timeout=120)
        src = bh.home / "cp-bench.bin"
        with src.open("wb") as f:
            for _ in range(CP_MIB):
                f.write(os.urandom(1 << 20))
        mib = src.stat().st_size / 2**20
        dest = bh.home / "cp-back.bin"
        for i in range(rounds):
            for row, argv, stdin in (
                (virtio, [CORRAL_CLI, "cp", "-q", str(src), "cpb:/root/a.bin"], None),
                (agent, [CORRAL_CLI, "cp", "-q", "--via", "agent", str(src), "cpb:/root/a.bin"], None),
                (fast, [CORRAL_CLI, "cp", "-q", "--via", "ssh", str(src), "cpb:/root/a.bin"], None),
                (plain, ssh_argv(info, ["sh", "-c", "cat > /root/a.bin"], tty=False), src),
            ):
                secs = _timed(argv, bh.env, stdin)
                row.samples.append(round(mib / secs, 2))
                ctx.log(f"cp round {i + 1}/{rounds}: {row.label}: {mib / secs:.1f} MiB/s")
                for back, via in ((virtio_down, "virtio"), (down, "ssh")):
                    if (row, back) in ((virtio, virtio_down), (fast, down)):
                        secs = _timed([CORRAL_CLI, "cp", "-q", "--via", via, "cpb:/root/a.bin", str(dest)], bh.env)
                        back.samples.append(round(mib / secs, 2))
                        dest.unlink()
                _guest_sh(bh, "cpb", "rm -f /root/a.bin")
            startup.samples.append(round(_timed([CORRAL_CLI, "ls"], bh.env), 3))
        res.summary["virtio port / agent path, host -> guest (medians; target >= 20x)"] = \
            f"{ratio(virtio.median, agent.median):.1f}x"
        res.summary["virtio port / plain ssh cat (medians)"] = f"{ratio(virtio.median, plain.median):.1f}x"
        res.summary["SSH path / agent path (medians)"] = f"{ratio(fast.median, agent.median):.1f}x"
        res.summary["SSH path / plain ssh cat (medians)"] = f"{ratio(fast.median, plain.median):.2f}x"
        res.details.update({"mib": CP_MIB, "rounds": rounds})
    finally:
        delete_all_vms(bh)
    return res


BENCHMARKS: dict[str, Callable[[Context], BenchResult]] = {
    "launch_to_ready": launch_to_ready,
    "reattach_after_sigkill": reattach_after_sigkill,
    "template_launch": density.template_launch,
    "memory_per_vm": density.memory_per_vm,
    "start_rate": density.start_rate,
    "ls_latency": density.ls_latency,
    "linked_clone": linked_clone,
    "incremental_backup": incremental_backup,
    "balloon_reclaim": memory.balloon_reclaim,
    "cp_throughput": cp_throughput,
    "crowd": crowd.crowd,
    "oci_launch": oci.oci_launch,
    "sandbox_run": sandbox.sandbox_run,
    "metrics_scrape": metrics.metrics_scrape,
}
