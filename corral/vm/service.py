"""The VM service: every lifecycle operation, the supervision of running VMs, and re-attach after a restart.

Operations on one VM are serialized by a per-VM lock; different VMs proceed in parallel. Every state change goes
through :meth:`VMService._set_state`, which checks the declared transition, stores it and logs it as an event.

What holds after a failure:
- ``create`` leaves no directory, disk or record behind.
- ``start`` leaves no QEMU process behind and the VM ``stopped`` with the reason in ``state_reason``.
- ``suspend`` leaves the VM running (or paused, as it was) and no state file; ``resume`` (and ``start``) of a
  suspended VM leaves it ``suspended`` with its state file intact and no QEMU process.
- ``recover`` never deletes or recreates a VM it could not see: a live QEMU whose monitor does not answer is
  shown as ``unknown`` and left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import logging
import secrets
import shutil
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from corral.engine import migration, process, qemu_img
from corral.engine.accel import Accelerator, probe_accelerator
from corral.engine.cmdline import Attachments, BootSource, HostConfig, Identity, MemoryFile, build_argv
from corral.engine.guest_agent import ExecExit, ExecOutput, GuestAgent
from corral.engine.monitor import Monitor, MonitorError
from corral.errors import Conflict, CorralError, EngineError, GuestAgentTimeout, InvalidInput, NotFound, StateError
from corral.guest import cloudinit, ssh
from corral.images.boot import boot_source, probe_kernel
from corral.images.store import ImageStore
from corral.network import forwards, ports
from corral.network.private import NetworkService
from corral.paths import VMPaths
from corral.settings import Settings
from corral.storage import check as image_check
from corral.storage import full
from corral.storage.attachments import attachments
from corral.storage.chain import Chain
from corral.store.db import EventQuery, EventRecord, ProjectRecord, RuntimeRecord, Store, VMRecord
from corral.vm import expiry, host, labels, logs, quota
from corral.vm.expiry import Decision, ExpiryAction, ExpiryCheck
from corral.vm.machine import Machine, Origin
from corral.vm.spec import PortForward, RestartPolicy, VMSpec
from corral.vm.states import LIVE, VMState, check_operation, check_transition

log = logging.getLogger(__name__)

RESTART_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
STABLE_AFTER = 600.0
READY_TIMEOUT = 900.0  # how long a boot may take before the guest is reported not ready
CLEAN_REBOOT_TIMEOUT = 30.0  # then a clean reboot becomes a hard reset  # a VM up this long has its restart count reset
SUBSCRIBER_BACKLOG = 10_000  # events a slow event-stream reader may fall behind before it is cut off

#: Who the current operation is for: the API sets it per request (the X-Corral-User header); what the daemon does by
#: itself (supervision, restart policies, readiness) runs as "corrald".
SYSTEM_ACTOR = "corrald"
#: After a failed expiry action, the next attempt waits this long.
EXPIRY_RETRY_SECONDS = 60.0
#: QMP events not worth an event-log line each (a block job's every status change; its end is logged).
QUIET_QMP_EVENTS = frozenset({"JOB_STATUS_CHANGE", "BLOCK_JOB_PENDING"})
ACTOR: contextvars.ContextVar[str] = contextvars.ContextVar("corral_actor", default=SYSTEM_ACTOR)


def system_task(coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
    """A task that acts as the daemon itself, whoever's request created it."""
    ctx = contextvars.copy_context()
    ctx.run(ACTOR.set, SYSTEM_ACTOR)
    return asyncio.get_running_loop().create_task(coro, name=name, context=ctx)


class Subscription:
    """One reader of the live event stream: the events matching ``query``, in order, as they are recorded."""

    def __init__(self, query: EventQuery) -> None:
        self.query = query
        self.queue: asyncio.Queue[EventRecord | None] = asyncio.Queue(SUBSCRIBER_BACKLOG)
        self.overflowed = False

    def offer(self, ev: EventRecord) -> None:
        if self.overflowed or not self.query.matches(ev):
            return
        try:
            self.queue.put_nowait(ev)
        except asyncio.QueueFull:
            self.overflowed = True  # the reader is told and stops, rather than silently missing events

    def close(self) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(None)

    async def next(self) -> EventRecord | None:
        """The next event; None when the stream ended (daemon shutting down, or the reader fell behind)."""
        if self.overflowed and self.queue.empty():
            return None
        return await self.queue.get()


