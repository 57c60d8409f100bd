"""The receiving side of a live migration: a VM arrives from another corrald.

:meth:`Arrivals.prepare` defines the VM (same id, name, MAC and spec) in state ``incoming``, makes its disks empty
(the root disk one standalone qcow2 layer: the source's chain arrives flattened; each extra disk in the same hot-plug
port), starts its QEMU with its usual command line plus ``-S -incoming defer``, listens for the machine state and
exports the disks over NBD, both on this host's own address. :meth:`Arrivals.commit` hands over once the state has
arrived: the export goes, the vCPUs run, the VM is supervised, made ready and ``running``. :meth:`Arrivals.abort`
removes it whole.

What holds after a failure: a failed prepare, an abort, a QEMU that exits while waiting, or a daemon restart before
the commit (the journal's ``migrate-in`` row, rolled back by :meth:`Arrivals.recover`) leave nothing: no QEMU (killed
by pid, checked by start time and id), no record, no files. A failed commit leaves the VM ``incoming``, to be
committed again or aborted.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import time
from dataclasses import dataclass, field

from corral.engine import live_migration as live
from corral.engine import process, qemu_img
from corral.engine.cmdline import DiskNodes
from corral.engine.monitor import Monitor
from corral.errors import Conflict, EngineError, InvalidInput, NotFound
from corral.migration.models import IncomingAnswer, IncomingDisk, IncomingRequest, export_key
from corral.operations.journal import Operation
from corral.operations.recovery import Outcome
from corral.storage.service import StorageService
from corral.store.db import DiskRecord, OperationRecord, VMRecord
from corral.vm.service import VMService
from corral.vm.spec import VMSpec
from corral.vm.states import VMState

KIND = "migrate-in"
#: An arrival not committed within this many seconds is removed (a source that died or gave up without an abort).
ARRIVAL_TIMEOUT = 6 * 3600.0


def check_movable(spec: VMSpec) -> None:
    """InvalidInput, one line, for what a live migration cannot move: host folders, private networks."""
    if spec.mounts:
        raise InvalidInput(f"VM '{spec.name}' shares host folders ({', '.join(m.guest for m in spec.mounts)}): they "
                           "cannot move to another host; `corral mount rm` them first")
    if spec.networks:
        raise InvalidInput(f"VM '{spec.name}' is on private networks ({', '.join(spec.networks)}), which are this "
                           "host's: they cannot move; detach it first")


def free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class Arrival:
    """An incoming VM's QEMU, waiting for its state."""

    op: Operation
    source: str
    child: asyncio.subprocess.Process
    ident: process.ProcessIdentity
    monitor: Monitor
    ssh_port: int | None
    accel: str
    watcher: asyncio.Task[None] | None = field(default=None, repr=False)


