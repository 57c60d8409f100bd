"""Warm pools: for a template, N paused VMs kept ready; `corral launch NAME --template T` hands one out.

The model is Kata Containers' VM cache. A member is a real VM launched from the template (TemplateService.launch:
it takes its own identity, MAC, machine-id, entropy and SSH host key, as every VM from a template does), then paused
(QMP ``stop``: no CPU cost) once ready. It counts against the host's memory and vCPUs like any live VM: a fill that
the host cannot admit leaves the pool short, with an event, and is tried again later (never in a tight loop).

Handing out (:meth:`PoolService.launch`): everything the launch asks for is checked first (the name is free, the
spec is valid, the target project's quotas, the host ports), so a refusal changes nothing; then the member is renamed
(corral.vm.rename: store rows, directory, the daemon's handles), given the user's spec, its port forwards added to
the running QEMU (and kept in its spec for later starts), continued, and in one guest command given its hostname
while ``guest-set-time`` sets its clock (which stood still while it was paused); then it is ready. The pool refills
in the background. A failure after the rename deletes that VM and falls back to an ordinary template launch.

Filling runs in the daemon (:meth:`PoolService.run`), one member at a time for all pools. After a daemon restart the
members are re-attached like any VM; a member whose fill was interrupted (not paused and ready) is the pool's own VM
in a known state, so it is deleted and replaced; a member whose state is unknown is never deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field

from corral.engine.cmdline import check_template_mounts
from corral.errors import Conflict, CorralError, GuestAgentError, InvalidInput, NotFound
from corral.guest import identity
from corral.network import forwards, ports
from corral.pools import plan
from corral.pools.plan import Condition, Member
from corral.pools.store import MemberRecord, PoolRecord, PoolStore
from corral.store.db import VMRecord
from corral.templates.service import TemplateService
from corral.vm import quota, rename
from corral.vm.spec import VMSpec
from corral.vm.states import VMState

log = logging.getLogger(__name__)

#: How often the fill loop looks at the pools without being woken (a member deleted behind its back, a retry due).
RECHECK_SECONDS = 5.0
#: After a failed fill (the host full, a quota), the pool waits this long before trying again.
RETRY_SECONDS = 30.0
#: A member's guest must be ready within this long after its QEMU started.
FILL_READY_TIMEOUT = 300.0
#: The hand-out's guest command must end within this long (else the VM is deleted and launched afresh).
HANDOUT_TIMEOUT = 20.0
#: The state reason of a ready member.
READY_REASON = "warm pool member, ready to hand out"

#: Run at hand-out, in one guest command (shell builtins only): the hostname becomes the VM's new name.
HANDOUT_SCRIPT = "name=$1\n" + identity.HOSTNAME_SCRIPT


@dataclass(frozen=True)
class MemberStatus:
    name: str
    condition: Condition
    state: str  #: the VM's state ("" once gone)
    memory: int  #: MiB it holds against the host (0 without a QEMU)
    rss: int  #: bytes its QEMU holds resident (0 without a QEMU)


@dataclass(frozen=True)
class PoolStatus:
    template: str
    size: int
    created_at: float
    members: list[MemberStatus] = field(default_factory=list)
    note: str = ""  #: why the pool is short, if a fill failed

    @property
    def ready(self) -> int:
        return sum(m.condition == Condition.READY for m in self.members)

    @property
    def filling(self) -> int:
        return sum(m.condition == Condition.FILLING for m in self.members)


class PoolService:
    def __init__(self, templates: TemplateService) -> None:
        self.templates = templates
        self.vms = templates.vms
        self.store = PoolStore(self.vms.store)
        self._lock = asyncio.Lock()  # pool changes, member deletions and hand-outs' claims, one at a time
        self._wake = asyncio.Event()
        self._filling: str | None = None  # the member being launched now
        self._retry_at: dict[str, float] = {}  # template -> monotonic time of its next fill after a failure
        self._short: dict[str, str] = {}  # template -> why its last fill failed (one event per new reason)
        self.vms.delete_hooks.append(self._on_delete)
        templates.pooled = lambda t: self.store.get(t) is not None

    # ------------------------------------------------------------------------------------------------ queries --
    def _condition(self, row: MemberRecord, *, locked_by_us: bool = False) -> Condition:
        if row.vm == self._filling:
            return Condition.FILLING
        rec = self.vms.store.get_vm(row.vm)
        if rec is None:
            return Condition.GONE
        if rec.state == VMState.UNKNOWN or (self.vms.locked(row.vm) and not locked_by_us):
            return Condition.UNKNOWN  # unknown, or an operation under way: left alone this time
        m = self.vms.machine(row.vm)
        if row.ready and rec.state == VMState.PAUSED and m is not None and m.monitor is not None:
            return Condition.READY
        return Condition.BROKEN

    def _status(self, pool: PoolRecord) -> PoolStatus:
        members = []
        for row in self.store.members(pool.template):
            rec = self.vms.store.get_vm(row.vm)
            m = self.vms.machine(row.vm)
            members.append(MemberStatus(
                row.vm, self._condition(row), rec.state.value if rec else "",
                rec.spec.memory if rec is not None and m is not None else 0,
                _rss(m.ident.pid) if m is not None else 0))
        return PoolStatus(pool.template, pool.size, pool.created_at, members, self._short.get(pool.template, ""))

    def get(self, template: str) -> PoolStatus:
        pool = self.store.get(template)
        if pool is None:
            raise NotFound(f"template '{template}' has no warm pool (`corral pool create --template {template} "
                           "--size N`)")
        return self._status(pool)

    def all(self) -> list[PoolStatus]:
        return [self._status(p) for p in self.store.pools()]

    # ---------------------------------------------------------------------------------------------- changes --
    async def create(self, template: str, size: int) -> PoolStatus:
        _check_size(size)
        async with self._lock:
            self.templates.get(template)  # NotFound, naming the templates there are
            if (pool := self.store.get(template)) is not None:
                raise Conflict(f"template '{template}' already has a warm pool of {pool.size}: change its size with "
                               f"`corral pool resize --template {template} --size N`")
            self.store.insert(template, size)
        self.vms.event(None, "pool", f"warm pool of template '{template}' created: {size} member(s)",
                       template=template, size=size)
        self._wake.set()
        return self.get(template)

    async def resize(self, template: str, size: int) -> PoolStatus:
        _check_size(size)
        async with self._lock:
            old = self.get(template).size
            self.store.resize(template, size)
            self._retry_at.pop(template, None)  # try at once: the new size may fit
            self._short.pop(template, None)
        self.vms.event(None, "pool", f"warm pool of template '{template}': size {old} -> {size}", template=template,
                       old=old, size=size)
        self._wake.set()
        return self.get(template)

    async def delete(self, template: str) -> list[str]:
        """Remove the pool and delete its members (a member whose state is unknown is left, as an ordinary VM);
        the names deleted."""
        async with self._lock:
            self.get(template)
            self.store.delete(template)  # a fill under way deletes its member when it ends
            deleted, kept = [], []
            for row in self.store.members(template):
                if self._condition(row) in (Condition.FILLING,):
                    continue
                if await self._delete_member(row.vm):
                    deleted.append(row.vm)
                else:
                    kept.append(row.vm)
                self.store.forget(row.vm)
            self._retry_at.pop(template, None)
            self._short.pop(template, None)
        self.vms.event(None, "pool", f"warm pool of template '{template}' removed ({len(deleted)} member(s) deleted"
                       + (f"; left as they are, their state unknown: {', '.join(kept)}" if kept else "") + ")",
                       template=template, deleted=deleted, kept=kept)
        return deleted

    async def _delete_member(self, name: str) -> bool:
        """Delete a member VM whose state is known; False if it was left (unknown state, or the delete failed)."""
        rec = self.vms.store.get_vm(name)
        if rec is None:
            return True
        if rec.state == VMState.UNKNOWN:
            return False
        try:
            await self.vms.delete(name, force=True)
        except CorralError as exc:
            self.vms.event(name, "pool", f"could not delete the pool member: {exc.message}", result="error")
            return False
        return True

    async def _on_delete(self, rec: VMRecord) -> None:
        """A VM is being deleted (by hand, or by the pool): if it was a member, its pool refills."""
        if self.store.forget(rec.name):
            self._wake.set()

    # ----------------------------------------------------------------------------------------------- filling --
    async def run(self) -> None:
        """The fill loop (a daemon task): reconcile every pool, one step at a time, until cancelled."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), RECHECK_SECONDS)
            self._wake.clear()
            try:
                await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("warm pool reconcile failed")

    async def reconcile(self) -> None:
        """One pass: forget members gone, delete broken ones and shed the excess, then fill at most one member
        (the loop is woken again at once if more are needed)."""
        to_fill: str | None = None
        async with self._lock:
            for pool in self.store.pools():
                members = [Member(r.vm, self._condition(r)) for r in self.store.members(pool.template)]
                step = plan.decide(pool.size, members,
                                   filling_elsewhere=self._filling is not None or to_fill is not None)
                for name in step.forget:
                    self.store.forget(name)
                conditions = {m.name: m.condition for m in members}
                for name in step.delete:
                    reason = "over the pool's size" if conditions[name] == Condition.READY else \
                        "not paused and ready (an interrupted fill, a crash, or resumed by hand)"
                    self.vms.event(name, "pool", f"pool member deleted: {reason}", template=pool.template)
                    await self._delete_member(name)
                    self.store.forget(name)
                if step.fill and time.monotonic() >= self._retry_at.get(pool.template, 0.0):
                    to_fill = pool.template
            pooled = {p.template for p in self.store.pools()}
            for row in self.store.members():  # members of a pool removed while they were filling
                if row.template not in pooled and self._condition(row) not in (Condition.FILLING, Condition.UNKNOWN):
                    await self._delete_member(row.vm)
                    self.store.forget(row.vm)
        if to_fill is not None:
            await self._fill(to_fill)
            self._wake.set()  # look again at once: more members may be needed

    async def _fill(self, template: str) -> None:
        name = plan.member_name(template)
        spec = VMSpec(name=name, owner=plan.OWNER, project=plan.PROJECT, labels={plan.LABEL: template},
                      description=f"warm pool member of template '{template}'")
        self._filling = name
        self.store.add_member(name, template)
        t0 = time.monotonic()
        try:
            await self.templates.launch(template, spec)  # all or nothing
            await self.vms.readiness.wait_ready(name, timeout=FILL_READY_TIMEOUT)
            m = self.vms.machine(name)
            if m is not None and m.ready_task is not None:
                # Its addresses are read just after "ready": a guest paused while its agent answers leaves the agent
                # mid-command (seen: the hand-out's guest command then hung until its timeout).
                await asyncio.wait({m.ready_task}, timeout=30.0)
            await self.vms.pause(name, reason=READY_REASON)
            self.store.set_ready(name)
        except CorralError as exc:
            self._filling = None
            if self.vms.store.get_vm(name) is not None:
                await self._delete_member(name)
            self.store.forget(name)
            self._retry_at[template] = time.monotonic() + RETRY_SECONDS
            if self._short.get(template) != exc.message:
                self._short[template] = exc.message
                self.vms.event(None, "pool", f"warm pool of template '{template}' stays short: {exc.message} "
                               f"(tried again every {RETRY_SECONDS:.0f}s)", result="error", template=template)
            return
        finally:
            self._filling = None
        self._short.pop(template, None)
        self._retry_at.pop(template, None)
        self.vms.event(name, "pool", f"paused and ready in the warm pool of template '{template}' "
                       f"({time.monotonic() - t0:.1f}s to fill)", template=template)

    # -------------------------------------------------------------------------------------------------- launch --
    async def launch(self, template: str, spec: VMSpec) -> VMRecord:
        """Launch VM ``spec.name`` from ``template``: a ready member of its pool handed out if there is one, else
        an ordinary template launch. Not ready yet when this returns for the latter (``wait_ready``); a handed-out
        VM is ready."""
        tpl = self.templates.get(template)
        if self.store.get(template) is not None:
            for what, given in (("--network", spec.networks), ("--cloud-init", spec.cloud_init is not None),
                                ("--ssh-key", spec.ssh_keys), ("--hostname", spec.hostname is not None)):
                if given:
                    raise InvalidInput(f"{what} is not possible with a template: its machine has no such device "
                                       "(the hostname is the VM's name)")
            spec = spec.model_copy(update=tpl.machine_fields())
            check_template_mounts(spec)
            member = await self._hand_out(template, spec)
            if member is not None:
                try:
                    await self._finish(spec.name)
                    return self.vms.get(spec.name)
                except CorralError as exc:
                    self.vms.event(spec.name, "pool", f"hand-out failed ({exc.message}): deleted; launching from "
                                   "the template instead", result="error")
                    with contextlib.suppress(CorralError):
                        await self.vms.delete(spec.name, force=True)
                finally:
                    self._wake.set()  # refill, once the handed-out VM is ready (the refill's QEMU start costs CPU)
        return await self.templates.launch(template, spec)

    async def _hand_out(self, template: str, spec: VMSpec) -> str | None:
        """Check the launch, then rename a ready member to ``spec.name`` with ``spec`` (ports added); the member's
        old name, or None if none is ready. A refusal (raised) changes nothing."""
        new = spec.name
        vms = self.vms
        async with self._lock:
            ready = [r.vm for r in self.store.members(template) if self._condition(r) == Condition.READY]
            if not ready:
                return None
            member = ready[0]
            async with vms.operation_lock(new), vms.operation_lock(member):
                if self._condition(MemberRecord(member, template, True, 0.0), locked_by_us=True) != Condition.READY:
                    return None
                if vms.store.get_vm(new) is not None or vms.starting(new):
                    raise Conflict(f"a VM named '{new}' already exists: choose another name or `corral rm {new}`")
                if vms.paths(new).root.exists():
                    raise Conflict(f"{vms.paths(new).root} already exists but no VM '{new}' is defined: move it "
                                   "away first")
                spec = vms.expiry.with_expiry(spec)  # the same expiry as any create
                vms.forwards.check_unclaimed(new, spec.ports)  # the same check as any create
                ports.check_free(spec.ports, new)
                others = [(r.spec, vms.disk_size(r.spec)) for r in vms.store.list_vms() if r.name != member]
                quota.check(spec, spec.disk or 0, others, vms.store.list_quotas())
                m = vms.machine(member)
                assert m is not None and m.monitor is not None
                # From here on the member is the new VM. Its readiness waits for the hostname (_finish).
                self.store.forget(member)
                m.ready.clear()
                m.agent_ready = False
                try:
                    await rename.rename(vms, member, spec)
                except BaseException:
                    self.store.add_member(member, template)
                    self.store.set_ready(member)
                    m.agent_ready = True
                    m.ready.set()
                    raise
                vms.event(new, "pool", f"handed out from the warm pool of template '{template}' (was {member})",
                          template=template, member=member)
                for f in spec.ports:  # its QEMU started without them; its spec has them for the next start
                    await forwards.add(m.monitor, f)
        return member

    async def _finish(self, name: str) -> None:
        """Continue the handed-out VM, set its hostname and clock (one guest command), and mark it ready."""
        m = self.vms.machine(name)
        assert m is not None
        waiting = m.ready_task is not None and not m.ready_task.done()  # re-attached paused: its agent never answered
        await self.vms.resume(name)
        if waiting:
            await self.vms.readiness.wait_ready(name, timeout=60.0)
        pid = await identity.start_script(m.agent, HANDOUT_SCRIPT, [name])
        try:  # while the script runs: the clock stood still while the member was paused
            await identity.set_time(m.agent)
        except GuestAgentError as exc:
            self.vms.event(name, "pool", f"could not set the guest clock: {exc.message}")
        code, _, err = await identity.wait_script(m.agent, pid, timeout=HANDOUT_TIMEOUT)
        if code != 0:
            raise GuestAgentError(f"the guest could not take its hostname: {err.decode(errors='replace').strip()}")
        m.agent_ready = True
        m.ready.set()
        self.vms.event(name, "ready", f"ready from the warm pool ({time.time() - m.started_at:.0f}s after its QEMU "
                       "started)")
        with contextlib.suppress(CorralError):
            await self.vms.readiness.refresh_addresses(name)


def _rss(pid: int) -> int:
    """Bytes resident of process ``pid`` (0 if it cannot be read)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _check_size(size: int) -> None:
    try:
        plan.check_size(size)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
