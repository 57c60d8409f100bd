"""The per-VM and per-host metrics, rendered from the sampler's cache (never a QMP round trip).

A prometheus_client custom collector: :meth:`VMCollector.collect` builds the metric families from the cache it is
given. ``visible(project) -> bool`` leaves out the VMs of projects the requester may not see (the contract of issue
13: a viewer of project ``web`` sees only web's VMs in the metrics); None shows every VM.

:class:`VMScrape` keeps the collector's output as text, rendered by prometheus_client once per sampler pass and
per project (:meth:`VMScrape.refresh`), so that a scrape only joins the text of the projects its requester may see:
rendering 100 VMs' 2,500 series costs about 25 ms of Python, once per pass instead of once per scrape. The text is
what prometheus_client renders for the collector (tests/unit/test_metrics_collector.py checks they are the same).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from corral.metrics.samples import Cache, VMSample
from corral.vm.states import VMState

Visible = Callable[[str], bool]

VM_LABELS = ["vm", "project", "owner", "host"]
STATES = [s.value for s in VMState]


class VMCollector(Collector):
    """Renders ``source()`` (the sampler's current cache) for ``host``; ``daemon_starts()``: corrald's starts."""

    def __init__(self, source: Callable[[], Cache], host: str, visible: Visible | None = None,
                 daemon_starts: Callable[[], int] | None = None) -> None:
        self.source = source
        self.host = host
        self.visible = visible
        self.daemon_starts = daemon_starts

    def filtered(self, visible: Visible | None) -> VMCollector:
        """The same collector for one requester: only the VMs of the projects ``visible`` accepts."""
        return VMCollector(self.source, self.host, visible, self.daemon_starts)

    def describe(self) -> list[Metric]:
        return []  # registered without a name check: the families depend on what is sampled

    def collect(self) -> Iterator[Metric]:
        cache = self.source()
        yield from self.vm_families(cache)
        yield from self.host_families(cache)

    def vm_families(self, cache: Cache, owners: bool | None = None) -> Iterator[Metric]:
        """The families of what belongs to projects: the VMs ``visible`` accepts, the quotas of those projects, and,
        with ``owners`` (default: when every project is visible), the owners' quotas. Every family, empty or not."""
        vms = [s for s in cache.vms.values() if self.visible is None or self.visible(s.project)]
        vms.sort(key=lambda s: s.vm)
        yield from self._vm_families(vms)
        owners = self.visible is None if owners is None else owners
        quotas = [q for q in cache.quotas if (q.scope == "owner" and owners)
                  or (q.scope == "project" and (self.visible is None or self.visible(q.name)))]
        labels = ["scope", "name", "resource", "host"]
        limit = GaugeMetricFamily("corral_quota_limit", "A quota's limit (`corral quota set`): resource vms, vcpus, "
                                  "memory_bytes or disk_bytes", labels=labels)
        used = GaugeMetricFamily("corral_quota_used", "What the quota's project or owner holds of the resource "
                                 "(every defined VM counts, whatever its state)", labels=labels)
        for q in quotas:
            limit.add_metric([q.scope, q.name, q.resource, self.host], q.limit)
            used.add_metric([q.scope, q.name, q.resource, self.host], q.used)
        yield limit
        yield used

    def host_families(self, cache: Cache) -> Iterator[Metric]:
        """The families that are no project's: the host's, corrald's starts."""
        yield from self._host_families(cache)
        if self.daemon_starts is not None:
            starts = CounterMetricFamily(
                "corral_daemon_starts", "How many times corrald started in this Corral home, this start included "
                "(from the event log): it goes up by one at each restart", labels=["host"])
            starts.add_metric([self.host], self.daemon_starts())
            yield starts

    def _labels(self, s: VMSample) -> list[str]:
        return [s.vm, s.project, s.owner, self.host]

    def _vm_families(self, vms: list[VMSample]) -> Iterator[Metric]:
        state = GaugeMetricFamily("corral_vm_state", "1 for the VM's current state, 0 for every other state "
                                  "(one series per state, as kube-state-metrics)", labels=[*VM_LABELS, "state"])
        vcpus = GaugeMetricFamily("corral_vm_vcpus", "vCPUs the VM is given (its spec)", labels=VM_LABELS)
        memory = GaugeMetricFamily("corral_vm_memory_bytes", "Memory the VM is given (its spec)", labels=VM_LABELS)
        cpu = CounterMetricFamily("corral_vm_cpu_seconds", "CPU time of the VM's QEMU process, user + system, all "
                                  "its threads, since it started (/proc/PID/stat)", labels=VM_LABELS)
        rss = GaugeMetricFamily("corral_vm_memory_rss_bytes", "Resident memory of the VM's QEMU process "
                                "(/proc/PID/status VmRSS)", labels=VM_LABELS)
        balloon = GaugeMetricFamily("corral_vm_balloon_bytes", "Memory the guest has now: its memory less what is in "
                                    "the balloon (QMP query-balloon actual); --balloon VMs only", labels=VM_LABELS)
        disk_labels = [*VM_LABELS, "drive"]
        rd_bytes = CounterMetricFamily("corral_vm_disk_read_bytes", "Bytes the guest read from the drive "
                                       "(QMP query-blockstats rd_bytes)", labels=disk_labels)
        wr_bytes = CounterMetricFamily("corral_vm_disk_written_bytes", "Bytes the guest wrote to the drive "
                                       "(QMP query-blockstats wr_bytes)", labels=disk_labels)
        rd_ops = CounterMetricFamily("corral_vm_disk_reads", "Read operations on the drive (QMP query-blockstats "
                                     "rd_operations)", labels=disk_labels)
        wr_ops = CounterMetricFamily("corral_vm_disk_writes", "Write operations on the drive (QMP query-blockstats "
                                     "wr_operations)", labels=disk_labels)
        nic_labels = [*VM_LABELS, "device", "source"]
        rx = CounterMetricFamily("corral_vm_network_receive_bytes", "Bytes the guest received on the interface; "
                                 "source=tap: the host's counters of its tap device, source=guest-agent: the guest's "
                                 "own counters", labels=nic_labels)
        tx = CounterMetricFamily("corral_vm_network_transmit_bytes", "Bytes the guest sent on the interface; "
                                 "source as for corral_vm_network_receive_bytes", labels=nic_labels)
        for s in vms:
            labels = self._labels(s)
            for st in STATES:
                state.add_metric([*labels, st], 1.0 if st == s.state else 0.0)
            vcpus.add_metric(labels, s.vcpus)
            memory.add_metric(labels, s.memory_bytes)
            if s.cpu_seconds is not None:
                cpu.add_metric(labels, s.cpu_seconds)
            if s.rss_bytes is not None:
                rss.add_metric(labels, s.rss_bytes)
            if s.balloon_bytes is not None:
                balloon.add_metric(labels, s.balloon_bytes)
            for d in s.disks:
                dl = [*labels, d.drive]
                rd_bytes.add_metric(dl, d.read_bytes)
                wr_bytes.add_metric(dl, d.written_bytes)
                rd_ops.add_metric(dl, d.read_ops)
                wr_ops.add_metric(dl, d.write_ops)
            for n in s.nics:
                nl = [*labels, n.device, n.source]
                rx.add_metric(nl, n.received_bytes)
                tx.add_metric(nl, n.sent_bytes)
        yield from (state, vcpus, memory, cpu, rss, balloon, rd_bytes, wr_bytes, rd_ops, wr_ops, rx, tx)

    def _host_families(self, cache: Cache) -> Iterator[Metric]:
        h = cache.host
        if h is None:
            return
        host = [self.host]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=["host"])
            g.add_metric(host, value)
            return g

        def allocated(name: str, doc: str, running: float, defined: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc + " (scope=running: the live VMs, what capacity limits; scope=defined: "
                                  "every defined VM, what quotas count)", labels=["host", "scope"])
            g.add_metric([self.host, "running"], running)
            g.add_metric([self.host, "defined"], defined)
            return g

        yield gauge("corral_host_vcpus", "Host CPU threads", h.vcpus)
        yield gauge("corral_host_vcpus_limit", "vCPUs the running VMs may have together: threads x "
                    "CORRAL_CPU_OVERCOMMIT", h.vcpus_limit)
        yield allocated("corral_host_vcpus_allocated", "vCPUs given to VMs", h.vcpus_running, h.vcpus_defined)
        yield gauge("corral_host_memory_bytes", "Host RAM (MemTotal)", h.memory_bytes)
        yield gauge("corral_host_memory_limit_bytes", "Memory the running VMs may have together: RAM x "
                    "CORRAL_MEMORY_OVERCOMMIT", h.memory_limit_bytes)
        yield allocated("corral_host_memory_allocated_bytes", "Memory given to VMs", h.memory_running_bytes,
                        h.memory_defined_bytes)
        yield gauge("corral_host_memory_used_bytes", "Resident memory of the VMs' QEMU processes", h.memory_used_bytes)
        yield gauge("corral_host_disk_bytes", "Size of the file system holding the Corral home", h.disk_bytes)
        yield gauge("corral_host_disk_free_bytes", "Free space on that file system", h.disk_free_bytes)
        yield allocated("corral_host_disk_allocated_bytes", "Virtual size of the VMs' disks (root and extra)",
                        h.disk_running_bytes, h.disk_defined_bytes)
        yield gauge("corral_host_disk_used_bytes", "Bytes the VMs' disks occupy on the file system",
                    h.disk_used_bytes)