class Arrivals:
    def __init__(self, vms: VMService, storage: StorageService) -> None:
        self.vms = vms
        self.storage = storage
        self._live: dict[str, Arrival] = {}

    # ----------------------------------------------------------------------------------------------- prepare --
    async def prepare(self, req: IncomingRequest, address: str) -> IncomingAnswer:
        """Make the VM ready to receive (see the module's docstring); ``address``: this host's, where the source
        sends the disks and the state."""
        try:
            spec = VMSpec.model_validate(req.spec)
        except ValueError as exc:
            raise InvalidInput(f"the arriving VM's spec is not valid here: {exc}") from None
        check_movable(spec)
        roots = [d for d in req.disks if d.root]
        if len(roots) != 1:
            raise InvalidInput("an arriving VM has exactly one root disk")
        name = spec.name
        vms = self.vms
        if vms.store.get_vm(name) is not None:  # before the lock: a source migrating to its own host holds it
            raise Conflict(f"a VM named '{name}' already exists on this host")
        async with vms.operation_lock(name):
            if vms.store.get_vm(name) is not None:
                raise Conflict(f"a VM named '{name}' already exists on this host")
            if any(r.id == req.id for r in vms.store.list_vms()):
                raise Conflict(f"a VM with id {req.id} already exists on this host")
            paths = vms.paths(name)
            if paths.root.exists():
                raise Conflict(f"{paths.root} already exists but no VM '{name}' is defined: move it away first")
            vms.images.get(spec.image_ref)  # NotFound: the image must be on this host too (its kernel boots it)
            vms.forwards.check_unclaimed(name, spec.ports)
            op = vms.journal.begin(KIND, name, dirs=[str(paths.root)], source=req.source)
            try:
                paths.root.parent.mkdir(parents=True, exist_ok=True)
                paths.root.mkdir(mode=0o700)
                vms.store.insert_vm(VMRecord(spec=spec, id=req.id, state=VMState.INCOMING,
                                             state_reason=f"arriving from {req.source}", mac=req.mac,
                                             created_at=req.created_at, last_exit_reason="", restart_count=0))
                await self._make_disks(name, req.disks, op)
                child, ident, monitor, ssh_port = await vms.booter.spawn_incoming(name, live.INCOMING_ARGS)
                op.note(pid=[ident.pid, ident.start_ticks])
                accel = (rt.accel if (rt := vms.store.get_runtime(name)) else "tcg")
                arrival = Arrival(op, req.source, child, ident, monitor, ssh_port, accel)
                self._live[name] = arrival
                key = live.new_key()
                await asyncio.to_thread(live.write_key, paths.migration_tls, key)
                await live.add_creds(monitor, paths.migration_tls, "server")
                uri = await live.listen(monitor, address, free_port(address))
                nbd_port = free_port(address)
                exports = [live.Export(self._node(d), export_key(d)) for d in req.disks]
                await live.export_disks(monitor, address, nbd_port, exports)
            except BaseException as exc:
                await self._remove(name, f"its arrival failed: {exc}")
                vms.journal.end(op, ok=False)  # (done by _remove once its QEMU was known; ending twice is nothing)
                raise
            arrival.watcher = asyncio.create_task(self._watch(name, arrival), name=f"arrival-{name}")
            vms.event(name, "migrate", f"arriving from {req.source}: state on {uri}, disks on nbd "
                      f"{address}:{nbd_port}", source=req.source)
            return IncomingAnswer(vm=name, nbd_host=address, nbd_port=nbd_port,
                                  exports=[e.name for e in exports], migrate_uri=uri, psk=key)

    @staticmethod
    def _node(d: IncomingDisk) -> str:
        """The node of the target's QEMU that holds the disk (named as corral.engine.cmdline names them)."""
        return "root" if d.root else DiskNodes.of(d.name).fmt

    async def _make_disks(self, name: str, disks: list[IncomingDisk], op: Operation) -> None:
        paths = self.vms.paths(name)
        for d in disks:
            if d.root:
                await self.storage.standalone_top(name, d.size, op)
                continue
            if d.port is None:
                raise InvalidInput(f"extra disk '{d.name}' has no hot-plug port")
            paths.disks_dir.mkdir(mode=0o700, exist_ok=True)
            file = paths.extra_disk(d.name)
            await qemu_img.create(file, d.size)
            self.vms.store.insert_disk(DiskRecord(vm=name, name=d.name, file=str(file), size=d.size,
                                                  serial=d.serial or d.name, created_at=time.time(),
                                                  limits=dict(d.limits), port=d.port))

    # ------------------------------------------------------------------------------------------------ commit --
    async def commit(self, name: str) -> VMRecord:
        """Hand over: the state has arrived (else Conflict, the VM stays ``incoming``); the VM runs here now."""
        async with self.vms.operation_lock(name):
            rec = self.vms.get(name)
            arrival = self._live.get(name)
            if rec.state != VMState.INCOMING or arrival is None:
                raise Conflict(f"VM '{name}' is {rec.state} here, not arriving: nothing to commit")
            if arrival.child.returncode is not None:
                raise EngineError(f"the QEMU of arriving VM '{name}' exited: "
                                  f"{process.tail(self.vms.paths(name).qemu_log, 2)}")
            await live.hand_over(arrival.monitor)
            await asyncio.to_thread(shutil.rmtree, self.vms.paths(name).migration_tls, True)
            if arrival.watcher is not None:
                arrival.watcher.cancel()
            self._live.pop(name, None)
            await self.vms.booter.attach_incoming(name, arrival.child, arrival.ident, arrival.monitor,
                                                  arrival.ssh_port, arrival.accel)
            self.vms.journal.end(arrival.op)
            self.vms.event(name, "migrate", f"migrated here from {arrival.source}: running", source=arrival.source)
            return self.vms.get(name)

    # ------------------------------------------------------------------------------------------------- abort --
    async def abort(self, name: str) -> None:
        """Remove the arriving VM whole (Conflict if it is not arriving: a committed VM is never removed here)."""
        async with self.vms.operation_lock(name):
            rec = self.vms.store.get_vm(name)
            if rec is None:
                raise NotFound(f"no VM named '{name}' is arriving here")
            if rec.state != VMState.INCOMING:
                raise Conflict(f"VM '{name}' is {rec.state} here, not arriving: it is not removed")
            await self._remove(name, "aborted by the source")

    async def _watch(self, name: str, arrival: Arrival) -> None:
        """A QEMU that exits while waiting (a failed stream ends it), or an arrival never committed: removed."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(arrival.child.wait(), ARRIVAL_TIMEOUT)
        async with self.vms.operation_lock(name):
            if self._live.get(name) is arrival:
                why = "its QEMU exited" if arrival.child.returncode is not None else "not committed in time"
                await self._remove(name, why)

    async def _remove(self, name: str, why: str) -> None:
        """Kill the arriving VM's QEMU (by pid), remove its record and files, end its journal row (the lock held)."""
        arrival = self._live.pop(name, None)
        if arrival is not None:
            if arrival.watcher is not None and arrival.watcher is not asyncio.current_task():
                arrival.watcher.cancel()
            await arrival.monitor.close()
            process.kill(arrival.ident, self.vms.get(name).id)
            await arrival.child.wait()
        self.vms.store.delete_runtime(name)
        if (rec := self.vms.store.get_vm(name)) is not None:
            if rec.state == VMState.INCOMING:
                await self.vms._set_state(name, VMState.STOPPED, why)  # noqa: SLF001
            await self.vms._delete(name, False)  # noqa: SLF001
        else:
            await asyncio.to_thread(shutil.rmtree, self.vms.paths(name).root, True)
        self.vms.event(name, "migrate", f"arrival removed: {why}", result="error")
        if arrival is not None:
            self.vms.journal.end(arrival.op, ok=False)

    # ---------------------------------------------------------------------------------------------- recovery --
    async def recover(self, op: OperationRecord) -> Outcome:
        """A daemon restart before the commit: the arriving VM is removed (its QEMU killed by pid and start time);
        after it (the VM runs): finished."""
        name = str(op.vm)
        rec = self.vms.store.get_vm(name)
        if rec is not None and rec.state != VMState.INCOMING:
            return Outcome(True, f"VM '{name}' had arrived ({rec.state})")
        pid = op.data.get("pid")
        if not pid and (rt := self.vms.store.get_runtime(name)) is not None:  # died before noting it: the runtime row
            pid = [rt.pid, rt.start_ticks]
        if pid and rec is not None and process.kill(process.ProcessIdentity(int(pid[0]), int(pid[1])), rec.id):
            await process.wait_exit(int(pid[0]))
        self.vms.store.delete_runtime(name)
        if rec is not None:
            await self.vms._set_state(name, VMState.STOPPED, "its arrival was interrupted by a daemon restart")  # noqa: SLF001
            await self.vms._delete(name, False)  # noqa: SLF001
        return Outcome(False, f"the arriving VM '{name}' removed (its QEMU killed)")
