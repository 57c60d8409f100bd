"""What every part of the VM service shares: its stores, the per-VM locks, the supervised machines, the admissions
under way, the state changes, the event log and the hooks other packages set.

Operations on one VM are serialized by a per-VM lock; different VMs proceed in parallel. Every state change goes
through :meth:`VMCore._set_state`, which checks the declared transition, stores it and logs it as an event.

:class:`corral.vm.service.VMService` is this plus the lifecycle operations and the parts that hold one concern each
(supervision, readiness, recovery, expiry, port forwards, spec updates); those parts are given this core, never the
service, so that none of them imports the module that builds them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from corral.engine import nested
from corral.engine.accel import Accelerator, probe_accelerator
from corral.engine.cmdline import BootSource
from corral.engine.guest_agent import GuestAgent
from corral.errors import CorralError, EngineError, NotFound
from corral.images.store import ImageStore
from corral.network.private import NetworkService
from corral.operations.journal import Journal
from corral.paths import VMPaths
from corral.settings import Settings
from corral.storage.chain import Chain
from corral.store.db import EventRecord, RuntimeRecord, Store, VMRecord
from corral.vm import quota
from corral.vm.actor import system_task
from corral.vm.arch import Arch, host_arch
from corral.vm.eventlog import EventLog
from corral.vm.machine import Machine, Origin
from corral.vm.spec import VMSpec
from corral.vm.states import VMState, check_transition


class VMCore:
    """The shared state and helpers of the VM service (see the module's docstring)."""

    def __init__(self, settings: Settings, store: Store, images: ImageStore,
                 networks: NetworkService | None = None) -> None:
        self.settings = settings
        self.store = store
        self.images = images
        self.networks = networks or NetworkService(settings, store)
        self.networks.agent_of = lambda n: m.agent if (m := self._machines.get(n)) and m.agent_ready else None
        self.events = EventLog(store)
        self._locks: dict[str, asyncio.Lock] = {}
        self._machines: dict[str, Machine] = {}
        #: Long operations under way, written down before they act (corral.operations): what a crash left is
        #: finished or rolled back at the next start.
        self.journal = Journal(store)
        self._accel: Accelerator | None = None
        self._accel_lock = asyncio.Lock()
        self._changed = asyncio.Condition()
        self._background: set[asyncio.Task[Any]] = set()
        # Admitted but not yet in the store (creates) or not yet live (starts): counted by the quota and capacity
        # checks, so concurrent requests cannot pass them together. Check and reservation happen with no await
        # between them, hence atomically on the event loop.
        self._creating: dict[str, VMSpec] = {}
        self._starting: dict[str, VMSpec] = {}
        # Hooks of corral.storage (the disk's layer chain): the chain to boot from (None: the image's disk under the
        # VM's disk.qcow2), what a boot needs before the host key is pinned (a clone's new identity), and what a
        # delete releases (layers nothing else uses).
        self.root_chain: Callable[[VMRecord, BootSource], Chain | None] | None = None
        self.provision_hooks: list[Callable[[str, GuestAgent], Awaitable[None]]] = []
        self.delete_hooks: list[Callable[[VMRecord], Awaitable[None]]] = []
        #: Asked before any start of a VM (a restart policy's too); one raises to refuse it (the cluster's fencing:
        #: an HA VM starts only on the host etcd places it on).
        self.start_checks: list[Callable[[VMRecord], Awaitable[None]]] = []
        #: Set by the backup service: takes the final backup of an expired VM whose spec asks for one (the VM's lock
        #: is held); if it raises, the VM is not deleted.
        self.before_expiry_delete: Callable[[str], Awaitable[None]] | None = None
        #: Called with the VM's name just before its QEMU is started (idle control gives back the ports it held).
        self.before_start: Callable[[str], None] | None = None
        #: Set by corral.templates: how a VM made from a template starts (None for every other VM).
        self.origin_of: Callable[[VMRecord], Origin | None] | None = None

    # ------------------------------------------------------------------------------------------------ helpers --
    def _lock(self, name: str) -> asyncio.Lock:
        """The VM's operation lock, made on first use; a deleted VM's is dropped by the delete."""
        return self._locks.setdefault(name, asyncio.Lock())

    def operation_lock(self, name: str) -> asyncio.Lock:
        """The VM's lock, for services composed over this one (backups): one operation per VM at a time."""
        return self._lock(name)

    def locked(self, name: str) -> bool:
        """Is an operation under way on this VM (its lock held)?"""
        return self._lock(name).locked()

    def starting(self, name: str) -> bool:
        """Is this VM being started (admitted, its QEMU not yet live or failed)?"""
        return name in self._starting

    def _get(self, name: str) -> VMRecord:
        """The VM's record, or NotFound naming the VMs there are (the message a mistyped name needs)."""
        rec = self.store.get_vm(name)
        if rec is None:
            names = [r.name for r in self.store.list_vms()]
            hint = f" (VMs: {', '.join(names)})" if names else " (there are no VMs: `corral launch NAME`)"
            raise NotFound(f"no VM named '{name}'{hint}")
        return rec

    def paths(self, name: str) -> VMPaths:
        """Where the VM's files are (its directory under the Corral home)."""
        return self.settings.vm_paths(name)

    def event(self, vm: str | None, type_: str, message: str, *, result: str = "ok", owner: str | None = None,
              **data: Any) -> EventRecord:
        """Record who (the current actor) did what to which VM (and its owner), when, with what result; and hand
        it to every live reader of the event stream (:class:`corral.vm.eventlog.EventLog`)."""
        return self.events.record(vm, type_, message, result=result, owner=owner, **data)

    async def _set_state(self, name: str, new: VMState, reason: str = "") -> None:
        """The one way a VM's state changes: the transition is checked, stored, logged, and waiters woken."""
        rec = self.store.get_vm(name)
        if rec is None:
            return
        check_transition(rec.state, new)
        if rec.state == new and rec.state_reason == reason:
            return
        self.store.set_state(name, new, reason)
        self.event(name, "state", f"{rec.state} -> {new}" + (f": {reason}" if reason else ""),
                   old=rec.state.value, new=new.value, reason=reason)
        async with self._changed:
            self._changed.notify_all()

    def spawn_background(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        """Run ``coro`` as the daemon, kept referenced until done (a bare task may be collected) and cancelled at
        shutdown."""
        task = system_task(coro, name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def accelerator(self, kernel: Path | None = None, arch: Arch | None = None) -> Accelerator | None:
        """The accelerator for a guest of ``arch`` (default: the host's): the probed one (probed once, with the
        kernel of the first VM started), but never KVM for a guest of another architecture than the host's."""
        if arch is not None and arch != host_arch():
            return Accelerator("tcg", f"an {arch} guest on an {host_arch()} host: KVM runs only the host's "
                               "architecture; using TCG (slow)")
        async with self._accel_lock:
            if self._accel is None and kernel is not None:
                self._accel = await probe_accelerator(
                    self.settings.qemu_binary, kernel, self.settings.cache, self.settings.accel
                )
                self.event(None, "accel", f"accelerator: {self._accel.name} ({self._accel.reason})",
                           accel=self._accel.name, reason=self._accel.reason)
            return self._accel

    async def nested_flag(self, spec: VMSpec, kernel: Path | None = None) -> str | None:
        """The CPU flag (vmx or svm) a ``nested`` VM gets on this host, None for any other VM; CapacityError, one
        line saying how to get it, when the host cannot give it (under TCG, or KVM without nesting). Probes the
        accelerator first if no VM has started yet (with ``kernel``, else any installed image's)."""
        if not spec.nested:
            return None
        from corral.images.boot import probe_kernel

        accel = await self.accelerator(kernel or probe_kernel(self.images))
        if accel is None:
            accel = Accelerator("tcg", "no kernel installed to probe KVM with (build the tiny image)")
        return nested.cpu_flag(True, accel.name, accel.reason)

    def machine(self, name: str) -> Machine | None:
        """The supervised QEMU of the VM; None when it has none (stopped, or not re-attached)."""
        return self._machines.get(name)

    # ------------------------------------------------------------------------------------------------- quotas --
    def disk_size(self, spec: VMSpec) -> int:
        """The disk a VM holds against its quotas: its root disk's virtual size (its spec's, else its image's) and
        its extra disks' (corral.storage.disks)."""
        extra = sum(d.size for d in self.store.list_disks(spec.name))
        if spec.disk is not None:
            return spec.disk + extra
        try:
            return self.images.get(spec.image_ref).disk_virtual_size + extra
        except CorralError:
            return extra

    def check_quotas(self, spec: VMSpec, disk: int) -> None:
        """The one place quotas are enforced: ``spec`` added to every other defined VM (see corral.vm.quota)."""
        specs = {r.name: r.spec for r in self.store.list_vms()} | self._creating
        others = [(s, self.disk_size(s)) for n, s in specs.items() if n != spec.name]
        quota.check(spec, disk, others, self.store.list_quotas())

    # --------------------------------------------------------------------------------------------- queries --
    def list(self) -> list[VMRecord]:
        """Every defined VM."""
        return self.store.list_vms()

    def get(self, name: str) -> VMRecord:
        """The VM's record (NotFound if there is no such VM)."""
        return self._get(name)

    def runtime(self, name: str) -> RuntimeRecord | None:
        """What the store holds of the VM's running QEMU (pid, start time, accelerator, SSH port)."""
        return self.store.get_runtime(name)

    async def wait_state(self, name: str, states: set[VMState], timeout: float) -> VMRecord:
        """Wait until the VM is in one of ``states``; EngineError saying where it is stuck after ``timeout`` seconds."""
        async def until() -> VMRecord:
            async with self._changed:
                while (rec := self._get(name)).state not in states:
                    await self._changed.wait()
                return rec

        try:
            return await asyncio.wait_for(until(), timeout)
        except TimeoutError as exc:
            rec = self._get(name)
            raise EngineError(f"VM '{name}' is still {rec.state} after {timeout:.0f}s") from exc
