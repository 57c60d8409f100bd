"""The metrics sampler: a daemon task that reads every VM's figures every ``CORRAL_METRICS_INTERVAL`` seconds into a
:class:`~corral.metrics.samples.Cache`, so that a scrape only renders what is cached (no QMP round trip per scrape).

Per pass, every VM is sampled concurrently. What is read, for a VM whose QEMU runs:

- from /proc (never blocks): CPU seconds (``corral.engine.process.cpu_seconds``, as idle control reads it) and RSS;
- from /sys/class/net: the byte counters of its tap devices (bridged networks);
- over QMP: ``query-blockstats`` (per drive) and, for a ``--balloon`` VM, ``query-balloon``;
- over the guest agent, when it is ready and the VM running (not paused): ``guest-network-get-interfaces``
  statistics (as idle control reads them, ``corral.idle.sampler.interface_bytes``): the only byte counters there are
  for user-mode (NAT) and socket networks. Idle control asks every running VM's agent that question each of its
  passes; an answer of its younger than one interval (``Machine.interfaces_seen``) is read instead of asking again.

The QMP and agent questions of one VM share a deadline (``timeout``): what has not answered by then is cancelled
and that part of the sample is the VM's previous one (same QEMU pid), so a stuck monitor never stalls the other VMs
or the pass. Every such sample counts once in ``corral_metrics_incomplete_samples_total``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corral.engine import monitor, process
from corral.errors import CorralError
from corral.idle.sampler import interface_bytes
from corral.metrics import registry
from corral.metrics.samples import Cache, DiskSample, HostSample, NicSample, QuotaSample, VMSample
from corral.network.private import tap_name
from corral.store.db import EventQuery
from corral.vm import quota
from corral.vm.capacity import capacity
from corral.vm.states import VMState

if TYPE_CHECKING:
    from corral.metrics.collector import VMScrape
    from corral.store.db import VMRecord
    from corral.vm.machine import Machine
    from corral.vm.service import VMService

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 10.0
#: The longest a VM's QMP and agent questions may take together in one pass (less, with a shorter interval).
DEFAULT_TIMEOUT = 5.0
#: QEMU names its -device block backends /machine/peripheral/<device id>/virtio-backend; the ids Corral gives.
_FIXED_DRIVES = {"root-disk": "root", "seed-disk": "seed"}


def host_name() -> str:
    """The ``host`` label: this host's name (Corral has no setting naming the host)."""
    return socket.gethostname()


