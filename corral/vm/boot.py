"""Starting a VM's QEMU: the admission checks, the host's preparations, the command line, and the start itself,
which loads a saved state when the VM is suspended (resume) or made from a template.

What holds after a failure:
- ``start`` leaves no QEMU process behind and the VM ``stopped`` with the reason in ``state_reason``.
- ``resume`` (and ``start``) of a suspended VM leaves it ``suspended`` with its state file intact and no QEMU process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
from datetime import UTC, datetime

from corral import faults
from corral.engine import migration, nested, process, qemu_img, shares
from corral.engine.accel import Accelerator
from corral.engine.cmdline import (
    Attachments,
    HostConfig,
    Identity,
    MemoryFile,
    MountAttachment,
    build_argv,
    root_chain,
)
from corral.engine.guest_agent import GuestAgent
from corral.engine.monitor import Monitor, MonitorError
from corral.errors import Conflict, CorralError, EngineError
from corral.guest import cloudinit, ssh
from corral.images.boot import boot_source, probe_kernel
from corral.mounts import host as mount_host
from corral.network import ports
from corral.paths import VMPaths
from corral.storage import check as image_check
from corral.storage.attachments import attachments
from corral.storage.chain import Chain
from corral.store.db import RuntimeRecord, VMRecord
from corral.vm import host, logs
from corral.vm.core import VMCore
from corral.vm.machine import Machine
from corral.vm.states import LIVE, VMState, check_operation
from corral.vm.supervision import Supervisor

#: Seconds a started QEMU has to answer on its monitor.
MONITOR_TIMEOUT = 120.0


class Booter:
    """Boots VMs: each started QEMU is handed to the supervisor once it runs."""

    def __init__(self, vms: VMCore, supervisor: Supervisor) -> None:
        self.vms = vms
        self.supervisor = supervisor

    async def boot(self, name: str) -> None:
        """Start the VM's QEMU (the caller holds its lock, and releases its admission in ``_starting`` after)."""
        rec = self.vms._get(name)
        check_operation(name, "start", rec.state)
        if rec.spec.expires_at is not None and rec.spec.expires_at <= datetime.now(UTC):
            raise Conflict(f"VM '{name}' expired at {rec.spec.expires_at:%Y-%m-%d %H:%M:%S}Z: push its expiry out "
                           f"first (`corral extend {name} 1h`)")
        if rec.spec.unprivileged and os.geteuid() != 0:
            raise Conflict(f"VM '{name}' is unprivileged (QEMU drops root with -runas), but the daemon does not run "
                           "as root: run corrald as root, or set unprivileged false")
        for check in self.vms.start_checks:
            await check(rec)
        resuming = rec.state == VMState.SUSPENDED
        if resuming and not self.vms.paths(name).state_file.is_file():
            raise EngineError(f"VM '{name}' is suspended but its saved state {self.vms.paths(name).state_file} is "
                              f"missing: discard it with `corral stop {name}`")
        spec = rec.spec
        live = {r.name: r.spec for r in self.vms.store.list_vms() if r.state in LIVE} | self.vms._starting
        live.pop(name, None)
        settings = self.vms.settings
        host.check_start_fits(name, spec.memory, sum(s.memory for s in live.values()), settings.memory_overcommit)
        host.check_start_cpus(name, spec.vcpus, sum(s.vcpus for s in live.values()), settings.cpu_overcommit)
        self.vms.check_quotas(spec, self.vms.disk_size(spec))
        self.vms._starting[name] = spec  # released by _start, when the VM is live or the start failed
        manifest = self.vms.images.get(spec.image_ref)
        image_dir = self.vms.images.dir(spec.image_ref)
        boot = boot_source(image_dir, manifest, self.vms.paths(name).root)
        accel = await self.vms.accelerator(boot.kernel or probe_kernel(self.vms.images), spec.arch)
        if accel is None:  # a disk-boot image, and no kernel-boot image installed to probe KVM with
            accel = Accelerator("tcg", "no kernel installed to probe KVM with (build the tiny image)")
        flag = nested.cpu_flag(spec.nested, accel.name, accel.reason)  # the host may have changed since create
        paths = self.vms.paths(name)
        for sock in (paths.qmp_socket, paths.qga_socket, paths.channel_socket, paths.console_socket,
                     paths.vnc_socket):
            sock.unlink(missing_ok=True)
        if not resuming:  # a resumed guest carries on with the same boot, and the same serial log
            logs.rotate_stopped(paths.serial_log)
            paths.state_file.unlink(missing_ok=True)  # stale (the daemon died while resuming): never loaded now
        logs.rotate_stopped(paths.qemu_log)
        # After an unclean stop every image is checked (leaks repaired); a corrupt one refuses the start.
        await image_check.before_start(rec, image_check.written_images(paths.disk, self.vms.store.list_disks(name)),
                                       self.vms.event, paths.images_open)
        if self.vms.before_start is not None:
            self.vms.before_start(name)
        origin = self.vms.origin_of(rec) if self.vms.origin_of is not None else None
        if origin is not None:  # made from a template: its disk sits on the template's, its RAM maps the template's
            boot = dataclasses.replace(boot, base_disk=origin.disk, base_format="qcow2")
        from_template = origin is not None and origin.state is not None and not resuming
        att = await self._prepare(rec, paths)
        att = dataclasses.replace(att, mounts=self._mount_slots(rec, paths, resuming, from_template))
        if self.vms.root_chain is not None:
            att = dataclasses.replace(att, chain=self.vms.root_chain(rec, boot))
        if spec.ephemeral and not resuming and not from_template:  # from a template: a fresh copy already
            await self._fresh_overlay(rec, root_chain(boot, paths, att.chain))
        argv = build_argv(spec, boot, paths,
                          HostConfig(self.vms.settings.qemu_binary, accel.name, self.vms.settings.tcg_tb_size_mib,
                                     nested_flag=flag),
                          Identity(rec.id, rec.mac), att, memory=MemoryFile(origin.memory) if origin else None)
        if resuming or from_template:
            argv = migration.incoming_argv(argv)
        if from_template:  # until its identity is taken (readiness): a re-attach after a crash takes it then
            paths.identity_pending.write_text(f"loaded from a template's state at {time.time():.0f}\n")
        await self.vms._set_state(name, VMState.STARTING, "resuming" if resuming else "")
        self.vms.event(name, "start", f"{'resuming' if resuming else 'starting'} QEMU ({accel.name})", argv=argv)
        child: asyncio.subprocess.Process | None = None
        monitor: Monitor | None = None
        exited_early = False
        loaded: migration.Transfer | None = None
        agent = GuestAgent(paths.qga_socket)
        paths.images_open.touch()  # removed when QEMU exits cleanly (status 0); else the next start checks them
        try:
            child = await process.spawn(argv, paths.qemu_log, paths.root)
            ident = process.identify(child.pid)
            self.vms.store.put_runtime(RuntimeRecord(name, ident.pid, ident.start_ticks, time.time(), accel.name,
                                                     att.ssh_port))
            faults.point("resume.after-spawn" if resuming else "launch.after-spawn")
            monitor = Monitor(name, paths.qmp_socket)
            # A long bound: a QEMU that dies ends the wait at once (alive), and one in a TCG guest (Corral inside a
            # Corral VM, docs/explanation/nested.md) takes more than 15 s to greet on its monitor.
            await monitor.connect(timeout=MONITOR_TIMEOUT, alive=lambda: child is not None
                                  and child.returncode is None and process.is_alive(ident.pid))
            if resuming or from_template:
                await self._connect_agent_early(name, agent)
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
                for share in att.mounts:  # the template's state has no such device: plugged now, seen at cont
                    await shares.plug(monitor, dataclasses.replace(share, plugged=True))
                if origin.after_load is not None:
                    await origin.after_load(agent)
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
            await agent.close()
            self.vms.store.delete_runtime(name)
            with contextlib.suppress(Exception):
                await self.vms.networks.release(rec)
            if resuming:
                # QEMU 7.2 exits on a bad stream and says why in its log; otherwise our own error says it.
                own = exc.message if isinstance(exc, CorralError) else str(exc) or type(exc).__name__
                detail = (migration.qemu_last_words(process.tail(paths.qemu_log, 2)) if exited_early else "") or own
                await self.vms._set_state(name, VMState.SUSPENDED, f"failed to resume: {detail}")
                if isinstance(exc, asyncio.CancelledError):
                    raise
                raise migration.MigrationError(f"cannot resume VM '{name}' from {paths.state_file}: {detail} "
                                               "(it stays suspended, its state file kept)") from exc
            detail = process.tail(paths.qemu_log) or str(exc)
            await self.vms._set_state(name, VMState.STOPPED, f"failed to start: {detail}")
            if isinstance(exc, CorralError) and not isinstance(exc, MonitorError):
                raise
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise EngineError(f"QEMU for '{name}' failed to start: {detail}") from exc
        m = Machine(name=name, vm_id=rec.id, ident=ident, accel=accel.name, started_at=time.time(),
                    monitor=monitor, agent=agent, child=child, ssh_port=att.ssh_port,
                    resumed=resuming)
        if from_template and loaded is not None:
            assert origin is not None
            origin.loaded()
            m.personalize = origin.personalize
            self.vms.event(name, "start", f"template state loaded in {loaded.seconds:.2f}s", seconds=loaded.seconds)
        elif loaded is not None:
            paths.state_file.unlink(missing_ok=True)  # the guest moved on: the old state must never load again
            self.vms.event(name, "resume", f"saved state loaded ({loaded.size >> 20} MiB in {loaded.seconds:.2f}s)",
                           bytes=loaded.size, seconds=loaded.seconds)
        if origin is not None:
            m.after_ready = origin.after_ready
        self.supervisor.attach(m)
        await self.vms._set_state(name, VMState.RUNNING)

    async def spawn_incoming(self, name: str, extra_args: tuple[str, ...]) -> tuple[
            asyncio.subprocess.Process, process.ProcessIdentity, Monitor, int | None]:
        """Start the ``incoming`` VM's QEMU with its usual command line plus ``extra_args`` (a live migration's
        receiving side, corral.migration: ``-S -incoming defer``), its monitor connected: (child, identity, monitor,
        SSH port). Not supervised and not ``running``: the caller hands it to :meth:`attach_incoming` once the
        machine state is there. If this fails, no QEMU is left and the host's preparations are released."""
        rec = self.vms._get(name)
        spec, paths, settings = rec.spec, self.vms.paths(name), self.vms.settings
        live = {r.name: r.spec for r in self.vms.store.list_vms() if r.state in LIVE and r.name != name}
        live |= {n: s for n, s in self.vms._starting.items() if n != name}
        host.check_start_fits(name, spec.memory, sum(s.memory for s in live.values()), settings.memory_overcommit)
        host.check_start_cpus(name, spec.vcpus, sum(s.vcpus for s in live.values()), settings.cpu_overcommit)
        manifest = self.vms.images.get(spec.image_ref)
        boot = boot_source(self.vms.images.dir(spec.image_ref), manifest, paths.root)
        accel = await self.vms.accelerator(boot.kernel or probe_kernel(self.vms.images), spec.arch)
        if accel is None:
            accel = Accelerator("tcg", "no kernel installed to probe KVM with (build the tiny image)")
        flag = nested.cpu_flag(spec.nested, accel.name, accel.reason)
        att = await self._prepare(rec, paths)
        att = dataclasses.replace(att, mounts=self._mount_slots(rec, paths, False, False))
        if self.vms.root_chain is not None:
            att = dataclasses.replace(att, chain=self.vms.root_chain(rec, boot))
        argv = [*build_argv(spec, boot, paths, HostConfig(self.vms.settings.qemu_binary, accel.name,
                                                          self.vms.settings.tcg_tb_size_mib, nested_flag=flag),
                            Identity(rec.id, rec.mac), att), *extra_args]
        self.vms.event(name, "start", f"starting QEMU for an incoming migration ({accel.name})", argv=argv)
        child: asyncio.subprocess.Process | None = None
        paths.images_open.touch()
        try:
            child = await process.spawn(argv, paths.qemu_log, paths.root)
            ident = process.identify(child.pid)
            self.vms.store.put_runtime(RuntimeRecord(name, ident.pid, ident.start_ticks, time.time(), accel.name,
                                                     att.ssh_port))
            monitor = Monitor(name, paths.qmp_socket)
            await monitor.connect(timeout=MONITOR_TIMEOUT, alive=lambda: child is not None
                                  and child.returncode is None and process.is_alive(ident.pid))
        except BaseException as exc:
            if child is not None:
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
                await child.wait()
            self.vms.store.delete_runtime(name)
            with contextlib.suppress(Exception):
                await self.vms.networks.release(rec)
            if isinstance(exc, CorralError) or not isinstance(exc, Exception):
                raise
            raise EngineError(f"QEMU for '{name}' failed to start: {process.tail(paths.qemu_log) or exc}") from exc
        return child, ident, monitor, att.ssh_port

    async def attach_incoming(self, name: str, child: asyncio.subprocess.Process, ident: process.ProcessIdentity,
                              monitor: Monitor, ssh_port: int | None, accel: str) -> None:
        """The migrated VM's QEMU runs its guest now: supervised, made ready (guest agent, provisioning) as after a
        resume, and ``running``."""
        m = Machine(name=name, vm_id=self.vms._get(name).id, ident=ident, accel=accel, started_at=time.time(),
                    monitor=monitor, agent=GuestAgent(self.vms.paths(name).qga_socket), child=child,
                    ssh_port=ssh_port, resumed=True)
        self.supervisor.attach(m)
        await self.vms._set_state(name, VMState.RUNNING)

    def _mount_slots(self, rec: VMRecord, paths: VMPaths, resuming: bool,
                     from_template: bool) -> tuple[MountAttachment, ...]:
        """The shared folders' slots for this start: a resume puts them where its saved state has them
        (layout.json), any other start lays the spec's mounts out afresh; a template's state has none of their
        devices, so they are plugged after it loads. Refuses (NotFound) if a shared directory is gone."""
        layout = mount_host.read_layout(paths) if resuming else mount_host.fresh_layout(rec.spec.mounts)
        for m in layout.values():
            mount_host.check_still_there(m)
        mount_host.write_layout(paths, layout)
        return mount_host.attachments(layout, plugged=not from_template)

    async def _fresh_overlay(self, rec: VMRecord, chain: Chain) -> None:
        """An ephemeral VM's disk reverts to its base at every start (not a resume: its saved state needs its disk):
        the writable top layer is replaced by a new, empty overlay on the layer below. Made beside it and renamed
        over it, so a failure leaves the old overlay in place (and the VM stopped)."""
        top, below = chain.layers[-1], chain.layers[-2]
        fresh = top.path.with_name(top.path.name + ".fresh")
        fresh.unlink(missing_ok=True)
        try:
            await qemu_img.create_overlay(fresh, below.path, below.format, self.vms.disk_size(rec.spec))
            fresh.replace(top.path)
        finally:
            fresh.unlink(missing_ok=True)
        self.vms.event(rec.name, "start", "ephemeral: the disk reverts to its base (a fresh overlay)")

    async def _connect_agent_early(self, name: str, agent: GuestAgent) -> None:
        """Before a saved state loads: the host side of the guest agent's port connected, as it was when the state
        was saved (see GuestAgent.connect_early: it saves the agent a 100 ms sleep). If that fails, the agent is
        reached after the load as on any boot."""
        try:
            await agent.connect_early()
        except CorralError as exc:
            self.vms.event(name, "start", f"guest agent not connected before the load: {exc.message}")

    async def _prepare(self, rec: VMRecord, paths: VMPaths) -> Attachments:
        """Everything the host sets up before QEMU starts; refuses (and changes nothing) if a port is taken."""
        ports.check_free(rec.spec.ports, rec.name)
        # Only a seed needs Corral's key before QEMU starts; otherwise provisioning makes it (off this path: a VM
        # from a template makes it while its QEMU starts).
        public_key = await asyncio.to_thread(ssh.ensure_keypair, paths) if cloudinit.wanted(rec.spec) else ""
        nics = await self.vms.networks.attach(rec)
        try:
            seed = await asyncio.to_thread(cloudinit.make_seed, rec.spec, paths, public_key, rec.id)
            forwarded = rec.spec.nat and not rec.spec.nat_restricted  # a restricted NAT NIC has no SSH forward
            return Attachments(ssh_port=ports.free_port() if forwarded else None, nics=nics, seed=seed,
                               disks=attachments(self.vms.store.list_disks(rec.name)))
        except BaseException:
            await self.vms.networks.release(rec)
            raise
