"""The template service: capture a running VM as a template, launch VMs from it, list and remove templates.

How (docs/explanation/templates.md has the whole story):

- **create**: the source VM's vCPUs stop and its machine state is saved (QEMU's migration stream, RAM included); while
  it stands still, its disk chain is flattened into one standalone qcow2 (``qemu-img convert``, formats stated);
  then it runs on. Memory and disk are of the same instant. Next, without the source, a short-lived *builder* QEMU
  with the same machine but its RAM in a file (``memory-backend-file,share=on``) loads that stream, which writes the
  RAM into the template's ``memory.ram``, and saves the device state again with ``x-ignore-shared``: the template's
  ``state.bin`` then holds no RAM at all.
- **launch**: the new VM's disk is a qcow2 overlay on the template's disk; its QEMU maps ``memory.ram`` privately
  (``share=off``: copy-on-write, pages only read stay shared in the page cache), starts with ``-incoming defer``,
  loads ``state.bin`` with ``x-ignore-shared`` and continues. Before it is reported ready it takes its own identity
  and is provisioned, in one guest command (corral.guest.identity), sent by corral.templates.personalize.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from corral import faults
from corral.engine import guest_channel, migration, nested, process, qemu_img
from corral.engine.cmdline import Attachments, HostConfig, Identity, MemoryFile, build_argv, check_template_mounts
from corral.engine.monitor import Monitor, MonitorError
from corral.errors import Conflict, CorralError, EngineError, GuestAgentError, InvalidInput, NotFound
from corral.images.boot import boot_source
from corral.operations import journal
from corral.operations.recovery import Outcome, Recovery
from corral.paths import TEMPLATES_DIR, TemplatePaths, VMPaths
from corral.store.db import OperationRecord, TemplateRecord, VMRecord
from corral.templates.personalize import Personalizer
from corral.vm.machine import Machine, Origin
from corral.vm.service import VMService
from corral.vm.spec import NAME_RE, VMSpec
from corral.vm.states import VMState

log = logging.getLogger(__name__)

#: The builder QEMU (loads the full state into the memory file, saves the devices again) gets this long.
BUILD_TIMEOUT = 300.0

class TemplateService:
    def __init__(self, vms: VMService) -> None:
        self.vms = vms
        self.store = vms.store
        self.settings = vms.settings
        self._lock = asyncio.Lock()  # creates, removals and the linking of new VMs, one at a time
        #: What a new VM from a template gets before it is ready: its own identity, provisioning (corral.templates.
        #: personalize).
        self.personalizer = Personalizer(vms)
        vms.origin_of = self._origin_of
        #: Set by corral.pools: does this template have a warm pool (then it cannot be removed)?
        self.pooled: Callable[[str], bool] | None = None

    # ------------------------------------------------------------------------------------------------ queries --
    @property
    def root(self) -> Path:
        return self.settings.home / TEMPLATES_DIR

    def paths(self, name: str) -> TemplatePaths:
        return TemplatePaths(self.root / name)

    def all(self) -> list[TemplateRecord]:
        return self.store.list_templates()

    def get(self, name: str) -> TemplateRecord:
        rec = self.store.get_template(name)
        if rec is None:
            names = [t.name for t in self.store.list_templates()]
            hint = f" (templates: {', '.join(names)})" if names else \
                " (there are none: `corral template create NAME --from VM`)"
            raise NotFound(f"no template named '{name}'{hint}")
        return rec

    def users(self, name: str) -> list[str]:
        """The VMs made from the template, and any whose disk chain sits on its disk (their clones)."""
        layers = {layer.id: layer for layer in self.store.list_layers()}
        on_disk: set[str] = set()
        for top in (x for x in layers.values() if x.purpose == "top" and x.vm is not None):
            bottom = top
            while bottom.backing is not None and bottom.backing in layers:
                bottom = layers[bottom.backing]
            if bottom.image == f"template:{name}" and top.vm is not None:
                on_disk.add(top.vm)
        return sorted(set(self.store.template_users(name)) | on_disk)

    # ------------------------------------------------------------------------------------------------- create --
    async def create(self, name: str, source: str) -> TemplateRecord:
        """Capture the running, ready VM ``source`` as template ``name``; the source keeps running. Fails with
        nothing left behind (and the source running)."""
        if not NAME_RE.match(name):
            raise InvalidInput(f"template name {name!r} is not a DNS label: lower-case letters, digits and '-', "
                               "1-63 characters, starting with a letter")
        async with self._lock:
            if self.store.get_template(name) is not None:
                raise Conflict(f"a template named '{name}' already exists: choose another name or "
                               f"`corral template rm {name}`")
            final = self.paths(name)
            if final.root.exists():
                raise Conflict(f"{final.root} exists but no template '{name}' is defined: move it away first")
            rec = self.vms.get(source)
            spec = self._check_source(rec)
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            work = TemplatePaths(self.root / f".{name}.partial")
            shutil.rmtree(work.root, ignore_errors=True)
            work.root.mkdir(mode=0o700)
            full_state = work.root / "full-state.bin"
            t0 = time.monotonic()
            op = self.vms.journal.run("template", source, template=name, dirs=[str(work.root)])
            try:
                with op:
                    tpl = await self._make(name, source, rec, spec, work, full_state)
            except BaseException:
                shutil.rmtree(work.root, ignore_errors=True)
                raise
            self.store.insert_template(tpl)
        self.vms.event(source, "template", f"captured as template '{name}' in {time.monotonic() - t0:.1f}s "
                       f"({tpl.size >> 20} MiB on disk)", template=name)
        return tpl

    async def _make(self, name: str, source: str, rec: VMRecord, spec: VMSpec, work: TemplatePaths,
                    full_state: Path) -> TemplateRecord:
        """Capture, build and move the template into place; the caller removes ``work`` if this fails."""
        final = self.paths(name)
        channel = await self._capture(rec, work, full_state)
        disk_info = await qemu_img.info(work.disk)
        await self._build(spec, rec, work, full_state, channel)
        full_state.unlink()
        # Its backing file is named by its final path (where the template is moved next), not opened (-u).
        await qemu_img.create_layer(work.overlay, final.disk, int(disk_info["virtual-size"]))
        tpl = TemplateRecord(name=name, source=source, image=spec.image_ref, vcpus=spec.vcpus,
                             memory=spec.memory, disk=int(disk_info["virtual-size"]), created_at=time.time(),
                             channel=channel)
        work.spec.write_text(json.dumps(dataclasses.asdict(tpl), indent=2) + "\n")
        work.disk.chmod(0o444)
        work.state.chmod(0o444)
        work.overlay.chmod(0o444)
        work.memory.chmod(0o600)  # QEMU opens it read-write even for a private (copy-on-write) mapping
        tpl = dataclasses.replace(tpl, size=sum(p.stat().st_blocks * 512 for p in work.root.iterdir()))
        os.rename(work.root, final.root)
        return tpl

    def _check_source(self, rec: VMRecord) -> VMSpec:
        spec = rec.spec
        if rec.state != VMState.RUNNING:
            raise Conflict(f"VM '{rec.name}' is {rec.state}: a template is made from a running, ready VM "
                           f"(`corral start {rec.name}`)")
        m = self.vms.machine(rec.name)
        if m is None or m.monitor is None or not m.agent_ready:
            raise Conflict(f"VM '{rec.name}' is not ready yet: wait for it (`corral wait {rec.name} --ready`)")
        if spec.networks:
            raise InvalidInput(f"VM '{rec.name}' is on private networks ({', '.join(spec.networks)}): templates are "
                               "made from VMs with the default NAT network only")
        if spec.cloud_init is not None or spec.ssh_keys or spec.hostname is not None:
            raise InvalidInput(f"VM '{rec.name}' has a cloud-init seed disk (--cloud-init, --ssh-key or --hostname): "
                               "templates are made from VMs without one")
        if spec.mounts:
            raise InvalidInput(f"VM '{rec.name}' has shared folders: templates are made from VMs without (their "
                               f"devices would be in the saved state); `corral mount rm {rec.name} GUEST_DIR` first, "
                               "and give --mount to the VMs launched from the template")
        manifest = self.vms.images.get(spec.image_ref)
        if manifest.boot != "kernel":
            raise InvalidInput(f"VM '{rec.name}' boots from its own disk (image '{spec.image}'): templates are made "
                               "from kernel-boot images (tiny, debian-12)")
        if spec.balloon:  # docs/explanation/memory.md: QEMU 7.2 would punch holes in the shared memory file
            raise InvalidInput(f"VM '{rec.name}' has a balloon (--balloon): a template's memory is a file its VMs "
                               "share, which free page reporting would punch holes in; capture a VM launched "
                               "without --balloon")
        if spec.display != "none":
            raise InvalidInput(f"VM '{rec.name}' has a screen (--display vnc): a template's VMs have none; capture "
                               "a VM launched without --display")
        if self.store.template_of(rec.name) is not None:
            raise InvalidInput(f"VM '{rec.name}' was itself made from a template: capture a VM booted from an image")
        if any(d.attached for d in self.store.list_disks(rec.name)):
            raise InvalidInput(f"VM '{rec.name}' has extra disks attached (`corral disk ls {rec.name}`): templates "
                               f"are made from VMs with their root disk only (`corral disk detach {rec.name} NAME`)")
        return spec

    async def _capture(self, rec: VMRecord, work: TemplatePaths, full_state: Path) -> bool:
        """Under the source's lock: its state saved, its disk flattened while it stands still, then it runs on;
        whether a shell listens on the guest channel in the saved state."""
        async with self.vms._lock(rec.name):  # noqa: SLF001 - no other operation on the source meanwhile
            m = self.vms.machine(rec.name)
            if m is None or m.monitor is None or self.vms.get(rec.name).state != VMState.RUNNING:
                raise Conflict(f"VM '{rec.name}' stopped running before its capture")
            channel = await self._listen(rec.name, m)
            op = journal.current()
            op.note(paused=True, migrating=True)
            try:
                await migration.save_state(m.monitor, full_state, was_running=True)
                op.note(migrating=None)
                faults.point("template.after-pause")
            except BaseException:
                if channel is not None:
                    await channel.close()  # the listener reads end-of-file and ends
                raise
            try:
                # QEMU inactivated (flushed, unlocked) its disks when the save completed; -U only in case a lock
                # is still held: nothing writes while the vCPUs are stopped.
                await qemu_img.convert(self.vms.paths(rec.name).disk, work.disk, force_share=True)
            finally:
                with contextlib.suppress(MonitorError):
                    await m.monitor.execute("cont")  # from postmigrate too: QEMU takes its disks back
                op.note(paused=None)
                if channel is not None:  # the source's own listener is not needed: only the template's copy is
                    try:
                        await channel.end_listener()
                    except CorralError as exc:
                        self.vms.event(rec.name, "template", f"could not end the guest channel's shell: {exc.message}")
        return channel is not None

    async def _listen(self, name: str, m: Machine) -> guest_channel.GuestChannel | None:
        """Start a shell listening on the guest channel of the source (see corral.engine.guest_channel), so that VMs
        made from the template take their identity without spawning anything; the connection it listens to (held
        through the save), or None: a guest without the port (a QEMU started by an older Corral) or whose shell does
        not open it gives None, and its VMs use the guest agent."""
        assert m.monitor is not None
        monitor = m.monitor

        async def port_open() -> bool | None:
            chardevs = await monitor.execute("query-chardev")
            c = next((c for c in chardevs if c.get("label") == guest_channel.CHARDEV_ID), None)
            return None if c is None else bool(c.get("frontend-open"))

        if await port_open() is not False:
            return None  # no such port, or something holds it open already (nothing of Corral's ever does)
        try:
            channel = await guest_channel.GuestChannel.connect(self.vms.paths(name).channel_socket)
        except GuestAgentError as exc:
            self.vms.event(name, "template", f"no guest channel (its VMs take their identity through the agent): "
                           f"{exc.message}")
            return None
        try:
            await m.agent.execute("guest-exec", {"path": "/bin/sh", "arg": ["-c", guest_channel.LISTEN_SCRIPT]})
            for _ in range(250):
                if await port_open():
                    return channel
                await asyncio.sleep(0.02)
            self.vms.event(name, "template", "no guest channel: the guest's shell did not open the port within 5s "
                           "(its VMs take their identity through the agent)")
        except GuestAgentError as exc:
            self.vms.event(name, "template", f"no guest channel (its VMs take their identity through the agent): "
                           f"{exc.message}")
        await channel.close()
        return None

    async def _build(self, spec: VMSpec, rec: VMRecord, work: TemplatePaths, full_state: Path,
                     channel: bool) -> None:
        """A builder QEMU (same machine, RAM in ``work.memory``, shared) loads the full state and saves the devices
        again without the RAM (x-ignore-shared)."""
        build = VMPaths(work.root / "build")
        build.root.mkdir(mode=0o700)
        try:
            await qemu_img.create_overlay(build.disk, work.disk, "qcow2", None)
            manifest = self.vms.images.get(spec.image_ref)
            boot = dataclasses.replace(boot_source(self.vms.images.dir(spec.image_ref), manifest, build.root),
                                       base_disk=work.disk, base_format="qcow2")
            accel = await self.vms.accelerator(boot.kernel, spec.arch)
            host = HostConfig(self.settings.qemu_binary, accel.name if accel else "tcg",
                              self.settings.tcg_tb_size_mib,
                              nested_flag=nested.cpu_flag(spec.nested, accel.name if accel else "tcg"))
            argv = migration.incoming_argv(build_argv(
                spec.model_copy(update={"ports": []}), boot, build, host, Identity(str(uuid.uuid4()), rec.mac),
                Attachments(), memory=MemoryFile(work.memory, share=True)))
            child = await process.spawn(argv, build.qemu_log, build.root)
            journal.current().add("pids", [child.pid, process.start_ticks(child.pid)])
            monitor = Monitor(f"template-build-{rec.name}", build.qmp_socket)
            try:
                alive = lambda: child.returncode is None  # noqa: E731
                await monitor.connect(timeout=15.0, alive=alive)
                # The channel's host side connected as in the source (else the load tells the guest "host gone").
                chan = await guest_channel.GuestChannel.connect(build.channel_socket) if channel else None
                try:
                    await migration.load_state(monitor, full_state, alive=alive, timeout=BUILD_TIMEOUT)
                    await migration.save_state(monitor, work.state, was_running=False, timeout=BUILD_TIMEOUT,
                                               capabilities=migration.IGNORE_SHARED)
                finally:
                    if chan is not None:
                        await chan.close()
                with contextlib.suppress(MonitorError):
                    await monitor.execute("quit")
                await asyncio.wait_for(child.wait(), 30)
            except BaseException as exc:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(child.wait(), 0.5)
                detail = migration.qemu_last_words(process.tail(build.qemu_log, 2)) if child.returncode else ""
                if isinstance(exc, CorralError) and detail:
                    raise EngineError(f"making the template's memory file failed: {detail}") from exc
                raise
            finally:
                await monitor.close()
                if child.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        child.kill()
                    await child.wait()
            fd = os.open(work.memory, os.O_RDONLY)
            try:
                await asyncio.to_thread(os.fsync, fd)
            finally:
                os.close(fd)
        finally:
            shutil.rmtree(build.root, ignore_errors=True)

    # ---------------------------------------------------------------------------------------------- recovery --
    def register_recovery(self, recovery: Recovery) -> None:
        recovery.kinds["template"] = self._recover
        recovery.sweepers.append(self._sweep)

    async def _recover(self, op: OperationRecord) -> Outcome:
        """A capture a dead daemon left: the source runs on (the journal's ``paused``), the builder QEMU is killed
        (``pids``) and the work directory removed (``dirs``); a template moved into place without its row is
        removed too: a template is whole only once its row is written."""
        name = str(op.data.get("template"))
        if self.store.get_template(name) is not None:
            return Outcome(True, f"template '{name}' made")
        final = self.paths(name).root
        if final.is_dir():
            await asyncio.to_thread(shutil.rmtree, final, True)
        return Outcome(False, f"template '{name}' not made")

    async def _sweep(self) -> list[str]:
        """Work directories of captures no daemon runs any more (only one capture runs at a time, none at start)."""
        removed = []
        if self.root.is_dir():
            for work in self.root.glob(".*.partial"):
                await asyncio.to_thread(shutil.rmtree, work, True)
                removed.append(str(work))
        return removed

    # ------------------------------------------------------------------------------------------------- delete --
    async def delete(self, name: str) -> None:
        async with self._lock:
            self.get(name)
            if self.pooled is not None and self.pooled(name):
                raise Conflict(f"template '{name}' has a warm pool: remove it first (`corral pool rm --template "
                               f"{name}`)")
            users = self.users(name)
            if users:
                raise Conflict(f"template '{name}' is used by {len(users)} VM(s) ({', '.join(users[:10])}"
                               f"{', ...' if len(users) > 10 else ''}): delete them first (`corral rm`)")
            self.store.delete_template(name)
            await asyncio.to_thread(shutil.rmtree, self.paths(name).root, True)
        self.vms.event(None, "template", f"template '{name}' removed", template=name)

    # ------------------------------------------------------------------------------------------------- launch --
    async def launch(self, template: str, spec: VMSpec) -> VMRecord:
        """Create VM ``spec.name`` from ``template`` and start it (its state loaded, not yet ready). All or
        nothing: a failed start deletes it again."""
        if spec.balloon:
            raise InvalidInput("--balloon is not possible with a template: its memory is a file its VMs share, "
                               "which a balloon would punch holes in (docs/explanation/memory.md)")
        if spec.display != "none":
            raise InvalidInput("--display vnc is not possible with a template: its saved machine has no screen")
        for what, given in (("--network", spec.networks), ("--cloud-init", spec.cloud_init is not None),
                            ("--ssh-key", spec.ssh_keys), ("--hostname", spec.hostname is not None)):
            if given:
                raise InvalidInput(f"{what} is not possible with a template: its machine has no such device "
                                   "(the hostname is the VM's name)")
        if not spec.nat:
            raise InvalidInput("a VM without the NAT NIC (nat false) is not possible with a template: the NIC is "
                               "part of the template's machine; boot it from an image")
        async with self._lock:
            tpl = self.get(template)
            spec = spec.model_copy(update=tpl.machine_fields())
            check_template_mounts(spec)
            p = self.paths(template)
            await self.vms.create(spec, base=(p.disk, "qcow2"), overlay=p.overlay if p.overlay.is_file() else None)
            self.store.link_template_vm(spec.name, template)  # no await since create: nothing saw it unlinked
        try:
            return await self.vms.start(spec.name)
        except BaseException:
            await self.personalizer.discard(spec.name)
            with contextlib.suppress(CorralError):
                await self.vms.delete(spec.name, force=True)
            raise

    def _origin_of(self, rec: VMRecord) -> Origin | None:
        link = self.store.template_of(rec.name)
        if link is None:
            return None
        template, fresh = link
        p = self.paths(template)
        pz = self.personalizer
        if fresh:  # made meanwhile (its keys), taken by the personalizer
            pz.prepare(rec.name)
        tpl = self.store.get_template(template)
        channel = fresh and tpl is not None and tpl.channel
        return Origin(disk=p.disk, memory=p.memory, state=p.state if fresh else None,
                      personalize=pz.personalize, loaded=lambda: self.store.set_template_vm_started(rec.name),
                      after_ready=pz.follow_address,
                      before_load=(lambda: pz.open_channel(rec.name)) if channel else None,
                      after_load=(lambda agent: pz.after_load(rec.name, agent)) if channel else None)

