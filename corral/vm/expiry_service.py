"""Expiry of VMs over the store: the expiry a new VM gets, `corral extend`, projects' defaults, and the daemon's
periodic check that warns before a VM expires and then stops, suspends or deletes it.

What to do at a given moment is decided by the pure :func:`corral.vm.expiry.decide`; this module gathers what it
needs (the VM's state, whether the warning or the expiry was already recorded for this expiry time) and carries the
decision out. A failed action is recorded and tried again after :data:`EXPIRY_RETRY_SECONDS`; a VM with an
operation under way (its lock held) is looked at again on the next pass.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from corral.errors import CorralError, EngineError, InvalidInput
from corral.store.db import EventQuery, ProjectRecord, VMRecord
from corral.vm import expiry, labels
from corral.vm.core import VMCore
from corral.vm.expiry import Decision, ExpiryAction, ExpiryCheck
from corral.vm.spec import VMSpec

#: The VM service's log (the daemon log names it so), whichever of its modules writes the line.
log = logging.getLogger("corral.vm.service")

#: After a failed expiry action, the next attempt waits this long.
EXPIRY_RETRY_SECONDS = 60.0


class ExpiryActions(Protocol):
    """What an expired VM may undergo: the VM service's stop, suspend and delete, without taking the VM's lock (the
    check holds it)."""

    async def _stop(self, name: str, timeout: float, force: bool) -> VMRecord: ...

    async def _suspend(self, name: str, timeout: float, reason: str = "suspended by user") -> VMRecord: ...

    async def _delete(self, name: str, force: bool) -> None: ...


class ExpiryService:
    """The VMs' expiry times: set, pushed out, checked; ``actions`` carries out what an expiry asks for."""

    def __init__(self, vms: VMCore, actions: ExpiryActions) -> None:
        self.vms = vms
        self.actions = actions
        self._expiry_retry: dict[str, float] = {}  # VM -> monotonic time before which a failed expiry is not retried

    def with_expiry(self, spec: VMSpec) -> VMSpec:
        """The spec with its expiry made absolute: from its own ttl or expires_at, else its project's default."""
        now = datetime.now(UTC)
        update: dict[str, Any] = {}
        project = self.vms.store.get_project(spec.project)
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
        async with self.vms._lock(name):
            rec = self.vms._get(name)
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
            self.vms.store.update_spec(rec.spec.model_copy(update=update))
            self.vms.event(name, "extend", f"expiry {'none' if old is None else f'{old:%Y-%m-%d %H:%M:%S}Z'} -> "
                           f"{new:%Y-%m-%d %H:%M:%S}Z", old=old.isoformat() if old else None, new=new.isoformat())
            return self.vms._get(name)

    def set_project(self, name: str, default_ttl: float | None, on_expiry: ExpiryAction) -> ProjectRecord:
        """Set a project's defaults for the expiry of its new VMs (applied by :meth:`with_expiry` at create)."""
        try:
            labels.check_project(name)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        self.vms.store.put_project(ProjectRecord(name=name, default_ttl=default_ttl, on_expiry=on_expiry.value))
        rec = self.vms.store.get_project(name)
        assert rec is not None
        ttl = "none" if default_ttl is None else expiry.format_duration(default_ttl)
        self.vms.event(None, "project", f"project '{name}': default TTL {ttl}, on expiry {on_expiry.value}",
                       project=name, default_ttl=default_ttl, on_expiry=on_expiry.value)
        return rec

    def expiry_window(self, rec: VMRecord) -> float:
        """How long before its expiry a VM is warned (and marked in `corral ls`)."""
        if rec.spec.expires_at is None:
            return 0.0
        lifetime = rec.spec.expires_at.timestamp() - rec.created_at
        settings = self.vms.settings
        window = expiry.warning_window(lifetime, settings.expiry_warning_fraction, settings.expiry_warning)
        # At least two passes of the check, so that the warning is not skipped (a short TTL: warned at once).
        return min(max(window, 2 * settings.expiry_interval), max(lifetime, 0.0))

    def _expiry_recorded(self, name: str, type_: str, expires_at: datetime) -> bool:
        """Was the ``type_`` event (expiring/expired) already recorded for this expiry of the VM?"""
        last = self.vms.store.events(query=EventQuery(vm=name, type=type_), limit=1, newest=True)
        return bool(last) and last[0].data.get("expires_at") == expires_at.isoformat()

    async def check_expiry(self) -> None:
        """One pass of the daemon's expiry check over every VM (run by its housekeeping every few seconds)."""
        for rec in self.vms.store.list_vms():
            if rec.spec.expires_at is None:
                continue
            try:
                await self._check_expiry_one(rec.name)
            except Exception:
                log.exception("expiry check of %s failed", rec.name)

    async def _check_expiry_one(self, name: str) -> None:
        """Warn about, or act on, one VM's expiry, if its time has come and nobody else is operating on it."""
        now = datetime.now(UTC)
        rec = self.vms.store.get_vm(name)
        if rec is None or rec.spec.expires_at is None or (
                rec.spec.expires_at - now > timedelta(seconds=self.expiry_window(rec))):
            return  # the common case, without a lock or a query
        if time.monotonic() < self._expiry_retry.get(name, 0.0):
            return  # its expiry action failed a moment ago
        lock = self.vms._lock(name)
        if lock.locked():
            return  # an operation is under way: look again on the next pass
        async with lock:
            rec = self.vms.store.get_vm(name)
            if rec is None or (at := rec.spec.expires_at) is None:
                return
            action = rec.spec.on_expiry or ExpiryAction.STOP
            check = ExpiryCheck(now=datetime.now(UTC), expires_at=at, state=rec.state, action=action,
                                window=self.expiry_window(rec),
                                warned=self._expiry_recorded(name, "expiring", at),
                                expired=self._expiry_recorded(name, "expired", at))
            decision = expiry.decide(check)
            if decision == Decision.WARN or (decision in (Decision.ACT, Decision.DONE) and not check.warned):
                # At expiry without a warning yet (the VM's lock was held through its whole warning window, e.g.
                # by a slow start on a busy host): the warning still comes first, then the action.
                left = (at - check.now).total_seconds()
                when = f"expires in {expiry.format_duration(left)}" if left > 0 else "expires now"
                self.vms.event(name, "expiring", f"{when} ({at:%Y-%m-%d %H:%M:%S}Z), then: {action.value}; "
                               f"`corral extend {name}` to keep it", expires_at=at.isoformat(), action=action.value)
            if decision == Decision.DONE:
                self.vms.event(name, "expired", f"expired; {action.value}: nothing to do, it is {rec.state}",
                               expires_at=at.isoformat(), action=action.value)
            elif decision == Decision.ACT:
                await self._expire(rec, action, at)
        if decision == Decision.ACT and action == ExpiryAction.DELETE and self.vms.store.get_vm(name) is None:
            self.vms._locks.pop(name, None)

    async def _expire(self, rec: VMRecord, action: ExpiryAction, at: datetime) -> None:
        """Carry out the expiry action; a failure is recorded and retried after :data:`EXPIRY_RETRY_SECONDS`."""
        name = rec.name
        try:
            if action == ExpiryAction.STOP:
                await self.actions._stop(name, timeout=30.0, force=True)
            elif action == ExpiryAction.SUSPEND:
                await self.actions._suspend(name, timeout=600.0)
            else:
                if rec.spec.backup_before_delete:
                    if self.vms.before_expiry_delete is None:
                        raise EngineError("the spec asks for a final backup and backups are not available")
                    await self.vms.before_expiry_delete(name)
                await self.actions._delete(name, force=True)
        except CorralError as exc:
            self._expiry_retry[name] = time.monotonic() + EXPIRY_RETRY_SECONDS
            self.vms.event(name, "expired", f"expired; {action.value} failed: {exc.message} (tried again in "
                           f"{EXPIRY_RETRY_SECONDS:.0f}s)", result="error", owner=rec.spec.owner,
                           expires_at=at.isoformat(), action=action.value)
            return
        self._expiry_retry.pop(name, None)
        done = {ExpiryAction.STOP: "stopped", ExpiryAction.SUSPEND: "suspended",
                ExpiryAction.DELETE: "deleted with its disks" + (
                    " after a final backup" if rec.spec.backup_before_delete else " (no final backup asked for)")}
        self.vms.event(name, "expired", f"expired; {done[action]}", owner=rec.spec.owner, expires_at=at.isoformat(),
                       action=action.value)