def rss_bytes(pid: int) -> int | None:
    """Resident memory of ``pid`` (VmRSS), bytes; None if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def drive_of(entry: dict[str, Any]) -> str | None:
    """The drive label of one ``query-blockstats`` entry: root, seed, an extra disk's name; None for one without
    a device (a node not attached to any)."""
    qdev = str(entry.get("qdev") or "")
    parts = qdev.strip("/").split("/")
    if len(parts) >= 3 and parts[:2] == ["machine", "peripheral"]:
        dev = parts[2]
        if dev in _FIXED_DRIVES:
            return _FIXED_DRIVES[dev]
        if dev.startswith("xd-") and dev.endswith("-dev"):  # corral.engine.cmdline.DiskNodes.device
            return dev[3:-4]
        return dev
    return str(entry.get("device") or entry.get("node-name") or "") or None


def parse_blockstats(blockstats: list[dict[str, Any]]) -> tuple[DiskSample, ...]:
    """One :class:`DiskSample` per device in a ``query-blockstats`` answer."""
    disks = []
    for entry in blockstats:
        drive = drive_of(entry)
        if drive is None:
            continue
        st = entry.get("stats") or {}
        disks.append(DiskSample(drive=drive, read_bytes=int(st.get("rd_bytes", 0)),
                                written_bytes=int(st.get("wr_bytes", 0)), read_ops=int(st.get("rd_operations", 0)),
                                write_ops=int(st.get("wr_operations", 0))))
    return tuple(disks)


def tap_counters(tap: str, sys_net: Path = Path("/sys/class/net")) -> NicSample | None:
    """The byte counters of a tap device, from the guest's side: what the host sends into the tap (its tx) the
    guest receives. None if there is no such device."""
    try:
        stats = sys_net / tap / "statistics"
        tx = int((stats / "tx_bytes").read_text())
        rx = int((stats / "rx_bytes").read_text())
    except (OSError, ValueError):
        return None
    return NicSample(device=tap, source="tap", received_bytes=tx, sent_bytes=rx)


def base_sample(rec: VMRecord) -> VMSample:
    return VMSample(vm=rec.name, project=rec.spec.project, owner=rec.spec.owner, state=rec.state.value,
                    vcpus=rec.spec.vcpus, memory_bytes=rec.spec.memory << 20)


class MetricsSampler:
    """Owns the :class:`Cache`; :meth:`run` refreshes it every ``interval`` seconds until cancelled."""

    def __init__(self, vms: VMService, interval: float = DEFAULT_INTERVAL, timeout: float | None = None) -> None:
        self.vms = vms
        self.interval = interval
        self.timeout = timeout if timeout is not None else min(DEFAULT_TIMEOUT, max(0.2, interval * 0.8))
        self.cache = Cache()
        monitor.error_hook = registry.qmp_error  # every failed QMP command of the daemon counts
        self.daemon_starts = 0  #: corrald's starts in this home (count_starts), rendered by the collector
        #: The scrape's text, rendered again after each pass (in a thread: off the event loop's path); set by the daemon
        self.scrape: VMScrape | None = None

    # ------------------------------------------------------------------------------------------------ passes --
    async def run(self) -> None:
        self.count_starts()
        while True:
            try:
                await self.sample_once()
            except Exception:
                log.exception("metrics sample failed")
            await asyncio.sleep(self.interval)

    def count_starts(self) -> None:
        """corrald's starts in this home, from the event log (once per daemon: the number only changes with one)."""
        events = self.vms.store.events(query=EventQuery(type="daemon"), limit=1_000_000)
        self.daemon_starts = sum(1 for e in events if e.message.startswith("corrald started"))
        registry.DAEMON_START_TIME.set(time.time())

    async def sample_once(self) -> Cache:
        """One pass over every defined VM (those with a QEMU concurrently), then the host; the cache replaced."""
        t0 = time.monotonic()
        recs = self.vms.list()
        previous = self.cache.vms
        got = await asyncio.gather(*(self.sample_vm(rec, self.vms.machine(rec.name), previous.get(rec.name))
                                     for rec in recs), return_exceptions=True)
        samples = []
        for rec, s in zip(recs, got, strict=True):
            if isinstance(s, BaseException):
                if not isinstance(s, Exception):
                    raise s  # cancelled: the daemon is stopping
                log.warning("metrics: sampling %s failed", rec.name, exc_info=s)
                s = base_sample(rec)
            samples.append(s)
        host = self.sample_host()
        self.cache = Cache(vms={s.vm: s for s in samples}, host=host, quotas=self.sample_quotas(), at=time.time())
        if self.scrape is not None:
            await asyncio.to_thread(self.scrape.refresh)
        registry.SAMPLE_DURATION.set(time.monotonic() - t0)
        registry.SAMPLE_TIME.set(self.cache.at)
        return self.cache

    async def sample_vm(self, rec: VMRecord, m: Machine | None, prev: VMSample | None) -> VMSample:
        """The VM's sample now. Never raises, never takes longer than ``timeout`` (plus /proc and /sys reads)."""
        base = base_sample(rec)
        if m is None:
            return base
        pid = m.ident.pid
        if prev is not None and prev.pid != pid:
            prev = None  # another QEMU: its counters started again from 0
        taps = [n for net in rec.spec.networks
                if (nr := self.vms.store.get_network(net)) is not None and nr.bridge
                and (n := tap_counters(tap_name(rec.id, net))) is not None]
        questions: dict[str, Awaitable[Any]] = {}
        inner = self.timeout * 0.9  # each answers (or times out cleanly) itself before the hard deadline
        if m.monitor is not None:
            questions["disks"] = m.monitor.execute("query-blockstats", timeout=inner)
            if rec.spec.balloon:
                questions["balloon"] = m.monitor.execute("query-balloon", timeout=inner)
        seen = m.interfaces_seen  # idle control asks every running VM's agent each of its passes: read its answer
        recent = seen is not None and time.monotonic() - seen[0] < self.interval
        if m.agent_ready and rec.state == VMState.RUNNING and not recent:  # a paused guest's agent cannot answer
            questions["nics"] = m.agent.execute("guest-network-get-interfaces", timeout=inner)
        answers = await self._ask(rec.name, questions)
        if recent and seen is not None:
            answers["nics"] = seen[1]
        try:
            disks = parse_blockstats(answers["disks"]) if "disks" in answers else None
            balloon = int(answers["balloon"]["actual"]) if "balloon" in answers else None
            agent_nics = tuple(NicSample(device=name, source="guest-agent", received_bytes=rx, sent_bytes=tx)
                               for name, (rx, tx) in interface_bytes(answers["nics"]).items()) \
                if "nics" in answers else None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # an answer of an unexpected shape
            log.warning("metrics: unexpected QMP or agent answer from %s: %r", rec.name, exc)
            disks = balloon = agent_nics = None
        if disks is None:
            disks = prev.disks if prev else ()
        if balloon is None and prev is not None and rec.spec.balloon:
            balloon = prev.balloon_bytes
        if agent_nics is None:
            agent_nics = tuple(n for n in prev.nics if n.source == "guest-agent") if prev else ()
        return replace(base, pid=pid, cpu_seconds=process.cpu_seconds(pid), rss_bytes=rss_bytes(pid),
                       balloon_bytes=balloon, disks=disks, nics=tuple(taps) + agent_nics)

    async def _ask(self, vm: str, questions: dict[str, Awaitable[Any]]) -> dict[str, Any]:
        """The answers that came within ``timeout``; the questions still pending then are cancelled."""
        if not questions:
            return {}
        tasks = {asyncio.ensure_future(q): key for key, q in questions.items()}
        try:
            done, pending = await asyncio.wait(tasks, timeout=self.timeout)
        finally:
            for t in tasks:
                t.cancel()  # the ones still pending at the deadline (or when this pass is cancelled)
        if pending:
            await asyncio.wait(pending)  # let them finish cancelling (bounded: cancellation is prompt)
        answers: dict[str, Any] = {}
        failed = bool(pending)
        for t in done:
            exc = t.exception()
            if exc is None:
                answers[tasks[t]] = t.result()
            elif isinstance(exc, CorralError):
                failed = True
                log.debug("metrics: %s of %s: %s", tasks[t], vm, exc)
            else:
                failed = True
                log.warning("metrics: %s of %s failed", tasks[t], vm, exc_info=exc)
        if failed:
            registry.INCOMPLETE_SAMPLES.inc()
        return answers

    def sample_host(self) -> HostSample:
        sizes = {r.name: self.vms.disk_size(r.spec) for r in self.vms.store.list_vms()}
        c = capacity(self.vms.settings, self.vms.store, sizes)
        mib = 1 << 20
        return HostSample(
            vcpus=c.host.vcpus, vcpus_limit=c.limit.vcpus, memory_bytes=c.host.memory * mib,
            memory_limit_bytes=c.limit.memory * mib, disk_bytes=c.host.disk, disk_free_bytes=c.available.disk,
            vcpus_running=c.allocated_running.vcpus, vcpus_defined=c.allocated_defined.vcpus,
            memory_running_bytes=c.allocated_running.memory * mib,
            memory_defined_bytes=c.allocated_defined.memory * mib,
            disk_running_bytes=c.allocated_running.disk, disk_defined_bytes=c.allocated_defined.disk,
            memory_used_bytes=c.used_memory * mib, disk_used_bytes=c.used_disk)

    def sample_quotas(self) -> tuple[QuotaSample, ...]:
        """Every quota's limits and what its project or owner holds, as `corral quota ls` counts it."""
        quotas = self.vms.store.list_quotas()
        if not quotas:
            return ()
        specs = [(r.spec, self.vms.disk_size(r.spec)) for r in self.vms.store.list_vms()]
        out = []
        for q in quotas:
            held = quota.usage(q.scope, q.name, specs)
            for resource, limit in q.limits().items():
                used = getattr(held, resource)
                if resource == "memory":  # MiB in the quota: bytes in the metrics
                    out.append(QuotaSample(q.scope, q.name, "memory_bytes", limit << 20, used << 20))
                elif resource == "disk":
                    out.append(QuotaSample(q.scope, q.name, "disk_bytes", limit, used))
                else:
                    out.append(QuotaSample(q.scope, q.name, resource, limit, used))
        return tuple(out)
