"""This host as a member of the cluster: its host record, the placements of its VMs, and its fence (the process that
holds its lease: corral.cluster.fence).

Every :attr:`Member.period` seconds (a third of the lease's TTL) the member sees that the fence runs, publishes its host
record (capacity, what it runs, its versions), and brings the placements of its own VMs in line with its store: a
VM created here gets a placement, a VM whose state changed gets its new state, a VM deleted here loses its
placement. Only a placement that names this host is touched, and one still being created (``creating``, young) is
left alone: the host it was placed on may be making it right now.

When etcd does not answer the VMs keep running: the loop logs, waits and tries again, and once etcd is back the
next pass publishes everything anew (the fence takes a new lease if the old one expired meanwhile). The state in
etcd is only ever made to match what this host sees, never the other way round: losing etcd changes no VM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from corral import __version__
from corral.cluster.models import HostRecord, VMPlacement
from corral.cluster.registry import EtcdUnavailable, Registry, Snapshot
from corral.fleet import FLEET_LABEL
from corral.vm.service import VMService
from corral.vm.states import LIVE

log = logging.getLogger(__name__)

#: Seconds a host's lease lives without a renewal: after that the others see the host down.
LEASE_TTL = 10
#: A placement still ``creating`` this long is its host's to settle (the create failed, or never came).
CREATING_GRACE = 120.0


class Member:
    def __init__(self, vms: VMService, registry: Registry, base: Callable[[], HostRecord],
                 info: Callable[[str], dict[str, Any] | None], lease_ttl: int = LEASE_TTL,
                 on_unavailable: Callable[[], Awaitable[None]] | None = None,
                 ensure_fence: Callable[[], None] | None = None,
                 after: Callable[[Snapshot], Awaitable[None]] | None = None) -> None:
        self.vms = vms
        self.registry = registry
        self.base = base  # this host's record, without what changes (the cluster service fills it)
        self.info = info  # a VM as `corral ls` shows it, JSON-ready
        self.lease_ttl = lease_ttl
        self.on_unavailable = on_unavailable  # etcd does not answer: e.g. start the etcd this host runs again
        self.ensure_fence = ensure_fence
        self.after = after
        self.period = max(0.5, lease_ttl / 3)
        self.name = base().name
        self.secret: str | None = None  # the cluster's secret, read at the first pass that reaches etcd
        self._published: dict[str, str] = {}  # vm -> the placement JSON last written (without updated_at)
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self.wake = asyncio.Event()  # set to publish now (a VM changed) instead of at the next period

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="corral-cluster-member")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        with contextlib.suppress(Exception):
            await self.registry.close()

    async def _run(self) -> None:
        failing = False
        while True:
            try:
                await self.beat()
                if failing:
                    log.info("etcd answers again: this host's records are published anew")
                failing = False
                self.connected.set()
            except EtcdUnavailable as exc:
                if not failing:
                    log.warning("%s; this host's VMs keep running", exc.message)
                failing = True
                self._published.clear()
                self.connected.clear()
                if self.on_unavailable is not None:
                    try:
                        await self.on_unavailable()
                    except Exception as exc:  # noqa: BLE001 - logged; the next pass tries again
                        log.warning("cannot start etcd again: %s", exc)
            except Exception:
                log.exception("cluster heartbeat failed")
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.period)

    async def beat(self) -> None:
        """One pass: see that the fence (which holds the lease) runs, publish the host record, bring this host's
        placements in line, then whatever the cluster service does each pass (HA restarts)."""
        if self.secret is None:
            self.secret = await self.registry.secret()
        if self.ensure_fence is not None:
            await asyncio.to_thread(self.ensure_fence)  # the fence holds the lease (corral.cluster.fence)
        await self.registry.publish_host(self.record())
        snap = await self.sync_placements()
        if self.after is not None:
            await self.after(snap)

    def record(self) -> HostRecord:
        recs = self.vms.list()
        running = [r for r in recs if r.state in LIVE]
        return self.base().model_copy(update={
            "vcpus_allocated": sum(r.spec.vcpus for r in running),
            "memory_allocated_mib": sum(r.spec.memory for r in running),
            "vms": len(recs), "corral_version": __version__, "updated_at": time.time(),
        })

    async def sync_placements(self) -> Snapshot:
        snap = await self.registry.snapshot()
        local = {r.name: r for r in self.vms.list()}
        for name, rec in local.items():
            cur = snap.placements.get(name)
            if cur is not None and cur.host != self.name:
                if self._published.pop(name, None) is None:
                    log.warning("VM '%s' is here and placed on host %s too: left as it is; see `corral host ls`",
                                name, cur.host)
                continue
            info = self.info(name)
            p = VMPlacement(name=name, host=self.name, vcpus=rec.spec.vcpus, memory_mib=rec.spec.memory,
                            group=cur.group if cur is not None else (
                                rec.spec.placement.group or rec.spec.labels.get(FLEET_LABEL)),
                            state=rec.state.value, project=rec.spec.project, owner=rec.spec.owner,
                            image=rec.spec.image, ha=rec.spec.placement.ha, vm_id=rec.id,
                            info=_steady(info))
            doc = p.model_dump_json()
            if cur is None or self._published.get(name) != doc or _steady_doc(cur) != doc:
                await self.registry.update_placement(p.model_copy(update={"updated_at": time.time(), "info": info}))
                self._published[name] = doc
        now = time.time()
        for name, p in snap.placements.items():
            if p.host != self.name or name in local:
                continue
            if p.state == "creating" and now - p.updated_at < CREATING_GRACE:
                continue
            await self.registry.release(name, self.name)
            self._published.pop(name, None)
        return snap


#: Fields of a VM's info that change on their own (clocks): not a reason to publish again.
_CLOCKS = ("uptime", "expires_in", "expiring", "idle")


def _steady(info: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if info is None else {k: v for k, v in info.items() if k not in _CLOCKS}


def _steady_doc(p: VMPlacement) -> str:
    return p.model_copy(update={"updated_at": 0.0, "info": _steady(p.info)}).model_dump_json()
