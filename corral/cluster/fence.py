"""The host's fence: a small process of its own (``python -m corral.cluster.fence HOME``), detached like a VM's QEMU,
that holds the host's lease in etcd and kills the host's HA VMs when it cannot keep it.

Why a process of its own: the lease says "this host's VMs run"; the other hosts start a dead host's HA VMs once
its lease expired. If corrald held the lease, a crash of corrald (its VMs running on) would let the lease expire and
the VMs would run twice. The fence outlives corrald (which starts it again if it is gone), renews the lease every
third of its TTL, and, when no renewal got through for :data:`FENCE_AT` of the TTL (etcd unreachable: this host is
cut off), SIGKILLs every QEMU of an HA VM of this home, before the lease can expire in etcd: a renewal sent at
``t`` keeps the lease until at least ``t + TTL`` there, and the fence fires at ``t + FENCE_AT x TTL``. The others
wait :data:`corral.cluster.member.FENCE_GRACE` more after they see the lease gone. So an HA VM never runs on two
hosts, as long as this process runs or the whole host is down; the residual case, this process killed alone while
corrald is down too, is what a hardware watchdog covers on real hosts (docs/explanation/cluster.md).

A fenced VM is left crashed; corrald will not start it again unless etcd places it on this host
(ClusterService's start check).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from corral import paths
from corral.cluster.models import ClusterConfig
from corral.cluster.registry import EtcdUnavailable, Registry
from corral.engine import process

log = logging.getLogger("corral-fence")

PIDFILE = "cluster-fence.pid"
#: Fraction of the lease's TTL without a renewal after which the host fences itself.
FENCE_AT = 0.7


def running(home: Path) -> int | None:
    """The pid of this home's fence, if it runs (checked by its start time: a reused pid is not it)."""
    try:
        pid_s, ticks_s = (home / PIDFILE).read_text().split()
        pid, ticks = int(pid_s), int(ticks_s)
    except (FileNotFoundError, ValueError):
        return None
    return pid if process.start_ticks(pid) == ticks else None


def argv(home: Path) -> list[str]:
    return [sys.executable, "-m", "corral.cluster.fence", str(home)]


def ha_qemus(home: Path) -> list[tuple[str, process.ProcessIdentity]]:
    """(VM, QEMU) of every HA VM of ``home`` whose QEMU runs (found by its UUID, as corrald does)."""
    from corral.store.db import Store

    db = home / paths.DATABASE
    if not db.exists():
        return []
    store = Store(db)
    try:
        recs = [r for r in store.list_vms() if r.spec.placement.ha]
    finally:
        store.close()
    found = [(r.name, r.id, process.find_qemu(r.id)) for r in recs]
    return [(name, ident) for name, _, ident in found if ident is not None]


def fence(home: Path) -> list[str]:
    """SIGKILL every HA VM's QEMU of ``home``; the VMs killed."""
    killed = []
    for name, ident in ha_qemus(home):
        if process.start_ticks(ident.pid) == ident.start_ticks:
            with contextlib.suppress(ProcessLookupError):
                os.kill(ident.pid, signal.SIGKILL)
                killed.append(name)
    return killed


async def hold(home: Path, config: Any, ttl: int, stop: asyncio.Event) -> None:
    """Hold the lease until ``stop``; fence when it cannot be renewed in time."""
    reg = Registry(config.etcd, timeout=max(1, ttl // 3))
    lease: Any = None
    last_ok: float | None = None
    fenced = False
    try:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                if lease is None or await reg.refresh(lease) <= 0:
                    lease = await reg.lease(ttl)
                    await reg.mark_alive(config.name, lease)
                last_ok, fenced = sent, False
            except (EtcdUnavailable, Exception) as exc:  # noqa: BLE001 - any failure to renew is a missed renewal
                log.warning("lease not renewed: %s", getattr(exc, "message", exc))
            if last_ok is not None and not fenced and time.monotonic() - last_ok > FENCE_AT * ttl:
                killed = await asyncio.to_thread(fence, home)
                log.error("no lease renewal for %.1fs: fenced this host, killed HA VMs %s", time.monotonic() - last_ok,
                          ", ".join(killed) or "(none ran)")
                fenced, lease = True, None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.1, ttl / 3 - (time.monotonic() - sent)))
    finally:
        with contextlib.suppress(Exception):
            await reg.close()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    home = Path(sys.argv[1])
    config = ClusterConfig.model_validate_json((home / "cluster.json").read_text())
    ttl = int(os.environ.get("CORRAL_CLUSTER_LEASE_TTL", "10"))
    tmp = home / (PIDFILE + ".tmp")
    tmp.write_text(f"{os.getpid()} {process.start_ticks(os.getpid())}\n")
    tmp.replace(home / PIDFILE)
    stop = asyncio.Event()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await hold(home, config, ttl, stop)

    asyncio.run(run())


if __name__ == "__main__":
    main()