class VMService:
    def __init__(self, settings: Settings, store: Store, images: ImageStore,
                 networks: NetworkService | None = None) -> None:
        self.settings = settings
        self.store = store
        self.images = images
        self.networks = networks or NetworkService(settings, store)
        self.networks.agent_of = lambda n: m.agent if (m := self._machines.get(n)) and m.agent_ready else None
        self._locks: dict[str, asyncio.Lock] = {}
        self._machines: dict[str, Machine] = {}
        self._accel: Accelerator | None = None
        self._accel_lock = asyncio.Lock()
        self._changed = asyncio.Condition()
        self._background: set[asyncio.Task[Any]] = set()
        self._subscribers: set[Subscription] = set()
        # Admitted but not yet in the store (creates) or not yet live (starts): counted by the quota and capacity
        # checks, so concurrent requests cannot pass them together. Check and reservation happen with no await
        # between them, hence atomically on the event loop.
        self._creating: dict[str, VMSpec] = {}
        self._starting: dict[str, VMSpec] = {}
        self._expiry_retry: dict[str, float] = {}  # VM -> monotonic time before which a failed expiry is not retried
        # Hooks of corral.storage (the disk's layer chain): the chain to boot from (None: the image's disk under the
        # VM's disk.qcow2), what a boot needs before the host key is pinned (a clone's new identity), and what a
        # delete releases (layers nothing else uses).
        self.root_chain: Callable[[VMRecord, BootSource], Chain | None] | None = None
        self.provision_hooks: list[Callable[[str, GuestAgent], Awaitable[None]]] = []
        self.delete_hooks: list[Callable[[VMRecord], Awaitable[None]]] = []
        #: Set by the backup service: takes the final backup of an expired VM whose spec asks for one (the VM's lock
        #: is held); if it raises, the VM is not deleted.
        self.before_expiry_delete: Callable[[str], Awaitable[None]] | None = None
        #: Called with the VM's name just before its QEMU is started (idle control gives back the ports it held).
        self.before_start: Callable[[str], None] | None = None
        #: Set by corral.templates: how a VM made from a template starts (None for every other VM).
        self.origin_of: Callable[[VMRecord], Origin | None] | None = None

    # ------------------------------------------------------------------------------------------------ helpers --
    def _lock(self, name: str) -> asyncio.Lock:
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
        rec = self.store.get_vm(name)
        if rec is None:
            names = [r.name for r in self.store.list_vms()]
            hint = f" (VMs: {', '.join(names)})" if names else " (there are no VMs: `corral launch NAME`)"
            raise NotFound(f"no VM named '{name}'{hint}")
        return rec

    def paths(self, name: str) -> VMPaths:
        return self.settings.vm_paths(name)

    def event(self, vm: str | None, type_: str, message: str, *, result: str = "ok", owner: str | None = None,
              **data: Any) -> EventRecord:
        """Record who (the current actor) did what to which VM (and its owner), when, with what result; and hand
        it to every live reader of the event stream."""
        if owner is None:
            rec = self.store.get_vm(vm) if vm else None
            owner = rec.spec.owner if rec else ""
        ev = self.store.add_event(vm, type_, message, data, actor=ACTOR.get(), owner=owner, result=result)
        log.info("%s: %s%s", vm or "host", message, "" if result == "ok" else f" ({result})")
        for sub in list(self._subscribers):
            sub.offer(ev)
        return ev

    def subscribe(self, query: EventQuery) -> Subscription:
        """A :class:`Subscription` to the events recorded from now on; :meth:`unsubscribe` it when done."""
        sub = Subscription(query)
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)

    async def _set_state(self, name: str, new: VMState, reason: str = "") -> None:
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
        task = system_task(coro, name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def accelerator(self, kernel: Path | None = None) -> Accelerator | None:
        """The probed accelerator (probed once, with the kernel of the first VM started)."""
        async with self._accel_lock:
            if self._accel is None and kernel is not None:
                self._accel = await probe_accelerator(
                    self.settings.qemu_binary, kernel, self.settings.cache, self.settings.accel
                )
                self.event(None, "accel", f"accelerator: {self._accel.name} ({self._accel.reason})",
                           accel=self._accel.name, reason=self._accel.reason)
            return self._accel

    def machine(self, name: str) -> Machine | None:
        return self._machines.get(name)

    # ------------------------------------------------------------------------------------------------- create --
    async def create(self, spec: VMSpec, base: tuple[Path, str] | None = None) -> VMRecord:
        """Define a VM and make its disk (an overlay on its image's disk, or on ``base``: (path, format)). Fails
        with nothing left behind."""
        async with self._lock(spec.name):
            if self.store.get_vm(spec.name) is not None:
                raise Conflict(
                    f"a VM named '{spec.name}' already exists: choose another name or `corral rm {spec.name}`"
                )
            manifest = self.images.get(spec.image)
            self.networks.check_spec(spec.networks)
            self._check_ports_unclaimed(spec.name, spec.ports)
            host.check_spec_fits(spec.name, spec.memory, self.settings.memory_overcommit)
            if spec.disk is not None and spec.disk < manifest.disk_virtual_size:
                raise InvalidInput(
                    f"disk size {spec.disk} bytes is smaller than image '{spec.image}' "
                    f"({manifest.disk_virtual_size} bytes): ask for at least that much"
                )
            spec = self._with_expiry(spec)
            paths = self.paths(spec.name)
            if paths.root.exists():
                raise Conflict(f"{paths.root} already exists but no VM '{spec.name}' is defined: move it away first")
            self.check_quotas(spec, spec.disk or manifest.disk_virtual_size)
            mac = "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))  # QEMU's locally assigned OUI
            rec = VMRecord(spec=spec, id=str(uuid.uuid4()), state=VMState.STOPPED, state_reason="", mac=mac,
                           created_at=time.time(), last_exit_reason="", restart_count=0)
            paths.root.parent.mkdir(parents=True, exist_ok=True)
            paths.root.mkdir(mode=0o700)
            self._creating[spec.name] = spec  # counted by other creates' quota checks until it is in the store
            try:
                await qemu_img.create_overlay(
                    paths.disk, *(base or (self.images.dir(spec.image) / "disk.qcow2", manifest.disk_format)),
                    spec.disk)
                self.store.insert_vm(rec)
            except BaseException:
                shutil.rmtree(paths.root, ignore_errors=True)
                raise
            finally:
                self._creating.pop(spec.name, None)
            self.event(spec.name, "create", f"created from image '{spec.image}'", spec=spec.model_dump(mode="json"))
            return rec

    def disk_size(self, spec: VMSpec) -> int:
        """The disk a VM holds against its quotas: its root disk's virtual size (its spec's, else its image's) and
        its extra disks' (corral.storage.disks)."""
        extra = sum(d.size for d in self.store.list_disks(spec.name))
        if spec.disk is not None:
            return spec.disk + extra
        try:
            return self.images.get(spec.image).disk_virtual_size + extra
        except CorralError:
            return extra

    def check_quotas(self, spec: VMSpec, disk: int) -> None:
        """The one place quotas are enforced: ``spec`` added to every other defined VM (see corral.vm.quota)."""
        specs = {r.name: r.spec for r in self.store.list_vms()} | self._creating
        others = [(s, self.disk_size(s)) for n, s in specs.items() if n != spec.name]
        quota.check(spec, disk, others, self.store.list_quotas())

    # -------------------------------------------------------------------------------------------------- start --
    async def start(self, name: str) -> VMRecord:
        async with self._lock(name):
            await self._start(name)
            return self._get(name)

    async def _start(self, name: str) -> None:
        """Boot the VM; a suspended VM instead gets a QEMU that loads its saved state (and continues)."""
        try:
            await self._boot(name)
        finally:
            self._starting.pop(name, None)

    async def _boot(self, name: str) -> None:
        rec = self._get(name)
        check_operation(name, "start", rec.state)
        if rec.spec.expires_at is not None and rec.spec.expires_at <= datetime.now(UTC):
            raise Conflict(f"VM '{name}' expired at {rec.spec.expires_at:%Y-%m-%d %H:%M:%S}Z: push its expiry out "
                           f"first (`corral extend {name} 1h`)")
        resuming = rec.state == VMState.SUSPENDED
        if resuming and not self.paths(name).state_file.is_file():
            raise EngineError(f"VM '{name}' is suspended but its saved state {self.paths(name).state_file} is "
                              f"missing: discard it with `corral stop {name}`")
        spec = rec.spec
        live = {r.name: r.spec for r in self.store.list_vms() if r.state in LIVE} | self._starting
        live.pop(name, None)
        host.check_start_fits(name, spec.memory, sum(s.memory for s in live.values()), self.settings.memory_overcommit)
        host.check_start_cpus(name, spec.vcpus, sum(s.vcpus for s in live.values()), self.settings.cpu_overcommit)
        self.check_quotas(spec, self.disk_size(spec))
        self._starting[name] = spec  # released by _start, when the VM is live or the start failed
        manifest = self.images.get(spec.image)
        image_dir = self.images.dir(spec.image)
        boot = boot_source(image_dir, manifest, self.paths(name).root)
        accel = await self.accelerator(boot.kernel or probe_kernel(self.images))
        if accel is None:  # a disk-boot image, and no kernel-boot image installed to probe KVM with
            accel = Accelerator("tcg", "no kernel installed to probe KVM with (build the tiny image)")
        paths = self.paths(name)
        for sock in (paths.qmp_socket, paths.qga_socket, paths.channel_socket, paths.console_socket):
            sock.unlink(missing_ok=True)
        if not resuming:  # a resumed guest carries on with the same boot, and the same serial log
            logs.rotate_stopped(paths.serial_log)
            paths.state_file.unlink(missing_ok=True)  # stale (the daemon died while resuming): never loaded now
        logs.rotate_stopped(paths.qemu_log)
        # After an unclean stop every image is checked (leaks repaired); a corrupt one refuses the start.
        await image_check.before_start(rec, image_check.written_images(paths.disk, self.store.list_disks(name)),
                                       self.event, paths.images_open)
        if self.before_start is not None:
            self.before_start(name)
        origin = self.origin_of(rec) if self.origin_of is not None else None
        if origin is not None:  # made from a template: its disk sits on the template's, its RAM maps the template's
            boot = dataclasses.replace(boot, base_disk=origin.disk, base_format="qcow2")
        from_template = origin is not None and origin.state is not None and not resuming
        att = await self._prepare(rec, paths)
        if self.root_chain is not None:
            att = dataclasses.replace(att, chain=self.root_chain(rec, boot))
        argv = build_argv(spec, boot, paths,
                          HostConfig(self.settings.qemu_binary, accel.name, self.settings.tcg_tb_size_mib),
                          Identity(rec.id, rec.mac), att, memory=MemoryFile(origin.memory) if origin else None)
        if resuming or from_template:
            argv = migration.incoming_argv(argv)
        await self._set_state(name, VMState.STARTING, "resuming" if resuming else "")
        self.event(name, "start", f"{'resuming' if resuming else 'starting'} QEMU ({accel.name})", argv=argv)
        child: asyncio.subprocess.Process | None = None
        monitor: Monitor | None = None
        exited_early = False
        loaded: migration.Transfer | None = None
        paths.images_open.touch()  # removed when QEMU exits cleanly (status 0); else the next start checks them
        try:
            child = await process.spawn(argv, paths.qemu_log, paths.root)
            ident = process.identify(child.pid)
            self.store.put_runtime(RuntimeRecord(name, ident.pid, ident.start_ticks, time.time(), accel.name,
                                                 att.ssh_port))
            monitor = Monitor(name, paths.qmp_socket)
            await monitor.connect(timeout=15.0, alive=lambda: child is not None and child.returncode is None
                                  and process.is_alive(ident.pid))
            if resuming:
                loaded = await migration.load_state(
                    monitor, paths.state_file, alive=lambda: child is not None and child.returncode is None)
                if not (await monitor.execute("query-status")).get("running"):
                    await monitor.execute("cont")
            elif from_template:
                assert origin is not None and origin.state is not None
                if origin.before_load is not None:
                    await origin.before_load()
                loaded = await migration.load_state(
                    monitor, origin.state, alive=lambda: child is not None and child.returncode is None,
                    capabilities=migration.IGNORE_SHARED)
                await monitor.execute("cont")
        except BaseException as exc:
            if child is not None:
                if resuming:  # let the exit status arrive if QEMU is exiting on a bad stream
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(child.wait(), 0.5)
                exited_early = child.returncode is not None
                if child.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        child.kill()
                await child.wait()
            if monitor is not None and (resuming or from_template):
                await monitor.close()
            self.store.delete_runtime(name)
            with contextlib.suppress(Exception):
                await self.networks.release(rec)
            if resuming:
                # QEMU 7.2 exits on a bad stream and says why in its log; otherwise our own error says it.
                own = exc.message if isinstance(exc, CorralError) else str(exc) or type(exc).__name__
                detail = (migration.qemu_last_words(process.tail(paths.qemu_log, 2)) if exited_early else "") or own
                await self._set_state(name, VMState.SUSPENDED, f"failed to resume: {detail}")
                if isinstance(exc, asyncio.CancelledError):
                    raise
                raise migration.MigrationError(f"cannot resume VM '{name}' from {paths.state_file}: {detail} "
                                               "(it stays suspended, its state file kept)") from exc
            detail = process.tail(paths.qemu_log) or str(exc)
            await self._set_state(name, VMState.STOPPED, f"failed to start: {detail}")
            if isinstance(exc, CorralError) and not isinstance(exc, MonitorError):
                raise
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise EngineError(f"QEMU for '{name}' failed to start: {detail}") from exc
        m = Machine(name=name, vm_id=rec.id, ident=ident, accel=accel.name, started_at=time.time(),
                    monitor=monitor, agent=GuestAgent(paths.qga_socket), child=child, ssh_port=att.ssh_port,
                    resumed=resuming)
        if from_template and loaded is not None:
            assert origin is not None
            origin.loaded()
            m.personalize = origin.personalize
            self.event(name, "start", f"template state loaded in {loaded.seconds:.2f}s", seconds=loaded.seconds)
        elif loaded is not None:
            paths.state_file.unlink(missing_ok=True)  # the guest moved on: the old state must never load again
            self.event(name, "resume", f"saved state loaded ({loaded.size >> 20} MiB in {loaded.seconds:.2f}s)",
                       bytes=loaded.size, seconds=loaded.seconds)
        if origin is not None:
            m.after_ready = origin.after_ready
        self._attach(m)
        await self._set_state(name, VMState.RUNNING)

    async def _prepare(self, rec: VMRecord, paths: VMPaths) -> Attachments:
        """Everything the host sets up before QEMU starts; refuses (and changes nothing) if a port is taken."""
        ports.check_free(rec.spec.ports, rec.name)
        public_key = await asyncio.to_thread(ssh.ensure_keypair, paths)
        nics = await self.networks.attach(rec)
        try:
            seed = await asyncio.to_thread(cloudinit.make_seed, rec.spec, paths, public_key, rec.id)
            return Attachments(ssh_port=ports.free_port(), nics=nics, seed=seed,
                               disks=attachments(self.store.list_disks(rec.name)))
        except BaseException:
            await self.networks.release(rec)
            raise

    def _attach(self, m: Machine) -> None:
        """Supervise ``m``: its QMP events, its readiness and its exit."""
        self._machines[m.name] = m
        if m.monitor is not None:
            m.monitor.watch(lambda ev, data: self._on_qmp_event(m, ev, data))
        m.supervisor = system_task(self._supervise(m), name=f"supervise-{m.name}")
        self._watch_ready(m)

    def _watch_ready(self, m: Machine) -> None:
        """(Re)start waiting for this boot's guest agent, then provision the guest."""
        if m.ready_task is not None:
            m.ready_task.cancel()
        m.ready.clear()
        m.agent_ready = False
        m.ready_error = None
        m.ready_task = system_task(self._become_ready(m), name=f"ready-{m.name}")

    async def _become_ready(self, m: Machine) -> None:
        try:
            if m.personalize is not None:  # from a template: its own identity and provisioning, before "ready"
                boot_id = await m.personalize(m)  # it waits for the agent itself, meanwhile
                m.personalize = None
                m.agent_ready = True
                self.store.set_provisioned_boot(m.name, boot_id)
                self.event(m.name, "ready", f"took its own identity; ready {time.time() - m.started_at:.2f}s "
                           "after start")
                m.ready.set()  # its addresses follow at once; nobody waits for them
                await self.refresh_addresses(m.name)
                return
            await m.agent.wait_ready(READY_TIMEOUT)
            m.agent_ready = True
            if m.resumed:  # the guest's clock stood still while it was suspended: set it (best effort)
                try:
                    await m.agent.execute("guest-set-time", {"time": time.time_ns()}, timeout=5.0)
                except CorralError as exc:
                    self.event(m.name, "resume", f"could not set the guest clock: {exc.message}")
            boot_id = await self._boot_id(m)
            rt = self.store.get_runtime(m.name)
            if boot_id and rt is not None and rt.provisioned_boot == boot_id:
                self.event(m.name, "ready", "guest agent answers; this boot was already provisioned")
            else:
                await self._provision(m)
                if boot_id:
                    self.store.set_provisioned_boot(m.name, boot_id)
                self.event(m.name, "ready", f"guest agent answered {time.time() - m.started_at:.1f}s after start")
            await self.refresh_addresses(m.name)
            if m.after_ready is not None:
                self.spawn_background(m.after_ready(m), f"after-ready-{m.name}")
        except asyncio.CancelledError:
            raise
        except CorralError as exc:
            m.ready_error = exc.message
            self.event(m.name, "ready", f"guest not ready: {exc.message}")
        finally:
            if m.agent_ready or m.ready_error:
                m.ready.set()

    async def _boot_id(self, m: Machine) -> str:
        """The guest kernel's boot_id ('' if it cannot be read): tells a re-attach whether the guest rebooted."""
        try:
            return (await m.agent.read_file("/proc/sys/kernel/random/boot_id")).decode().strip()
        except CorralError:
            return ""

    async def _provision(self, m: Machine) -> None:
        """What every boot of a guest gets: Corral's SSH key, its private network addresses and names."""
        rec = self._get(m.name)
        for hook in self.provision_hooks:
            await hook(m.name, m.agent)
        public_key = await asyncio.to_thread(ssh.ensure_keypair, self.paths(m.name))
        await self.networks.configure_guest(rec, m.agent)  # first: fast, and other VMs wait for its address
        problem = await ssh.provision(m.agent, rec.spec, public_key, self.paths(m.name), m.ssh_port)
        if problem:
            self.event(m.name, "ssh", problem)

    async def _on_qmp_event(self, m: Machine, event: str, data: dict[str, Any]) -> None:
        ACTOR.set(SYSTEM_ACTOR)  # QEMU's doing, even in a monitor task a request started
        name = m.name
        if event == "SHUTDOWN":
            m.shutdown_reason = str(data.get("reason", ""))
            self.event(name, "qmp", f"SHUTDOWN ({m.shutdown_reason})", **data)
        elif event == "RESET":
            m.reset.set()
            await m.agent.close()  # the agent of the old boot is gone; the next call re-syncs with the new one
            self._watch_ready(m)
            self.event(name, "qmp", "RESET: the guest rebooted", **data)
        elif event == "GUEST_PANICKED":
            m.panicked = True
            self.event(name, "qmp", "GUEST_PANICKED: the guest kernel panicked", **data)
        elif event == "STOP":
            rec = self.store.get_vm(name)
            if rec is not None and rec.state == VMState.RUNNING:
                await self._set_state(name, VMState.PAUSED, "paused by QEMU")
        elif event == "RESUME":
            rec = self.store.get_vm(name)
            if rec is not None and rec.state == VMState.PAUSED:
                await self._set_state(name, VMState.RUNNING)
        elif event == "BLOCK_IO_ERROR":
            reason = data.get("reason") or data.get("operation", "")
            if data.get("nospace"):  # werror=enospc: paused until its file system has room (corral.storage.full)
                image = full.image_of(str(data.get("node-name") or data.get("device") or ""), self.paths(name).disk,
                                      self.store.list_disks(name))
                reason = full.reason(name, image)
            self.event(name, "disk-full" if data.get("nospace") else "qmp",
                       f"BLOCK_IO_ERROR on {data.get('device') or data.get('node-name')}: {reason}", **data)
            rec = self.store.get_vm(name)
            if rec is not None and data.get("action") == "stop" and rec.state in (VMState.RUNNING, VMState.PAUSED):
                await self._set_state(name, VMState.PAUSED,
                                      reason if data.get("nospace") else f"disk I/O error: {reason}")
        elif event not in QUIET_QMP_EVENTS:  # a block job's every step: too chatty
            self.event(name, "qmp", event, **data)

    async def _supervise(self, m: Machine) -> None:
        """Wait for QEMU to exit, then settle the VM's state and apply its restart policy."""
        returncode: int | None = None
        try:
            if m.child is not None:
                returncode = await m.child.wait()
            else:
                await process.wait_exit(m.ident.pid)
        except asyncio.CancelledError:
            raise
        await self._on_exit(m, returncode)

    async def _on_exit(self, m: Machine, returncode: int | None) -> None:
        name = m.name
        if m.requested and m.requested_by:
            ACTOR.set(m.requested_by)  # the stop (or kill, or delete) that ended it was theirs
        self._machines.pop(name, None)
        if m.ready_task is not None:
            m.ready_task.cancel()
        if m.monitor is not None:
            await m.monitor.close()
        with contextlib.suppress(Exception):
            await m.agent.close()
        self.store.delete_runtime(name)
        await self._release_nics(name)
        if returncode == 0:  # QEMU closed its images itself
            self.paths(name).images_open.unlink(missing_ok=True)
        if returncode is None:
            how = ""
        elif returncode < 0:
            how = f" (killed by {signal.Signals(-returncode).name})"
        else:
            how = f" (exit code {returncode})"
        if m.requested == "suspend":
            state, reason, failed = VMState.SUSPENDED, m.suspend_reason, False
        elif m.requested:
            state, reason, failed = VMState.STOPPED, f"{m.requested} requested by user", False
        elif m.panicked or m.shutdown_reason == "guest-panic":
            state, reason, failed = VMState.CRASHED, "the guest kernel panicked", True
        elif m.shutdown_reason == "guest-shutdown":
            state, reason, failed = VMState.STOPPED, "the guest powered off", False
        elif m.shutdown_reason:
            state, reason, failed = VMState.STOPPED, f"QEMU shut down ({m.shutdown_reason})", False
        else:
            tail = process.tail(self.paths(name).qemu_log, 2)
            state, failed = VMState.CRASHED, True
            reason = f"QEMU exited unexpectedly{how}" + (f": {tail}" if tail else "")
        self.store.set_exit_reason(name, reason)
        if self.store.get_vm(name) is not None:
            await self._set_state(name, state, reason)
        m.exited.set()
        rec = self.store.get_vm(name)
        if rec is not None and not m.requested:
            policy = rec.spec.restart
            if policy == RestartPolicy.ALWAYS or (policy == RestartPolicy.ON_FAILURE and failed):
                self.spawn_background(self._restart_later(name, m.started_at), f"restart-{name}")

    async def _release_nics(self, name: str) -> None:
        """The VM's host-side NICs (tap devices on bridges) are deleted; a failure is logged, never raised."""
        rec = self.store.get_vm(name)
        if rec is None:
            return
        try:
            await self.networks.release(rec)
        except Exception as exc:  # noqa: BLE001 - cleanup must not break exit handling
            log.warning("%s: cannot release its network devices: %s", name, exc)

    async def _restart_later(self, name: str, started_at: float) -> None:
        rec = self.store.get_vm(name)
        if rec is None:
            return
        count = 0 if time.time() - started_at > STABLE_AFTER else rec.restart_count
        delay = RESTART_BACKOFF[min(count, len(RESTART_BACKOFF) - 1)]
        self.store.set_restart_count(name, count + 1)
        self.event(name, "restart-policy", f"restarting in {delay:.0f}s (policy {rec.spec.restart}, "
                   f"restart #{count + 1})", delay=delay, count=count + 1)
        await asyncio.sleep(delay)
        async with self._lock(name):
            rec = self.store.get_vm(name)
            if rec is None or rec.state not in (VMState.STOPPED, VMState.CRASHED):
                return  # deleted or started by someone else meanwhile
            try:
                await self._start(name)
            except CorralError as exc:
                self.event(name, "restart-policy", f"restart failed: {exc.message}")

    # ------------------------------------------------------------------------------------------- stop / kill --
    async def stop(self, name: str, timeout: float = 30.0, force: bool = True) -> VMRecord:
        """Ask the guest to power off (ACPI); after ``timeout`` seconds kill QEMU if ``force``."""
        async with self._lock(name):
            return await self._stop(name, timeout, force)

    async def _stop(self, name: str, timeout: float, force: bool) -> VMRecord:
        rec = self._get(name)
        check_operation(name, "stop", rec.state)
        if rec.state == VMState.SUSPENDED:
            return await self._discard_suspended(name, force)
        m = self._machines.get(name)
        if m is None:
            raise EngineError(f"VM '{name}' has no supervised QEMU process: try `corral kill {name}`")
        m.requested, m.requested_by = "stop", ACTOR.get()
        await self._set_state(name, VMState.STOPPING)
        try:
            if rec.state == VMState.PAUSED and m.monitor is not None:
                await m.monitor.execute("cont")
            if m.monitor is not None:
                await m.monitor.execute("system_powerdown")
            await asyncio.wait_for(m.exited.wait(), timeout)
        except (TimeoutError, MonitorError) as exc:
            if not force:
                m.requested = None
                await self._set_state(name, VMState.RUNNING, "")
                raise EngineError(f"VM '{name}' did not power off within {timeout:.0f}s: "
                                  f"use `corral stop --force {name}` or `corral kill {name}`") from exc
            self.event(name, "stop", f"guest did not power off ({exc or 'timeout'}); killing QEMU")
            await self._kill_machine(m)
        return self._get(name)

    async def _discard_suspended(self, name: str, force: bool) -> VMRecord:
        """Stop a suspended VM: like pulling the plug, its saved memory is thrown away (only with ``force``)."""
        if not force:
            raise Conflict(f"VM '{name}' is suspended: stopping it discards its saved memory; "
                           f"`corral resume {name}` or `corral stop --force {name}`")
        self.paths(name).state_file.unlink(missing_ok=True)
        self.store.set_exit_reason(name, "saved state discarded by stop")
        await self._set_state(name, VMState.STOPPED, "saved state discarded by stop")
        return self._get(name)

    async def kill(self, name: str) -> VMRecord:
        async with self._lock(name):
            rec = self._get(name)
            check_operation(name, "kill", rec.state)
            m = self._machines.get(name)
            if m is None:
                raise EngineError(f"VM '{name}' has no supervised QEMU process to kill")
            m.requested, m.requested_by = "kill", ACTOR.get()
            await self._kill_machine(m)
            return self._get(name)

    async def _kill_machine(self, m: Machine) -> None:
        process.kill(m.ident, m.vm_id, signal.SIGKILL)
        try:
            await asyncio.wait_for(m.exited.wait(), 30)
        except TimeoutError as exc:
            raise EngineError(f"QEMU of '{m.name}' (pid {m.ident.pid}) did not exit after SIGKILL") from exc

    # ---------------------------------------------------------------------------------- pause / resume / restart --
    async def _qmp(self, name: str, operation: str, cmd: str, args: dict[str, Any] | None = None) -> Machine:
        rec = self._get(name)
        check_operation(name, operation, rec.state)
        m = self._machines.get(name)
        if m is None or m.monitor is None:
            raise EngineError(f"the monitor of VM '{name}' is not connected")
        await m.monitor.execute(cmd, args)
        return m

    async def pause(self, name: str, reason: str = "paused by user") -> VMRecord:
        async with self._lock(name):
            await self._qmp(name, "pause", "stop")
            await self._set_state(name, VMState.PAUSED, reason)
            return self._get(name)

    async def resume(self, name: str) -> VMRecord:
        """Continue a paused VM's vCPUs, or bring a suspended VM back from its saved state."""
        async with self._lock(name):
            if self._get(name).state == VMState.SUSPENDED:
                await self._start(name)
                return self._get(name)
            await self._qmp(name, "resume", "cont")
            await self._set_state(name, VMState.RUNNING)
            return self._get(name)

    async def suspend(self, name: str, timeout: float = 600.0, reason: str = "suspended by user") -> VMRecord:
        """Save the VM's machine state to its state file, then quit QEMU: the VM is ``suspended`` (``reason``).

        On failure nothing is saved and the VM runs (or stays paused) as before.
        """
        async with self._lock(name):
            return await self._suspend(name, timeout, reason)

    async def _suspend(self, name: str, timeout: float, reason: str = "suspended by user") -> VMRecord:
        rec = self._get(name)
        check_operation(name, "suspend", rec.state)
        m = self._machines.get(name)
        if m is None or m.monitor is None:
            raise EngineError(f"the monitor of VM '{name}' is not connected")
        paths = self.paths(name)
        await self._set_state(name, VMState.SUSPENDING)
        try:
            saved = await migration.save_state(m.monitor, paths.state_file,
                                               was_running=rec.state == VMState.RUNNING, timeout=timeout)
        except BaseException as exc:
            if not m.exited.is_set() and self._get(name).state == VMState.SUSPENDING:
                await self._set_state(name, rec.state, rec.state_reason)
            if isinstance(exc, CorralError):
                self.event(name, "suspend", f"suspend failed: {exc.message}")
            raise
        m.requested, m.suspend_reason = "suspend", reason
        with contextlib.suppress(MonitorError):  # QEMU may close the monitor before it answers
            await m.monitor.execute("quit")
        try:
            await asyncio.wait_for(m.exited.wait(), 30)
        except TimeoutError:
            await self._kill_machine(m)  # the state is saved and whole: nothing is lost
        self.event(name, "suspend", f"state saved ({saved.size >> 20} MiB in {saved.seconds:.2f}s), "
                   "QEMU exited", bytes=saved.size, seconds=saved.seconds)
        return self._get(name)

    async def restart(self, name: str, hard: bool = False, timeout: float = 60.0) -> VMRecord:
        """Reboot the guest in the same QEMU process: through the agent (clean) or a hard reset."""
        async with self._lock(name):
            rec = self._get(name)
            check_operation(name, "restart", rec.state)
            m = self._machines.get(name)
            if m is None or m.monitor is None:
                raise EngineError(f"the monitor of VM '{name}' is not connected")
            m.reset.clear()
            self.event(name, "restart", "hard reset" if hard else "reboot requested")
            if not hard and m.agent_ready:
                with contextlib.suppress(CorralError):
                    # guest-shutdown never answers on success: the agent goes down with the guest.
                    await m.agent.execute("guest-shutdown", {"mode": "reboot"}, timeout=2.0)
                try:
                    await asyncio.wait_for(m.reset.wait(), min(timeout, CLEAN_REBOOT_TIMEOUT))
                except TimeoutError:
                    self.event(name, "restart", f"the guest did not reboot within {CLEAN_REBOOT_TIMEOUT:.0f}s; "
                               "resetting it")
            if m.exited.is_set():
                raise EngineError(f"VM '{name}' powered off instead of rebooting: {self._get(name).state_reason}")
            if not m.reset.is_set():
                await m.monitor.execute("system_reset")
                try:
                    await asyncio.wait_for(m.reset.wait(), 10.0)
                except TimeoutError as exc:
                    raise EngineError(f"VM '{name}' did not reset: see `corral logs {name}`") from exc
        await self.wait_ready(name, timeout)
        return self._get(name)

    # ----------------------------------------------------------------------------------------- port forwards --
    def _check_ports_unclaimed(self, name: str, forwards: list[PortForward]) -> None:
        """Conflict if another VM's spec already forwards one of these host ports."""
        for other in self.store.list_vms():
            if other.name == name:
                continue
            theirs = {p.key() for p in other.spec.ports}
            for f in forwards:
                if f.key() in theirs:
                    raise Conflict(f"host port {f.host_addr}:{f.host_port}/{f.proto} is already forwarded to VM "
                                   f"'{other.name}': choose another host port")

    def _forwarding_monitor(self, rec: VMRecord) -> Monitor | None:
        """The monitor to change a live VM's forwards through; None when it has no QEMU (spec change only)."""
        if rec.state not in LIVE:
            return None
        m = self._machines.get(rec.name)
        if rec.state not in (VMState.RUNNING, VMState.PAUSED) or m is None or m.monitor is None:
            raise Conflict(f"VM '{rec.name}' is {rec.state}: its forwards can change when it is running or stopped")
        return m.monitor

    async def add_port(self, name: str, forward: PortForward) -> VMRecord:
        """Forward a host port to the VM: at once if it runs (QMP/HMP hostfwd_add), and in its spec for later."""
        async with self._lock(name):
            rec = self._get(name)
            if any(f.key() == forward.key() for f in rec.spec.ports):
                raise Conflict(f"VM '{name}' already forwards host port {forward.host_addr}:{forward.host_port}/"
                               f"{forward.proto}: remove it first (`corral port rm {name} {forward.host_port}`)")
            self._check_ports_unclaimed(name, [forward])
            new_spec = rec.spec.model_copy(update={"ports": [*rec.spec.ports, forward]})
            monitor = self._forwarding_monitor(rec)
            ports.check_free([forward], name)
            if monitor is not None:
                await forwards.add(monitor, forward)
            self.store.update_spec(new_spec)
            self.event(name, "port", f"forward {forward} added", forward=str(forward))
            return self._get(name)

    async def remove_port(self, name: str, which: str) -> VMRecord:
        async with self._lock(name):
            rec = self._get(name)
            forward = forwards.find(rec.spec.ports, which)
            monitor = self._forwarding_monitor(rec)
            if monitor is not None:
                await forwards.remove(monitor, forward)
            self.store.update_spec(rec.spec.model_copy(update={"ports": [
                f for f in rec.spec.ports if f.key() != forward.key()]}))
            self.event(name, "port", f"forward {forward} removed", forward=str(forward))
            return self._get(name)

    # ---------------------------------------------------------------------------------------------- labels --
    async def set_labels(self, name: str, to_set: Mapping[str, str], to_remove: list[str]) -> VMRecord:
        """Set and remove labels, on a VM in any state (a spec change only). Removing an absent key is fine."""
        async with self._lock(name):
            rec = self._get(name)
            new = {k: v for k, v in rec.spec.labels.items() if k not in to_remove} | dict(to_set)
            try:
                labels.check_labels(new)
            except ValueError as exc:
                raise InvalidInput(str(exc)) from None
            if new == rec.spec.labels:
                return rec
            self.store.update_spec(rec.spec.model_copy(update={"labels": new}))
            changes = [f"{k}={v}" for k, v in to_set.items() if rec.spec.labels.get(k) != v]
            changes += [f"{k}-" for k in to_remove if k in rec.spec.labels]
            self.event(name, "label", f"labels: {' '.join(changes)}", set=dict(to_set),
                       removed=[k for k in to_remove if k in rec.spec.labels])
            return self._get(name)

    async def update_spec(self, name: str, changes: Mapping[str, Any]) -> VMRecord:
        """Change spec fields of an existing VM: labels, description and restart policy at once; vcpus, memory and
        the balloon from its next start (not while it is suspended: its saved state holds the old machine)."""
        allowed = {"labels", "description", "restart", "vcpus", "memory", "idle", "balloon"}
        if bad := sorted(set(changes) - allowed):
            raise InvalidInput(f"cannot change {', '.join(bad)} of an existing VM")
        async with self._lock(name):
            rec = self._get(name)
            try:
                new = VMSpec.model_validate(rec.spec.model_dump() | dict(changes))
            except ValidationError as exc:
                e = exc.errors()[0]
                raise InvalidInput(f"{'.'.join(str(x) for x in e['loc'])}: "
                                   f"{str(e['msg']).removeprefix('Value error, ')}") from None
            changed = [k for k in changes if getattr(new, k) != getattr(rec.spec, k)]
            if not changed:
                return rec
            if {"vcpus", "memory"} & set(changed) and rec.state in (VMState.SUSPENDED, VMState.SUSPENDING):
                raise Conflict(f"VM '{name}' is {rec.state}: its vcpus and memory can change once it is stopped "
                               "or running")
            if "balloon" in changed:  # a device, from the next start (docs/explanation/memory.md)
                if rec.state in (VMState.SUSPENDED, VMState.SUSPENDING):
                    raise Conflict(f"VM '{name}' is {rec.state}: its balloon can change once it is stopped or running")
                if new.balloon and self.store.template_of(name) is not None:
                    raise InvalidInput(f"VM '{name}' was made from a template: its memory is the template's file, "
                                       "which a balloon would punch holes in")
            if "memory" in changed:
                host.check_spec_fits(name, new.memory, self.settings.memory_overcommit)
            self.store.update_spec(new)
            self.event(name, "update", "changed " + ", ".join(
                f"{k}: {_show(getattr(rec.spec, k))} -> {_show(getattr(new, k))}" for k in changed),
                fields=changed)
            return self._get(name)

    # ---------------------------------------------------------------------------------------------- delete --
    async def delete(self, name: str, force: bool = False) -> None:
        async with self._lock(name):
            await self._delete(name, force)
        self._locks.pop(name, None)

    async def _delete(self, name: str, force: bool) -> None:
        rec = self._get(name)
        if force and rec.state in LIVE and (m := self._machines.get(name)) is not None:
            m.requested, m.requested_by = "delete", ACTOR.get()
            await self._kill_machine(m)
            rec = self._get(name)
        if rec.state in LIVE:
            if rec.state == VMState.UNKNOWN or self._machines.get(name) is None:
                raise Conflict(f"VM '{name}' is {rec.state} and its QEMU process may still run: "
                               "it is not deleted; check it with `corral show`")
            check_operation(name, "delete", rec.state)
        paths = self.paths(name)
        await self._release_nics(name)
        for hook in self.delete_hooks:
            await hook(rec)
        self.store.delete_vm(name)
        await asyncio.to_thread(shutil.rmtree, paths.root, True)
        self.event(name, "delete", "deleted with its disks", owner=rec.spec.owner)

    # ------------------------------------------------------------------------------------------------ expiry --
    def _with_expiry(self, spec: VMSpec) -> VMSpec:
        """The spec with its expiry made absolute: from its own ttl or expires_at, else its project's default."""
        now = datetime.now(UTC)
        update: dict[str, Any] = {}
        project = self.store.get_project(spec.project)
        if spec.expires_at is None and spec.ttl is not None:
            update["expires_at"] = now + timedelta(seconds=spec.ttl)
        elif spec.expires_at is None and project is not None and project.default_ttl is not None:
            update["expires_at"] = now + timedelta(seconds=project.default_ttl)
            update["ttl"] = project.default_ttl
            if spec.on_expiry is None:
                update["on_expiry"] = ExpiryAction(project.on_expiry)
        elif spec.expires_at is not None and spec.expires_at <= now:
            raise InvalidInput(f"expires_at {spec.expires_at:%Y-%m-%d %H:%M:%S}Z is in the past")
        if (spec.expires_at is not None or "expires_at" in update) and spec.on_expiry is None and \
                "on_expiry" not in update:
            update["on_expiry"] = ExpiryAction.STOP
        return spec.model_copy(update=update) if update else spec

    async def extend(self, name: str, by: float | None = None, to: datetime | None = None) -> VMRecord:
        """Push a VM's expiry out: ``by`` seconds from its current expiry (or from now, if that has passed), or
        ``to`` a time. A VM without an expiry gets one (``by`` from now)."""
        if (by is None) == (to is None):
            raise InvalidInput("give either a duration to extend by or a time to extend to")
        async with self._lock(name):
            rec = self._get(name)
            now = datetime.now(UTC)
            old = rec.spec.expires_at
            if to is not None:
                new = expiry.to_utc(to)
            else:
                assert by is not None
                new = max(old or now, now) + timedelta(seconds=by)
            if new <= now:
                raise InvalidInput(f"{new:%Y-%m-%d %H:%M:%S}Z is in the past: extend to a later time")
            update: dict[str, Any] = {"expires_at": new}
            if rec.spec.on_expiry is None:
                update["on_expiry"] = ExpiryAction.STOP
            self.store.update_spec(rec.spec.model_copy(update=update))
            self.event(name, "extend", f"expiry {'none' if old is None else f'{old:%Y-%m-%d %H:%M:%S}Z'} -> "
                       f"{new:%Y-%m-%d %H:%M:%S}Z", old=old.isoformat() if old else None, new=new.isoformat())
            return self._get(name)

    def set_project(self, name: str, default_ttl: float | None, on_expiry: ExpiryAction) -> ProjectRecord:
        try:
            labels.check_project(name)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        self.store.put_project(ProjectRecord(name=name, default_ttl=default_ttl, on_expiry=on_expiry.value))
        rec = self.store.get_project(name)
        assert rec is not None
        ttl = "none" if default_ttl is None else expiry.format_duration(default_ttl)
        self.event(None, "project", f"project '{name}': default TTL {ttl}, on expiry {on_expiry.value}",
                   project=name, default_ttl=default_ttl, on_expiry=on_expiry.value)
        return rec

    def expiry_window(self, rec: VMRecord) -> float:
        """How long before its expiry a VM is warned (and marked in `corral ls`)."""
        if rec.spec.expires_at is None:
            return 0.0
        lifetime = rec.spec.expires_at.timestamp() - rec.created_at
        window = expiry.warning_window(lifetime, self.settings.expiry_warning_fraction, self.settings.expiry_warning)
        # At least two passes of the check, so that the warning is not skipped (a short TTL: warned at once).
        return min(max(window, 2 * self.settings.expiry_interval), max(lifetime, 0.0))

    def _expiry_recorded(self, name: str, type_: str, expires_at: datetime) -> bool:
        """Was the ``type_`` event (expiring/expired) already recorded for this expiry of the VM?"""
        last = self.store.events(query=EventQuery(vm=name, type=type_), limit=1, newest=True)
        return bool(last) and last[0].data.get("expires_at") == expires_at.isoformat()

    async def check_expiry(self) -> None:
        """One pass of the daemon's expiry check over every VM (run by its housekeeping every few seconds)."""
        for rec in self.store.list_vms():
            if rec.spec.expires_at is None:
                continue
            try:
                await self._check_expiry_one(rec.name)
            except Exception:
                log.exception("expiry check of %s failed", rec.name)

    async def _check_expiry_one(self, name: str) -> None:
        now = datetime.now(UTC)
        rec = self.store.get_vm(name)
        if rec is None or rec.spec.expires_at is None or (
                rec.spec.expires_at - now > timedelta(seconds=self.expiry_window(rec))):
            return  # the common case, without a lock or a query
        if time.monotonic() < self._expiry_retry.get(name, 0.0):
            return  # its expiry action failed a moment ago
        lock = self._lock(name)
        if lock.locked():
            return  # an operation is under way: look again on the next pass
        async with lock:
            rec = self.store.get_vm(name)
            if rec is None or (at := rec.spec.expires_at) is None:
                return
            action = rec.spec.on_expiry or ExpiryAction.STOP
            check = ExpiryCheck(now=datetime.now(UTC), expires_at=at, state=rec.state, action=action,
                                window=self.expiry_window(rec),
                                warned=self._expiry_recorded(name, "expiring", at),
                                expired=self._expiry_recorded(name, "expired", at))
            decision = expiry.decide(check)
            if decision == Decision.WARN:
                left = (at - check.now).total_seconds()
                self.event(name, "expiring", f"expires in {expiry.format_duration(left)} "
                           f"({at:%Y-%m-%d %H:%M:%S}Z), then: {action.value}; `corral extend {name}` to keep it",
                           expires_at=at.isoformat(), action=action.value)
            elif decision == Decision.DONE:
                self.event(name, "expired", f"expired; {action.value}: nothing to do, it is {rec.state}",
                           expires_at=at.isoformat(), action=action.value)
            elif decision == Decision.ACT:
                await self._expire(rec, action, at)
        if decision == Decision.ACT and action == ExpiryAction.DELETE and self.store.get_vm(name) is None:
            self._locks.pop(name, None)

    async def _expire(self, rec: VMRecord, action: ExpiryAction, at: datetime) -> None:
        name = rec.name
        try:
            if action == ExpiryAction.STOP:
                await self._stop(name, timeout=30.0, force=True)
            elif action == ExpiryAction.SUSPEND:
                await self._suspend(name, timeout=600.0)
            else:
                if rec.spec.backup_before_delete:
                    if self.before_expiry_delete is None:
                        raise EngineError("the spec asks for a final backup and backups are not available")
                    await self.before_expiry_delete(name)
                await self._delete(name, force=True)
        except CorralError as exc:
            self._expiry_retry[name] = time.monotonic() + EXPIRY_RETRY_SECONDS
            self.event(name, "expired", f"expired; {action.value} failed: {exc.message} (tried again in "
                       f"{EXPIRY_RETRY_SECONDS:.0f}s)", result="error", owner=rec.spec.owner,
                       expires_at=at.isoformat(), action=action.value)
            return
        self._expiry_retry.pop(name, None)
        done = {ExpiryAction.STOP: "stopped", ExpiryAction.SUSPEND: "suspended",
                ExpiryAction.DELETE: "deleted with its disks" + (
                    " after a final backup" if rec.spec.backup_before_delete else " (no final backup asked for)")}
        self.event(name, "expired", f"expired; {done[action]}", owner=rec.spec.owner, expires_at=at.isoformat(),
                   action=action.value)

    # ------------------------------------------------------------------------------------------ guest agent --
    async def wait_ready(self, name: str, timeout: float = 120.0) -> None:
        """Wait until the guest agent answered and the guest was provisioned for this boot."""
        rec = self._get(name)
        if rec.state not in (VMState.RUNNING, VMState.STARTING):
            raise Conflict(f"VM '{name}' is {rec.state}: start it first (`corral start {name}`)")
        m = self._machines.get(name)
        if m is None:
            raise EngineError(f"VM '{name}' has no supervised QEMU process")
        ready = asyncio.ensure_future(m.ready.wait())
        exited = asyncio.ensure_future(m.exited.wait())
        try:
            done, _ = await asyncio.wait({ready, exited}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            exited.cancel()
        if m.agent_ready:
            return
        if m.ready_error:
            raise EngineError(f"VM '{name}' is not ready: {m.ready_error}")
        if exited in done:
            raise EngineError(f"VM '{name}' stopped while waiting for its guest agent: {self._get(name).state_reason}")
        raise GuestAgentTimeout(f"the guest agent of '{name}' did not answer within {timeout:.0f}s: "
                                f"see `corral logs {name}`")

    async def agent(self, name: str, operation: str = "reach the guest of", timeout: float = 60.0) -> GuestAgent:
        """The shared guest agent of a running, ready VM, for domain code that drives it itself (file copy)."""
        rec = self._get(name)
        if rec.state != VMState.RUNNING:
            raise StateError(name, operation, rec.state, [VMState.RUNNING.value])
        await self.wait_ready(name, timeout=timeout)
        return self._machines[name].agent

    async def exec(
        self, name: str, argv: list[str], *, env: dict[str, str] | None = None, cwd: str | None = None,
        stdin: bytes | None = None, timeout: float | None = None,
    ) -> AsyncIterator[ExecOutput | ExecExit]:
        """Run ``argv`` in the guest, yielding its output as it comes and then its exit."""
        rec = self._get(name)
        check_operation(name, "exec", rec.state)
        if not argv:
            raise InvalidInput("no command given: `corral exec VM -- COMMAND [ARGS...]`")
        await self.wait_ready(name, timeout=60.0)
        m = self._machines[name]
        async for item in m.agent.exec_stream(argv, env=env, cwd=cwd, stdin=stdin, timeout=timeout):
            yield item

    async def refresh_addresses(self, name: str, max_age: float = 0.0, join: bool = True) -> None:
        """Ask the guest agent for the guest's addresses (kept for `ls`). One question at a time per VM: a caller
        that comes while one is asked gets its answer (without ``join``: returns at once); with ``max_age``, an
        answer that recent is enough (each question costs the guest's vCPU time, and every launch asks right after
        "ready")."""
        m = self._machines.get(name)
        if m is None or not m.agent_ready:
            return
        if m.addresses_task is not None and not m.addresses_task.done() and not join:
            return
        if m.addresses_task is None or m.addresses_task.done():
            if max_age and time.monotonic() - m.addresses_at <= max_age:
                return
            m.addresses_task = asyncio.ensure_future(self._read_addresses(m))
        await asyncio.shield(m.addresses_task)

    async def _read_addresses(self, m: Machine) -> None:
        ifaces = await m.agent.execute("guest-network-get-interfaces", timeout=2.0)
        m.addresses = [
            ip["ip-address"]
            for iface in ifaces if iface.get("name") != "lo"
            for ip in iface.get("ip-addresses", [])
            if not str(ip.get("ip-address", "")).startswith("fe80")
        ]
        m.addresses_at = time.monotonic()

    # --------------------------------------------------------------------------------------------- queries --
    def list(self) -> list[VMRecord]:
        return self.store.list_vms()

    def get(self, name: str) -> VMRecord:
        return self._get(name)

    def runtime(self, name: str) -> RuntimeRecord | None:
        return self.store.get_runtime(name)

    async def wait_state(self, name: str, states: set[VMState], timeout: float) -> VMRecord:
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

    # -------------------------------------------------------------------------------------------- recovery --
    async def recover(self) -> None:
        """Re-attach to every VM whose QEMU still runs; settle the ones that died while the daemon was away."""
        await asyncio.gather(*(self._recover_one(rec) for rec in self.store.list_vms()))
        await self.networks.recover(r for r in self.store.list_vms() if r.state in LIVE)

    async def _recover_one(self, rec: VMRecord) -> None:
        name = rec.name
        rt = self.store.get_runtime(name)
        ident: process.ProcessIdentity | None = None
        if rt is not None:
            candidate = process.ProcessIdentity(rt.pid, rt.start_ticks)
            if process.matches(candidate, rec.id):
                ident = candidate
        else:
            ident = process.find_qemu(rec.id)  # spawned but not yet recorded when the daemon died
        if ident is None:
            if rec.state == VMState.SUSPENDED:  # a resting state: no QEMU is expected
                if not self.paths(name).state_file.is_file():
                    await self._set_state(name, VMState.STOPPED, "its saved state file is gone")
                return
            if rec.state == VMState.SUSPENDING and self.paths(name).state_file.is_file():
                self.store.delete_runtime(name)  # saved whole (renamed), then QEMU quit while the daemon was away
                await self._set_state(name, VMState.SUSPENDED, "suspended by user")
                return
            await self._release_nics(name)  # taps left by a QEMU that exited while the daemon was away
            if rec.state in LIVE or rt is not None:
                self.store.delete_runtime(name)
                reason = "QEMU exited while the daemon was away"
                tail = process.tail(self.paths(name).qemu_log, 2)
                if tail:
                    reason += f": {tail}"
                self.store.set_exit_reason(name, reason)
                await self._set_state(name, VMState.CRASHED, reason)
                if rec.spec.restart != RestartPolicy.NEVER:
                    self.spawn_background(self._restart_later(name, 0.0), f"restart-{name}")
            return
        paths = self.paths(name)
        accel = rt.accel if rt else "unknown"
        started_at = rt.started_at if rt else time.time()
        if rt is None:
            self.store.put_runtime(RuntimeRecord(name, ident.pid, ident.start_ticks, started_at, accel))
        m = Machine(name=name, vm_id=rec.id, ident=ident, accel=accel, started_at=started_at, monitor=None,
                    agent=GuestAgent(paths.qga_socket), ssh_port=rt.ssh_port if rt else None)
        monitor = Monitor(name, paths.qmp_socket)
        try:
            await monitor.connect(timeout=3.0, alive=lambda: process.is_alive(ident.pid))
            status = await monitor.execute("query-status", timeout=3.0)
        except MonitorError as exc:
            await monitor.close()
            self._attach(m)
            await self._set_state(name, VMState.UNKNOWN, f"QEMU pid {ident.pid} runs but its monitor does not "
                                  f"answer: {exc.message}")
            self.spawn_background(self._reconnect(m), f"reconnect-{name}")
            return
        m.monitor = monitor
        self._attach(m)
        if rec.state == VMState.SUSPENDING:  # the daemon died while suspending this VM: finish or undo it
            await self._settle_suspending(m, monitor, str(status.get("status")))
            return
        running = status.get("running", False)
        await self._set_state(name, VMState.RUNNING if running else VMState.PAUSED,
                              "" if running else f"paused ({status.get('status')})")
        self.event(name, "reattach", f"re-attached to QEMU pid {ident.pid}")

    async def _settle_suspending(self, m: Machine, monitor: Monitor, status: str) -> None:
        paths = self.paths(m.name)
        if status == "postmigrate" and paths.state_file.is_file():  # saved whole: quit, as suspend would have
            m.requested = "suspend"
            with contextlib.suppress(MonitorError):
                await monitor.execute("quit")
            self.event(m.name, "reattach", f"finished suspending (QEMU pid {m.ident.pid} quit)")
            return
        paths.state_file.with_name(paths.state_file.name + ".partial").unlink(missing_ok=True)
        with contextlib.suppress(MonitorError):
            await monitor.execute("cont")
        await self._set_state(m.name, VMState.RUNNING, "suspend interrupted by a daemon restart")
        self.event(m.name, "reattach", f"re-attached to QEMU pid {m.ident.pid}; the interrupted suspend undone")

    async def _reconnect(self, m: Machine) -> None:
        """Keep trying the monitor of an ``unknown`` VM; re-attach when it answers."""
        while not m.exited.is_set() and m.monitor is None:
            await asyncio.sleep(5.0)
            monitor = Monitor(m.name, self.paths(m.name).qmp_socket)
            try:
                await monitor.connect(timeout=3.0, alive=lambda: process.is_alive(m.ident.pid))
                status = await monitor.execute("query-status", timeout=3.0)
            except MonitorError:
                await monitor.close()
                continue
            m.monitor = monitor
            monitor.watch(lambda ev, data: self._on_qmp_event(m, ev, data))
            await self._set_state(m.name, VMState.RUNNING if status.get("running") else VMState.PAUSED)
            self.event(m.name, "reattach", f"monitor of QEMU pid {m.ident.pid} answers again")

    def end_event_streams(self) -> None:
        """Daemon exit begins: every live event stream ends (its readers' connections close)."""
        for sub in list(self._subscribers):
            sub.close()

    async def shutdown(self) -> None:
        """Daemon exit: stop supervising, leave every QEMU running, end the event streams."""
        self.end_event_streams()
        for task in list(self._background):
            task.cancel()
        for m in list(self._machines.values()):
            for watcher in (m.supervisor, m.ready_task):
                if watcher is not None:
                    watcher.cancel()
            if m.monitor is not None:
                await m.monitor.close()
            with contextlib.suppress(Exception):
                await m.agent.close()
        self._machines.clear()

    # ------------------------------------------------------------------------------------------- log files --
    def maintain_logs(self) -> None:
        """Rotate the serial logs of running VMs that grew too large."""
        for name in list(self._machines):
            logs.rotate_running(self.paths(name).serial_log)


def _show(v: object) -> str:
    if hasattr(v, "describe"):  # an idle policy
        return str(v.describe())
    if isinstance(v, dict):
        return ",".join(f"{k}={x}" for k, x in sorted(v.items())) or "(none)"
    return str(v.value if hasattr(v, "value") else v) if v != "" else "''"
