"""Idle control in the daemon: sample every running VM's activity, suspend the idle ones, wake them on demand.

Composed over :class:`~corral.vm.service.VMService` (it uses its public operations and two small hooks: a reason
for ``suspend`` and ``before_start``).

- :meth:`IdleService.tick` (every ``CORRAL_IDLE_INTERVAL`` seconds): for each running VM, read its counters
  (:mod:`corral.idle.sampler`), update its :class:`~corral.idle.detector.Activity`, keep its last activity in the
  store, and suspend it to disk when it has been idle for its policy's whole window (an ``idle`` event, then the
  ordinary suspend; its state reason starts with ``idle:``). A VM whose lock is held (an operation under way) or
  which a user is reaching right now (exec, file copy) is left alone.
- :meth:`IdleService.wake`: before exec, shell and cp (called by the API), and on a connection to a held port. A
  suspended VM that has an idle policy (its own or its project's, and on) is resumed, whoever suspended it: it was
  declared "scale to zero". One without a policy is an error that says to resume it by hand.
- Port holding (:mod:`corral.idle.holder`): every suspended VM with an idle policy gets a listener on each of its
  forwarded TCP ports; :meth:`reconcile` keeps that true after each suspend, each policy change, each tick and a
  daemon restart. ``before_start`` releases them just before the VM's QEMU starts, however it is started.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from corral.errors import Conflict, CorralError, InvalidInput, StateError
from corral.idle import sampler
from corral.idle.detector import Activity
from corral.idle.holder import PortHolder
from corral.idle.policy import IDLE_REASON, IdlePolicy, IdleStatus, effective, format_rate
from corral.store.db import EventQuery, ProjectRecord, VMRecord
from corral.vm import labels
from corral.vm.actor import ACTOR, SYSTEM_ACTOR, system_task
from corral.vm.expiry import format_duration
from corral.vm.service import VMService
from corral.vm.states import VMState

log = logging.getLogger(__name__)

SUSPEND_TIMEOUT = 600.0
#: Event types after which the held ports are reconciled at once.
RECONCILE_ON = frozenset({"state", "delete", "port", "update", "extend"})
RESUME_TIMEOUT = 600.0


@dataclass
class _Tracked:
    """A running VM's activity, tied to one QEMU process (a new one starts afresh)."""

    pid: int
    activity: Activity
    stored: float  # the last_active value last written to the store