class _Families:
    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self.families


def _split(metrics: list[Metric]) -> list[tuple[str, str]]:
    """(the ``# HELP``/``# TYPE`` lines, the sample lines) of each family, as prometheus_client renders them (one
    rendering for all: each family's text starts at its ``# HELP`` line)."""
    out: list[tuple[list[str], list[str]]] = []
    for line in generate_latest(_Families(metrics)).decode().splitlines(keepends=True):
        if line.startswith("# HELP "):
            out.append(([], []))
        out[-1][0 if line.startswith("#") else 1].append(line)
    assert len(out) == len(metrics), "one # HELP line per family"
    return [("".join(head), "".join(body)) for head, body in out]


@dataclass(frozen=True)
class Rendered:
    """One cache, rendered: each per-VM family's header and each project's sample lines; the rest whole."""

    cache: Cache
    #: Each family's header and its lines by project (None: the owners' quotas, shown only when all projects are).
    vm_families: list[tuple[str, dict[str | None, str]]]
    rest: str

    def text(self, visible: Visible | None) -> str:
        out = []
        for head, by_project in self.vm_families:
            out.append(head)
            out.extend(lines for project, lines in by_project.items()
                       if visible is None or (project is not None and visible(project)))
        out.append(self.rest)
        return "".join(out)