class IdleService:
    def __init__(self, vms: VMService, interval: float) -> None:
        self.vms = vms
        self.store = vms.store
        self.interval = interval
        self._tracked: dict[str, _Tracked] = {}
        self._holders: dict[str, PortHolder] = {}
        self._draining: set[PortHolder] = set()  # released holders whose accepted connections still run
        self._problems: dict[str, list[str]] = {}  # held ports that could not be bound, per VM (reported once)
        self._waking: dict[str, asyncio.Task[None]] = {}
        self._inflight: dict[str, int] = {}
        self._reconcile_lock = asyncio.Lock()
        vms.before_start = self._release

    # -------------------------------------------------------------------------------------------- policies --
    def policy(self, rec: VMRecord, projects: dict[str, ProjectRecord] | None = None
               ) -> tuple[IdlePolicy | None, str]:
        """The policy that applies to ``rec`` (its own, else its project's) and its source."""
        project = projects.get(rec.spec.project) if projects is not None else self.store.get_project(rec.spec.project)
        return effective(rec.spec.idle, project.idle if project else None)

    async def set_policy(self, name: str, policy: IdlePolicy | None) -> VMRecord:
        """Set a VM's own policy (a policy that is off overrides its project's; None: follow the project's)."""
        rec = await self.vms.specs.update(name, {"idle": policy})
        await self.reconcile()
        return rec

    async def set_project_policy(self, name: str, policy: IdlePolicy | None) -> ProjectRecord:
        """Set (None: remove) the default policy of a project's VMs that have none of their own; at once."""
        try:
            labels.check_project(name)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        self.store.set_project_idle(name, policy)
        self.vms.event(None, "project", f"project '{name}': idle policy "
                       f"{policy.describe() if policy else 'none'}", project=name,
                       idle=policy.model_dump() if policy else None)
        await self.reconcile()
        rec = self.store.get_project(name)
        assert rec is not None
        return rec

    # ------------------------------------------------------------------------------------------------ status --
    def status(self, rec: VMRecord, projects: dict[str, ProjectRecord] | None = None) -> IdleStatus:
        policy, source = self.policy(rec, projects)
        st = IdleStatus(policy=policy, source=source)
        tr = self._tracked.get(rec.name)
        if tr is not None and rec.state == VMState.RUNNING:
            a = tr.activity
            st.last_active, st.quiet_for = a.last_active, a.quiet_for(time.time())
            if a.last is not None:
                st.cpu, st.disk, st.net = a.last.cpu, a.last.disk, a.last.net
            st.busy = list(a.busy)
        else:
            st.last_active = self.store.last_active().get(rec.name)
        st.suspended_by_idle = rec.state == VMState.SUSPENDED and rec.state_reason.startswith(IDLE_REASON)
        st.auto_resume = rec.state == VMState.SUSPENDED and policy is not None and policy.enabled
        if (h := self._holders.get(rec.name)) is not None:
            st.held_ports = [f"{f.host_addr}:{f.host_port}" for f in h.forwards]
        return st

    def projects(self) -> dict[str, ProjectRecord]:
        return {p.name: p for p in self.store.list_projects()}

    # --------------------------------------------------------------------------------------------- sampling --
    async def run(self) -> None:
        """The daemon's idle loop: a :meth:`tick` every ``interval`` seconds; and between ticks, held ports
        follow at once the events that change which VMs need them (a state change, a deletion, a forward added or
        removed, a policy changed)."""
        watcher = asyncio.create_task(self._follow_events())
        try:
            while True:
                await asyncio.sleep(self.interval)
                try:
                    await self.tick()
                except Exception:
                    log.exception("idle check failed")
        finally:
            watcher.cancel()

    async def _follow_events(self) -> None:
        while True:
            sub = self.vms.events.subscribe(EventQuery())
            try:
                while (ev := await sub.next()) is not None:
                    if ev.type in RECONCILE_ON:
                        try:
                            await self.reconcile()
                        except Exception:
                            log.exception("holding ports failed")
            finally:
                self.vms.events.unsubscribe(sub)
            if not sub.overflowed:
                return  # the daemon is shutting down
            await self.reconcile()  # fell behind: catch up, and follow again

    async def tick(self) -> None:
        projects = self.projects()
        stored = self.store.last_active()
        for rec in self.store.list_vms():
            try:
                await self._sample(rec, projects, stored)
            except Exception:
                log.exception("idle check of %s failed", rec.name)
        for name in set(self._tracked) - {r.name for r in self.store.list_vms() if r.state == VMState.RUNNING}:
            del self._tracked[name]
        await self.reconcile()

    async def _sample(self, rec: VMRecord, projects: dict[str, ProjectRecord], stored: dict[str, float]) -> None:
        m = self.vms.machine(rec.name)
        if rec.state != VMState.RUNNING or m is None:
            return
        now = time.time()
        tr = self._tracked.get(rec.name)
        if tr is None or tr.pid != m.ident.pid:  # a new QEMU, or a new daemon: watched from now
            last = max(m.started_at, stored.get(rec.name, 0.0))  # active at its start, or as last measured
            tr = self._tracked[rec.name] = _Tracked(m.ident.pid, Activity(last_active=last, watched_since=now),
                                                    stored.get(rec.name, 0))
        policy, _ = self.policy(rec, projects)
        counters = await sampler.sample(m)
        tr.activity.observe(counters, time.time(), rec.spec.vcpus, policy or IdlePolicy())
        if self._inflight.get(rec.name):
            tr.activity.touch(now)
        if tr.activity.last_active > tr.stored:
            self.store.set_last_active(rec.name, tr.activity.last_active)
            tr.stored = tr.activity.last_active
        if policy is not None and tr.activity.idle(time.time(), policy):
            await self._suspend_idle(rec, tr.activity, policy)

    async def _suspend_idle(self, rec: VMRecord, activity: Activity, policy: IdlePolicy) -> None:
        name = rec.name
        if self.vms.locked(name) or self._inflight.get(name):
            return  # an operation, or a user, is on it: look again next time
        assert policy.suspend_after is not None
        quiet = format_duration(activity.quiet_for(time.time()))
        r = activity.last
        measured = "" if r is None else (f" (cpu {r.cpu or 0:.1f}%, disk {_rate(r.disk)}, net {_rate(r.net)}; "
                                         f"thresholds {policy.cpu:g}%, {_rate(policy.disk)}, {_rate(policy.net)})")
        after = format_duration(policy.suspend_after)
        reason = f"{IDLE_REASON} no activity for {quiet} (policy: suspend after {after})"
        self.vms.event(name, "idle", f"idle for {quiet}{measured}: suspending to disk", action="suspend",
                       quiet_for=activity.quiet_for(time.time()), policy=policy.model_dump())
        try:
            await self.vms.suspend(name, SUSPEND_TIMEOUT, reason=reason)
        except CorralError as exc:
            activity.touch(time.time())  # try again after another whole window
            self.vms.event(name, "idle", f"idle suspend failed: {exc.message} (tried again after "
                           f"{format_duration(policy.suspend_after)} more idle)", result="error", action="suspend")
            return
        self._tracked.pop(name, None)
        await self.reconcile()

    # ------------------------------------------------------------------------------------------- on demand --
    @contextlib.contextmanager
    def using(self, name: str) -> Iterator[None]:
        """A user is reaching the VM (exec, file copy): it is active, and not suspended meanwhile."""
        self._inflight[name] = self._inflight.get(name, 0) + 1
        self.touch(name)
        try:
            yield
        finally:
            self._inflight[name] -= 1
            if not self._inflight[name]:
                del self._inflight[name]
            self.touch(name)

    def touch(self, name: str) -> None:
        """Someone used the VM: activity now."""
        if (tr := self._tracked.get(name)) is not None:
            tr.activity.touch(time.time())

    async def wake(self, name: str, operation: str) -> None:
        """Make sure ``operation`` can reach the VM: resume it if it is suspended and has an idle policy (waiting
        for a suspend under way to finish first). Returns once it runs (the caller waits for readiness); leaves
        any other state to the caller's own checks. Conflict for a suspended VM without an idle policy."""
        rec = self.vms.get(name)
        self.touch(name)  # a running VM is not suspended under the request that just arrived
        if rec.state == VMState.SUSPENDING:
            rec = await self.vms.wait_state(name, {s for s in VMState if s != VMState.SUSPENDING}, SUSPEND_TIMEOUT)
        if rec.state == VMState.STARTING:  # being resumed (or started): wait until it runs (or failed)
            if name in self._waking:
                await asyncio.shield(self._waking[name])
            else:
                await self.vms.wait_state(name, {s for s in VMState if s != VMState.STARTING}, RESUME_TIMEOUT)
            return
        if rec.state != VMState.SUSPENDED:
            return
        policy, _ = self.policy(rec)
        if policy is None or not policy.enabled:
            raise Conflict(f"cannot {operation} VM '{name}' while it is suspended: it has no idle policy, so it does "
                           f"not resume by itself; `corral resume {name}` first")
        task = self._waking.get(name)
        if task is None:
            actor = ACTOR.get()
            why = operation if actor == SYSTEM_ACTOR else f"{operation} by {actor}"
            task = system_task(self._resume(name, why), f"wake-{name}")
            self._waking[name] = task
            task.add_done_callback(lambda _: self._waking.pop(name, None))
        await asyncio.shield(task)

    async def _resume(self, name: str, why: str) -> None:
        self.vms.event(name, "idle", f"resuming on demand: {why}", action="resume")
        try:
            await self.vms.resume(name)
        except StateError:
            if self.vms.get(name).state not in (VMState.RUNNING, VMState.PAUSED):
                raise  # someone else resumed it meanwhile: fine; anything else is the error
        except BaseException:
            self._waking.pop(name, None)
            await self.reconcile()  # still suspended: hold its ports again
            raise

    # ----------------------------------------------------------------------------------------- port holding --
    async def reconcile(self) -> None:
        """Listen on the forwarded TCP ports of exactly the suspended VMs that have an idle policy (and are not
        being started, nor expired)."""
        async with self._reconcile_lock:
            await self._reconcile()

    async def _reconcile(self) -> None:
        projects = self.projects()
        now = datetime.now(UTC)
        want: dict[str, VMRecord] = {}
        for rec in self.store.list_vms():
            policy, _ = self.policy(rec, projects)
            expired = rec.spec.expires_at is not None and rec.spec.expires_at <= now  # not resumed: not held
            if rec.state == VMState.SUSPENDED and policy is not None and policy.enabled and not expired and \
                    any(f.proto == "tcp" for f in rec.spec.ports) and rec.name not in self._waking and \
                    not self.vms.starting(rec.name):
                want[rec.name] = rec
        for name in list(self._holders):
            h = self._holders[name]
            if name not in want or [str(f) for f in h.forwards] != [str(f) for f in want[name].spec.ports
                                                                     if f.proto == "tcp"]:
                self._drop(name)
        for name, rec in want.items():
            if name in self._holders:
                continue
            h = PortHolder(name, rec.spec.ports, functools.partial(self.wake, name, "a connection to a forwarded port"))
            problems = await h.hold()
            if h.listening:
                self._holders[name] = h
            if problems != self._problems.get(name, []):
                if problems:
                    self.vms.event(name, "idle", "cannot hold forwarded ports while suspended (a connection to "
                                   f"them will not wake it): {'; '.join(problems)}", result="error")
                self._problems[name] = problems
            if not problems:
                self._problems.pop(name, None)
        self._draining = {h for h in self._draining if h.busy}

    def _release(self, name: str) -> None:
        """``before_start``: give the VM's ports back (QEMU binds them); connections held carry on."""
        self._drop(name)

    def _drop(self, name: str) -> None:
        h = self._holders.pop(name, None)
        if h is not None:
            h.release()
            self._draining.add(h)

    async def close(self) -> None:
        """Daemon exit: stop listening and drop held connections."""
        for h in [*self._holders.values(), *self._draining]:
            await h.close()
        self._holders.clear()
        self._draining.clear()


def _rate(v: float | None) -> str:
    return "?" if v is None else format_rate(v)