def _only(project: str) -> Visible:
    return lambda p: p == project


def render_cache(collector: VMCollector, cache: Cache) -> Rendered:
    projects = sorted({s.project for s in cache.vms.values()} | {q.name for q in cache.quotas if q.scope == "project"})
    heads = [head for head, _ in _split(list(collector.vm_families(Cache())))]  # no VM: each family's header
    families: list[tuple[str, dict[str | None, str]]] = [(h, {}) for h in heads]
    keys: list[tuple[str | None, Iterator[Metric]]] = [
        (p, collector.filtered(_only(p)).vm_families(cache, owners=False)) for p in projects]
    keys.append((None, collector.filtered(lambda p: False).vm_families(cache, owners=True)))
    for key, metrics in keys:
        for i, (_, lines) in enumerate(_split(list(metrics))):
            if lines:
                families[i][1][key] = lines
    rest = generate_latest(_Families(collector.host_families(cache))).decode()
    return Rendered(cache=cache, vm_families=families, rest=rest)


class VMScrape:
    """The VM collector's output as text, rendered once per cache (:meth:`refresh`, by the sampler after each pass;
    else by the first scrape that finds a new cache)."""

    def __init__(self, collector: VMCollector) -> None:
        self.collector = collector
        self._rendered: Rendered | None = None
        self._lock = threading.Lock()

    def refresh(self) -> Rendered:
        """Render the collector's current cache, unless it is rendered already."""
        cache = self.collector.source()
        done = self._rendered
        if done is not None and done.cache is cache:
            return done
        with self._lock:
            done = self._rendered
            if done is None or done.cache is not cache:
                done = self._rendered = render_cache(self.collector, cache)
            return done

    def text(self, visible: Visible | None = None) -> str:
        return self.refresh().text(visible)

